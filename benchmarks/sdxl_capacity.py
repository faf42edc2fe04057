"""SDXL's capacity on a simulated H100: alone, and beside SD 1.5 in one server.

    .venv/bin/python benchmarks/sdxl_capacity.py [--out out/benchmark-sdxl] [--seconds 30]

The simulated device (smartedit/engine/latency/): every component sleeps per its latency table while the
loop, BLS, batching, the engine and the data movement are real (1024x1024 PNGs in and out, 128x128
latents, 77x2048 embeddings through Triton). Closed loop: c clients, each sending its next edit when its
last one returns, staggered at the start; measured over a window after each client has finished one edit.

  (a) SDXL alone (sdxl-1024-h100.json, 1024x1024, 30 steps at SDXL's default strength 0.9999, so 29
      denoising steps, guidance 7.5) at concurrency 1, 8, 16: edits/s, p50/p95 latency, rows per UNet
      call, set against the device limit c / (steps · (a + b · 2c)) and one edit's device time.
  (b) SD 1.5 (sd15-512-h100.json, 512x512, 30 steps) and SDXL in one server, half the clients on each
      (a 50/50 mix of clients) at concurrency 8 and 16. The two UNets take turns on one simulated device,
      as on one GPU; per pipeline: edits/s and p50/p95, and how busy the shared device was.

Writes results.json and results.md under --out. Nothing is asserted: figures to read, from one run.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import tritonclient.grpc as grpcclient

from engine import machine, scene  # benchmarks/engine.py: run from the checkout, as it is
from smartedit.engine.latency_table import SHIPPED_LATENCY_TABLE, LatencyTable
from smartedit.ops.server import ServerAddress, TritonServer, free_port
from smartedit.serving.pipelines import pipeline_names
from smartedit_client import InpaintClient

SD_TABLE = SHIPPED_LATENCY_TABLE
SDXL_TABLE = SHIPPED_LATENCY_TABLE.with_name("sdxl-1024-h100.json")
STEPS = 30
SIDES = {"sd15": 512, "sdxl": 1024}


@dataclass
class PipelineFigures:
    pipeline: str
    clients: int
    edits: int
    edits_per_s: float
    p50_s: float
    p95_s: float
    rows_per_unet_call: float
    unet_busy_s: float  # the device time its UNet calls took, by the table: calls · a + rows · b


@dataclass
class Point:
    run: str  # "alone" or "mix"
    concurrency: int
    seconds: float
    pipelines: list[PipelineFigures] = field(default_factory=list)
    limit_edits_per_s: float | None = None  # alone: the device limit at this concurrency
    device_busy: float | None = None  # share of the window the (shared) UNet device was busy


def _unet_counts(address: ServerAddress, model: str) -> tuple[int, int]:
    with grpcclient.InferenceServerClient(address.grpc) as client:
        stats = client.get_inference_statistics(model).model_stats[0]
    return stats.inference_count, stats.execution_count


def closed_loop(address: ServerAddress, clients: list[str], seconds: float, tables: dict[str, LatencyTable],
                run: str, unet_models: dict[str, str]) -> Point:
    """One closed-loop client per entry of ``clients`` (its pipeline), staggered by 0.7 s; ``unet_models``: each
    pipeline's UNet model (the first pipeline's has the plain name)."""
    inputs = {pipeline: scene(SIDES[pipeline]) for pipeline in set(clients)}
    latencies: dict[str, list[float]] = {pipeline: [] for pipeline in inputs}
    first: list[float] = []
    window = {"start": None, "end": None}
    lock, stop, warmed = threading.Lock(), threading.Event(), threading.Event()
    stagger_s = 0.7

    def client_loop(index: int, pipeline: str) -> None:
        time.sleep(index * stagger_s)
        image, mask = inputs[pipeline]
        with InpaintClient(address.grpc, timeout_s=900, pipeline=pipeline) as client:
            seed, done = index * 100_000, 0
            while not stop.is_set():
                result = client.inpaint(image=image, mask_image=mask, prompt="a wooden bench", negative_prompt="blurry",
                                        num_inference_steps=STEPS, guidance_scale=7.5, seed=seed + done)
                done += 1
                finished = time.perf_counter()
                with lock:
                    if done == 1:
                        first.append(result.elapsed_s)
                        if len(first) == len(clients):
                            warmed.set()
                    elif window["start"] is not None and window["start"] <= finished <= window["end"]:
                        latencies[pipeline].append(result.elapsed_s)

    threads = [threading.Thread(target=client_loop, args=(i, p), daemon=True) for i, p in enumerate(clients)]
    for thread in threads:
        thread.start()
    warmed.wait()
    seconds = max(seconds, 3 * max(first))  # at least three edits' time per client
    before = {pipeline: _unet_counts(address, unet_models[pipeline]) for pipeline in inputs}
    with lock:
        window["start"] = time.perf_counter()
        window["end"] = window["start"] + seconds
    time.sleep(seconds)
    after = {pipeline: _unet_counts(address, unet_models[pipeline]) for pipeline in inputs}
    stop.set()
    for thread in threads:
        thread.join()
    point = Point(run=run, concurrency=len(clients), seconds=seconds)
    for pipeline in sorted(inputs):
        rows, calls = (after[pipeline][i] - before[pipeline][i] for i in (0, 1))
        unet = tables[pipeline].unet
        ordered = sorted(latencies[pipeline])
        point.pipelines.append(PipelineFigures(
            pipeline=pipeline, clients=clients.count(pipeline), edits=len(ordered),
            edits_per_s=len(ordered) / seconds,
            p50_s=statistics.median(ordered) if ordered else float("nan"),
            p95_s=ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] if ordered else float("nan"),
            rows_per_unet_call=rows / max(calls, 1), unet_busy_s=(calls * unet.a_ms + rows * unet.b_ms) / 1000))
    point.device_busy = sum(p.unet_busy_s for p in point.pipelines) / seconds
    return point


def denoising_steps(table: LatencyTable) -> int:
    """The steps an edit at the family's default strength runs: int(30 x 0.9999) = 29 for SDXL."""
    from smartedit.diffusion.families import family_parameters

    strength = family_parameters(table.pipeline).defaults.get("strength", 1.0)
    return int(STEPS * strength)


