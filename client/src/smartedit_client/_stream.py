"""``InpaintStream``: one edit over a gRPC stream, yielding progress, previews and the result."""

from __future__ import annotations

import dataclasses
import io
import queue
import time
from typing import Iterator, Union

import tritonclient.grpc as grpcclient
from PIL import Image
from tritonclient.utils import InferenceServerException

from smartedit_client import _contract as wire
from smartedit_client._channel import RETRY_ATTEMPTS, stream_backoff_s
from smartedit_client._errors import (
    RequestTimeoutError, ServerOverloadedError, ServerUnavailableError, SmartEditError, from_status, from_triton,
    reachability,
)
from smartedit_client._events import CheckpointEvent, PreviewEvent, ProgressEvent
from smartedit_client._result import InpaintResult

StreamEvent = Union[ProgressEvent, PreviewEvent, CheckpointEvent, InpaintResult]


def _scalar(result, tensor: wire.WireTensor):
    array = result.as_numpy(tensor.name)
    return None if array is None else array.reshape(-1)[0]


def resendable(failure: SmartEditError) -> bool:
    """Whether a stream that failed so before its first event may be sent again (to the next server of a
    balanced channel): a refusal, or a server gone; not a server that cannot be reached at all."""
    return isinstance(failure, (ServerUnavailableError, ServerOverloadedError)) and failure.detail is None


def _image(png: bytes) -> Image.Image:
    image = Image.open(io.BytesIO(png))
    image.load()
    return image


def stream_events(result, request_id: str, started: float, checkpoints: list) -> list[StreamEvent]:
    """The events one response of the stream holds: progress (and a preview, a checkpoint), or the
    ``InpaintResult``, which carries the ``checkpoints`` collected before it (this list, appended to).

    Raises:
        SmartEditError: the response is the edit's failure (its status travels as ``error_code``).
    """
    status = _scalar(result, wire.ERROR_CODE)
    if status is not None:
        raise from_status(status.decode(), _scalar(result, wire.ERROR_MESSAGE).decode())
    pngs = result.as_numpy(wire.EDITED_IMAGE.name)
    if pngs is not None:
        final = InpaintResult.from_pngs(pngs.reshape(-1), result.as_numpy(wire.SEED_USED.name).reshape(-1),
                                        request_id=request_id, elapsed_s=time.perf_counter() - started)
        return [dataclasses.replace(final, checkpoints=tuple(checkpoints))]
    step, total = _scalar(result, wire.STEP), _scalar(result, wire.TOTAL_STEPS)
    if step is None:
        return []  # nothing for the caller (an empty final flag)
    events: list[StreamEvent] = [ProgressEvent(step=int(step), total_steps=int(total))]
    preview = _scalar(result, wire.PREVIEW_IMAGE)
    if preview is not None:
        events.append(PreviewEvent(step=int(step), total_steps=int(total), image=_image(preview), png=bytes(preview)))
    png = _scalar(result, wire.CHECKPOINT_IMAGE)
    if png is not None:
        checkpoints.append(CheckpointEvent(step=int(step), total_steps=int(total), image=_image(png), png=bytes(png),
                                           resume_state=bytes(_scalar(result, wire.CHECKPOINT_STATE))))
        events.append(checkpoints[-1])
    return events


