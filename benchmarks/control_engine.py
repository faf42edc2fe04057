"""The batched engine with a ControlNet, on a simulated device: controlled edits next to uncontrolled ones.

    .venv/bin/python benchmarks/control_engine.py [--concurrency 8 16 32] [--steps 20] [--out out/benchmark-control]

The engine (smartedit.engine.core) runs in this process with its real batch builder, planner, sampler steps and
``ControlledUNet`` (smartedit.diffusion.control); only the two device calls are simulated, as sleeps of
``a + b · rows`` from the shipped latency table (SD 1.5 at 512 px on an H100-class GPU, assumed figures; its
``controlnet`` entry too), at SD 1.5's real shapes (64x64 latents, 9-channel UNet input, 77x768 embeddings, a 512 px
conditioning image, the residuals of SD 1.5's UNet). For each concurrency it runs, in one process and one after
another, waves of edits (30% more than the concurrency, all submitted at once), after a warm-up wave of each:

- ``plain``: a pipeline without a ControlNet (the UNet takes no residuals);
- ``two graphs``: the ControlNet and the UNet served as two models, as ``ControlledUNet`` calls them: the ControlNet
  on the controlled rows only, every residual through the engine's memory (zeros for uncontrolled rows), with no
  edit, every other edit, or every edit under control;
- ``one graph``: the ControlNet and the UNet as one model taking the conditioning image and each row's scale (the
  device sleeps for both on every row of the call; no residual leaves it), with the same three shares.

It prints edits per second and the mean latency of controlled and uncontrolled edits; nothing is asserted.
The figures' ratios are what to read: the sleeps are the table's, the host work is this machine's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import threading
import time
from pathlib import Path

import numpy as np
import torch

from smartedit.diffusion.control import (
    DOWN_RESIDUAL, MID_RESIDUAL, ControlledUNet, ControlSettings, attach, residual_layout, uncontrolled,
)
from smartedit.diffusion.denoise import EditInputs
from smartedit.diffusion.families import start_denoising
from smartedit.edit.parameters import EditParameters
from smartedit.engine.core import DenoiseEngine, EditRequest, EngineLimits
from smartedit.engine.latency_table import SHIPPED_LATENCY_TABLE, LatencyTable

# SD 1.5's UNet (what its residuals are): four levels, two resnets each.
SD15_UNET = {"block_out_channels": (320, 640, 1280, 1280), "layers_per_block": 2}
SCHEDULER_CONFIG = {"_class_name": "DDIMScheduler", "beta_start": 0.00085, "beta_end": 0.012,
                    "beta_schedule": "scaled_linear", "num_train_timesteps": 1000, "steps_offset": 1,
                    "set_alpha_to_one": False, "clip_sample": False, "timestep_spacing": "leading"}
# mode -> (design, share of the edits under control): "plain" a pipeline without a ControlNet; "two graphs" the
# ControlNet and the UNet as two models, the residuals through the engine (ControlledUNet: the ControlNet on the
# controlled rows only); "one graph" both in one model that takes the conditioning image and the rows' scales (the
# ControlNet then runs on every row of a call, its residuals never leave the device).
MODES = {"plain": ("plain", None),
         "two graphs, none controlled": ("two graphs", 0.0), "two graphs, half controlled": ("two graphs", 0.5),
         "two graphs, all controlled": ("two graphs", 1.0),
         "one graph, none controlled": ("one graph", 0.0), "one graph, half controlled": ("one graph", 0.5),
         "one graph, all controlled": ("one graph", 1.0)}


class Sink:
    def __init__(self, controlled: bool):
        self.controlled, self.started, self.ended = controlled, time.perf_counter(), threading.Event()
        self.seconds, self.outcome = 0.0, ""

    def progress(self, *args) -> None: ...

    def finished(self, state) -> None:
        self._end("finished")

    def failed(self, message: str, reason: str = "") -> None:
        self._end(f"failed: {message}")

    cancelled = interrupted = failed

    def _end(self, outcome: str) -> None:
        self.seconds, self.outcome = time.perf_counter() - self.started, outcome
        self.ended.set()


def device(table: LatencyTable, layout):
    """The simulated UNet and ControlNet calls: numpy in and out, sleeping as the table says."""
    unet, controlnet = table.components["unet"], table.components["controlnet"]
    names = [DOWN_RESIDUAL.format(index) for index in range(len(layout) - 1)] + [MID_RESIDUAL]

    def unet_call(inputs):
        rows = inputs["sample"].shape[0]
        time.sleep(unet.seconds(rows))
        return np.zeros((rows, 4) + inputs["sample"].shape[2:], dtype=np.float32)

    def controlnet_call(inputs):
        rows, (height, width) = inputs["sample"].shape[0], inputs["sample"].shape[2:]
        time.sleep(controlnet.seconds(rows))
        found = {}
        for name, (channels, halved) in zip(names, layout):
            found[name] = np.zeros((rows, channels, height >> halved, width >> halved), dtype=np.float32)
        return found

    def fused_call(inputs):  # one graph: the ControlNet on every row, the residuals kept on the device
        rows = inputs["sample"].shape[0]
        time.sleep(unet.seconds(rows) + controlnet.seconds(rows))
        return np.zeros((rows, 4) + inputs["sample"].shape[2:], dtype=np.float32)

    return unet_call, controlnet_call, fused_call


def preparer(table: LatencyTable, index: int, control: float | None, controlled: bool):
    info = table.pipeline
    generator = torch.Generator().manual_seed(index)
    height, width = table.reference_image_size
    latent = (height // info.vae_scale_factor, width // info.vae_scale_factor)
    inputs = EditInputs({"prompt_embeds": torch.randn(2, info.text_length, info.text_hidden_size, generator=generator)},
                        torch.randn(1, info.latent_channels, *latent, generator=generator),
                        torch.ones(1, info.latent_channels, *latent), torch.ones(1, 1, *latent))

    def prepare():
        params = EditParameters(prompt="x", num_inference_steps=STEPS, guidance_scale=7.5, seed=index)
        state = start_denoising(info, SCHEDULER_CONFIG, params, inputs, lambda: None)
        if control is None:
            return state
        if not controlled:
            return uncontrolled(state, (height, width))
        return attach(state, ControlSettings(image=torch.rand(1, 3, height, width, generator=generator)))

    return prepare


def run(table: LatencyTable, concurrency: int, mode: str) -> dict:
    layout = residual_layout(SD15_UNET)
    unet_call, controlnet_call, fused_call = device(table, layout)
    design, share = MODES[mode]
    model = {"plain": unet_call, "one graph": fused_call,
             "two graphs": ControlledUNet(unet_call, controlnet_call, 4, layout)}[design]
    engine = DenoiseEngine(model, EngineLimits(max_active_edits=concurrency, max_queued_edits=concurrency,
                                               max_unet_rows=table.unet.max_batch_size))
    edits = int(concurrency * 1.3)
    sinks = []
    started = time.perf_counter()
    try:
        for index in range(edits):
            controlled = share is not None and (index % 2 == 0 if share == 0.5 else share == 1.0)
            sink = Sink(controlled)
            sinks.append(sink)
            engine.submit(EditRequest(request_id=f"{mode}-{index}", prepare=preparer(table, index, share, controlled),
                                      sink=sink))
        for sink in sinks:
            sink.ended.wait(600)
    finally:
        engine.close()
    wall = time.perf_counter() - started
    assert all(sink.outcome == "finished" for sink in sinks), [sink.outcome for sink in sinks if sink.outcome][:3]

    def mean(values):
        return round(statistics.mean(values), 3) if values else None

    return {"concurrency": concurrency, "mode": mode, "edits": edits, "edits_per_s": round(edits / wall, 3),
            "controlled_latency_s": mean([sink.seconds for sink in sinks if sink.controlled]),
            "uncontrolled_latency_s": mean([sink.seconds for sink in sinks if not sink.controlled])}


def main() -> None:
    global STEPS
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[8, 16, 32])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--table", default=str(SHIPPED_LATENCY_TABLE))
    parser.add_argument("--out", default="out/benchmark-control")
    args = parser.parse_args()
    STEPS = args.steps
    table = LatencyTable.load(Path(args.table))
    if "controlnet" not in table.components:
        raise SystemExit(f"{args.table} has no controlnet figures")
    # warm-up, discarded: the first waves pay for thread pools, allocations, torch's start
    for mode in ("plain", "two graphs, all controlled", "one graph, all controlled"):
        run(table, min(args.concurrency), mode)
    rows = [run(table, concurrency, mode) for concurrency in args.concurrency for mode in MODES]
    lines = [f"{args.steps} steps, guidance 7.5, SD 1.5 shapes at 512 px; UNet {table.unet.a_ms} + "
             f"{table.unet.b_ms}/row ms, ControlNet {table.components['controlnet'].a_ms} + "
             f"{table.components['controlnet'].b_ms}/row ms (assumed)", "",
             "| concurrency | pipeline / edits | edits/s | controlled latency (s) | uncontrolled latency (s) |",
             "|---:|---|---:|---:|---:|"]
    lines += [f"| {row['concurrency']} | {row['mode']} | {row['edits_per_s']} | {row['controlled_latency_s'] or '—'} | "
              f"{row['uncontrolled_latency_s'] or '—'} |" for row in rows]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps(rows, indent=2))
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


STEPS = 20

if __name__ == "__main__":
    main()
