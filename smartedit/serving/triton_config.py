"""Generate Triton ``ModelConfig`` protobufs from the typed specs, for each runtime profile.

Configs are built as protobuf messages (``tritonclient.grpc.model_config_pb2``) and written with
``text_format``, so every generated ``config.pbtxt`` parses as a ``ModelConfig`` by construction.

Runtime profiles change only how a component is served, never its tensors:

- ``onnx-cpu``: a Python-backend model hosting an ONNX Runtime CPU session (runs anywhere);
- ``onnx-gpu``: Triton's native ``onnxruntime_onnx`` platform (CUDA EP, optional TensorRT EP);
- ``tensorrt``: Triton's native ``tensorrt_plan`` platform with FP16 engines;
- ``simulated`` (benchmarks): a Python-backend model per component that sleeps as a latency table says.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Mapping

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2 as mc

from smartedit.diffusion.spec import DYNAMIC_AXES, ComponentSpec, PipelineInfo, TensorSpec

ONNX_CPU, ONNX_GPU, TENSORRT = "onnx-cpu", "onnx-gpu", "tensorrt"
RUNTIME_PROFILES = (ONNX_CPU, ONNX_GPU, TENSORRT)
# Benchmarks only: Python-backend components that sleep per a latency table (smartedit.engine.latency_table).
SIMULATED = "simulated"

def data_type(datatype: str) -> int:
    """``model_config_pb2.DataType`` for a Triton datatype name ("FP32", "BYTES"): the one vocabulary of
    every tensor declaration (components, steps, the wire contract)."""
    if datatype == "BYTES":
        return mc.TYPE_STRING  # BYTES on the wire is TYPE_STRING in configs
    return mc.DataType.Value(f"TYPE_{datatype}")


@dataclass(frozen=True)
class BatchingSettings:
    """How Triton batches one component: largest batch, how long to wait to fill one, instances."""

    max_batch_size: int = 8
    max_queue_delay_microseconds: int = 2000
    instance_count: int = 1

    def __post_init__(self):
        if self.max_batch_size < 1:
            raise ValueError(f"max_batch_size must be >= 1, got {self.max_batch_size}")
        if self.max_queue_delay_microseconds < 0:
            raise ValueError(f"max_queue_delay_microseconds must be >= 0, got {self.max_queue_delay_microseconds}")
        if self.instance_count < 1:
            raise ValueError(f"instance_count must be >= 1, got {self.instance_count}")


def _component_dims(tensor, info: PipelineInfo | None) -> list[int]:
    """Triton dims (batch axis excluded): -1 on the axes that vary per call, the model's size elsewhere
    (``info`` resolves named sizes; a component declared in plain numbers needs none)."""
    if not tensor.dims:
        return [1]  # a scalar per batch item; the reshape below hands the model a [batch] tensor
    return [-1 if d in DYNAMIC_AXES else d if isinstance(d, int) else info.resolve(d, 0, 0) for d in tensor.dims]


def _add_component_tensor(target, tensor, info: PipelineInfo | None) -> None:
    entry = target.add(name=tensor.name, data_type=data_type(tensor.datatype), dims=_component_dims(tensor, info))
    if not tensor.dims:
        entry.reshape.SetInParent()  # reshape { shape: [ ] }


def component_config(spec: ComponentSpec, info: PipelineInfo | None, profile: str,
                     batching: BatchingSettings = BatchingSettings(),
                     parameters: Mapping[str, str] | None = None,
                     tensorrt_accelerator: bool = False) -> mc.ModelConfig:
    """The config of one component for ``profile``; tensors are identical across profiles."""
    if profile not in RUNTIME_PROFILES + (SIMULATED,):
        raise ValueError(f"unknown runtime profile {profile!r}; choose one of {', '.join(RUNTIME_PROFILES)}")
    config = mc.ModelConfig(name=spec.name, max_batch_size=batching.max_batch_size)
    for tensor in spec.inputs:
        _add_component_tensor(config.input, tensor, info)
    for tensor in spec.outputs:
        _add_component_tensor(config.output, tensor, info)
    config.dynamic_batching.max_queue_delay_microseconds = batching.max_queue_delay_microseconds
    if profile in (ONNX_CPU, SIMULATED):
        config.backend = "python"
        config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=batching.instance_count)
    else:
        config.platform = "onnxruntime_onnx" if profile == ONNX_GPU else "tensorrt_plan"
        config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_GPU, count=batching.instance_count)
        if profile == ONNX_GPU and tensorrt_accelerator:
            accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator.add(name="tensorrt")
            accelerator.parameters["precision_mode"] = "FP16"
            accelerator.parameters["max_workspace_size_bytes"] = str(4 << 30)
    for key, value in (parameters or {}).items():
        config.parameters[key].string_value = str(value)
    return config


def _add_step_tensor(target, tensor: TensorSpec) -> None:
    entry = target.add(name=tensor.name, data_type=data_type(tensor.datatype), dims=list(tensor.dims))
    if tensor.optional:
        entry.optional = True


def step_config(name: str, inputs: Iterable[TensorSpec], outputs: Iterable[TensorSpec],
                instance_count: int = 1, parameters: Mapping[str, str] | None = None,
                decoupled: bool = False) -> mc.ModelConfig:
    """The config of a Python step model: one request is one edit, so no batching.

    ``decoupled`` models answer each request with any number of responses, sent from any thread.
    """
    config = mc.ModelConfig(name=name, backend="python", max_batch_size=0)
    if decoupled:
        config.model_transaction_policy.decoupled = True
    for tensor in inputs:
        _add_step_tensor(config.input, tensor)
    for tensor in outputs:
        _add_step_tensor(config.output, tensor)
    config.instance_group.add(kind=mc.ModelInstanceGroup.KIND_CPU, count=instance_count)
    for key, value in (parameters or {}).items():
        config.parameters[key].string_value = str(value)
    return config


def to_pbtxt(config: mc.ModelConfig) -> str:
    return text_format.MessageToString(config)


def parse_pbtxt(text: str) -> mc.ModelConfig:
    return text_format.Parse(text, mc.ModelConfig())
