"""SmartEdit client: a thin typed gRPC client of the ``inpaint`` service on Triton.

    from smartedit_client import InpaintClient

    with InpaintClient("127.0.0.1:8001") as client:
        result = client.inpaint(image="photo.png", mask_image="mask.png", prompt="a red sofa", seed=7)
        result.save("edited.png")
"""

from smartedit_client._client import DEFAULT_TIMEOUT_S, DEFAULT_URL, InpaintClient
from smartedit_client._errors import (
    InvalidRequestError,
    ModelNotFoundError,
    RequestCancelledError,
    RequestTimeoutError,
    ServerError,
    ServerOverloadedError,
    ServerUnavailableError,
    SmartEditError,
)
from smartedit_client._result import InpaintResult

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "DEFAULT_URL",
    "InpaintClient",
    "InpaintResult",
    "InvalidRequestError",
    "ModelNotFoundError",
    "RequestCancelledError",
    "RequestTimeoutError",
    "ServerError",
    "ServerOverloadedError",
    "ServerUnavailableError",
    "SmartEditError",
]
