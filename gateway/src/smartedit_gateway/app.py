"""The gateway's HTTP API (FastAPI), calling Triton over gRPC with ``AsyncInpaintClient``.

    POST /edit/inpaint          multipart or JSON in (``smartedit_gateway.forms``); image/png out, or
                                JSON (base64 images, seeds, parameters) with ``Accept: application/json``
    POST /edit/inpaint/stream   the same edit as Server-Sent Events: progress, previews, checkpoints, the result
    POST /edit/resume/stream    a checkpoint's resume_state (and its image painted on) continued, as the stream
    POST /segment               click-to-mask: image + points and/or box -> mask PNG (Segment Anything)
    GET  /health                200 only while Triton and the model are ready
    GET  /info                  what the server offers (the SDK's ``server_info``; ?pipeline=NAME for one)

Both edit endpoints take a ``pipeline`` field: which of the server's pipelines edits (``/info`` lists
them; default: the first).
    GET  /docs, /redoc          the API's documentation (Swagger UI, ReDoc: files the gateway ships)
    GET  /openapi.json          the API's OpenAPI document
    GET  /                      the browser editor (static/)

Errors are JSON ``{"field": ..., "message": ...}`` with 400 / 413 / 415 / 429 / 502 / 503 / 504.
Seeds in JSON answers are strings of digits (``"seed": "7899758643369034638"``): seeds are 64-bit, and
JavaScript's numbers (and many JSON libraries') lose integers past 2^53.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import time
import uuid
from contextlib import asynccontextmanager
from dataclasses import dataclass

from fastapi import FastAPI, Request
from fastapi.middleware.cors import CORSMiddleware
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from smartedit_client import (
    AsyncInpaintClient, CheckpointEvent, InpaintResult, PreviewEvent, ProgressEvent, SmartEditError,
)
from smartedit_gateway import logs
from smartedit_gateway.errors import GatewayError, from_sdk
from smartedit_gateway.forms import (
    EDIT_FIELDS, STREAM_FIELDS, openapi_schema, read_edit, read_resume, resume_openapi_schema, read_segment,
    segment_openapi_schema,
)
from smartedit_gateway.limits import RequestSizeLimit
from smartedit_gateway.pages import add_pages

log = logging.getLogger("smartedit.gateway")
REQUEST_ID_HEADER = "X-Request-Id"


@dataclass(frozen=True)
class GatewaySettings:
    triton_url: str = "127.0.0.1:8001"  # Triton's gRPC endpoint
    timeout_s: float = 300.0  # per edit
    max_request_bytes: int = 64 * 1024 * 1024  # as the chart's Ingress
    cors_origins: tuple[str, ...] = ()  # browsers' origins allowed to call it; () for none, ("*",) for any
    ssl: bool = False
    root_certificates: str | None = None
    balance: bool | None = None  # over every address of triton_url's name (smartedit_client._channel); None: auto


def _wants_json(request: Request) -> bool:
    accept = request.headers.get("accept", "")
    return "application/json" in accept and "image/png" not in accept


def _seed_as_string(record: dict | None) -> dict | None:
    """An image's record (the PNG's ``smartedit`` JSON) with its seed as a string, like the answer's."""
    if not record or not isinstance(record.get("parameters"), dict) or record["parameters"].get("seed") is None:
        return record
    return {**record, "parameters": {**record["parameters"], "seed": str(record["parameters"]["seed"])}}


def result_json(result: InpaintResult) -> dict:
    # Seeds as strings: a browser's JSON.parse would round 7899758643369034638 to 7899758643369035000.
    return {"request_id": result.request_id, "elapsed_s": round(result.elapsed_s, 3),
            "images": [{"seed": str(image.seed_used), "png_base64": base64.b64encode(image.png).decode(),
                        "parameters": _seed_as_string(image.parameters)} for image in result.images]}


def _sse(event: str, data: dict) -> bytes:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n".encode()


def _sse_event(event) -> bytes:
    if isinstance(event, CheckpointEvent):  # matched first: the branches below must not take it
        return _sse("checkpoint", {"step": event.step, "total_steps": event.total_steps,
                                   "png_base64": base64.b64encode(event.png).decode(),
                                   "resume_state_base64": base64.b64encode(event.resume_state).decode()})
    if isinstance(event, PreviewEvent):
        return _sse("preview", {"step": event.step, "total_steps": event.total_steps,
                                "png_base64": base64.b64encode(event.png).decode()})
    if isinstance(event, ProgressEvent):
        return _sse("progress", {"step": event.step, "total_steps": event.total_steps})
    return _sse("result", result_json(event))