def write_markdown(points: list[Point], notes: dict, path: Path) -> None:
    lines = [f"SDXL capacity on a simulated H100, {notes['date']}, on {notes['machine']}.", "",
             f"Device (ASSUMED figures, not measurements): {notes['sdxl_table']}", "",
             f"**(a) SDXL alone** — {notes['alone']}", "",
             "| concurrency | edits/s | of device limit | p50 s | p95 s | p50 / one edit's device time "
             "| rows / UNet call | UNet busy |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for point in (p for p in points if p.run == "alone"):
        figures = point.pipelines[0]
        share = figures.edits_per_s / point.limit_edits_per_s
        lines.append(f"| {point.concurrency} | {figures.edits_per_s:.3f} | {share:.0%} | {figures.p50_s:.2f} | "
                     f"{figures.p95_s:.2f} | "
                     f"{figures.p50_s / notes['sdxl_edit_device_s']:.2f} | {figures.rows_per_unet_call:.1f} | "
                     f"{point.device_busy:.0%} |")
    lines += ["", f"**(b) SD 1.5 + SDXL in one server, half the clients on each** — {notes['mix']}", "",
              "| concurrency | pipeline | clients | edits/s | p50 s | p95 s | rows / UNet call | its UNet's share "
              "of the device | device busy |",
              "|---:|---|---:|---:|---:|---:|---:|---:|---:|"]
    for point in (p for p in points if p.run == "mix"):
        for figures in point.pipelines:
            lines.append(f"| {point.concurrency} | {figures.pipeline} | {figures.clients} | {figures.edits_per_s:.3f} "
                         f"| {figures.p50_s:.2f} | {figures.p95_s:.2f} | {figures.rows_per_unet_call:.1f} | "
                         f"{figures.unet_busy_s / point.seconds:.0%} | {point.device_busy:.0%} |")
    lines.append("")
    path.write_text("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("out/benchmark-sdxl"))
    parser.add_argument("--seconds", type=float, default=30.0, help="least measured window per point, after warm-up")
    parser.add_argument("--alone", type=int, nargs="+", default=[1, 8, 16], help="SDXL-alone concurrencies")
    parser.add_argument("--mix", type=int, nargs="+", default=[8, 16], help="SD 1.5 + SDXL concurrencies (even)")
    args = parser.parse_args()
    from smartedit.export.repository import RepositoryOptions
    from smartedit.export.simulated import build_simulated_pipelines

    args.out.mkdir(parents=True, exist_ok=True)
    tables = {"sd15": LatencyTable.load(SD_TABLE), "sdxl": LatencyTable.load(SDXL_TABLE)}
    xl, steps = tables["sdxl"], denoising_steps(tables["sdxl"])
    edit_device_s = steps * xl.unet_step_s(2)
    notes = {"date": time.strftime("%Y-%m-%d"), "machine": machine(), "sdxl_table": xl.description,
             "sdxl_edit_device_s": edit_device_s,
             "alone": (f"1024x1024, {STEPS} steps at strength 0.9999 ({steps} run), guidance 7.5; UNet a = "
                       f"{xl.unet.a_ms} ms, b = {xl.unet.b_ms} ms per row, at most {xl.unet.max_batch_size} rows a "
                       f"call; limit c / (steps · (a + b · 2c)); one edit's UNet device time steps · (a + 2b) = "
                       f"{edit_device_s:.2f} s, with encoders and decoder {xl.edit_device_s(steps):.2f} s"),
             "mix": (f"SD 1.5 at 512x512 ({STEPS} steps, UNet a = {tables['sd15'].unet.a_ms} ms, b = "
                     f"{tables['sd15'].unet.b_ms} ms per row) and SDXL as in (a), their UNets taking turns on one "
                     f"simulated device; a UNet's share is the device time its calls took (calls · a + rows · b)")}
    points: list[Point] = []
    most = max(args.alone + args.mix)
    options = RepositoryOptions(max_active_edits=most, max_queued_edits=most)
    for run, pipelines, concurrencies in (("alone", [("sdxl", SDXL_TABLE)], args.alone),
                                          ("mix", [("sd15", SD_TABLE), ("sdxl", SDXL_TABLE)], args.mix)):
        repository = build_simulated_pipelines(pipelines, args.out / run / "model_repository", options,
                                               shared_unet=True)
        unet_models = {names.pipeline: names.model("unet") for names in pipeline_names([p for p, _ in pipelines])}
        address = ServerAddress(grpc_port=free_port(), http_port=free_port(), metrics_port=free_port())
        with TritonServer(repository, address, log_file=args.out / run / "tritonserver.log"):
            for concurrency in concurrencies:
                clients = (["sdxl"] * concurrency if run == "alone"
                           else ["sd15", "sdxl"] * (concurrency // 2))
                point = closed_loop(address, clients, args.seconds, tables, run, unet_models)
                if run == "alone":
                    point.limit_edits_per_s = xl.device_limit(concurrency, steps)
                points.append(point)
                for figures in point.pipelines:
                    print(f"{run:5s} c={concurrency:3d} {figures.pipeline:5s} {figures.edits_per_s:6.3f} edits/s "
                          f"p50 {figures.p50_s:6.2f} s p95 {figures.p95_s:6.2f} s rows/call "
                          f"{figures.rows_per_unet_call:5.1f}  device busy {point.device_busy:4.0%}", flush=True)
    (args.out / "results.json").write_text(json.dumps({"notes": notes, "points": [asdict(p) for p in points]},
                                                      indent=1))
    write_markdown(points, notes, args.out / "results.md")
    print(f"wrote {args.out / 'results.md'}")


if __name__ == "__main__":
    main()
