"""An edit request as the gateway takes it, in either of two bodies, checked against the wire contract:

- ``multipart/form-data``: ``image`` and ``mask_image`` files, every other parameter a text field;
- ``application/json``: ``image`` and ``mask_image`` base64 (a ``data:`` URL prefix is accepted), the
  parameters with their JSON types.

Every parameter is converted to the contract's type here (a bad value is a 400 naming the field);
ranges and defaults are the server's to check and apply, so they are declared once.
"""

from __future__ import annotations

import base64
import binascii
import json
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartParser
from starlette.requests import Request

from smartedit_client import _contract as wire
from smartedit_gateway.errors import GatewayError
from smartedit_gateway.limits import BodyTooLarge, caused_by_body_too_large

_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}
# Which pipeline edits (the SDK's ``pipeline=``): a field of both edit endpoints, not a tensor.
PIPELINE = wire.WireTensor("pipeline", "BYTES", False,
                           "the pipeline to edit with, by the name /info lists; default: the server's first")
EDIT_FIELDS = (PIPELINE,)
# Extra fields of the stream endpoint.
STREAM_FIELDS = EDIT_FIELDS + (wire.PREVIEW_EVERY, wire.CHECKPOINT_EVERY)
# The fields of /edit/resume/stream besides the photo, the mask and the state's own images: no edit parameter
# (the state holds them).
RESUME_FIELDS = STREAM_FIELDS


@dataclass(frozen=True)
class EditForm:
    image: bytes
    mask_image: bytes | None  # None: the task edits the whole photo (or the server refuses it by name)
    parameters: dict[str, Any]  # named as the contract's inputs; only those sent


def _bad(field: str, message: str) -> GatewayError:
    return GatewayError(400, f"{field}: {message}", field)


def _described(value: Any, from_text: bool) -> str:
    """A value as the person who sent it wrote it: a JSON value by its JSON type (so that the string "true"
    refused where a boolean is wanted does not read as "must be true or false, got 'true'")."""
    if from_text:
        return json.dumps(value[:60])
    if isinstance(value, bool):
        return f"the JSON {'true' if value else 'false'}"
    if isinstance(value, str):
        return f"the string {json.dumps(value[:60])}"
    if isinstance(value, (int, float)):
        return f"the number {value!r}"
    return {type(None): "null", list: "a list", dict: "an object"}.get(type(value), type(value).__name__)


def _typed(spec: wire.WireTensor, value: Any, from_text: bool) -> Any:
    """``value`` as the contract's type of ``spec`` (text from a form, or a JSON value)."""
    name, kind = spec.name, spec.datatype
    got = _described(value, from_text)
    if kind == "BYTES":
        if not isinstance(value, str):
            raise _bad(name, f"must be text, got {got}")
        return value
    if kind == "BOOL":
        if isinstance(value, bool):
            return value
        if from_text and isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
            return value.strip().lower() in _TRUE
        wanted = "true or false" if from_text else "true or false (a JSON boolean)"
        raise _bad(name, f"must be {wanted}, got {got}")
    if kind.startswith("INT"):
        if isinstance(value, bool):
            raise _bad(name, f"must be an integer, got {got}")
        # In JSON too a 64-bit value (the seed) may come as a string of digits: JavaScript's numbers lose
        # integers past 2^53, so a browser can only send such a seed as text.
        as_text = isinstance(value, str) and (from_text or kind == "INT64")
        try:
            number = int(value.strip()) if as_text else value
        except ValueError:
            raise _bad(name, f"must be an integer, got {got}") from None
        if not isinstance(number, int):
            raise _bad(name, f"must be an integer, got {got}")
        return number
    if isinstance(value, bool):
        raise _bad(name, f"must be a number, got {got}")
    try:
        return float(value.strip()) if from_text and isinstance(value, str) else float(value)
    except (TypeError, ValueError):
        raise _bad(name, f"must be a number, got {got}") from None


