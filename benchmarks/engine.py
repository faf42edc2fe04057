"""Batched vs per-request denoising engine: throughput and latency against concurrency.

    .venv/bin/pip install -e '.[benchmark]'             # matplotlib, for the plot
    .venv/bin/python benchmarks/engine.py [--out out/benchmark-engine] [--seconds 20]

In one run, for each engine (``per_request``: one edit per scheduler instance, 2 instances;
``batched``: the denoise_engine) at each concurrency (closed loop: c clients, each sending its next
edit when the last one returns), on two targets:

  (a) tiny   the embedded tiny model on onnx-cpu, this machine's CPU doing the arithmetic;
  (b) sim    a simulated device at SD 1.5 shapes (512x512, 64x64 latents, 77x768 text embeddings):
             every component sleeps per a latency table (smartedit/engine/latency/sd15-512-h100.json, assumed
             H100-class figures) while the loop, BLS, batching and data movement are real.

Both engines' servers run at once and the measurements alternate between them, one concurrency at a
time, so that this machine's slow minutes fall on both alike. It reports edits/s, p50/p95 latency
and mean rows per UNet call, and sets them against what the
hardware allows: for (a) the UNet's own compute limit at its best batch size (ONNX Runtime in this
process, same model and threads), for (b) the device limit c / (steps · (a + b · 2c)) of the table,
and the device time of one edit, steps · (a + 2b). Writes results.json, results.md and results.png
under --out. Nothing is asserted: these are figures to read, measured side by side in one run.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import platform
import shutil
import statistics
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
from PIL import Image, ImageDraw

from smartedit.engine.latency_table import SHIPPED_LATENCY_TABLE
from smartedit.ops.server import ServerAddress, TritonServer, free_port
from smartedit_client import InpaintClient

ROOT = Path(__file__).resolve().parent.parent
ENGINES = ("per_request", "batched")
STEPS = {"tiny": 10, "sim": 30}
# Image sides: 32x32 latents on the tiny model (its VAE downsamples 8x), 64x64 at SD 1.5's 512 px.
SIZES = {"tiny": 256, "sim": 512}


@dataclass
class Point:
    target: str
    engine: str
    concurrency: int
    edits: int
    seconds: float
    edits_per_s: float
    p50_s: float
    p95_s: float
    rows_per_unet_call: float
    limit_edits_per_s: float | None = None  # what the hardware allows at this concurrency

    @property
    def of_limit(self) -> float | None:
        return self.edits_per_s / self.limit_edits_per_s if self.limit_edits_per_s else None


def scene(side: int) -> tuple[bytes, bytes]:
    """A photo-like scene (sky, ground, a box) and a mask over the box, PNG-encoded."""
    rows = np.linspace(0.0, 1.0, side)[:, None, None]
    sky = (1 - rows) * np.array([110, 160, 230]) + rows * np.array([200, 220, 245])
    image = Image.fromarray(np.broadcast_to(sky, (side, side, 3)).astype(np.uint8))
    box = [side // 3, side // 3, 2 * side // 3, 5 * side // 6]
    ImageDraw.Draw(image).rectangle([0, int(side * 0.7), side, side], fill=(90, 140, 70))
    ImageDraw.Draw(image).rectangle(box, fill=(150, 90, 60))
    mask = Image.new("L", (side, side), 0)
    ImageDraw.Draw(mask).rectangle(box, fill=255)
    encoded = []
    for picture in (image, mask):
        buffer = io.BytesIO()
        picture.save(buffer, format="PNG")
        encoded.append(buffer.getvalue())
    return encoded[0], encoded[1]


def copy_for(repository: Path, engine: str) -> Path:
    """A copy of ``repository`` whose ensemble uses ``engine``."""
    from smartedit.export.repository import switch_engine

    copy = repository.with_name(f"{repository.name}-{engine}")
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(repository, copy)
    switch_engine(copy, engine)
    return copy


def export(target: str, out: Path, max_concurrency: int) -> Path:
    """The target's repository, batched engine, sized so that no benchmark edit is ever refused."""
    from smartedit.export.repository import RepositoryOptions

    options = RepositoryOptions(max_active_edits=max_concurrency, max_queued_edits=max_concurrency)
    repository = out / target / "model_repository"
    if target == "sim":
        from smartedit.export.simulated import build_simulated_repository

        return build_simulated_repository(SHIPPED_LATENCY_TABLE, repository, options)
    from smartedit.export.pipeline_loader import load_pipeline
    from smartedit.export.repository import build_repository
    from smartedit.export.tiny_model import write_tiny_pipeline

    model = write_tiny_pipeline(out / target / "tiny-model")
    return build_repository(load_pipeline(model), repository, options, onnx_dir=out / target / "onnx")


