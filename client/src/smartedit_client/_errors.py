"""Errors the client raises. gRPC status codes are mapped to them here and nowhere else.

    SmartEditError                     every error this package raises
    ├── InvalidRequestError            INVALID_ARGUMENT: a field is wrong; the message names it
    ├── RequestTimeoutError            DEADLINE_EXCEEDED: the per-call timeout passed
    ├── RequestCancelledError          CANCELLED
    ├── ServerUnavailableError         UNAVAILABLE: no server at the URL, or it is shutting down
    ├── ServerOverloadedError          RESOURCE_EXHAUSTED, or UNAVAILABLE refusing for capacity: retry later
    ├── ModelNotFoundError             NOT_FOUND: the server does not serve the model
    └── ServerError                    INTERNAL and anything else: a fault on the server's side

Mapping is by status code. One status needs a second look: Triton has no RESOURCE_EXHAUSTED, so a
server at capacity refuses with UNAVAILABLE, like a server that is down. Its refusals name their
reason with one of the wire contract's fixed ``CAPACITY_REFUSALS`` phrases, and only those make an
UNAVAILABLE a ``ServerOverloadedError``. An UNAVAILABLE that gRPC raises because nothing answers at
the address reads the same as a server's own refusal; the clients ask the server whether it is live
(``reachability``) and say "cannot reach the SmartEdit server at HOST:PORT" when it is not.

Every error carries the server's own message: Triton's ``in ensemble 'inpaint', `` prefix (which the
server's log keeps) is taken off, and ``field`` names the request field a bad request was refused
for, where the message names one (``image``, ``num_inference_steps``, ...).
"""

from __future__ import annotations

import re
from typing import Callable

from smartedit_client import _contract as wire
from smartedit_client._contract import CAPACITY_REFUSALS

# What an error's message may name as the field it is about: the contract's inputs, and the arguments
# of the SDK's own that are not inputs.
_FIELDS = frozenset(t.name for t in wire.STREAM_INPUTS + wire.SEGMENT_INPUTS + wire.INPUTS) | {"points", "png"}
_ENSEMBLE_PREFIX = re.compile(r"^(in ensemble '[^']*', )+")
UNREACHABLE = "cannot reach the SmartEdit server at {target} (is `smartedit serve` running?)"


class SmartEditError(Exception):
    """Base of every error this package raises.

    Attributes:
        status: the gRPC status code name (``"INVALID_ARGUMENT"``), or None for client-side errors.
        field: the request field the error is about (``"image"``, ``"num_inference_steps"``), or None.
        detail: for an unreachable server, what gRPC said; else None.
    """

    def __init__(self, message: str, status: str | None = None, field: str | None = None):
        super().__init__(message)
        self.status = status
        self.field = field
        self.detail: str | None = None


class InvalidRequestError(SmartEditError):
    """The request was rejected; its message names the field and the bad value (``field``)."""

    def __init__(self, message: str, status: str | None = None, field: str | None = None):
        super().__init__(message, status, field or field_of(message))


class RequestTimeoutError(SmartEditError):
    """The call did not finish within its timeout."""


class RequestCancelledError(SmartEditError):
    """The request was cancelled before it finished."""


class ServerUnavailableError(SmartEditError):
    """The server could not be reached, or is not serving."""


class ServerOverloadedError(SmartEditError):
    """The server refused the request for lack of capacity; retrying later may succeed."""


class ModelNotFoundError(SmartEditError):
    """The server does not serve the requested model."""


class ServerError(SmartEditError):
    """The server failed while handling a valid request."""


_BY_STATUS: dict[str, type[SmartEditError]] = {
    "INVALID_ARGUMENT": InvalidRequestError,
    "DEADLINE_EXCEEDED": RequestTimeoutError,
    "CANCELLED": RequestCancelledError,
    "UNAVAILABLE": ServerUnavailableError,
    "RESOURCE_EXHAUSTED": ServerOverloadedError,
    "NOT_FOUND": ModelNotFoundError,
}


def status_name(status: object) -> str | None:
    """``"INVALID_ARGUMENT"`` from tritonclient's status (``"StatusCode.INVALID_ARGUMENT"``) or a grpc code."""
    if status is None:
        return None
    name = getattr(status, "name", None) or str(status)
    return name.rsplit(".", 1)[-1]


def field_of(message: str) -> str | None:
    """The field a SmartEdit message names: its messages about a field start with ``<field>: ``."""
    head, separator, _ = message.partition(": ")
    return head if separator and head in _FIELDS else None


def server_message(message: str) -> str:
    """The server's own words: without the ``in ensemble '<name>', `` Triton puts before a step's error."""
    return _ENSEMBLE_PREFIX.sub("", message, count=1)


def from_status(status: str | None, message: str) -> SmartEditError:
    """The error for a gRPC status name ("INVALID_ARGUMENT") and the server's message."""
    message = server_message(message)
    if status == "UNAVAILABLE" and any(reason in message for reason in CAPACITY_REFUSALS):
        return ServerOverloadedError(message, status)
    kind = _BY_STATUS.get(status, ServerError)
    return kind(message, status, field_of(message) if kind is InvalidRequestError else None)


def from_triton(error: Exception) -> SmartEditError:
    """Translate a ``tritonclient`` exception into this package's error tree, by status code."""
    status_method = getattr(error, "status", None)
    status = status_name(status_method() if callable(status_method) else None)
    message_method = getattr(error, "message", None)
    message = (message_method() if callable(message_method) else None) or str(error)
    return from_status(status, message)


def reachability(failure: SmartEditError, target: str, live: Callable[[], bool]) -> SmartEditError:
    """``failure``, or -- for a plain UNAVAILABLE from a server that does not answer ``live()`` -- the
    error saying that nothing SmartEdit answers at ``target`` (gRPC's words in ``detail``)."""
    if type(failure) is not ServerUnavailableError or live():
        return failure
    return unreachable(target, str(failure))


def unreachable(target: str, detail: str) -> ServerUnavailableError:
    error = ServerUnavailableError(UNREACHABLE.format(target=target), "UNAVAILABLE")
    error.detail = detail
    return error

