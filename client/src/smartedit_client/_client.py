"""``InpaintClient``: one typed call per edit over gRPC (KServe v2 protocol, tritonclient)."""

from __future__ import annotations

import io
import json
import os
import time
import uuid
from typing import TYPE_CHECKING, Sequence, Union

import numpy as np
import tritonclient.grpc as grpcclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from smartedit_client import _contract as wire
from smartedit_client._channel import channel
from smartedit_client._errors import (
    InvalidRequestError, ModelNotFoundError, RequestCancelledError, RequestTimeoutError, SmartEditError, from_triton,
    reachability,
)
from smartedit_client._info import ServerInfo
from smartedit_client._options import EditOptions, checked_options
from smartedit_client._result import InpaintResult, png_parameters, replayable
from smartedit_client._segment import Point, SegmentResult, in_sdk_terms, segment_inputs
from smartedit_client._stream import InpaintStream

if TYPE_CHECKING:  # annotations only: no runtime dependency on typing_extensions (3.10)
    from typing_extensions import Unpack

ImageLike = Union[bytes, str, os.PathLike, Image.Image]

DEFAULT_URL = "127.0.0.1:8001"
DEFAULT_TIMEOUT_S = 300.0
# How long the question "is anything live there?" may take, after a call failed with UNAVAILABLE.
LIVENESS_PROBE_S = 3.0
_NUMPY = {"BYTES": np.object_, "INT32": np.int32, "INT64": np.int64, "FP32": np.float32, "BOOL": np.bool_}