def one_edit_s(address: ServerAddress, target: str) -> float:
    """Seconds one edit takes alone (after a first one that warms the server up)."""
    image, mask = scene(SIZES[target])
    with InpaintClient(address.grpc, timeout_s=600) as client:
        for _ in range(2):
            result = client.inpaint(image=image, mask_image=mask, prompt="a wooden bench",
                                    num_inference_steps=STEPS[target], seed=0)
    return result.elapsed_s


def unet_rows_and_calls(address: ServerAddress) -> tuple[int, int]:
    with grpcclient.InferenceServerClient(address.grpc) as client:
        unet = client.get_inference_statistics("unet").model_stats[0]
    return unet.inference_count, unet.execution_count


def run_point(address: ServerAddress, target: str, engine: str, concurrency: int, seconds: float,
              stagger_s: float) -> Point:
    """``concurrency`` clients in a closed loop: warm up until each has finished one edit, then count the
    edits that finish within ``seconds`` (at least three edits' time).

    Client i sends its first edit ``i · stagger_s`` after the first: clients that all start at once
    stay in lock-step, their edits queueing together at every single-instance stage, which is a
    thundering herd rather than the steady state that arrivals from many independent callers make.
    """
    image, mask = scene(SIZES[target])
    latencies: list[float] = []
    first_latencies: list[float] = []
    window = {"start": None, "end": None}
    lock = threading.Lock()
    stop = threading.Event()
    warmed = threading.Event()  # every client has finished its first edit (none waits for the others)

    def client_loop(index: int) -> None:
        time.sleep(index * stagger_s)
        with InpaintClient(address.grpc, timeout_s=600) as client:
            seed = index * 100_000
            while not stop.is_set():
                result = client.inpaint(image=image, mask_image=mask, prompt="a wooden bench", negative_prompt="blurry",
                                        num_inference_steps=STEPS[target], guidance_scale=7.5, seed=seed)
                seed += 1
                finished = time.perf_counter()
                with lock:
                    if seed == index * 100_000 + 1:
                        first_latencies.append(result.elapsed_s)
                        if len(first_latencies) == concurrency:
                            warmed.set()
                    elif window["start"] is not None and window["start"] <= finished <= window["end"]:
                        latencies.append(result.elapsed_s)

    threads = [threading.Thread(target=client_loop, args=(i,), daemon=True) for i in range(concurrency)]
    for thread in threads:
        thread.start()
    warmed.wait()
    # At least three edits' time per client, so that counting whole edits in the window is fair.
    seconds = max(seconds, 3 * max(first_latencies))
    rows_before, calls_before = unet_rows_and_calls(address)
    with lock:
        window["start"] = time.perf_counter()
        window["end"] = window["start"] + seconds
    time.sleep(seconds)
    rows_after, calls_after = unet_rows_and_calls(address)
    stop.set()
    for thread in threads:
        thread.join()
    calls = max(calls_after - calls_before, 1)
    ordered = sorted(latencies)
    return Point(target=target, engine=engine, concurrency=concurrency, edits=len(ordered), seconds=seconds,
                 edits_per_s=len(ordered) / seconds,
                 p50_s=statistics.median(ordered) if ordered else float("nan"),
                 p95_s=ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] if ordered else float("nan"),
                 rows_per_unet_call=(rows_after - rows_before) / calls)


