"""SmartEdit client: a thin typed gRPC client of the ``inpaint`` service on Triton.

    from smartedit_client import InpaintClient

    with InpaintClient("127.0.0.1:8001") as client:
        result = client.inpaint(image="photo.png", mask_image="mask.png", prompt="a red sofa", seed=7)
        result.save("edited.png")

        with client.inpaint_stream(image="photo.png", mask_image="mask.png", prompt="a red sofa") as stream:
            for event in stream:  # ProgressEvent, PreviewEvent, CheckpointEvent, ..., then the InpaintResult
                print(event)
"""

from smartedit_client._aio import AsyncInpaintClient, AsyncInpaintStream
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
from smartedit_client._events import CheckpointEvent, PreviewEvent, ProgressEvent
from smartedit_client._info import ParameterInfo, ServerInfo
from smartedit_client._options import EditOptions
from smartedit_client._result import EditedImage, InpaintResult, png_parameters
from smartedit_client._segment import SegmentResult
from smartedit_client._stream import InpaintStream

__all__ = [
    "AsyncInpaintClient",
    "AsyncInpaintStream",
    "CheckpointEvent",
    "DEFAULT_TIMEOUT_S",
    "DEFAULT_URL",
    "EditOptions",
    "EditedImage",
    "InpaintClient",
    "InpaintResult",
    "InpaintStream",
    "InvalidRequestError",
    "ModelNotFoundError",
    "ParameterInfo",
    "PreviewEvent",
    "ProgressEvent",
    "RequestCancelledError",
    "RequestTimeoutError",
    "ServerError",
    "ServerInfo",
    "ServerOverloadedError",
    "SegmentResult",
    "ServerUnavailableError",
    "SmartEditError",
    "png_parameters",
]
