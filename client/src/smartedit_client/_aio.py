"""``AsyncInpaintClient``: ``InpaintClient`` for asyncio services, on ``tritonclient.grpc.aio``.

The same methods, arguments, errors and result types; requests are built and responses read by the
same functions as the blocking client's, so both send the same bytes and get the same PNGs.
"""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from typing import TYPE_CHECKING, AsyncIterator, Sequence

import grpc
import tritonclient.grpc.aio as grpcaio
from tritonclient.utils import InferenceServerException

from smartedit_client import _contract as wire
from smartedit_client._channel import RETRY_ATTEMPTS, channel, stream_backoff_s
from smartedit_client._client import (
    DEFAULT_TIMEOUT_S, DEFAULT_URL, LIVENESS_PROBE_S, ImageLike, deadline_arguments, edit_failure, edit_inputs,
    call_models, configure_client, edit_result, encoded, replay_of, requested, resume_inputs, server_info_of,
)
from smartedit_client._errors import (
    RequestTimeoutError, ServerOverloadedError, ServerUnavailableError, SmartEditError, from_triton, unreachable,
)
from smartedit_client._info import ServerInfo
from smartedit_client._options import EditOptions, checked_options
from smartedit_client._result import InpaintResult
from smartedit_client._segment import Point, SegmentResult, in_sdk_terms, segment_inputs
from smartedit_client._stream import StreamEvent, resendable, stream_events

if TYPE_CHECKING:
    from typing_extensions import Unpack