def _parameters(values: dict[str, Any], from_text: bool, extra: tuple[wire.WireTensor, ...]) -> dict[str, Any]:
    specs = {spec.name: spec for spec in wire.PARAMETERS + extra}
    unknown = sorted(set(values) - set(specs) - set(_EDIT_IMAGES))
    if unknown:
        raise _bad(unknown[0], f"is not a parameter of this API; known: {', '.join(sorted(specs))}")
    parameters = {name: _typed(specs[name], value, from_text) for name, value in values.items()
                  if name in specs and value is not None}
    if wire.PROMPT.name not in parameters:
        raise _bad(wire.PROMPT.name, "is required (it may be empty)")
    return parameters


class NotUtf8(Exception):
    def __init__(self, field: str):
        self.field = field


class _StrictTextParser(MultiPartParser):
    """Starlette's multipart parser, but a text field that is not UTF-8 is refused: Starlette decodes it as
    Latin-1 without a word, and the edit would run with a mangled prompt (the gRPC path refuses one)."""

    def on_part_end(self) -> None:
        part = self._current_part
        if part.file is None:
            try:
                bytes(part.data).decode(self._charset or "utf-8")
            except (UnicodeDecodeError, LookupError):
                raise NotUtf8(part.field_name) from None
        super().on_part_end()


async def _form(request: Request):
    """The multipart form (its files spooled; ``close()`` it once read)."""
    try:
        async with aclosing(request.stream()) as stream:
            return await _StrictTextParser(request.headers, stream).parse()
    except NotUtf8 as error:
        raise _bad(error.field, "is not UTF-8 text; send text fields encoded as UTF-8") from None
    except Exception as error:
        if caused_by_body_too_large(error):
            raise BodyTooLarge() from None  # the size cap answers it
        # Starlette's parser: a malformed body
        raise GatewayError(400, f"the multipart body could not be read: {getattr(error, 'detail', error)}") from None


async def _json_object(request: Request) -> dict:
    try:
        body = await request.json()
    except ValueError as error:
        raise GatewayError(400, f"the body is not valid JSON: {error}") from None
    if not isinstance(body, dict):
        raise GatewayError(400, "the body must be a JSON object")
    return body


def _decoded_base64(field: str, value: Any) -> bytes:
    if not isinstance(value, str):
        raise _bad(field, f"must be a base64 string, got {type(value).__name__}")
    if value.startswith("data:"):
        value = value.partition(",")[2]  # data:image/png;base64,....
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as error:
        raise _bad(field, f"is not valid base64 ({error})") from None


# The images every edit needs: the photo (the mask only for the tasks that repaint one; the server names it
# when a task needs it and none came).
_REQUIRED_IMAGES = tuple(spec.name for spec in (wire.IMAGE, wire.MASK_IMAGE) if spec.required)
# Every image an edit may carry: the photo, its mask and the contract's image options (a ControlNet's control_image,
# handed to the SDK as an option).
_EDIT_IMAGES = (wire.IMAGE.name, wire.MASK_IMAGE.name, *(spec.name for spec in wire.IMAGE_OPTIONS))


async def _multipart(request: Request) -> tuple[dict[str, bytes], dict[str, str]]:
    """A multipart body's (file fields' bytes, text fields), by name."""
    form = await _form(request)
    files, fields = {}, {}
    try:
        for name, value in form.multi_items():
            if isinstance(value, UploadFile):
                files[name] = await value.read()
            else:
                fields[name] = value
    finally:
        await form.close()
    return files, fields