def encoded(field: str, value: ImageLike) -> bytes:
    """Encoded image bytes from bytes (sent as they are), a file path, or a PIL image (as PNG)."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, Image.Image):
        buffer = io.BytesIO()
        value.save(buffer, format="PNG")
        return buffer.getvalue()
    if isinstance(value, (str, os.PathLike)):
        try:
            with open(value, "rb") as handle:
                return handle.read()
        except OSError as error:
            raise InvalidRequestError(f"{field}: cannot read {os.fspath(value)!r}: {error.strerror}") from None
    raise InvalidRequestError(f"{field}: expected bytes, a path or a PIL image, got {type(value).__name__}")


def grpc_target(url: str) -> str:
    """``host:port`` of the server's gRPC endpoint, from ``host:port`` or ``grpc://host:port``; gRPC's own
    target names (``dns:///host:port``, ``ipv4:a:port,b:port``) as they are.

    Raises:
        ValueError: an http(s):// URL (the SDK speaks gRPC; Triton's HTTP port is another one).
    """
    scheme, separator, rest = url.partition("://")
    if not separator or scheme.lower() == "dns":
        return url
    if scheme.lower() == "grpc":
        return rest.rstrip("/")
    raise ValueError(f"url {url!r}: give the server's gRPC endpoint as host:port (e.g. 127.0.0.1:8001); "
                     f"the SDK speaks gRPC, not {scheme}")


def _tensor(spec: wire.WireTensor, value) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(spec.name, list(wire.TENSOR_SHAPE), spec.datatype)
    if spec.datatype == "BYTES" and isinstance(value, str):
        value = value.encode("utf-8")
    if spec.datatype == "BOOL" and not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"expected True or False, got {type(value).__name__}")
    dtype = np.dtype(_NUMPY[spec.datatype])
    if dtype.kind == "i":  # numpy would wrap an out-of-range int silently: 2**32 + 5 steps would be 5
        if isinstance(value, (bool, np.bool_)) or (isinstance(value, float) and not value.is_integer()):
            raise TypeError(f"expected an integer, got {value!r}")
        limits = np.iinfo(dtype)
        if not limits.min <= int(value) <= limits.max:
            raise OverflowError(f"out of the {spec.datatype} range [{limits.min}, {limits.max}]")
    tensor.set_data_from_numpy(np.array([value], dtype=_NUMPY[spec.datatype]))
    return tensor


class InpaintClient:
    """A client of the ``inpaint`` ensemble. Use it as a context manager, or call ``close()``.

    One client may be shared by threads: each call is independent.

    Args:
        url: the server's gRPC address, ``host:port`` (or ``grpc://host:port``).
        timeout_s: default per-call timeout in seconds; each call may override it.
        pipeline: the pipeline to edit with, by the name the server lists (``server_info().pipelines``;
            ``smartedit export --model NAME=PATH``); None: the server's first. Each call may choose another.
        model_name: the served ensemble's name (``pipeline`` sets it).
        stream_model_name: the served streaming entry's name (``inpaint_stream``; ``pipeline`` sets it).
        ssl: use TLS (for an Ingress that terminates gRPC over TLS, or ``smartedit serve --tls-cert``).
        root_certificates: PEM file of the CA(s) to trust (a self-signed server's own certificate);
            implies ``ssl``. Default: the system's trust store.
        balance: spread calls over every address ``url``'s name resolves to, following them as they
            change, and send a call a server refused with UNAVAILABLE to the next (``_channel``); None
            (default): when the name has several addresses now (a Kubernetes headless Service's name).
    """

    def __init__(self, url: str = DEFAULT_URL, *, timeout_s: float = DEFAULT_TIMEOUT_S, pipeline: str | None = None,
                 model_name: str = wire.MODEL_NAME, stream_model_name: str = wire.STREAM_MODEL_NAME,
                 ssl: bool = False, root_certificates: str | os.PathLike | None = None, balance: bool | None = None):
        self._tls = configure_client(self, url, timeout_s, pipeline, model_name, stream_model_name, ssl,
                                     root_certificates)
        self._target, self._channel_args = channel(self.url, balance)
        self._client = grpcclient.InferenceServerClient(url=self._target, channel_args=self._channel_args, **self._tls)

    def __enter__(self) -> "InpaintClient":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the gRPC channel. Calling it twice is harmless."""
        self._client.close()

    def is_ready(self) -> bool:
        """Whether the server is up and the model is ready to serve.

        Raises:
            SmartEditError: never for an unreachable server (that is ``False``).
        """
        try:
            return bool(self._client.is_server_ready() and self._client.is_model_ready(self.model_name))
        except InferenceServerException:
            return False

    def _live(self) -> bool:
        try:
            return bool(self._client.is_server_live(client_timeout=LIVENESS_PROBE_S))
        except InferenceServerException:
            return False

    def _failure(self, error: InferenceServerException) -> SmartEditError:
        """A call's failure as the SDK raises it (an UNAVAILABLE from an address where nothing answers
        says so)."""
        return reachability(from_triton(error), self.url, self._live)

    def server_info(self, *, pipeline: str | None = None, timeout_s: float | None = None) -> ServerInfo:
        """What the server offers: model and family, working resolution, samplers, tasks, each
        parameter's range and default, limits; of ``pipeline`` (default: the client's), and every
        pipeline's in ``pipelines``.

        Raises:
            InvalidRequestError: the server serves no pipeline ``pipeline``.
            ModelNotFoundError: the server has no ``server_info`` model (an older SmartEdit).
            ServerUnavailableError: the server is unreachable.
            SmartEditError: any other failure.
        """
        try:
            response = self._client.infer(wire.INFO_MODEL_NAME, [], outputs=requested([wire.SERVER_INFO]),
                                          client_timeout=timeout_s or self.timeout_s)
        except InferenceServerException as error:
            raise self._failure(error) from None
        return server_info_of(response, pipeline or self.pipeline)

    def segment(self, *, image: ImageLike, points: Sequence[Point] | None = None, box: Sequence[float] | None = None,
                timeout_s: float | None = None, request_id: str | None = None) -> SegmentResult:
        """The mask of the object at ``points`` and/or in ``box`` (Segment Anything): a ready ``mask_image``.

        Args:
            image: the photo: encoded bytes, a path or a PIL image.
            points: clicks (x, y) on the object, or (x, y, label) with label 1 = object, 0 = background.
            box: (x0, y0, x1, y1) around the object, in the photo's pixels.

        Raises:
            InvalidRequestError: no prompt, a malformed one, or one outside the image (from the server).
            ModelNotFoundError: the server serves no ``segment`` model (exported with --no-segmentation).
            SmartEditError: as ``inpaint``.
        """
        inputs = segment_inputs(encoded("image", image), points, box)
        request_id = request_id or uuid.uuid4().hex
        started = time.perf_counter()
        try:
            response = self._client.infer(wire.SEGMENT_MODEL_NAME, inputs, outputs=requested(wire.SEGMENT_OUTPUTS),
                                          request_id=request_id,
                                          client_timeout=timeout_s or self.timeout_s)
        except InferenceServerException as error:
            raise in_sdk_terms(self._failure(error)) from None
        return SegmentResult.from_response(response, request_id, time.perf_counter() - started)

    def inpaint(
        self,
        *,
        image: ImageLike,
        mask_image: ImageLike | None = None,
        prompt: str,
        pipeline: str | None = None,
        timeout_s: float | None = None,
        request_id: str | None = None,
        **options: Unpack[EditOptions],
    ) -> InpaintResult:
        """Repaint the white part of ``mask_image`` in ``image`` as ``prompt`` describes (or, with
        ``task``, remove what the mask covers, or replace the background around it).

        Options left out (or None) take the server's defaults (the README's wire contract;
        ``server_info()`` lists them); without ``seed`` the server draws one, returned as ``seed_used``.

        Args:
            image: the image to edit: encoded bytes (PNG, JPEG, WebP), a file path or a PIL image.
            mask_image: same size as ``image``; white (>= 128) is repainted, black is kept. Required except
                for ``task="instruct"`` (an InstructPix2Pix pipeline) and ``task="text_edit"`` (a 4-channel SD or
                SDXL pipeline), which edit the whole photo without one.
            prompt: what to paint in the masked region (may be empty: ``remove`` then uses a neutral one).
            pipeline: the pipeline to edit with (``server_info().pipelines``), overriding the client's.
            timeout_s: this call's timeout, overriding the client's.
            request_id: the id the server's logs carry for this edit; a random one when None.
            options: the edit's other parameters, ``EditOptions`` (task, seed, num_inference_steps,
                guidance_scale, strength, eta, scheduler, mask_grow, mask_blur, invert_mask, num_images, ...).

        Returns:
            InpaintResult: the edited images (``images``; ``image``, ``png``, ``seed_used`` are the first
            one's), the request id and the elapsed time. Each PNG carries its parameters (``parameters``).

        Raises:
            InvalidRequestError: a field is invalid (the message names it), locally or on the server.
            RequestTimeoutError: the call took longer than its timeout (the server stops the edit too).
            ServerOverloadedError: the server is at capacity and refused the edit at once; retry later.
            ServerUnavailableError: the server is unreachable or shutting down.
            SmartEditError: any other failure, as a subclass named by the gRPC status.
        """
        inputs = edit_inputs(image, mask_image, dict(checked_options("inpaint", options), prompt=prompt))
        request_id = request_id or uuid.uuid4().hex
        timeout_s = timeout_s or self.timeout_s
        started = time.perf_counter()
        try:
            response = self._client.infer(call_models(self, pipeline)[0], inputs, outputs=requested(wire.OUTPUTS),
                                          request_id=request_id, **deadline_arguments(timeout_s))
        except InferenceServerException as error:
            raise edit_failure(self._failure(error), started, timeout_s, pipeline or self.pipeline) from None
        return edit_result(response, request_id, started)

    def replay(self, png: ImageLike, *, image: ImageLike, mask_image: ImageLike | None = None,
               **overrides) -> InpaintResult:
        """Send again the edit a result PNG carries the parameters of, on ``image`` and ``mask_image``
        (the ones it was made from): the same server and model give the same PNG, byte for byte.

        Args:
            png: a result PNG of this SDK (bytes, a path, or a PIL image read from one).
            overrides: any of ``inpaint``'s arguments, to change (e.g. ``timeout_s``).

        Raises:
            InvalidRequestError: ``png`` carries no SmartEdit parameters; and as ``inpaint``.
        """
        return self.inpaint(image=image, mask_image=mask_image, **{**replay_of(png), **overrides})

    def inpaint_stream(
        self,
        *,
        image: ImageLike,
        mask_image: ImageLike | None = None,
        prompt: str,
        preview_every: int | None = None,
        checkpoint_every: int | None = None,
        pipeline: str | None = None,
        timeout_s: float | None = None,
        request_id: str | None = None,
        **options: Unpack[EditOptions],
    ) -> InpaintStream:
        """The same edit as ``inpaint``, streamed: progress after every step, previews, then the result.

        Takes ``inpaint``'s arguments (``pipeline`` among them), plus ``preview_every`` and ``checkpoint_every``.
        The result is the same PNG bytes ``inpaint`` returns for the same arguments and seed.

        Args:
            preview_every: steps between previews (the server's default, 5, when None); 0 for progress
                events only. Progress and previews follow the first image when ``num_images`` > 1.
            checkpoint_every: steps between ``CheckpointEvent``s (none when None or 0), each an image to paint
                on and the state to continue from (``resume``); one image only (``num_images`` 1), any task
                but ``text_edit``. The result lists them (``InpaintResult.checkpoints``).

        Returns:
            InpaintStream: iterate it for ``ProgressEvent`` / ``PreviewEvent`` and, last, the
            ``InpaintResult``; leaving it early cancels the edit. Its channel is its own, so streams
            may run side by side from one client.

        Raises:
            InvalidRequestError: a field is invalid, found before sending (server-side ones are raised
                while iterating, as are the other errors ``inpaint`` lists).
            ServerUnavailableError: the server is unreachable.
        """
        inputs = edit_inputs(image, mask_image, dict(checked_options("inpaint_stream", options), prompt=prompt,
                                                     preview_every=preview_every, checkpoint_every=checkpoint_every))
        return InpaintStream(self.url, tls=self._tls, model_name=call_models(self, pipeline)[1], inputs=inputs,
                             request_id=request_id or uuid.uuid4().hex, timeout_s=timeout_s or self.timeout_s,
                             channel=(self._target, self._channel_args))

    def resume_stream(self, resume_state, *, image: ImageLike, mask_image: ImageLike | None = None,
                      resume_image: ImageLike | None = None, preview_every: int | None = None,
                      checkpoint_every: int | None = None, pipeline: str | None = None, timeout_s: float | None = None,
                      request_id: str | None = None, control_image: ImageLike | None = None) -> InpaintStream:
        """Continue a streamed edit from a checkpoint, streamed: progress, previews (and checkpoints again),
        then the result. See ``resume``.

        Raises:
            InvalidRequestError: a field is invalid, found before sending (server-side ones while iterating).
            ServerUnavailableError: the server is unreachable.
        """
        inputs = resume_inputs(resume_state, image, mask_image, resume_image, preview_every, checkpoint_every,
                               control_image=control_image)
        return InpaintStream(self.url, tls=self._tls, model_name=call_models(self, pipeline)[1], inputs=inputs,
                             request_id=request_id or uuid.uuid4().hex, timeout_s=timeout_s or self.timeout_s,
                             channel=(self._target, self._channel_args))

    def resume(self, resume_state, *, image: ImageLike, mask_image: ImageLike | None = None,
               resume_image: ImageLike | None = None, pipeline: str | None = None, timeout_s: float | None = None,
               request_id: str | None = None, control_image: ImageLike | None = None) -> InpaintResult:
        """Continue an edit from one of its checkpoints (``inpaint_stream(..., checkpoint_every=N)``).

        With no ``resume_image`` the edit continues from the saved step exactly: the result is the PNG the
        uninterrupted edit gave, byte for byte. With the checkpoint's image painted on, it continues from the
        saved latents moved by the change (the noise they hold kept), and the pixels outside the mask still
        come back as sent.

        Args:
            resume_state: ``CheckpointEvent.resume_state`` (bytes, or a path to a file holding them), or the
                ``CheckpointEvent`` itself.
            image, mask_image: the ones the checkpoint's edit was sent with (the same bytes); its parameters
                come from the state.
            control_image: a ControlNet edit's conditioning image, when it was sent one (the same bytes).
            resume_image: the checkpoint's ``image`` painted on (same size): bytes, a path or a PIL image.
            pipeline: the pipeline that made the checkpoint, when it is not the client's.

        Returns:
            InpaintResult: as ``inpaint``'s.

        Raises:
            InvalidRequestError: a state that is truncated, changed, another model's, or from another image,
                mask or control_image (the message says which); a resume_image of another size.
            and as ``inpaint``.
        """
        with self.resume_stream(resume_state, image=image, mask_image=mask_image, resume_image=resume_image,
                                preview_every=0, pipeline=pipeline, timeout_s=timeout_s, request_id=request_id,
                                control_image=control_image) as stream:
            for _ in stream:
                pass
        return stream.result


def configure_client(client, url: str, timeout_s: float, pipeline: str | None, model_name: str,
                     stream_model_name: str, ssl: bool, root_certificates: str | os.PathLike | None) -> dict:
    """Set what both clients (blocking and async) hold: ``url``, ``timeout_s``, ``pipeline`` and the
    models it names; returns the TLS arguments of their gRPC client.

    Raises:
        ValueError: a timeout that is not positive, or a certificates file that does not exist.
        InvalidRequestError: ``pipeline`` cannot be a pipeline's name.
    """
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    client.url = grpc_target(url)
    client.timeout_s = timeout_s
    client.pipeline = pipeline
    client.model_name, client.stream_model_name = (
        (model_name, stream_model_name) if pipeline is None else entry_models(pipeline))
    if root_certificates is not None:
        if not os.path.isfile(root_certificates):
            raise ValueError(f"root_certificates {os.fspath(root_certificates)!r}: no such file")
        ssl = True
    return dict(ssl=ssl, root_certificates=None if root_certificates is None else os.fspath(root_certificates))


def requested(specs) -> list[grpcclient.InferRequestedOutput]:
    return [grpcclient.InferRequestedOutput(spec.name) for spec in specs]


def deadline_arguments(timeout_s: float) -> dict:
    """An edit's timeout as both clients send it: Triton's request timeout, which reaches the denoising loop
    (the server stops the edit and answers), and, ``DEADLINE_GRACE_S`` later, the gRPC deadline."""
    return dict(client_timeout=timeout_s + wire.DEADLINE_GRACE_S, timeout=wire.request_timeout_us(timeout_s))


def edit_failure(failure: SmartEditError, started: float, timeout_s: float,
                 pipeline: str | None = None) -> SmartEditError:
    """The SDK's error for a failed edit call; the server's "cancelled" at the deadline is a timeout, and
    a pipeline's missing model a pipeline the server does not serve."""
    if isinstance(failure, RequestCancelledError) and time.perf_counter() - started >= timeout_s:
        return RequestTimeoutError(f"the edit took longer than its timeout of {timeout_s:g} s: {failure}",
                                   "DEADLINE_EXCEEDED")
    if isinstance(failure, ModelNotFoundError) and pipeline is not None:
        return InvalidRequestError(f"pipeline {pipeline!r}: this server serves no such pipeline (its server info "
                                   f"lists the ones it serves)", failure.status, field="pipeline")
    return failure


def call_models(client, pipeline: str | None) -> tuple[str, str]:
    """The (unary, stream) models a call of ``client`` (either client) with ``pipeline`` goes to."""
    return (client.model_name, client.stream_model_name) if pipeline is None else entry_models(pipeline)


def entry_models(pipeline: str) -> tuple[str, str]:
    """(unary, stream) model names of ``pipeline``.

    Raises:
        InvalidRequestError: ``pipeline`` cannot be a pipeline's name.
    """
    try:
        return wire.pipeline_model_names(pipeline)
    except ValueError as error:
        raise InvalidRequestError(str(error), field="pipeline") from None


def server_info_of(response, pipeline: str | None) -> ServerInfo:
    """``server_info``'s answer, describing ``pipeline``."""
    try:
        return ServerInfo.from_json(response.as_numpy(wire.SERVER_INFO.name).reshape(-1)[0], pipeline)
    except ValueError as error:
        raise InvalidRequestError(str(error), field="pipeline") from None


def edit_result(response, request_id: str, started: float) -> InpaintResult:
    return InpaintResult.from_pngs(response.as_numpy(wire.EDITED_IMAGE.name).reshape(-1),
                                   response.as_numpy(wire.SEED_USED.name).reshape(-1), request_id=request_id,
                                   elapsed_s=time.perf_counter() - started)


def replay_of(png: ImageLike) -> dict:
    """The ``inpaint`` arguments a result PNG carries.

    Raises:
        InvalidRequestError: ``png`` is no SmartEdit result PNG (or a re-encoded copy of one).
    """
    if isinstance(png, Image.Image):
        text = getattr(png, "text", {}).get(wire.PNG_PARAMETERS_KEY)
        carried = None if text is None else json.loads(text)
    else:
        try:
            carried = png_parameters(encoded("png", png))
        except ValueError as error:
            raise InvalidRequestError(f"png: {error}") from None
    if carried is None:
        raise InvalidRequestError(f"png: carries no {wire.PNG_PARAMETERS_KEY!r} parameters; only SmartEdit's "
                                  f"result PNGs do, as written (a re-encoded copy loses them)")
    return replayable(carried)


def resume_inputs(resume_state, image: ImageLike, mask_image: ImageLike | None, resume_image: ImageLike | None,
                  preview_every: int | None, checkpoint_every: int | None, *,
                  control_image: ImageLike | None = None) -> list[grpcclient.InferInput]:
    """A resuming request's tensors: the photo (and a ControlNet edit's conditioning image), the state and the
    stream's own inputs (no parameter)."""
    state = getattr(resume_state, "resume_state", resume_state)  # a CheckpointEvent
    if isinstance(state, Image.Image):
        raise InvalidRequestError(f"{wire.RESUME_STATE.name}: expected a checkpoint's resume_state (bytes or a "
                                  f"path), got an image", field=wire.RESUME_STATE.name)
    values = {wire.IMAGE: encoded("image", image),
              wire.MASK_IMAGE: None if mask_image is None else encoded("mask_image", mask_image),
              wire.RESUME_STATE: encoded(wire.RESUME_STATE.name, state),
              wire.RESUME_IMAGE: None if resume_image is None else encoded(wire.RESUME_IMAGE.name, resume_image),
              wire.CONTROL_IMAGE: None if control_image is None else encoded(wire.CONTROL_IMAGE.name, control_image),
              wire.PREVIEW_EVERY: preview_every, wire.CHECKPOINT_EVERY: checkpoint_every}
    return encoded_tensors(values)


def edit_inputs(image: ImageLike, mask_image: ImageLike | None, parameters: dict) -> list[grpcclient.InferInput]:
    """The request's tensors, checked and encoded; ``parameters`` are named as the contract's inputs, and
    those left None are left out (the server applies its defaults)."""
    specs = {spec.name: spec for spec in wire.STREAM_INPUTS}
    # No mask: left out, for the server to refuse by name unless the task edits the whole photo.
    values = {wire.IMAGE: encoded("image", image),
              wire.MASK_IMAGE: None if mask_image is None else encoded("mask_image", mask_image)}
    for name, value in parameters.items():
        spec = specs[name]
        values[spec] = encoded(name, value) if spec in wire.IMAGE_OPTIONS and value is not None else value
    missing = [spec.name for spec in wire.INPUTS if spec.required and values.get(spec) is None]
    if missing:
        raise InvalidRequestError(f"{missing[0]}: is required")
    return encoded_tensors(values)


def encoded_tensors(values: dict) -> list[grpcclient.InferInput]:
    """The request's tensors from ``{WireTensor: value}``, those None left out.

    Raises:
        InvalidRequestError: a value that cannot be sent as its tensor's type, naming it.
    """
    tensors = []
    for spec, value in values.items():
        if value is None:
            continue
        try:
            tensors.append(_tensor(spec, value))
        except (OverflowError, ValueError, TypeError) as error:
            raise InvalidRequestError(f"{spec.name}: cannot be sent as {spec.datatype}: {value!r:.80} ({error})") from None
    return tensors
