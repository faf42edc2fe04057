"""The batched engine on a grid of simulated devices: does it fit itself to any GPU?

    .venv/bin/pip install -e '.[benchmark]'             # matplotlib, for the plot
    .venv/bin/python benchmarks/engine_grid.py [--out out/benchmark-engine-grid] [--seconds 8]

For each device of the grid -- a UNet call costing ``a + b · rows`` with a in {2, 6, 12, 25} ms and b in
{0.5, 1.5, 3} ms per row (SD 1.5 shapes at 512 px; the other components as the shipped table) -- it
serves a simulated-device repository with the batched engine (limits as an operator would set them
for 32 clients: 32 active edits, UNet batch 64 rows), runs closed loops of 1, 16 and 32 clients (30
steps, guidance 7.5), and prints per point:

- the throughput's ratio to the device limit ``c / (steps · (a + b · 2c))``, and p50 latency over one
  edit's UNet device time ``steps · (a + 2b)``;
- the plan the engine settled on: lanes open and rows per UNet call, and its estimates of a and b;
- the UNet's busy share (Triton's compute time for the ``unet`` model over the window): whether the
  device or the host is the limit.

The simulated UNet is a Python model: each call carries the stub's own cost (copies into the stub,
the call's handling), which a native backend would not. A first device with a = b = 0 measures it
(the engine's own estimate of a and b there), and each point's ratio is also given against the limit
with that cost added to the device's. Nothing is asserted; results.json, results.md and results.png
go under --out.
"""

from __future__ import annotations

import argparse
import json
import re
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

import tritonclient.grpc as grpcclient

from engine import STEPS, machine, run_point  # benchmarks/engine.py: run from the checkout, as it is
from smartedit.engine.latency_table import SHIPPED_LATENCY_TABLE, LatencyTable
from smartedit.ops.server import ServerAddress, TritonServer, free_port

A_MS = (2.0, 6.0, 12.0, 25.0)
B_MS = (0.5, 1.5, 3.0)
CONCURRENCY = (1, 16, 32)
ACTIVE_EDITS, UNET_ROWS = 32, 64


@dataclass
class GridPoint:
    a_ms: float
    b_ms: float
    concurrency: int
    edits_per_s: float
    of_limit: float
    of_limit_with_stub: float
    p50_over_device: float
    lanes: float
    rows_per_call: float
    estimated_a_ms: float
    estimated_b_ms: float
    unet_busy: float


def write_table(a_ms: float, b_ms: float, path: Path) -> Path:
    """The shipped table with the UNet's costs replaced, and the engine sized for 32 clients."""
    data = json.loads(SHIPPED_LATENCY_TABLE.read_text())
    data["description"] = f"benchmark grid point: UNet a = {a_ms} ms, b = {b_ms} ms per row"
    data["components"]["unet"] = {"a_ms": a_ms, "b_ms": b_ms, "max_batch_size": UNET_ROWS}
    data["engine"] = {"max_active_edits": ACTIVE_EDITS, "max_queued_edits": 2 * ACTIVE_EDITS}
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1))
    return path


def gauge(metrics: str, name: str, **labels) -> float:
    """The sum of the series of ``name`` with ``labels`` (0 when there is none)."""
    total = 0.0
    for line in metrics.splitlines():
        match = re.fullmatch(rf"{re.escape(name)}\{{(.*)\}} (\S+)", line)
        if match and all(f'{key}="{value}"' in match.group(1) for key, value in labels.items()):
            total += float(match.group(2))
    return total


def unet_compute_ns(address: ServerAddress) -> int:
    with grpcclient.InferenceServerClient(address.grpc) as client:
        return client.get_inference_statistics("unet").model_stats[0].inference_stats.compute_infer.ns


