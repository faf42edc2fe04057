"""Errors as the gateway answers them: JSON ``{"field": ..., "message": ...}`` with an HTTP status
mapped from the SDK's error tree (in one place, on the error's type, never on its text)."""

from __future__ import annotations

from dataclasses import dataclass

from smartedit_client import (
    InvalidRequestError, ModelNotFoundError, RequestCancelledError, RequestTimeoutError, ServerOverloadedError,
    ServerUnavailableError, SmartEditError,
)


@dataclass
class GatewayError(Exception):
    """A request the gateway refuses or could not serve."""

    status: int
    message: str
    field: str | None = None

    def body(self) -> dict:
        return {"field": self.field, "message": self.message}


# The SDK's errors to HTTP statuses: the client's fault, retry later, not serving, too slow.
_STATUS = (
    (InvalidRequestError, 400),
    (ServerOverloadedError, 429),
    (ServerUnavailableError, 503),
    (ModelNotFoundError, 503),
    (RequestTimeoutError, 504),
    (RequestCancelledError, 504),  # the server stopped it at its deadline
)


def from_sdk(error: SmartEditError) -> GatewayError:
    """The SDK's error as the gateway answers it: the server's message as the SDK has it (without Triton's
    prefixes) and the field it names (``error.field``)."""
    message = str(error)
    for kind, status in _STATUS:
        if isinstance(error, kind):
            return GatewayError(status, message, error.field if status == 400 else None)
    return GatewayError(502, f"the inference server failed: {message}")
