"""Check an exported ONNX graph against the PyTorch module it came from."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from smartedit.diffusion.spec import ComponentSpec, PipelineInfo
from smartedit.export.onnx_export import FP16_PRECISION, component_module, example_inputs

# Relative to the largest reference magnitude. FP32 graphs match to ~1e-6 on these machines;
# FP16 graphs differ by FP16 rounding through every layer.
TOLERANCE = {"fp32": 1e-3, "fp16": 5e-2}


class ExportMismatch(RuntimeError):
    """An exported graph disagrees with PyTorch beyond tolerance."""


@dataclass(frozen=True)
class Comparison:
    component: str
    shape: tuple[int, int, int]  # batch, height, width
    max_abs_error: float
    reference_scale: float

    @property
    def relative_error(self) -> float:
        return self.max_abs_error / max(self.reference_scale, 1e-6)


def verification_sizes(info: PipelineInfo) -> list[tuple[int, int, int]]:
    """(batch, height, width) to check: square and not, latent sizes even and odd."""
    f = info.vae_scale_factor
    return [(1, 8 * f, 8 * f), (2, 6 * f, 11 * f)]


def compare(pipeline, spec: ComponentSpec, onnx_path: Path, info: PipelineInfo,
            sizes: list[tuple[int, int, int]] | None = None) -> list[Comparison]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    module = component_module(pipeline, spec.name, info.family)
    results = []
    for batch, height, width in sizes or verification_sizes(info):
        inputs = example_inputs(spec, info, batch, height, width, torch.Generator().manual_seed(1))
        with torch.inference_mode():
            reference = module(*inputs)
        reference = reference if isinstance(reference, tuple) else (reference,)
        outputs = session.run(spec.output_names, {n: t.numpy() for n, t in zip(spec.input_names, inputs)})
        error = max(float(np.abs(o.astype(np.float32) - r.numpy()).max()) for o, r in zip(outputs, reference))
        scale = max(float(r.abs().max()) for r in reference)
        results.append(Comparison(spec.name, (batch, height, width), error, scale))
    return results


def verify(pipeline, spec: ComponentSpec, onnx_path: Path, info: PipelineInfo, precision: str) -> list[Comparison]:
    """Compare, and raise ``ExportMismatch`` naming the component and sizes past tolerance."""
    tolerance = TOLERANCE[precision]
    results = compare(pipeline, spec, onnx_path, info)
    bad = [r for r in results if not np.isfinite(r.max_abs_error) or r.relative_error > tolerance]
    if bad:
        details = "; ".join(f"batch {r.shape[0]} at {r.shape[1]}x{r.shape[2]}: max |onnx - torch| = "
                            f"{r.max_abs_error:.3g} ({r.relative_error:.3g} of the output scale)" for r in bad)
        hint = " FP16 may overflow in this component; export it in fp32." if precision == FP16_PRECISION else ""
        raise ExportMismatch(f"{spec.name}: the ONNX graph at {onnx_path} differs from PyTorch beyond "
                             f"{tolerance:g}: {details}.{hint}")
    return results
