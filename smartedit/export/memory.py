"""How much memory an export needs, read from the weights on disk before any is loaded, and how to fit it.

Export traces each component in FP32. Loaded whole in FP32, SDXL is 14 GB of weights (its UNet 10 GB),
and tracing a component costs about as much again; a 24 GB machine cannot hold that. So, when the
weights in FP32 with one component's tracing do not fit in the memory available, the pipeline is
loaded in FP16 (half the size) and each component is made FP32 only while it is exported, then made
FP16 again: the peak is the FP16 pipeline and one component in FP32, traced. When even that does not
fit, the export refuses before loading anything, naming the memory it needs and the memory there is.

The factors below were measured on the real SDXL inpainting architecture (random weights, this
machine: benchmarks/sdxl_real_architecture.py); they are estimates, stated as such in the messages.
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass
from pathlib import Path

import psutil

# Tracing and writing one component's graph, as a multiple of its FP32 weights (the traced graph's
# constant-folded copies, the exporter's buffers). Measured: the real SDXL inpainting architecture loaded
# in FP32 (13.0 GiB of weights, its UNet 9.6 GiB) peaked at 17.6 GiB while its UNet was exported.
TRACE_FACTOR = 0.5
GIB = 2**30
_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


class ExportTooLarge(MemoryError):
    """The export cannot fit in this machine's memory, even component by component from FP16."""


def safetensors_parameters(path: Path) -> int:
    """The number of parameters a ``.safetensors`` file holds, from its header alone."""
    size = Path(path).stat().st_size
    with open(path, "rb") as file:
        start = file.read(8)
        length = struct.unpack("<Q", start)[0] if len(start) == 8 else size
        if length > size - 8:  # a Git LFS pointer of a clone without git-lfs, a truncated download
            raise ValueError(f"{path} is not a safetensors file ({size} bytes: a Git LFS pointer, or cut short?)")
        header = json.loads(file.read(length))
    count = 0
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        size = 1
        for dim in entry["shape"]:
            size *= dim
        count += size
    return count


def parameters_on_disk(folder: Path, modules: tuple[str, ...]) -> dict[str, int] | None:
    """Parameters per module of a local diffusers folder (``unet``: 2.6e9 for SDXL), from the safetensors
    files diffusers would load (not a variant's, such as ``.fp16.safetensors``); None when the weights are
    not all there as safetensors (a hub id, ``.bin`` files): the export then loads as before, in FP32.

    Raises:
        ValueError: a weights file is not safetensors (a Git LFS pointer), naming it.
    """
    found = {}
    for module in modules:
        files = [path for path in sorted((Path(folder) / module).glob("*.safetensors"))
                 if len(path.name.split(".")) == 2]  # name.safetensors, or name-00001-of-00002.safetensors
        if not files:
            return None
        found[module] = sum(safetensors_parameters(path) for path in files)
    return found


@dataclass(frozen=True)
class MemoryPlan:
    """Whether to load the pipeline in FP16 and make each component FP32 in turn (``low_memory``)."""

    low_memory: bool
    fp32_peak_bytes: int  # the estimated peak loaded whole in FP32
    low_memory_peak_bytes: int  # the estimated peak loaded in FP16, one component FP32 at a time
    available_bytes: int

    def describe(self) -> str:
        return (f"~{self.fp32_peak_bytes / GIB:.1f} GiB in FP32, ~{self.low_memory_peak_bytes / GIB:.1f} GiB "
                f"component by component from FP16, {self.available_bytes / GIB:.1f} GiB available")


def plan_export(parameters: dict[str, int], available_bytes: int | None = None) -> MemoryPlan:
    """The plan for a pipeline of ``parameters`` per module.

    Raises:
        ExportTooLarge: even the low-memory path does not fit; the message names both estimates.
    """
    available = psutil.virtual_memory().available if available_bytes is None else available_bytes
    largest = max(parameters.values())
    total = sum(parameters.values())
    fp32_peak = int(4 * total + TRACE_FACTOR * 4 * largest)
    # The others in FP16, the largest in FP32 (made FP32 a tensor at a time, its FP16 weights freed as it
    # goes), and its tracing.
    low_peak = int(2 * (total - largest) + 4 * largest + TRACE_FACTOR * 4 * largest)
    plan = MemoryPlan(low_memory=fp32_peak > available, fp32_peak_bytes=fp32_peak, low_memory_peak_bytes=low_peak,
                      available_bytes=int(available))
    if plan.low_memory and low_peak > available:
        raise ExportTooLarge(f"exporting it needs more memory than this machine has: {plan.describe()} "
                             f"(estimates). Export on a machine with more memory, or with fewer other programs "
                             f"running")
    return plan
