"""Build TensorRT FP16 engines from the exported ONNX graphs, one optimization profile each.

The profile (min / opt / max shape of every input) is computed from the component's spec and the
served batch and resolution ranges, so it always agrees with the Triton config. Engines are built
with the TensorRT Python API when ``tensorrt`` imports, else with ``trtexec`` when it is on PATH
(as in the NGC TensorRT and Triton images). Where neither exists the build stops with
``TensorRTUnavailable`` saying so: an engine must be built on the GPU model and TensorRT version
that will serve it.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from smartedit.diffusion.spec import ComponentSpec, PipelineInfo

log = logging.getLogger(__name__)

PLAN_FILENAME = "model.plan"
Shape = tuple[int, ...]


class TensorRTUnavailable(RuntimeError):
    """Neither the TensorRT Python package nor trtexec is installed here."""


class EngineBuildFailed(RuntimeError):
    """TensorRT could not parse the graph or build the engine."""


@dataclass(frozen=True)
class Range:
    minimum: int
    optimum: int
    maximum: int

    def __post_init__(self):
        if not 1 <= self.minimum <= self.optimum <= self.maximum:
            raise ValueError(f"need 1 <= min <= opt <= max, got {self.minimum}, {self.optimum}, {self.maximum}")


@dataclass(frozen=True)
class EngineProfile:
    """The batch (in component rows) and image resolutions one engine serves."""

    batch: Range
    height: Range
    width: Range

    @classmethod
    def for_serving(cls, max_batch_size: int, min_side: int = 256, opt_side: int = 512,
                    max_side: int = 1024, opt_batch: int | None = None) -> "EngineProfile":
        sides = Range(min_side, opt_side, max_side)
        optimum = opt_batch if opt_batch is not None else max(1, min(2, max_batch_size))
        return cls(batch=Range(1, optimum, max_batch_size), height=sides, width=sides)


@dataclass(frozen=True)
class InputProfile:
    name: str
    minimum: Shape
    optimum: Shape
    maximum: Shape


def input_profiles(spec: ComponentSpec, info: PipelineInfo, profile: EngineProfile) -> list[InputProfile]:
    """min / opt / max shape of every input of ``spec`` (batch axis included)."""
    for side in (profile.height, profile.width):
        for value in (side.minimum, side.optimum, side.maximum):
            if value % info.vae_scale_factor:
                raise ValueError(f"resolution {value} is not a multiple of the VAE factor {info.vae_scale_factor}")

    def shape(tensor, pick) -> Shape:
        return tensor.shape(info, pick(profile.batch), pick(profile.height), pick(profile.width))

    return [
        InputProfile(
            name=tensor.name,
            minimum=shape(tensor, lambda r: r.minimum),
            optimum=shape(tensor, lambda r: r.optimum),
            maximum=shape(tensor, lambda r: r.maximum),
        )
        for tensor in spec.inputs
    ]


def trtexec_command(trtexec: str, onnx_path: Path, plan_path: Path, profiles: list[InputProfile],
                    workspace_mib: int, fp16: bool = True) -> list[str]:
    def shapes(pick) -> str:
        return ",".join(f"{p.name}:{'x'.join(str(d) for d in pick(p))}" for p in profiles)

    return [
        trtexec,
        f"--onnx={onnx_path}",
        f"--saveEngine={plan_path}",
        *(["--fp16"] if fp16 else []),
        f"--minShapes={shapes(lambda p: p.minimum)}",
        f"--optShapes={shapes(lambda p: p.optimum)}",
        f"--maxShapes={shapes(lambda p: p.maximum)}",
        f"--memPoolSize=workspace:{workspace_mib}M",
    ]


def tensorrt_available() -> bool:
    try:
        import tensorrt  # noqa: F401
        return True
    except ImportError:
        return shutil.which("trtexec") is not None


def build_engine(onnx_path: Path, plan_path: Path, spec: ComponentSpec, info: PipelineInfo,
                 profile: EngineProfile, workspace_mib: int = 8192, fp16: bool = True) -> Path:
    """Build an FP16 engine (FP32 without ``fp16``: SDXL's VAE) for ``spec`` from ``onnx_path`` into ``plan_path``."""
    profiles = input_profiles(spec, info, profile)
    plan_path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import tensorrt as trt
    except ImportError:
        trtexec = shutil.which("trtexec")
        if trtexec is None:
            raise TensorRTUnavailable(
                "TensorRT is not installed here: neither the `tensorrt` Python package nor `trtexec` was found. "
                "Build engines inside the NGC Triton image (nvcr.io/nvidia/tritonserver:<yy.mm>-py3, which has "
                "trtexec at /usr/src/tensorrt/bin) on the GPU model that will serve them, or use the "
                "onnx-gpu / onnx-cpu runtime profile.") from None
        command = trtexec_command(trtexec, onnx_path, plan_path, profiles, workspace_mib, fp16)
        log.info("building %s with %s", spec.name, " ".join(command))
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise EngineBuildFailed(f"trtexec failed for {spec.name} ({result.returncode}):\n{result.stdout[-4000:]}"
                                    f"\n{result.stderr[-4000:]}")
        return plan_path
    return _build_with_python_api(trt, onnx_path, plan_path, spec, profiles, workspace_mib, fp16)


def _build_with_python_api(trt, onnx_path: Path, plan_path: Path, spec: ComponentSpec,
                           profiles: list[InputProfile], workspace_mib: int, fp16: bool) -> Path:
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # TensorRT 10 networks are always explicit-batch; earlier versions need the flag.
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH") and int(trt.__version__.split(".")[0]) < 10:
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # from file, so external weight data is found
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildFailed(f"TensorRT could not parse {onnx_path} ({spec.name}): {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    optimization_profile = builder.create_optimization_profile()
    for p in profiles:
        optimization_profile.set_shape(p.name, p.minimum, p.optimum, p.maximum)
    config.add_optimization_profile(optimization_profile)
    log.info("building the %s engine (%s); this takes minutes for real models", spec.name, "FP16" if fp16 else "FP32")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildFailed(f"TensorRT returned no engine for {spec.name}; see the TensorRT log above")
    plan_path.write_bytes(bytes(serialized))
    return plan_path