async def read_edit(request: Request, extra: tuple[wire.WireTensor, ...] = ()) -> EditForm:
    """The edit a request carries, its body's kind chosen by its Content-Type.

    Raises:
        GatewayError: 400 naming the field; 415 for another body type.
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        files, fields = await _multipart(request)
        for name in _REQUIRED_IMAGES:
            if name not in files:
                raise _bad(name, "is required: send it as a file field of the form")
        for name in _EDIT_IMAGES:
            if name in fields:  # dropped, it would leave the edit without the image the caller meant to send
                raise _bad(name, "must be a file field of the form, not a text field")
        parameters = _parameters(fields, from_text=True, extra=extra)
        parameters.update({spec.name: files[spec.name] for spec in wire.IMAGE_OPTIONS if spec.name in files})
        return EditForm(files[wire.IMAGE.name], files.get(wire.MASK_IMAGE.name), parameters)
    if content_type == "application/json":
        body = await _json_object(request)
        images = {}
        for name in _EDIT_IMAGES:
            if body.get(name) is None:
                if name in _REQUIRED_IMAGES:
                    raise _bad(name, "is required: base64 of the encoded image")
                continue
            images[name] = _decoded_base64(name, body[name])
        parameters = _parameters(body, from_text=False, extra=extra)
        parameters.update({spec.name: images[spec.name] for spec in wire.IMAGE_OPTIONS if spec.name in images})
        return EditForm(images[wire.IMAGE.name], images.get(wire.MASK_IMAGE.name), parameters)
    raise GatewayError(415, f"send multipart/form-data or application/json, not {content_type or 'no Content-Type'}")


@dataclass(frozen=True)
class ResumeForm:
    image: bytes
    mask_image: bytes | None
    resume_state: bytes
    resume_image: bytes | None
    fields: dict[str, Any]  # pipeline, preview_every, checkpoint_every: only those sent
    control_image: bytes | None = None  # a ControlNet edit's conditioning image, as the first edit sent it


_RESUME_BYTES = (wire.RESUME_STATE.name, wire.RESUME_IMAGE.name)
# The images a resume sends again as the first edit sent them: files in a form, base64 in JSON.
_RESUME_PHOTOS = (wire.IMAGE.name, wire.MASK_IMAGE.name, wire.CONTROL_IMAGE.name)


def _resume_fields(values: dict[str, Any], from_text: bool) -> dict[str, Any]:
    specs = {spec.name: spec for spec in RESUME_FIELDS}
    edit_parameters = {spec.name for spec in wire.PARAMETERS}
    for name in sorted(set(values) - set(specs) - {*_RESUME_PHOTOS, *_RESUME_BYTES}):
        if name in edit_parameters:
            raise _bad(name, "is not sent with resume_state: the state holds the edit's parameters")
        raise _bad(name, f"is not a field of /edit/resume/stream; known: "
                         f"{', '.join(sorted([*_RESUME_PHOTOS, *_RESUME_BYTES, *specs]))}")
    return {name: _typed(specs[name], value, from_text) for name, value in values.items()
            if name in specs and value is not None}


async def read_resume(request: Request) -> ResumeForm:
    """A resuming request: ``image`` and ``mask_image`` (the first edit's, as sent), ``resume_state`` (a
    checkpoint's state: a file, or base64 text) and optionally ``resume_image`` (the checkpoint's image painted
    on: a file, or base64) and ``control_image`` (a ControlNet edit's, as sent), plus ``pipeline``,
    ``preview_every`` and ``checkpoint_every``; no edit parameter.

    Raises:
        GatewayError: 400 naming the field; 415 for another body type.
    """
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        files, fields = await _multipart(request)
        for name in _RESUME_BYTES:  # a text field: base64 (a state is binary)
            if name in fields:
                files[name] = _decoded_base64(name, fields.pop(name))
        for name in (*_REQUIRED_IMAGES, wire.RESUME_STATE.name):
            if name not in files:
                raise _bad(name, "is required: send it as a file field of the form")
        for name in (wire.MASK_IMAGE.name, wire.CONTROL_IMAGE.name):
            if name in fields:  # dropped, it would leave the resume without the image the caller meant to send
                raise _bad(name, "must be a file field of the form, not a text field")
        unexpected = sorted(set(files) - {*_RESUME_PHOTOS, *_RESUME_BYTES})
        if unexpected:
            fields.setdefault(unexpected[0], "")  # named by _resume_fields
        parameters = _resume_fields(fields, from_text=True)
    elif content_type == "application/json":
        body = await _json_object(request)
        files = {}
        for name in (*_RESUME_PHOTOS, *_RESUME_BYTES):
            if body.get(name) is None:
                if name in (*_REQUIRED_IMAGES, wire.RESUME_STATE.name):
                    raise _bad(name, "is required: base64" + (" of the encoded image" if "image" in name else ""))
                continue
            files[name] = _decoded_base64(name, body[name])
        parameters = _resume_fields(body, from_text=False)
    else:
        raise GatewayError(415, f"send multipart/form-data or application/json, not "
                                f"{content_type or 'no Content-Type'}")
    return ResumeForm(files[wire.IMAGE.name], files.get(wire.MASK_IMAGE.name), files[wire.RESUME_STATE.name],
                      files.get(wire.RESUME_IMAGE.name), parameters, files.get(wire.CONTROL_IMAGE.name))


def resume_openapi_schema() -> dict:
    """/edit/resume/stream's request body in OpenAPI: what ``read_resume`` takes, in either body type."""
    kinds = {"BYTES": {"type": "string"}, "INT32": {"type": "integer"}}
    properties = {}
    for spec in RESUME_FIELDS:
        schema = dict(kinds[spec.datatype], description=spec.meaning)
        if spec.minimum is not None:
            schema["minimum"] = spec.minimum
        properties[spec.name] = schema
    docs = {spec.name: spec.meaning for spec in (wire.IMAGE, wire.MASK_IMAGE, wire.RESUME_STATE, wire.RESUME_IMAGE)}
    docs[wire.CONTROL_IMAGE.name] = ("a ControlNet edit's conditioning image, the same bytes the checkpoint's edit was "
                                     "sent with (when it was sent one)")
    multipart = {name: {"type": "string", "format": "binary", "description": doc} for name, doc in docs.items()}
    for name in _RESUME_BYTES:
        multipart[name]["description"] += " (a file, or its base64 as a text field)"
    as_json = {name: {"type": "string", "format": "byte", "description": f"base64: {doc}"}
               for name, doc in docs.items()}
    required = [*_REQUIRED_IMAGES, wire.RESUME_STATE.name]
    meaning = "no edit parameter: the state holds them (one sent is refused, 400 naming it)"
    return {"required": True, "description": meaning, "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": required,
                                           "properties": {**multipart, **properties}}},
        "application/json": {"schema": {"type": "object", "required": required,
                                        "properties": {**as_json, **properties}}},
    }}


