"""Where one edit's time goes beyond its device time: a simulated device, one client, edits in a row.

    .venv/bin/python benchmarks/edit_overhead.py [--a-ms 12] [--b-ms 1.5] [--edits 20] [--out out/benchmark-overhead]

Serves a simulated-device repository (SD 1.5 shapes at 512 px; the UNet costs ``a + b · rows`` per call,
the other components as the shipped table) and sends ``--edits`` edits one after another (30 steps,
guidance 7.5), after a warm-up. Then it splits their mean time, stage by stage, from what the server
measured over the same edits:

- each model's time per edit (Triton's statistics: queue + compute, success only) against its device
  time in the table; for the UNet, the difference is the simulated stub's own cost per call (input
  copies into a Python model, its handling), which a native TensorRT or ONNX Runtime backend would not have;
- the denoising loop's time beyond its UNet calls (the engine's ``denoise_duration`` histogram):
  the engine's own work per step (``host_seconds_per_edit_step``: sampler steps, guidance, batch
  building) and the rest: each step's BLS round trip, the hand-offs between the engine's threads and
  the edit's start (its sampler's set-up);
- what is left of the client's time: the ensemble's own scheduling, gRPC and the client.

Nothing is asserted; results.md and results.json go under --out. The issue it answers: one edit's
wall time over its device time, and which part of it a change could remove.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
import urllib.request
from pathlib import Path

import tritonclient.grpc as grpcclient

from engine import SIZES, machine, scene  # benchmarks/engine.py: run from the checkout, as it is
from engine_grid import gauge, write_table
from smartedit.engine.latency_table import LatencyTable
from smartedit.ops.server import ServerAddress, TritonServer, free_port
from smartedit_client import InpaintClient

STEPS, WARM_UP = 30, 3
# The ensemble's models in the order an edit meets them, with the rows each call of its carries.
STAGES = (("preprocess", 0), ("text_encoder", 2), ("vae_encoder", 1), ("unet", 2), ("vae_decoder", 1),
          ("postprocess", 0))


def model_seconds(address: ServerAddress) -> dict[str, tuple[int, float]]:
    """Per model: (successful requests, their total seconds in the server: queue and compute)."""
    with grpcclient.InferenceServerClient(address.grpc) as client:
        stats = client.get_inference_statistics().model_stats
    return {m.name: (m.inference_stats.success.count, m.inference_stats.success.ns / 1e9) for m in stats}


def engine_metrics(address: ServerAddress) -> tuple[float, int, float]:
    """(denoise durations' sum in seconds, their count, the engine's host seconds per edit-step)."""
    text = urllib.request.urlopen(f"http://127.0.0.1:{address.metrics_port}/metrics", timeout=10).read().decode()
    return (gauge(text, "smartedit_scheduler_denoise_duration_seconds_sum"),
            int(gauge(text, "smartedit_scheduler_denoise_duration_seconds_count")),
            gauge(text, "smartedit_scheduler_host_seconds_per_edit_step"))


def measure(a_ms: float, b_ms: float, edits: int, out: Path) -> dict:
    from smartedit.export.repository import RepositoryOptions
    from smartedit.export.simulated import build_simulated_repository

    table_path = write_table(a_ms, b_ms, out / "latency.json")
    table = LatencyTable.load(table_path)
    repository = build_simulated_repository(table_path, out / "model_repository", RepositoryOptions())
    address = ServerAddress(grpc_port=free_port(), http_port=free_port(), metrics_port=free_port())
    image, mask = scene(SIZES["sim"])
    with TritonServer(repository, address, log_file=out / "tritonserver.log"), \
            InpaintClient(address.grpc, timeout_s=600) as client:
        def edit(seed: int) -> float:
            started = time.perf_counter()
            client.inpaint(image=image, mask_image=mask, prompt="a wooden bench", negative_prompt="blurry",
                           num_inference_steps=STEPS, guidance_scale=7.5, seed=seed)
            return time.perf_counter() - started

        for seed in range(WARM_UP):
            edit(seed)
        models_before, engine_before = model_seconds(address), engine_metrics(address)
        walls = [edit(WARM_UP + i) for i in range(edits)]
        models_after, engine_after = model_seconds(address), engine_metrics(address)

    def per_edit(name: str) -> float:
        return (models_after[name][1] - models_before[name][1]) / edits

    device = {name: table.components[name].seconds(rows) * (STEPS if name == "unet" else 1) if rows else 0.0
              for name, rows in STAGES}
    served = {name: per_edit(name) for name, _ in STAGES}
    loop_s = (engine_after[0] - engine_before[0]) / (engine_after[1] - engine_before[1])
    host_s = engine_after[2] * STEPS
    rows = [(name, device[name], served[name]) for name, _ in STAGES]
    # The loop's own share sits between the UNet's calls; the rest of the client's time after everything.
    at = [name for name, _ in STAGES].index("unet") + 1
    rows[at:at] = [("engine: sampler, guidance, batches", 0.0, host_s),
                   ("engine: BLS round trips, hand-offs", 0.0, loop_s - served["unet"] - host_s)]
    mean_wall = statistics.mean(walls)
    rows.append(("ensemble, gRPC, client", 0.0, mean_wall - sum(seconds for _, _, seconds in rows)))
    return {"a_ms": a_ms, "b_ms": b_ms, "steps": STEPS, "edits": edits, "mean_s": mean_wall,
            "p50_s": statistics.median(walls), "device_s": sum(device.values()),
            "unet_device_s": device["unet"], "stages": [{"stage": name, "device_s": dev, "served_s": seconds}
                                                        for name, dev, seconds in rows]}


def write_markdown(result: dict, notes: dict, path: Path) -> None:
    over = result["mean_s"] - result["device_s"]
    lines = [f"One edit's time on a simulated device, {notes['date']}, on {notes['machine']}.", "",
             f"UNet a = {result['a_ms']:g} ms, b = {result['b_ms']:g} ms per row; other components as the shipped "
             f"table; SD 1.5 shapes at 512 px, {result['steps']} steps, guidance 7.5; {result['edits']} edits in a "
             f"row, one client. Mean {1000 * result['mean_s']:.0f} ms (p50 {1000 * result['p50_s']:.0f} ms) against "
             f"a device time of {1000 * result['device_s']:.0f} ms: **{result['mean_s'] / result['device_s']:.2f}x** "
             f"({result['p50_s'] / result['unet_device_s']:.2f}x the UNet's device time at p50).", "",
             "| stage | device ms | served ms | over device ms | share of the overhead |",
             "|---|---:|---:|---:|---:|"]
    for stage in result["stages"]:
        extra = stage["served_s"] - stage["device_s"]
        lines.append(f"| {stage['stage']} | {1000 * stage['device_s']:.1f} | {1000 * stage['served_s']:.1f} | "
                     f"{1000 * extra:.1f} | {extra / over:.0%} |")
    lines.append(f"| **total** | {1000 * result['device_s']:.1f} | {1000 * result['mean_s']:.1f} | "
                 f"{1000 * over:.1f} | 100% |")
    path.write_text("\n".join(lines) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("out/benchmark-overhead"))
    parser.add_argument("--a-ms", type=float, default=12.0, help="the UNet's fixed cost per call")
    parser.add_argument("--b-ms", type=float, default=1.5, help="the UNet's cost per row")
    parser.add_argument("--edits", type=int, default=20, help="edits measured, after a warm-up of three")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    notes = {"date": time.strftime("%Y-%m-%d"), "machine": machine()}
    result = measure(args.a_ms, args.b_ms, args.edits, args.out)
    (args.out / "results.json").write_text(json.dumps({"notes": notes, "result": result}, indent=1))
    write_markdown(result, notes, args.out / "results.md")
    print((args.out / "results.md").read_text())


if __name__ == "__main__":
    main()
