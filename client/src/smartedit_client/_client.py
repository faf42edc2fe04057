"""``InpaintClient``: one typed call per edit over gRPC (KServe v2 protocol, tritonclient)."""

from __future__ import annotations

import io
import os
import time
import uuid
from typing import Union

import numpy as np
import tritonclient.grpc as grpcclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from smartedit_client import _contract as wire
from smartedit_client._errors import InvalidRequestError, RequestCancelledError, RequestTimeoutError, from_triton
from smartedit_client._result import InpaintResult
from smartedit_client._stream import InpaintStream

ImageLike = Union[bytes, str, os.PathLike, Image.Image]

DEFAULT_URL = "127.0.0.1:8001"
DEFAULT_TIMEOUT_S = 300.0
_NUMPY = {"BYTES": np.object_, "INT32": np.int32, "INT64": np.int64, "FP32": np.float32}


def _encoded(field: str, value: ImageLike) -> bytes:
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
    """``host:port`` of the server's gRPC endpoint, from ``host:port`` or ``grpc://host:port``.

    Raises:
        ValueError: an http(s):// URL (the SDK speaks gRPC; Triton's HTTP port is another one).
    """
    scheme, separator, rest = url.partition("://")
    if not separator:
        return url
    if scheme.lower() == "grpc":
        return rest.rstrip("/")
    raise ValueError(f"url {url!r}: give the server's gRPC endpoint as host:port (e.g. 127.0.0.1:8001); "
                     f"the SDK speaks gRPC, not {scheme}")