def openapi_schema(with_stream_fields: bool = False) -> dict:
    """The request body's OpenAPI description, from the contract: one schema per body type."""
    kinds = {"BYTES": {"type": "string"}, "BOOL": {"type": "boolean"}, "INT32": {"type": "integer"},
             # a string of digits too: see _typed
             "INT64": {"type": ["integer", "string"], "pattern": "^-?[0-9]+$"}, "FP32": {"type": "number"}}
    properties = {}
    for spec in wire.PARAMETERS + (STREAM_FIELDS if with_stream_fields else EDIT_FIELDS):
        schema = dict(kinds[spec.datatype], description=spec.meaning)
        if spec.minimum is not None:
            schema["minimum"] = spec.minimum
        if spec.maximum is not None:
            schema["maximum"] = spec.maximum
        if spec.choices:
            schema["enum"] = list(spec.choices)
        properties[spec.name] = schema
    image_doc = {spec.name: spec.meaning for spec in (wire.IMAGE, wire.MASK_IMAGE, *wire.IMAGE_OPTIONS)}
    multipart = {name: {"type": "string", "format": "binary", "description": doc} for name, doc in image_doc.items()}
    as_json = {name: {"type": "string", "format": "byte", "description": f"base64: {doc}"}
               for name, doc in image_doc.items()}
    required = [*_REQUIRED_IMAGES, wire.PROMPT.name]
    return {"required": True, "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": required,
                                           "properties": {**multipart, **properties}}},
        "application/json": {"schema": {"type": "object", "required": required,
                                        "properties": {**as_json, **properties}}},
    }}


