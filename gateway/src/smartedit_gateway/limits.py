"""The request-size cap, enforced as the body arrives: a declared Content-Length over the cap is
refused before a byte of the body is read, and a body without one (chunked) is cut off as soon as it
passes the cap. Nothing over the cap is ever buffered."""

from __future__ import annotations

import json


class BodyTooLarge(Exception):
    pass


def caused_by_body_too_large(error: BaseException) -> bool:
    """Whether ``error`` is, or wraps, ``BodyTooLarge``: the app's middleware runs the route in an anyio
    task group, which raises what went wrong inside as an exception group."""
    if isinstance(error, BodyTooLarge):
        return True
    return any(caused_by_body_too_large(inner) for inner in getattr(error, "exceptions", ()))


class RequestSizeLimit:
    """ASGI middleware: 413 with the gateway's JSON error for bodies over ``max_bytes``."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        declared = dict(scope.get("headers", ())).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._refuse(send, int(declared))
        seen = 0
        started = False

        async def counted_receive():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge()
            return message

        async def tracked_send(message):
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted_receive, tracked_send)
        except Exception as error:
            if not caused_by_body_too_large(error):
                raise
            if not started:
                await self._refuse(send, seen)

    async def _refuse(self, send, size: int) -> None:
        body = json.dumps({"field": None, "message": f"the request body is {size} bytes or more; the limit is "
                                                     f"{self.max_bytes} bytes"}).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                                (b"connection", b"close")]})
        await send({"type": "http.response.body", "body": body})
