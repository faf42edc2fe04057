"""The server side's one error type for bad requests."""

from __future__ import annotations


class RequestError(ValueError):
    """A request the server will not serve; becomes ``INVALID_ARG`` naming ``field``."""

    def __init__(self, field: str, message: str):
        super().__init__(f"{field}: {message}")
        self.field = field


class ServiceInterrupted(Exception):
    """A valid request the server could not finish for a passing reason; becomes ``UNAVAILABLE``, which
    tells the client that the same request may succeed if sent again."""


class ModelProcessDied(ServiceInterrupted):
    """A model this request needed lost its process (killed, out of memory); ``smartedit serve`` replaces it."""

    def __init__(self, model: str):
        super().__init__(f"the {model} model's process died while the edit ran; SmartEdit is restarting it: "
                         f"send the edit again")
        self.model = model