def measure_device(a_ms: float, b_ms: float, out: Path, seconds: float,
                   stub_ms: tuple[float, float]) -> list[GridPoint]:
    """Every concurrency on one simulated device, on a server of its own."""
    from smartedit.export.repository import RepositoryOptions
    from smartedit.export.simulated import build_simulated_repository

    folder = out / f"a{a_ms:g}-b{b_ms:g}"
    table_path = write_table(a_ms, b_ms, folder / "latency.json")
    table = LatencyTable.load(table_path)
    options = RepositoryOptions(max_active_edits=ACTIVE_EDITS, max_queued_edits=2 * ACTIVE_EDITS)
    repository = build_simulated_repository(table_path, folder / "model_repository", options)
    address = ServerAddress(grpc_port=free_port(), http_port=free_port(), metrics_port=free_port())
    steps = STEPS["sim"]
    edit_device_s = steps * table.unet_step_s(2)
    points = []
    with TritonServer(repository, address, log_file=folder / "tritonserver.log"):
        for concurrency in CONCURRENCY:
            busy_before, started = unet_compute_ns(address), time.perf_counter()
            point = run_point(address, "sim", "batched", concurrency, seconds, stagger_s=edit_device_s / 2)
            busy = (unet_compute_ns(address) - busy_before) / 1e9 / (time.perf_counter() - started)
            url = f"http://127.0.0.1:{address.metrics_port}/metrics"
            metrics = urllib.request.urlopen(url, timeout=10).read().decode()
            rows = concurrency * 2
            limit = table.device_limit(concurrency, steps)
            with_stub = concurrency / (steps * ((a_ms + stub_ms[0]) + (b_ms + stub_ms[1]) * rows) / 1000.0)
            points.append(GridPoint(
                a_ms=a_ms, b_ms=b_ms, concurrency=concurrency, edits_per_s=point.edits_per_s,
                of_limit=point.edits_per_s / limit, of_limit_with_stub=point.edits_per_s / with_stub,
                p50_over_device=point.p50_s / edit_device_s,
                lanes=gauge(metrics, "smartedit_scheduler_unet_lanes"),
                rows_per_call=point.rows_per_unet_call,
                estimated_a_ms=1000 * gauge(metrics, "smartedit_scheduler_unet_call_fixed_seconds", latent="64x64"),
                estimated_b_ms=1000 * gauge(metrics, "smartedit_scheduler_unet_call_row_seconds", latent="64x64"),
                unet_busy=busy))
            p = points[-1]
            print(f"a={a_ms:4.1f} b={b_ms:3.1f} c={concurrency:2d}: {p.edits_per_s:6.2f} edits/s, {p.of_limit:4.0%} of "
                  f"limit ({p.of_limit_with_stub:4.0%} with the stub's cost), p50/device {p.p50_over_device:4.2f}; "
                  f"lanes {p.lanes:.0f}, rows/call {p.rows_per_call:4.1f}, estimated a {p.estimated_a_ms:5.2f} ms "
                  f"b {p.estimated_b_ms:4.2f} ms; UNet busy {p.unet_busy:4.0%}", flush=True)
    return points


def write_markdown(points: list[GridPoint], notes: dict, path: Path) -> None:
    lines = [f"Engine on a grid of simulated devices, {notes['date']}, on {notes['machine']}.", "",
             f"SD 1.5 shapes at 512 px, {STEPS['sim']} steps, guidance 7.5, batched engine (32 active edits, "
             f"UNet batch {UNET_ROWS}). The stub's own cost per UNet call, measured on a device with a = b = 0: "
             f"a = {notes['stub_a_ms']:.2f} ms, b = {notes['stub_b_ms']:.3f} ms per row.", "",
             "| a ms | b ms | clients | edits/s | of limit | of limit + stub | p50 / device | lanes | rows / call "
             "| est. a ms | est. b ms | UNet busy |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for p in points:
        lines.append(f"| {p.a_ms:g} | {p.b_ms:g} | {p.concurrency} | {p.edits_per_s:.2f} | {p.of_limit:.0%} | "
                     f"{p.of_limit_with_stub:.0%} | {p.p50_over_device:.2f} | {p.lanes:.0f} | {p.rows_per_call:.1f} | "
                     f"{p.estimated_a_ms:.2f} | {p.estimated_b_ms:.2f} | {p.unet_busy:.0%} |")
    path.write_text("\n".join(lines) + "\n")


def plot(points: list[GridPoint], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    labels = [f"a{a:g}/b{b:g}" for a in A_MS for b in B_MS]
    for concurrency in CONCURRENCY:
        series = [p for p in points if p.concurrency == concurrency]
        values = [p.p50_over_device if concurrency == 1 else p.of_limit for p in series]
        axis = axes[0] if concurrency == 1 else axes[1]
        axis.plot(labels[:len(values)], values, marker="o", label=f"{concurrency} clients")
    axes[0].axhline(1.15, color="grey", linestyle="--", label="target 1.15")
    axes[0].set(title="one edit: p50 / UNet device time", ylabel="ratio")
    axes[1].axhline(0.90, color="grey", linestyle="--", label="target 0.90")
    axes[1].set(title="throughput / device limit", ylabel="ratio", ylim=(0, 1.1))
    for axis in axes:
        axis.tick_params(axis="x", rotation=60)
        axis.grid(True, alpha=0.3)
        axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("out/benchmark-engine-grid"))
    parser.add_argument("--seconds", type=float, default=8.0, help="least measured window per point, after warm-up")
    parser.add_argument("--a-ms", type=float, nargs="+", default=list(A_MS))
    parser.add_argument("--b-ms", type=float, nargs="+", default=list(B_MS))
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    notes = {"date": time.strftime("%Y-%m-%d"), "machine": machine()}
    stub = measure_device(0.0, 0.0, args.out, args.seconds, (0.0, 0.0))
    alone = stub[0]  # one client: the engine's estimate is the stub's cost alone
    notes["stub_a_ms"], notes["stub_b_ms"] = alone.estimated_a_ms, alone.estimated_b_ms
    points = []
    for a_ms in args.a_ms:
        for b_ms in args.b_ms:
            points += measure_device(a_ms, b_ms, args.out, args.seconds, (alone.estimated_a_ms, alone.estimated_b_ms))
    (args.out / "results.json").write_text(json.dumps({"notes": notes, "stub": [asdict(p) for p in stub],
                                                       "points": [asdict(p) for p in points]}, indent=1))
    write_markdown(points, notes, args.out / "results.md")
    plot(points, args.out / "results.png")
    print(f"wrote {args.out / 'results.md'} and {args.out / 'results.png'}")


if __name__ == "__main__":
    main()
