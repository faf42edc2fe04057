"""Helpers the Python models share for reading requests and answering them.

Imported only inside Triton's Python backend stub, where ``triton_python_backend_utils`` exists.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import triton_python_backend_utils as pb_utils

from smartedit.serving import steps
from smartedit.serving.decoupled_calls import decoupled_responses
from smartedit.errors import ModelProcessDied, RequestError


def optional_scalar(request, name: str):
    """The one element of input ``name``, or None when the request left it out."""
    tensor = pb_utils.get_input_tensor_by_name(request, name)
    if tensor is None:
        return None
    array = tensor.as_numpy()
    if array.size != 1:
        raise RequestError(name, f"must hold exactly one element, got shape {list(array.shape)}")
    return array.reshape(-1)[0]


def array(request, name: str) -> np.ndarray:
    return pb_utils.get_input_tensor_by_name(request, name).as_numpy()


def invalid_argument(error: RequestError):
    return pb_utils.InferenceResponse(
        output_tensors=[], error=pb_utils.TritonError(str(error), pb_utils.TritonError.INVALID_ARG))


def internal_error(message: str):
    return pb_utils.InferenceResponse(
        output_tensors=[], error=pb_utils.TritonError(message, pb_utils.TritonError.INTERNAL))


def unavailable(message: str):
    """A refusal or failure the client may retry (shutting down, at capacity, a model process replaced)."""
    return pb_utils.InferenceResponse(
        output_tensors=[], error=pb_utils.TritonError(message, pb_utils.TritonError.UNAVAILABLE))


def cancelled(message: str):
    return pb_utils.InferenceResponse(
        output_tensors=[], error=pb_utils.TritonError(message, pb_utils.TritonError.CANCELLED))


def request_deadline(request) -> float:
    """``time.time()`` at which the caller gives up, from Triton's request timeout; 0 for none.

    The client sets the timeout (microseconds) from its own; an ensemble passes it to every step.
    Measured from now, so a step that runs later sees a later deadline than the first one did:
    the first step computes it and passes it on.
    """
    timeout_us = request.timeout()
    return time.time() + timeout_us / 1e6 if timeout_us else 0.0


def unet_request(inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The UNet's named inputs as a BLS call sends them: a scalar per row (``timestep``) travels as
    ``[rows, 1]``, which the unet's config reshapes to ``[rows]``."""
    return {name: value.reshape(-1, 1) if value.ndim == 1 else value for name, value in inputs.items()}


def call_model(model_name: str, inputs: dict[str, np.ndarray], output_names: list[str],
               request_id: str = "") -> list[np.ndarray]:
    """One synchronous BLS call; a failed call raises with the callee's message."""
    request = pb_utils.InferenceRequest(
        model_name=model_name,
        requested_output_names=output_names,
        inputs=[pb_utils.Tensor(name, value) for name, value in inputs.items()],
        request_id=request_id,
    )
    response = request.exec()
    if response.has_error():
        raise RuntimeError(f"{model_name} failed: {response.error().message()}")
    return [pb_utils.get_output_tensor_by_name(response, name).as_numpy() for name in output_names]


def error_as_tensors(code: str, message: str, reason: str = ""):
    """A final answer of the engine that carries an error in tensors, so its code survives BLS.

    Args:
        code: a ``TritonError`` code name: "UNAVAILABLE", "CANCELLED", "INTERNAL", ...
        reason: the word the request counters file it under (the engine's answers only: the stream's
            wire outputs have no such tensor).
    """
    tensors = [pb_utils.Tensor(steps.ERROR_CODE.name, np.array([code.encode()], dtype=np.object_)),
               pb_utils.Tensor(steps.ERROR_MESSAGE.name, np.array([message.encode()], dtype=np.object_))]
    if reason:
        tensors.append(pb_utils.Tensor(steps.ERROR_REASON.name, np.array([reason.encode()], dtype=np.object_)))
    return pb_utils.InferenceResponse(output_tensors=tensors)


def reason_of_response(response) -> str:
    """The reason an engine's error answer carries ("" for none)."""
    found = pb_utils.get_output_tensor_by_name(response, steps.ERROR_REASON.name)
    return "" if found is None else found.as_numpy().reshape(-1)[0].decode()


def code_name(error) -> str:
    """A ``TritonError``'s code as its name: "UNAVAILABLE", "CANCELLED", ..."""
    return str(error.code()).rsplit(".", 1)[-1]


@dataclass(frozen=True)
class Refusal:
    """An admission the engine refused: the error to answer with, and why in a word (``at_capacity``,
    ``model_process_died``, ``num_images``)."""

    error: "pb_utils.TritonError"
    reason: str


def error_from_tensors(response):
    """The ``TritonError`` a response of ``error_as_tensors`` carries, with its code; None if none."""
    code = pb_utils.get_output_tensor_by_name(response, steps.ERROR_CODE.name)
    if code is None:
        return None
    message = pb_utils.get_output_tensor_by_name(response, steps.ERROR_MESSAGE.name).as_numpy().reshape(-1)[0]
    name = code.as_numpy().reshape(-1)[0].decode()
    return pb_utils.TritonError(message.decode(), getattr(pb_utils.TritonError, name, pb_utils.TritonError.INTERNAL))


def admission_call(engine_model: str, action: bytes, token: str, request_id: str = "", places: int = 1,
                   callees=None):
    """Reserve (``steps.RESERVE``) or give back (``steps.RELEASE``) the places in the engine of one edit
    (``places``: one per image).

    Args:
        callees: the caller's ``smartedit.ops.model_processes.Callees``: a call to an engine whose process
            died (it would never answer) or is being replaced is answered UNAVAILABLE, "send again".

    Returns:
        The engine's ``Refusal`` (an UNAVAILABLE ``TritonError``, "server at capacity", and its reason), or None.
    """
    error, reason = _admission_exchange(engine_model, action, token, request_id, places, callees)
    # No reason: Triton itself refused the call (the engine not loaded).
    return None if error is None else Refusal(error, reason or "engine_unavailable")


def _admission_exchange(engine_model, action, token, request_id, places, callees):
    request = pb_utils.InferenceRequest(
        model_name=engine_model, request_id=request_id,
        inputs=[pb_utils.Tensor(steps.ADMISSION.name, np.array([action], dtype=np.object_)),
                pb_utils.Tensor(steps.RESERVATION.name, np.array([token.encode()], dtype=np.object_)),
                pb_utils.Tensor(steps.PLACES.name, np.array([places], dtype=np.int32))],
        requested_output_names=[steps.ERROR_CODE.name, steps.ERROR_MESSAGE.name, steps.ERROR_REASON.name])

    def exchange():
        error, reason = None, ""
        for response in decoupled_responses(request):
            error, reason = error_of_response(response) or error, reason_of_response(response) or reason
        return error, reason

    if callees is None:
        return exchange()
    try:
        return callees.wait(engine_model, exchange, failed=lambda answer: answer[0] is not None)
    except ModelProcessDied as died:
        return pb_utils.TritonError(str(died), pb_utils.TritonError.UNAVAILABLE), "model_process_died"


def error_of_response(response):
    """The error a BLS response stands for, code included where the callee sent it in tensors."""
    if response.has_error():
        return response.error()  # raised by Triton or a model: its code is lost on the way back
    return error_from_tensors(response)