def _event_stream(stream, first=None, events=None) -> StreamingResponse:
    """A streamed edit's events as Server-Sent Events. ``first`` and ``events``: an event already read
    (see ``_first_event``) and the iterator it came from."""
    async def sent():
        try:
            async with stream:
                if first is not None:
                    yield _sse_event(first)
                async for event in (events if events is not None else stream):
                    yield _sse_event(event)
        except SmartEditError as error:
            failure = from_sdk(error)
            yield _sse("error", {"status": failure.status, **failure.body()})
        except Exception:  # the headers are sent: the failure can only travel as an event
            log.exception("the stream failed")
            yield _sse("error", {"status": 502, "field": None, "message": "the edit's stream failed"})

    return StreamingResponse(sent(), media_type="text/event-stream", headers={"Cache-Control": "no-cache"})


async def _first_event(stream):
    """The stream's first event and its iterator, read before any header is sent: the server checks a request
    (a resume_state above all) before its first step, so a refusal is answered as a 400 naming the field, not
    as an ``error`` event after a 200.

    Raises:
        GatewayError: the SDK's error, mapped.
    """
    events = aiter(stream)
    try:
        return await anext(events), events
    except SmartEditError as error:
        await stream.cancel()
        raise from_sdk(error) from None


def create_app(settings: GatewaySettings = GatewaySettings()) -> FastAPI:
    @asynccontextmanager
    async def lifespan(app: FastAPI):
        app.state.client = AsyncInpaintClient(settings.triton_url, timeout_s=settings.timeout_s, ssl=settings.ssl,
                                              root_certificates=settings.root_certificates, balance=settings.balance)
        yield
        await app.state.client.close()

    app = FastAPI(title="SmartEdit", version="0.1.0", lifespan=lifespan, docs_url=None, redoc_url=None,
                  description="Diffusion image editing: inpainting, object removal, background replacement. "
                              "Every parameter is the gRPC wire contract's, with the same name. Seeds in JSON "
                              "answers are strings of digits (64-bit seeds do not fit JavaScript's numbers); "
                              "a seed may be sent as a number or as such a string.")
    add_pages(app, "SmartEdit")  # /, /docs, /redoc: from the gateway's own files

    @app.middleware("http")
    async def request_id_and_log(request: Request, call_next):
        token = logs.request_id.set(request.headers.get(REQUEST_ID_HEADER) or uuid.uuid4().hex)
        started = time.perf_counter()
        try:
            response = await call_next(request)
            response.headers[REQUEST_ID_HEADER] = logs.request_id.get()
            log.info("%s %s %d", request.method, request.url.path, response.status_code, extra={"fields": {
                "method": request.method, "path": request.url.path, "status": response.status_code,
                "duration_ms": round((time.perf_counter() - started) * 1000, 3)}})
            return response
        finally:
            logs.request_id.reset(token)

    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=list(settings.cors_origins), allow_methods=["GET", "POST"],
                           allow_headers=["*"], expose_headers=[REQUEST_ID_HEADER, "X-Seed", "X-Score"])
    # Outermost: an oversize body is refused before anything reads it.
    app.add_middleware(RequestSizeLimit, max_bytes=settings.max_request_bytes)

    @app.exception_handler(GatewayError)
    async def gateway_error(request: Request, error: GatewayError):
        log.warning("refused: %s", error.message, extra={"fields": {"status": error.status, "field": error.field}})
        return JSONResponse(error.body(), status_code=error.status)

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, error: StarletteHTTPException):  # 404, 405, ...: the same JSON shape
        return JSONResponse({"field": None, "message": str(error.detail)}, status_code=error.status_code,
                            headers=getattr(error, "headers", None))

    @app.post("/edit/inpaint", openapi_extra={"requestBody": openapi_schema()},
              responses={200: {"content": {"image/png": {}, "application/json": {}},
                               "description": "the edited PNG (X-Seed header), or JSON with every image "
                                              "(seeds as strings of digits)"}})
    async def edit_inpaint(request: Request):
        """One edit: ``image`` and ``mask_image`` plus the wire contract's parameters. ``image/png`` back
        (the first image; ``X-Seed`` its seed), or with ``Accept: application/json`` every image as base64."""
        form = await read_edit(request, extra=EDIT_FIELDS)
        try:
            result = await request.app.state.client.inpaint(image=form.image, mask_image=form.mask_image,
                                                            request_id=logs.request_id.get(), **form.parameters)
        except SmartEditError as error:
            raise from_sdk(error) from None
        if _wants_json(request):
            return JSONResponse(result_json(result), headers={"X-Seed": str(result.seed_used)})
        return Response(result.png, media_type="image/png", headers={"X-Seed": str(result.seed_used)})

    @app.post("/edit/inpaint/stream", openapi_extra={"requestBody": openapi_schema(with_stream_fields=True)},
              responses={200: {"content": {"text/event-stream": {}},
                               "description": "events: progress, preview (base64 PNG), checkpoint (base64 PNG "
                                              "and resume state), then result or error"}})
    async def edit_inpaint_stream(request: Request):
        """The same edit as Server-Sent Events: ``progress`` {step, total_steps} after every step,
        ``preview`` {step, total_steps, png_base64} every ``preview_every`` steps, ``checkpoint`` {step,
        total_steps, png_base64, resume_state_base64} every ``checkpoint_every`` steps (default 0, none; for
        /edit/resume/stream), then ``result`` (as the JSON of /edit/inpaint) or ``error`` {status, field,
        message}. Closing the connection cancels the edit."""
        form = await read_edit(request, extra=STREAM_FIELDS)
        try:
            stream = request.app.state.client.inpaint_stream(image=form.image, mask_image=form.mask_image,
                                                             request_id=logs.request_id.get(), **form.parameters)
        except SmartEditError as error:  # found before sending (a value out of its wire type's range)
            raise from_sdk(error) from None
        return _event_stream(stream)

    @app.post("/edit/resume/stream", openapi_extra={"requestBody": resume_openapi_schema()},
              responses={200: {"content": {"text/event-stream": {}},
                               "description": "events as /edit/inpaint/stream's: progress, preview, checkpoint, "
                                              "then result or error"}})
    async def edit_resume_stream(request: Request):
        """Continue an edit from a checkpoint: ``image`` and ``mask_image`` exactly as the first edit sent them,
        ``resume_state`` (a ``checkpoint`` event's ``resume_state_base64``, decoded: a file, or base64 text)
        and optionally ``resume_image`` (the checkpoint's PNG painted on, same size) and ``control_image`` (a
        ControlNet edit's conditioning image, as the first edit sent it); ``pipeline``,
        ``preview_every`` and ``checkpoint_every`` as the stream's. No edit parameter: the state holds them
        (one sent is refused, 400 naming it). The same events as /edit/inpaint/stream; a state, photo or mask
        the server refuses is a 400 JSON answer naming the field, before any event."""
        form = await read_resume(request)
        try:
            stream = request.app.state.client.resume_stream(
                form.resume_state, image=form.image, mask_image=form.mask_image, resume_image=form.resume_image,
                control_image=form.control_image, request_id=logs.request_id.get(), **form.fields)
        except SmartEditError as error:
            raise from_sdk(error) from None
        first, events = await _first_event(stream)
        return _event_stream(stream, first, events)

    @app.post("/segment", openapi_extra={"requestBody": segment_openapi_schema()},
              responses={200: {"content": {"image/png": {}, "application/json": {}},
                               "description": "the mask PNG (X-Score header), or JSON"}})
    async def segment(request: Request):
        """Click-to-mask (Segment Anything): ``image`` plus ``points`` ([[x, y, label], ...], label 1 =
        on the object, 0 = background) and/or ``box`` ([x0, y0, x1, y1]), as multipart (points and box
        as JSON text fields) or JSON (image base64). The mask PNG back (255 = the object), ready to send
        as ``mask_image``; ``Accept: application/json`` for ``{"png_base64", "score"}``."""
        form = await read_segment(request)
        try:
            result = await request.app.state.client.segment(image=form.image, points=form.points, box=form.box,
                                                            request_id=logs.request_id.get())
        except SmartEditError as error:
            raise from_sdk(error) from None
        score = f"{result.score:.6f}"
        if _wants_json(request):
            return JSONResponse({"request_id": result.request_id, "score": result.score,
                                 "png_base64": base64.b64encode(result.png).decode()}, headers={"X-Score": score})
        return Response(result.png, media_type="image/png", headers={"X-Score": score})

    @app.get("/health")
    async def health(request: Request):
        """200 while Triton and the ``inpaint`` model are ready; 503 otherwise (for probes)."""
        if await request.app.state.client.is_ready():
            return {"status": "ready"}
        return JSONResponse({"status": "unavailable", "field": None,
                             "message": f"the inference server at {settings.triton_url} is not ready"}, status_code=503)

    @app.get("/info")
    async def info(request: Request, pipeline: str | None = None):
        """What the server offers: model, working resolution, samplers, tasks, each parameter's range
        and default; of ``pipeline`` (default: the server's first), and of every pipeline in ``pipelines``."""
        try:
            return dataclasses.asdict(await request.app.state.client.server_info(pipeline=pipeline))
        except SmartEditError as error:
            raise from_sdk(error) from None

    return app
