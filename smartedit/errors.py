"""The server side's one error type for bad requests."""

from __future__ import annotations


class RequestError(ValueError):
    """A request the server will not serve; becomes ``INVALID_ARG`` naming ``field``."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field