@dataclass(frozen=True)
class SegmentForm:
    image: bytes
    points: list | None  # [[x, y, label], ...]
    box: list | None  # [x0, y0, x1, y1]


def _json_field(name: str, value: Any, from_text: bool) -> Any:
    if from_text and isinstance(value, str):
        try:
            return json.loads(value)
        except ValueError:
            raise _bad(name, f"must be JSON, got {value!r:.60}") from None
    return value


async def read_segment(request: Request) -> SegmentForm:
    """A click-to-mask request: ``image`` (a file, or base64 in JSON), ``points`` ([[x, y, label], ...],
    label 1 = object, 0 = background; JSON text in a form) and/or ``box`` ([x0, y0, x1, y1])."""
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type == "multipart/form-data":
        form = await _form(request)
        try:
            image = form.get("image")
            if image is None or isinstance(image, str):
                raise _bad("image", "is required: send it as a file field of the form")
            image_bytes, values, from_text = await image.read(), dict(form), True
        finally:
            await form.close()
    elif content_type == "application/json":
        values = await _json_object(request)
        image_bytes, from_text = _decoded_base64("image", values.get("image")), False
    else:
        raise GatewayError(415, f"send multipart/form-data or application/json, not {content_type or 'no Content-Type'}")
    unknown = sorted(set(values) - {"image", "points", "box"})
    if unknown:
        raise _bad(unknown[0], "is not a parameter of /segment; known: image, points, box")
    points = _json_field("points", values.get("points"), from_text)
    box = _json_field("box", values.get("box"), from_text)
    if points is not None and not (isinstance(points, list) and all(
            isinstance(p, list) and len(p) in (2, 3) and all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                                             for v in p) for p in points)):
        raise _bad("points", "must be a list of [x, y] or [x, y, label]")
    if points is not None and any(len(p) == 3 and p[2] not in (0, 1) for p in points):
        raise _bad("points", "labels must be 1 (on the object) or 0 (background)")
    if box is not None and not (isinstance(box, list) and len(box) == 4 and all(isinstance(v, (int, float)) for v in box)):
        raise _bad("box", "must be [x0, y0, x1, y1]")
    return SegmentForm(image_bytes, points, box)


def segment_openapi_schema() -> dict:
    """/segment's request body in OpenAPI: what ``read_segment`` takes, in either body type."""
    points_doc = "clicks [[x, y, label], ...] in the photo's pixels; label 1 = on the object, 0 = background"
    box_doc = "[x0, y0, x1, y1] around the object, in the photo's pixels"
    image_doc = "the photo: PNG, JPEG or WebP"
    point = {"type": "array", "items": {"type": "number"}, "minItems": 2, "maxItems": 3}
    box = {"type": "array", "items": {"type": "number"}, "minItems": 4, "maxItems": 4}
    multipart = {"image": {"type": "string", "format": "binary", "description": image_doc},
                 "points": {"type": "string", "description": f"JSON text: {points_doc}", "example": "[[120, 80, 1]]"},
                 "box": {"type": "string", "description": f"JSON text: {box_doc}", "example": "[40, 30, 200, 160]"}}
    as_json = {"image": {"type": "string", "format": "byte", "description": f"base64: {image_doc}"},
               "points": {"type": "array", "items": point, "description": points_doc},
               "box": dict(box, description=box_doc)}
    meaning = "at least one of points and box"
    return {"required": True, "description": meaning, "content": {
        "multipart/form-data": {"schema": {"type": "object", "required": ["image"], "properties": multipart}},
        "application/json": {"schema": {"type": "object", "required": ["image"], "properties": as_json}},
    }}
