"""SmartEdit's REST gateway: ``POST /edit/inpaint`` (multipart or JSON), a Server-Sent Events stream,
``GET /health`` and ``GET /info``, in front of Triton's gRPC through the async client SDK."""

from smartedit_gateway.app import GatewaySettings, create_app

__all__ = ["GatewaySettings", "create_app"]
