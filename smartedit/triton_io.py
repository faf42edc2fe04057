"""Helpers the Python models share for reading requests and answering them.

Imported only inside Triton's Python backend stub, where ``triton_python_backend_utils`` exists.
"""

from __future__ import annotations

import numpy as np
import triton_python_backend_utils as pb_utils

from smartedit.errors import RequestError


def optional_scalar(request, name: str):
    """The one element of input ``name``, or None when the request left it out."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return None
    array = tensor.as_numpy()
    if array.size != 1:
        raise RequestError(name, f"must hold exactly one element, got shape {list(array.shape)}")
    return array.reshape(-1)[0]


def required_scalar(request, name: str):
    value = optional_scalar(request, name)
    if value is None:
        raise RequestError(name, "is required")
    return value


def array(request, name: str) -> np.ndarray:
    return pb_utils.get_input_tensor_by_name(request, name).as_numpy()


def invalid_argument(error: RequestError):
    return pb_utils.InferenceResponse(
        output_tensors=[], error=pb_utils.TritonError(str(error), pb_utils.TritonError.INVALID_ARG))


def internal_error(message: str):
    return pb_utils.InferenceResponse(
        output_tensors=[], error=pb_utils.TritonError(message, pb_utils.TritonError.INTERNAL))


def cancelled(message: str):
    return pb_utils.InferenceResponse(
        output_tensors=[], error=pb_utils.TritonError(message, pb_utils.TritonError.CANCELLED))


def call_model(model_name: str, inputs: dict[str, np.ndarray], output_names: list[str]) -> list[np.ndarray]:
    """One synchronous BLS call; a failed call raises with the callee's message."""
    request = pb_utils.InferenceRequest(
        model_name=model_name,
        requested_output_names=output_names,
        inputs=[pb_utils.Tensor(name, value) for name, value in inputs.items()],
    )
    response = request.exec()
    if response.has_error():
        raise RuntimeError(f"{model_name} failed: {response.error().message()}")
    return [pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in output_names]