def tiny_unet_compute_limit(repository: Path, side: int, steps: int) -> tuple[float, int]:
    """(edits/s, best batch) the tiny UNet allows on this machine: its best rows/s over batch sizes,
    ONNX Runtime with the served model's settings, divided by the rows an edit needs (steps x 2)."""
    import onnxruntime as ort

    from smartedit.diffusion.spec import PipelineInfo

    info = PipelineInfo.load(repository / "scheduler" / "1" / "pipeline.json")
    session = ort.InferenceSession(str(repository / "unet" / "1" / "model.onnx"), providers=["CPUExecutionProvider"])
    latent = side // info.vae_scale_factor
    best = (0.0, 1)
    for batch in (1, 2, 4, 8, 16):
        feeds = {"sample": np.random.rand(batch, info.unet_in_channels, latent, latent).astype(np.float32),
                 "timestep": np.full((batch,), 500.0, dtype=np.float32),
                 "encoder_hidden_states": np.random.rand(batch, info.text_length, info.text_hidden_size).astype(np.float32)}
        session.run(None, feeds)
        started, runs = time.perf_counter(), 0
        while time.perf_counter() - started < 2.0:
            session.run(None, feeds)
            runs += 1
        rows_per_s = batch * runs / (time.perf_counter() - started)
        best = max(best, (rows_per_s, batch))
    return best[0] / (steps * 2), best[1]


def machine() -> str:
    model = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import os

    return f"{platform.node()}: {model}, {os.cpu_count()} cores, Python {platform.python_version()}"


def write_markdown(points: list[Point], notes: dict, path: Path) -> None:
    lines = [f"Engine benchmark, {notes['date']}, on {notes['machine']}.", ""]
    for target, title in (("tiny", "(a) tiny model, onnx-cpu"), ("sim", "(b) simulated device, SD 1.5 at 512 px")):
        if target not in notes:
            continue
        device = notes.get(f"{target}_edit_device_s")
        lines += [f"**{title}** — {notes[target]}", "",
                  "| engine | concurrency | edits/s | p50 s | p95 s | rows / UNet call | of limit |"
                  + (" p50 / UNet device time |" if device else ""),
                  "|---|---:|---:|---:|---:|---:|---:|" + ("---:|" if device else "")]
        for p in (p for p in points if p.target == target):
            share = f"{p.of_limit:.0%}" if p.of_limit is not None else "–"
            lines.append(f"| {p.engine} | {p.concurrency} | {p.edits_per_s:.2f} | {p.p50_s:.2f} | {p.p95_s:.2f} | "
                         f"{p.rows_per_unet_call:.1f} | {share} |" + (f" {p.p50_s / device:.2f} |" if device else ""))
        lines.append("")
    path.write_text("\n".join(lines))