class AsyncInpaintClient:
    """An asyncio client of the ``inpaint`` ensemble. Use it as ``async with``, or ``await close()``.

    Takes ``InpaintClient``'s arguments; one client may serve any number of concurrent calls.
    """

    def __init__(self, url: str = DEFAULT_URL, *, timeout_s: float = DEFAULT_TIMEOUT_S, pipeline: str | None = None,
                 model_name: str = wire.MODEL_NAME, stream_model_name: str = wire.STREAM_MODEL_NAME,
                 ssl: bool = False, root_certificates: str | os.PathLike | None = None, balance: bool | None = None):
        tls = configure_client(self, url, timeout_s, pipeline, model_name, stream_model_name, ssl, root_certificates)
        target, channel_args = channel(self.url, balance)
        self._balanced = channel_args is not None
        self._client = grpcaio.InferenceServerClient(url=target, channel_args=channel_args, **tls)

    async def __aenter__(self) -> "AsyncInpaintClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the gRPC channel. Calling it twice is harmless."""
        await self._client.close()

    async def is_ready(self, *, timeout_s: float = 5.0) -> bool:
        """As ``InpaintClient.is_ready``; a server that does not answer within ``timeout_s`` is not ready."""
        try:
            return bool(await self._client.is_server_ready(client_timeout=timeout_s)
                        and await self._client.is_model_ready(self.model_name, client_timeout=timeout_s))
        except InferenceServerException:
            return False

    async def _failure(self, error: InferenceServerException) -> SmartEditError:
        """As ``InpaintClient._failure``."""
        return await failure_of(error, self._client, self.url)

    async def server_info(self, *, pipeline: str | None = None, timeout_s: float | None = None) -> ServerInfo:
        """As ``InpaintClient.server_info``."""
        try:
            response = await self._client.infer(wire.INFO_MODEL_NAME, [], outputs=requested([wire.SERVER_INFO]),
                                                client_timeout=timeout_s or self.timeout_s)
        except InferenceServerException as error:
            raise await self._failure(error) from None
        return server_info_of(response, pipeline or self.pipeline)

    async def segment(self, *, image: ImageLike, points: Sequence[Point] | None = None,
                      box: Sequence[float] | None = None, timeout_s: float | None = None,
                      request_id: str | None = None) -> SegmentResult:
        """As ``InpaintClient.segment``."""
        inputs = segment_inputs(encoded("image", image), points, box)
        request_id = request_id or uuid.uuid4().hex
        started = time.perf_counter()
        try:
            response = await self._client.infer(wire.SEGMENT_MODEL_NAME, inputs, outputs=requested(wire.SEGMENT_OUTPUTS),
                                                request_id=request_id, client_timeout=timeout_s or self.timeout_s)
        except InferenceServerException as error:
            raise in_sdk_terms(await self._failure(error)) from None
        return SegmentResult.from_response(response, request_id, time.perf_counter() - started)

    async def inpaint(self, *, image: ImageLike, mask_image: ImageLike | None = None, prompt: str,
                      pipeline: str | None = None, timeout_s: float | None = None, request_id: str | None = None,
                      **options: Unpack[EditOptions]) -> InpaintResult:
        """As ``InpaintClient.inpaint``: the same arguments, result and errors. Cancelling the awaiting
        task cancels the call (the server stops the edit at its deadline, as for the blocking client)."""
        inputs = edit_inputs(image, mask_image, dict(checked_options("inpaint", options), prompt=prompt))
        request_id = request_id or uuid.uuid4().hex
        timeout_s = timeout_s or self.timeout_s
        started = time.perf_counter()
        try:
            response = await self._client.infer(call_models(self, pipeline)[0], inputs, outputs=requested(wire.OUTPUTS),
                                                request_id=request_id, **deadline_arguments(timeout_s))
        except InferenceServerException as error:
            raise edit_failure(await self._failure(error), started, timeout_s, pipeline or self.pipeline) from None
        return edit_result(response, request_id, started)

    async def replay(self, png: ImageLike, *, image: ImageLike, mask_image: ImageLike | None = None,
                     **overrides) -> InpaintResult:
        """As ``InpaintClient.replay``."""
        return await self.inpaint(image=image, mask_image=mask_image, **{**replay_of(png), **overrides})

    def inpaint_stream(self, *, image: ImageLike, mask_image: ImageLike | None = None, prompt: str,
                       preview_every: int | None = None, checkpoint_every: int | None = None,
                       pipeline: str | None = None, timeout_s: float | None = None, request_id: str | None = None,
                       **options: Unpack[EditOptions]) -> "AsyncInpaintStream":
        """As ``InpaintClient.inpaint_stream``; iterate the stream with ``async for`` (and use it as
        ``async with``). Leaving it early cancels the edit.

        Raises:
            InvalidRequestError: a field is invalid, found before sending (the rest while iterating).
        """
        inputs = edit_inputs(image, mask_image, dict(checked_options("inpaint_stream", options), prompt=prompt,
                                                     preview_every=preview_every, checkpoint_every=checkpoint_every))
        return self._stream(inputs, pipeline, timeout_s, request_id)

    def resume_stream(self, resume_state, *, image: ImageLike, mask_image: ImageLike | None = None,
                      resume_image: ImageLike | None = None, preview_every: int | None = None,
                      checkpoint_every: int | None = None, pipeline: str | None = None, timeout_s: float | None = None,
                      request_id: str | None = None, control_image: ImageLike | None = None) -> "AsyncInpaintStream":
        """As ``InpaintClient.resume_stream``."""
        inputs = resume_inputs(resume_state, image, mask_image, resume_image, preview_every, checkpoint_every,
                               control_image=control_image)
        return self._stream(inputs, pipeline, timeout_s, request_id)

    async def resume(self, resume_state, *, image: ImageLike, mask_image: ImageLike | None = None,
                     resume_image: ImageLike | None = None, pipeline: str | None = None, timeout_s: float | None = None,
                     request_id: str | None = None, control_image: ImageLike | None = None) -> InpaintResult:
        """As ``InpaintClient.resume``: the same arguments, result and errors."""
        async with self.resume_stream(resume_state, image=image, mask_image=mask_image, resume_image=resume_image,
                                      preview_every=0, pipeline=pipeline, timeout_s=timeout_s, request_id=request_id,
                                      control_image=control_image) as stream:
            async for _ in stream:
                pass
        return stream.result

    def _stream(self, inputs: list, pipeline: str | None, timeout_s: float | None,
                request_id: str | None) -> "AsyncInpaintStream":
        return AsyncInpaintStream(self._client, self.url, model_name=call_models(self, pipeline)[1], inputs=inputs,
                                  request_id=request_id or uuid.uuid4().hex, timeout_s=timeout_s or self.timeout_s,
                                  resends=RETRY_ATTEMPTS - 1 if self._balanced else 0)


