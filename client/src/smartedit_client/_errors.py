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
UNAVAILABLE a ``ServerOverloadedError``.
"""

from __future__ import annotations

from smartedit_client._contract import CAPACITY_REFUSALS


class SmartEditError(Exception):
    """Base of every error this package raises.

    Attributes:
        status: the gRPC status code name (``"INVALID_ARGUMENT"``), or None for client-side errors.
    """

    def __init__(self, message: str, status: str | None = None):
        super().__init__(message)
        self.status = status


class InvalidRequestError(SmartEditError):
    """The request was rejected; its message names the field and the bad value."""


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


def from_status(status: str | None, message: str) -> SmartEditError:
    """The error for a gRPC status name ("INVALID_ARGUMENT") and the server's message."""
    if status == "UNAVAILABLE" and any(reason in message for reason in CAPACITY_REFUSALS):
        return ServerOverloadedError(message, status)
    return _BY_STATUS.get(status, ServerError)(message, status)


def from_triton(error: Exception) -> SmartEditError:
    """Translate a ``tritonclient`` exception into this package's error tree, by status code."""
    status_method = getattr(error, "status", None)
    status = status_name(status_method() if callable(status_method) else None)
    message_method = getattr(error, "message", None)
    message = (message_method() if callable(message_method) else None) or str(error)
    return from_status(status, message)