def plot(points: list[Point], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(2, 2, figsize=(11, 8))
    for column, (target, title) in enumerate((("tiny", "tiny model, onnx-cpu"), ("sim", "simulated H100, SD 1.5 512 px"))):
        if not any(p.target == target for p in points):
            continue
        for engine in ENGINES:
            series = [p for p in points if p.target == target and p.engine == engine]
            concurrency = [p.concurrency for p in series]
            axes[0][column].plot(concurrency, [p.edits_per_s for p in series], marker="o", label=engine)
            axes[1][column].plot(concurrency, [p.p95_s for p in series], marker="o", label=engine)
        limits = [p for p in points if p.target == target and p.engine == "batched"]
        axes[0][column].plot([p.concurrency for p in limits], [p.limit_edits_per_s for p in limits], linestyle="--",
                             color="grey", label="hardware limit")
        axes[0][column].set(title=f"throughput — {title}", xlabel="concurrent clients", ylabel="edits / s")
        axes[1][column].set(title=f"p95 latency — {title}", xlabel="concurrent clients", ylabel="seconds")
        for row in (0, 1):
            axes[row][column].set_xscale("log", base=2)
            axes[row][column].grid(True, alpha=0.3)
            axes[row][column].legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("out/benchmark-engine"))
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window per point, after warm-up")
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 4, 8, 16, 32])
    parser.add_argument("--targets", nargs="+", choices=("tiny", "sim"), default=["tiny", "sim"])
    args = parser.parse_args()
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise SystemExit("benchmarks/engine.py draws its plot with matplotlib: pip install -e '.[benchmark]'")
    from smartedit.engine.latency_table import LatencyTable

    args.out.mkdir(parents=True, exist_ok=True)
    table = LatencyTable.load(SHIPPED_LATENCY_TABLE)
    notes = {"date": time.strftime("%Y-%m-%d"), "machine": machine()}
    points: list[Point] = []
    for target in args.targets:
        repository = export(target, args.out, max(args.concurrency))
        if target == "tiny":
            limit, batch = tiny_unet_compute_limit(repository, SIZES["tiny"], STEPS["tiny"])
            notes["tiny"] = (f"{SIZES['tiny']}x{SIZES['tiny']} images, {STEPS['tiny']} steps, guidance 7.5; limit: the "
                             f"UNet's compute limit, {limit:.2f} edits/s (its best rows/s, at batch {batch}, over "
                             f"{STEPS['tiny'] * 2} rows per edit)")
        else:
            unet = table.unet
            notes["sim"] = (f"512x512, {STEPS['sim']} steps, guidance 7.5; UNet a = {unet.a_ms} ms, b = {unet.b_ms} ms "
                            f"per row (assumed); limit: c / (steps · (a + b · 2c)); one edit's UNet device time "
                            f"steps · (a + 2b) = {STEPS['sim'] * table.unet_step_s(2):.3f} s, with encoders and "
                            f"decoder {table.edit_device_s(STEPS['sim']):.3f} s")
            notes["sim_edit_device_s"] = STEPS["sim"] * table.unet_step_s(2)
        # Both engines' servers run side by side and the points alternate between them, so that a
        # slow minute of this machine does not land on one engine only; the idle one costs no CPU.
        repositories = {engine: copy_for(repository, engine) for engine in ENGINES}
        with contextlib.ExitStack() as servers:
            addresses = {}
            for engine in ENGINES:
                addresses[engine] = ServerAddress(grpc_port=free_port(), http_port=free_port(), metrics_port=free_port())
                servers.enter_context(TritonServer(repositories[engine], addresses[engine],
                                                   log_file=args.out / target / f"tritonserver-{engine}.log"))
            single = {engine: one_edit_s(addresses[engine], target) for engine in ENGINES}
            for concurrency in args.concurrency:
                for engine in ENGINES:
                    point = run_point(addresses[engine], target, engine, concurrency, args.seconds,
                                      stagger_s=single[engine] / 2)
                    point.limit_edits_per_s = (limit if target == "tiny"
                                               else table.device_limit(concurrency, STEPS["sim"]))
                    points.append(point)
                    print(f"{target:5s} {engine:12s} c={concurrency:3d} {point.edits_per_s:6.2f} edits/s "
                          f"p50 {point.p50_s:6.2f} s p95 {point.p95_s:6.2f} s rows/call {point.rows_per_unet_call:5.1f}"
                          f" {point.of_limit:5.0%} of limit", flush=True)
    points.sort(key=lambda p: (p.target, ENGINES.index(p.engine), p.concurrency))
    (args.out / "results.json").write_text(json.dumps({"notes": notes, "points": [asdict(p) for p in points]},
                                                      indent=1))
    write_markdown(points, notes, args.out / "results.md")
    plot(points, args.out / "results.png")
    print(f"wrote {args.out / 'results.md'} and {args.out / 'results.png'}")


if __name__ == "__main__":
    main()
