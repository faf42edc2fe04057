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

With ``--compare``, each device is also served with the lanes the engine opened before it measured
its costs (a second lane once each holds 16 rows: ``lane_min_rows: 16``), on a second server side by
side, the points alternating between the two.

The simulated UNet is a Python model: each call carries the stub's own cost (copies into the stub,
the call's handling), which a native backend would not. A first device with a = b = 0 measures it
(the engine's own estimate of a and b there), and each point's ratio is also given against the limit
with that cost added to the device's. Nothing is asserted; results.json, results.md and results.png
go under --out.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
import threading
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


# The lane policies: lanes from measured costs (this engine), and the fixed rule the engine had before
# (a second lane once each holds 16 rows), measured side by side.
MEASURED, FIXED = "measured", "fixed16"
PREVIOUS_LANE_MIN_ROWS = 16


@dataclass
class GridPoint:
    policy: str
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


class PlanWatch:
    """Samples the engine's plan gauges every half second while a point runs: the lanes it keeps open
    under the point's load (samples with at least half the clients' edits denoising), and its latest
    estimates."""

    def __init__(self, address: ServerAddress, concurrency: int):
        self._url = f"http://127.0.0.1:{address.metrics_port}/metrics"
        self._concurrency = concurrency
        self._stop = threading.Event()
        self.lanes: list[float] = []
        self.metrics = ""
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            self.metrics = urllib.request.urlopen(self._url, timeout=10).read().decode()
            if gauge(self.metrics, "smartedit_scheduler_active_requests") >= max(1, self._concurrency / 2):
                self.lanes.append(gauge(self.metrics, "smartedit_scheduler_unet_lanes"))

    def __enter__(self) -> "PlanWatch":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.metrics = urllib.request.urlopen(self._url, timeout=10).read().decode()

    @property
    def usual_lanes(self) -> float:
        """The lanes most often open under load (nan when no sample saw the load)."""
        return max(set(self.lanes), key=self.lanes.count) if self.lanes else float("nan")


def unet_compute_ns(address: ServerAddress) -> int:
    with grpcclient.InferenceServerClient(address.grpc) as client:
        return client.get_inference_statistics("unet").model_stats[0].inference_stats.compute_infer.ns


def with_fixed_lanes(repository: Path, lane_min_rows: int) -> Path:
    """A copy of ``repository`` whose engine opens its lanes by the fixed rule (``lane_min_rows``)."""
    from smartedit.serving.triton_config import parse_pbtxt, to_pbtxt

    copy = repository.with_name(repository.name + f"-fixed{lane_min_rows}")
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(repository, copy)
    path = copy / "denoise_engine" / "config.pbtxt"
    config = parse_pbtxt(path.read_text())
    config.parameters["lane_min_rows"].string_value = str(lane_min_rows)
    path.write_text(to_pbtxt(config))
    return copy


def measure_device(a_ms: float, b_ms: float, out: Path, seconds: float, stub_ms: tuple[float, float],
                   policies: tuple[str, ...]) -> list[GridPoint]:
    """Every concurrency on one simulated device, for each lane policy: one server each, running side
    by side, the points alternating between them so that a slow minute of this machine falls on both."""
    from smartedit.export.repository import RepositoryOptions
    from smartedit.export.simulated import build_simulated_repository

    folder = out / f"a{a_ms:g}-b{b_ms:g}"
    table_path = write_table(a_ms, b_ms, folder / "latency.json")
    table = LatencyTable.load(table_path)
    options = RepositoryOptions(max_active_edits=ACTIVE_EDITS, max_queued_edits=2 * ACTIVE_EDITS)
    repository = build_simulated_repository(table_path, folder / "model_repository", options)
    repositories = {MEASURED: repository, FIXED: with_fixed_lanes(repository, PREVIOUS_LANE_MIN_ROWS)}
    steps = STEPS["sim"]
    edit_device_s = steps * table.unet_step_s(2)
    points = []
    with contextlib.ExitStack() as servers:
        addresses = {}
        for policy in policies:
            addresses[policy] = ServerAddress(grpc_port=free_port(), http_port=free_port(), metrics_port=free_port())
            servers.enter_context(TritonServer(repositories[policy], addresses[policy],
                                               log_file=folder / f"tritonserver-{policy}.log"))
        for concurrency in CONCURRENCY:
            for policy in policies:
                address = addresses[policy]
                busy_before, started = unet_compute_ns(address), time.perf_counter()
                with PlanWatch(address, concurrency) as plan:
                    point = run_point(address, "sim", "batched", concurrency, seconds, stagger_s=edit_device_s / 2)
                busy = (unet_compute_ns(address) - busy_before) / 1e9 / (time.perf_counter() - started)
                metrics = plan.metrics
                step_ms = a_ms + b_ms * concurrency * 2  # one UNet call of every client's two rows
                with_stub_ms = step_ms + stub_ms[0] + stub_ms[1] * concurrency * 2
                nan = float("nan")  # the a = b = 0 device has no limit
                points.append(GridPoint(
                    policy=policy, a_ms=a_ms, b_ms=b_ms, concurrency=concurrency, edits_per_s=point.edits_per_s,
                    of_limit=point.edits_per_s * steps * step_ms / 1000 / concurrency if step_ms else nan,
                    of_limit_with_stub=(point.edits_per_s * steps * with_stub_ms / 1000 / concurrency
                                        if with_stub_ms else nan),
                    p50_over_device=point.p50_s / edit_device_s if edit_device_s else nan,
                    lanes=plan.usual_lanes,
                    rows_per_call=point.rows_per_unet_call,
                    estimated_a_ms=1000 * gauge(metrics, "smartedit_scheduler_unet_call_fixed_seconds", latent="64x64"),
                    estimated_b_ms=1000 * gauge(metrics, "smartedit_scheduler_unet_call_row_seconds", latent="64x64"),
                    unet_busy=busy))
                p = points[-1]
                print(f"{policy:8s} a={a_ms:4.1f} b={b_ms:3.1f} c={concurrency:2d}: {p.edits_per_s:6.2f} edits/s, "
                      f"{p.of_limit:4.0%} of limit ({p.of_limit_with_stub:4.0%} with the stub's cost), p50/device "
                      f"{p.p50_over_device:4.2f}; lanes {p.lanes:.0f}, rows/call {p.rows_per_call:4.1f}, estimated a "
                      f"{p.estimated_a_ms:5.2f} ms b {p.estimated_b_ms:4.2f} ms; UNet busy {p.unet_busy:4.0%}",
                      flush=True)
    return points


def write_markdown(points: list[GridPoint], notes: dict, path: Path) -> None:
    lines = [f"Engine on a grid of simulated devices, {notes['date']}, on {notes['machine']}.", "",
             f"SD 1.5 shapes at 512 px, {STEPS['sim']} steps, guidance 7.5, batched engine (32 active edits, "
             f"UNet batch {UNET_ROWS}). The stub's own cost per UNet call, measured on a device with a = b = 0: "
             f"a = {notes['stub_a_ms']:.2f} ms, b = {notes['stub_b_ms']:.3f} ms per row.", "",
             "| lanes by | a ms | b ms | clients | edits/s | of limit | of limit + stub | p50 / device | lanes "
             "| rows / call | est. a ms | est. b ms | UNet busy |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for p in points:
        lines.append(f"| {p.policy} | {p.a_ms:g} | {p.b_ms:g} | {p.concurrency} | {p.edits_per_s:.2f} | "
                     f"{p.of_limit:.0%} | {p.of_limit_with_stub:.0%} | {p.p50_over_device:.2f} | {p.lanes:.0f} | "
                     f"{p.rows_per_call:.1f} | {p.estimated_a_ms:.2f} | {p.estimated_b_ms:.2f} | {p.unet_busy:.0%} |")
    path.write_text("\n".join(lines) + "\n")


def plot(points: list[GridPoint], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    for policy, style in ((MEASURED, "-"), (FIXED, ":")):
        for concurrency in CONCURRENCY:
            series = [p for p in points if p.concurrency == concurrency and p.policy == policy]
            labels = [f"a{p.a_ms:g}/b{p.b_ms:g}" for p in series]
            values = [p.p50_over_device if concurrency == 1 else p.of_limit for p in series]
            axis = axes[0] if concurrency == 1 else axes[1]
            axis.plot(labels, values, marker="o", linestyle=style, label=f"{policy}, {concurrency} clients")
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
    parser.add_argument("--compare", action="store_true",
                        help=f"also measure the previous fixed rule ({FIXED}) side by side on every device")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    notes = {"date": time.strftime("%Y-%m-%d"), "machine": machine()}
    policies = (MEASURED, FIXED) if args.compare else (MEASURED,)
    stub = measure_device(0.0, 0.0, args.out, args.seconds, (0.0, 0.0), (MEASURED,))
    # The engine's estimate of a and b on a device that costs nothing: the stub's own cost, fitted over the
    # call sizes of the 32-client run (its ramp makes calls of every size).
    stub_ms = (stub[-1].estimated_a_ms, stub[-1].estimated_b_ms)
    notes["stub_a_ms"], notes["stub_b_ms"] = stub_ms
    points = []
    for a_ms in args.a_ms:
        for b_ms in args.b_ms:
            points += measure_device(a_ms, b_ms, args.out, args.seconds, stub_ms, policies)
    (args.out / "results.json").write_text(json.dumps({"notes": notes, "stub": [asdict(p) for p in stub],
                                                       "points": [asdict(p) for p in points]}, indent=1))
    write_markdown(points, notes, args.out / "results.md")
    plot(points, args.out / "results.png")
    print(f"wrote {args.out / 'results.md'} and {args.out / 'results.png'}")


if __name__ == "__main__":
    main()