class AsyncInpaintStream:
    """One streamed edit for asyncio: ``async for event in stream``; the last event is the
    ``InpaintResult`` (also ``stream.result``). Leaving the loop or the ``async with`` block before the
    result, or ``await stream.cancel()``, cancels the edit on the server, which stops within a step.

    Raises (while iterating): as ``InpaintStream``.
    """

    def __init__(self, client: grpcaio.InferenceServerClient, url: str, *, model_name: str, inputs: list,
                 request_id: str, timeout_s: float, resends: int = 0):
        """``resends``: how many times an edit refused before its first event (a server shutting down, at
        capacity) is sent again, on a new call that a balanced channel gives to the next server."""
        self.request_id = request_id
        self._resends = resends
        self._url = url
        self.result: InpaintResult | None = None
        self._client, self._model_name, self._inputs = client, model_name, inputs
        self._timeout_s = timeout_s
        self._responses = None
        # The request side stays open until the edit ends: a half-closed stream is not a cancelled one.
        self._finished = asyncio.Event()

    async def __aenter__(self) -> "AsyncInpaintStream":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.cancel()

    async def _requests(self) -> AsyncIterator[dict]:
        yield {"model_name": self._model_name, "inputs": self._inputs, "request_id": self.request_id,
               "outputs": requested(wire.STREAM_OUTPUTS),
               "timeout": wire.request_timeout_us(self._timeout_s)}
        await self._finished.wait()

    def __aiter__(self) -> AsyncIterator[StreamEvent]:
        return self._events()

    async def _events(self) -> AsyncIterator[StreamEvent]:
        started = time.perf_counter()
        began, resent = False, 0
        checkpoints: list = []
        try:
            while True:
                self._finished = asyncio.Event()  # each call's request side, open until that call ends
                self._responses = self._client.stream_infer(self._requests(),
                                                            stream_timeout=self._timeout_s + wire.DEADLINE_GRACE_S)
                try:
                    async for result, error in self._responses:
                        if error is not None:
                            raise await failure_of(error, self._client, self._url)
                        for event in stream_events(result, self.request_id, started, checkpoints):
                            began = True
                            if isinstance(event, InpaintResult):
                                self.result = event
                            yield event
                        if self.result is not None:
                            return
                    raise RequestTimeoutError(f"the stream ended without a result within {self._timeout_s:g} s",
                                              "DEADLINE_EXCEEDED")
                except (InferenceServerException, grpc.RpcError) as error:  # the aio stream raises these raw
                    failure = await failure_of(_as_triton_error(error), self._client, self._url)
                    if began or resent >= self._resends or not resendable(failure):
                        raise failure from None
                except (ServerUnavailableError, ServerOverloadedError) as failure:
                    if began or resent >= self._resends or not resendable(failure):
                        raise failure from None
                # Refused (or its connection lost) before it began: send it again, on a new call.
                await self.cancel()
                await asyncio.sleep(stream_backoff_s(resent))
                resent += 1
        finally:
            await self.cancel()

    async def cancel(self) -> None:
        """Stop the edit (harmless once the result is in, or twice)."""
        self._finished.set()
        if self._responses is not None and self.result is None:
            self._responses.cancel()
        self._responses = None


async def failure_of(error: InferenceServerException, client: grpcaio.InferenceServerClient,
                     url: str) -> SmartEditError:
    """``_errors.reachability`` for asyncio: a plain UNAVAILABLE from an address where nothing is live says so."""
    failure = from_triton(error)
    if type(failure) is ServerUnavailableError:
        try:
            live = await client.is_server_live(client_timeout=LIVENESS_PROBE_S)
        except InferenceServerException:
            live = False
        if not live:
            return unreachable(url, str(failure))
    return failure


def _as_triton_error(error) -> InferenceServerException:
    if isinstance(error, InferenceServerException):
        return error
    return InferenceServerException(msg=error.details(), status=str(error.code()))  # a raw grpc.RpcError