def _tensor(spec: wire.WireTensor, value) -> grpcclient.InferInput:
    tensor = grpcclient.InferInput(spec.name, list(wire.TENSOR_SHAPE), spec.datatype)
    if spec.datatype == "BYTES" and isinstance(value, str):
        value = value.encode("utf-8")
    dtype = np.dtype(_NUMPY[spec.datatype])
    if dtype.kind == "i":  # numpy would wrap an out-of-range int silently: 2**32 + 5 steps would be 5
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
        model_name: the served ensemble's name.
        stream_model_name: the served streaming entry's name (``inpaint_stream``).
        ssl: use TLS (for an Ingress that terminates gRPC over TLS, or ``smartedit serve --tls-cert``).
        root_certificates: PEM file of the CA(s) to trust (a self-signed server's own certificate);
            implies ``ssl``. Default: the system's trust store.
    """

    def __init__(self, url: str = DEFAULT_URL, *, timeout_s: float = DEFAULT_TIMEOUT_S,
                 model_name: str = wire.MODEL_NAME, stream_model_name: str = wire.STREAM_MODEL_NAME,
                 ssl: bool = False, root_certificates: str | os.PathLike | None = None):
        if timeout_s <= 0:
            raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
        self.url = url = grpc_target(url)
        self.timeout_s = timeout_s
        self.model_name = model_name
        self.stream_model_name = stream_model_name
        if root_certificates is not None:
            if not os.path.isfile(root_certificates):
                raise ValueError(f"root_certificates {os.fspath(root_certificates)!r}: no such file")
            ssl = True
        self._tls = dict(ssl=ssl, root_certificates=None if root_certificates is None else os.fspath(root_certificates))
        self._client = grpcclient.InferenceServerClient(url=url, **self._tls)

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

    def inpaint(
        self,
        *,
        image: ImageLike,
        mask_image: ImageLike,
        prompt: str,
        negative_prompt: str | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        strength: float | None = None,
        seed: int | None = None,
        scheduler: str | None = None,
        crop_padding: int | None = None,
        timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> InpaintResult:
        """Repaint the white part of ``mask_image`` in ``image`` as ``prompt`` describes.

        Arguments left as None take the server's defaults (DESIGN §2); ``seed=None`` lets the server
        draw one, returned as ``seed_used``.

        Args:
            image: the image to edit: encoded bytes (PNG, JPEG, WebP), a file path or a PIL image.
            mask_image: same size as ``image``; white (>= 128) is repainted, black is kept.
            prompt: what to paint in the masked region (may be empty).
            negative_prompt: what to steer away from.
            num_inference_steps: denoising steps.
            guidance_scale: classifier-free guidance scale; <= 1 disables guidance.
            strength: in (0, 1]; below 1 starts from the noised image instead of pure noise.
            seed: makes the result reproducible.
            scheduler: the sampler, e.g. ``"ddim"`` or ``"euler"``.
            crop_padding: pixels of context kept around the mask's box when a photo larger than the
                model's working resolution is edited as a crop (server default 32).
            timeout_s: this call's timeout, overriding the client's.
            request_id: the id the server's logs carry for this edit; a random one when None.

        Returns:
            InpaintResult: the edited image, its PNG bytes, the seed used, the request id and the
            elapsed time.

        Raises:
            InvalidRequestError: a field is invalid (the message names it), locally or on the server.
            RequestTimeoutError: the call took longer than its timeout (the server stops the edit too).
            ServerOverloadedError: the server is at capacity and refused the edit at once; retry later.
            ServerUnavailableError: the server is unreachable or shutting down.
            SmartEditError: any other failure, as a subclass named by the gRPC status.
        """
        inputs = _edit_inputs(image=image, mask_image=mask_image, prompt=prompt, negative_prompt=negative_prompt,
                              num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                              strength=strength, seed=seed, scheduler=scheduler, crop_padding=crop_padding)
        outputs = [grpcclient.InferRequestedOutput(spec.name) for spec in wire.OUTPUTS]
        request_id = request_id or uuid.uuid4().hex
        timeout_s = timeout_s or self.timeout_s
        started = time.perf_counter()
        try:
            # The timeout goes as Triton's request timeout, which reaches the denoising loop, so the
            # server stops the edit and answers; and, DEADLINE_GRACE_S later, as the gRPC deadline.
            response = self._client.infer(self.model_name, inputs, outputs=outputs, request_id=request_id,
                                          client_timeout=timeout_s + wire.DEADLINE_GRACE_S,
                                          timeout=wire.request_timeout_us(timeout_s))
        except InferenceServerException as error:
            failure = from_triton(error)
            if isinstance(failure, RequestCancelledError) and time.perf_counter() - started >= timeout_s:
                # The server stopped the edit at the deadline (its word: "the caller's deadline passed").
                raise RequestTimeoutError(f"the edit took longer than its timeout of {timeout_s:g} s: {failure}",
                                          "DEADLINE_EXCEEDED") from None
            raise failure from None
        elapsed = time.perf_counter() - started
        png = response.as_numpy(wire.EDITED_IMAGE.name).reshape(-1)[0]
        seed_used = int(response.as_numpy(wire.SEED_USED.name).reshape(-1)[0])
        edited = Image.open(io.BytesIO(png))
        edited.load()
        return InpaintResult(image=edited, png=bytes(png), seed_used=seed_used, request_id=request_id,
                             elapsed_s=elapsed)

    def inpaint_stream(
        self,
        *,
        image: ImageLike,
        mask_image: ImageLike,
        prompt: str,
        negative_prompt: str | None = None,
        num_inference_steps: int | None = None,
        guidance_scale: float | None = None,
        strength: float | None = None,
        seed: int | None = None,
        scheduler: str | None = None,
        crop_padding: int | None = None,
        preview_every: int | None = None,
        timeout_s: float | None = None,
        request_id: str | None = None,
    ) -> InpaintStream:
        """The same edit as ``inpaint``, streamed: progress after every step, previews, then the result.

        Takes ``inpaint``'s arguments, plus ``preview_every``. The result is the same PNG bytes
        ``inpaint`` returns for the same arguments and seed.

        Args:
            preview_every: steps between previews (the server's default, 5, when None); 0 for progress
                events only.

        Returns:
            InpaintStream: iterate it for ``ProgressEvent`` / ``PreviewEvent`` and, last, the
            ``InpaintResult``; leaving it early cancels the edit. Its channel is its own, so streams
            may run side by side from one client.

        Raises:
            InvalidRequestError: a field is invalid, found before sending (server-side ones are raised
                while iterating, as are the other errors ``inpaint`` lists).
            ServerUnavailableError: the server is unreachable.
        """
        extra = {} if preview_every is None else {wire.PREVIEW_EVERY: preview_every}
        inputs = _edit_inputs(image=image, mask_image=mask_image, prompt=prompt, negative_prompt=negative_prompt,
                              num_inference_steps=num_inference_steps, guidance_scale=guidance_scale,
                              strength=strength, seed=seed, scheduler=scheduler, crop_padding=crop_padding,
                              extra=extra)
        return InpaintStream(self.url, tls=self._tls, model_name=self.stream_model_name, inputs=inputs,
                             request_id=request_id or uuid.uuid4().hex, timeout_s=timeout_s or self.timeout_s)


def _edit_inputs(*, image, mask_image, prompt, negative_prompt, num_inference_steps, guidance_scale, strength, seed,
                 scheduler, crop_padding, extra=None) -> list[grpcclient.InferInput]:
    """The request's tensors, checked and encoded; absent optional arguments are left out."""
    values = {
        wire.IMAGE: _encoded("image", image),
        wire.MASK_IMAGE: _encoded("mask_image", mask_image),
        wire.PROMPT: prompt,
        wire.NEGATIVE_PROMPT: negative_prompt,
        wire.NUM_INFERENCE_STEPS: num_inference_steps,
        wire.GUIDANCE_SCALE: guidance_scale,
        wire.STRENGTH: strength,
        wire.SEED: seed,
        wire.SCHEDULER: scheduler,
        wire.CROP_PADDING: crop_padding,
        **(extra or {}),
    }
    missing = [spec.name for spec, value in values.items() if spec.required and value is None]
    if missing:
        raise InvalidRequestError(f"{missing[0]}: is required")
    tensors = []
    for spec, value in values.items():
        if value is None:
            continue
        try:
            tensors.append(_tensor(spec, value))
        except (OverflowError, ValueError, TypeError) as error:
            raise InvalidRequestError(f"{spec.name}: cannot be sent as {spec.datatype}: {value!r:.80} ({error})") from None
    return tensors