class InpaintStream:
    """One streamed edit. Iterate it for its events; the last one is the ``InpaintResult``.

        with client.inpaint_stream(image="photo.png", mask_image="mask.png", prompt="a bench") as stream:
            for event in stream:
                if isinstance(event, PreviewEvent):
                    event.image.save(f"preview-{event.step}.png")
        stream.result.save("edited.png")

    Closing the stream before the result — leaving the ``with`` block, ``close()``, ``cancel()``, or
    dropping an iteration half-way — cancels the edit on the server, which stops within a step.
    Each stream has a gRPC channel of its own, closed with it.

    Attributes:
        request_id: the id the server's log lines for this edit carry.
        result: the ``InpaintResult`` once it has arrived, else None.
    """

    def __init__(self, url: str, *, tls: dict, model_name: str, inputs: list, request_id: str, timeout_s: float,
                 channel: tuple[str, list | None] | None = None):
        self.request_id = request_id
        self._url = url
        self.result: InpaintResult | None = None
        self._timeout_s = timeout_s
        self._responses: queue.SimpleQueue = queue.SimpleQueue()
        self._checkpoints: list[CheckpointEvent] = []
        self._open = True
        self._started = time.perf_counter()
        target, channel_args = channel or (url, None)  # the client's: balanced or not (smartedit_client._channel)
        # Balanced over several servers, an edit refused before its first event goes to the next one.
        self._resends = RETRY_ATTEMPTS - 1 if channel_args is not None else 0
        self._client = grpcclient.InferenceServerClient(url=target, channel_args=channel_args, **tls)
        self._model_name, self._inputs = model_name, inputs
        try:
            self._send()
        except InferenceServerException as error:
            # A stream that failed to connect is refused with "no longer in valid state"; the cause (the
            # connection's error) went to the callback.
            failure = self._failure(self._reported_error() or error)
            self._close(cancel=False)
            raise failure from None

    def _send(self) -> None:
        self._client.start_stream(callback=self._on_response, stream_timeout=self._timeout_s + wire.DEADLINE_GRACE_S)
        # The timeout also travels as Triton's request timeout: the server stops the edit by it too.
        self._client.async_stream_infer(self._model_name, self._inputs, request_id=self.request_id,
                                        outputs=[grpcclient.InferRequestedOutput(t.name) for t in wire.STREAM_OUTPUTS],
                                        timeout=wire.request_timeout_us(self._timeout_s))

    def _send_again(self, attempt: int) -> None:
        """The edit was refused before it began (a server shutting down, at capacity): a new stream, which
        the balanced channel gives to the next server."""
        self._client.stop_stream(cancel_requests=False)
        time.sleep(stream_backoff_s(attempt))
        self._responses = queue.SimpleQueue()
        self._send()

    def _failure(self, error) -> SmartEditError:
        def live() -> bool:
            try:
                return bool(self._client.is_server_live(client_timeout=3.0))
            except InferenceServerException:
                return False
        return reachability(from_triton(error), self._url, live)

    def _reported_error(self, wait_s: float = 1.0):
        """The error the callback was given, if any (waiting up to ``wait_s``)."""
        try:
            _, error = self._responses.get(timeout=wait_s)
        except queue.Empty:
            return None
        return error

    def _on_response(self, result, error) -> None:
        self._responses.put((result, error))

    def __enter__(self) -> "InpaintStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __iter__(self) -> Iterator[StreamEvent]:
        """The edit's events as they arrive.

        Raises:
            InvalidRequestError: a field is invalid (the message names it).
            ServerOverloadedError: the server is at capacity and refused the edit; retry later.
            RequestTimeoutError: the edit took longer than its timeout (the server stops it too; should
                the server's word come first, it is RequestCancelledError, "deadline passed").
            SmartEditError: any other failure, as a subclass named by the gRPC status.
        """
        began, resent = False, 0
        try:
            while self.result is None:
                if not self._open:
                    raise RuntimeError("the stream is closed")
                try:
                    result, error = self._responses.get(timeout=self._timeout_s + wire.DEADLINE_GRACE_S)
                except queue.Empty:
                    waited = self._timeout_s + wire.DEADLINE_GRACE_S
                    raise RequestTimeoutError(f"no word from the server for {waited:.0f} s",
                                              "DEADLINE_EXCEEDED") from None
                try:
                    if error is not None:
                        raise self._failure(error)
                    events = stream_events(result, self.request_id, self._started, self._checkpoints)
                except (ServerUnavailableError, ServerOverloadedError) as failure:
                    # Refused, or its connection lost, before it began: sent again, to the next server.
                    if began or resent >= self._resends or not resendable(failure):
                        self._close(cancel=False)
                        raise failure from None
                    try:
                        self._send_again(resent)
                    except InferenceServerException as error:  # the next server cannot be reached either
                        failure = self._failure(self._reported_error() or error)
                        self._close(cancel=False)
                        raise failure from None
                    resent += 1
                    continue
                except Exception:
                    self._close(cancel=False)
                    raise
                for event in events:
                    began = True
                    if isinstance(event, InpaintResult):
                        self.result = event
                    yield event
        finally:
            # Done, failed, or abandoned half-way (a break, an exception in the caller's loop).
            self.close()

    def cancel(self) -> None:
        """Stop the edit: the server stops denoising within a step. Harmless once the result is in."""
        self._close(cancel=self.result is None)

    def close(self) -> None:
        """Close the stream (cancelling the edit if its result has not arrived). Calling it twice is harmless."""
        self.cancel()

    def _close(self, cancel: bool) -> None:
        if not self._open:
            return
        self._open = False
        try:
            self._client.stop_stream(cancel_requests=cancel)
        finally:
            self._client.close()
