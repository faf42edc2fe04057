"""Click-to-mask (``segment``): the request from clicks and/or a box, and the mask that comes back."""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import tritonclient.grpc as grpcclient
from PIL import Image

from smartedit_client import _contract as wire
from smartedit_client._errors import InvalidRequestError, SmartEditError

Point = Sequence[float]  # (x, y) or (x, y, label): label 1 = on the object (default), 0 = background


@dataclass(frozen=True)
class SegmentResult:
    """Attributes:
        mask: mode "L", the photo's size: 255 on the object, 0 elsewhere (a ready ``mask_image``).
        png: the mask's PNG bytes as the server sent them.
        score: the model's predicted IoU of the mask.
        request_id: the id the server's log lines carry.
        elapsed_s: wall-clock seconds of the call.
    """

    mask: Image.Image
    png: bytes
    score: float
    request_id: str
    elapsed_s: float

    @classmethod
    def from_response(cls, response, request_id: str, elapsed_s: float) -> "SegmentResult":
        png = bytes(response.as_numpy(wire.MASK.name).reshape(-1)[0])
        mask = Image.open(io.BytesIO(png))
        mask.load()
        return cls(mask=mask, png=png, score=float(response.as_numpy(wire.SCORE.name).reshape(-1)[0]),
                   request_id=request_id, elapsed_s=elapsed_s)


def segment_inputs(image: bytes, points: Sequence[Point] | None, box: Sequence[float] | None
                   ) -> list[grpcclient.InferInput]:
    """The ``segment`` request's tensors.

    Raises:
        InvalidRequestError: no prompt, or a point or box of the wrong shape.
    """
    if not points and box is None:
        raise InvalidRequestError("points or box is required: give points (clicks on the object) or a box "
                                  "(x0, y0, x1, y1) around it", field="points")
    tensors = []

    def add(spec: wire.WireTensor, array: np.ndarray) -> None:
        tensor = grpcclient.InferInput(spec.name, list(array.shape), spec.datatype)
        tensor.set_data_from_numpy(array)
        tensors.append(tensor)

    add(wire.SEGMENT_IMAGE, np.array([image], dtype=np.object_))
    if points:
        rows = [tuple(point) for point in points]
        if any(len(row) not in (2, 3) for row in rows):
            raise InvalidRequestError(f"points: each point is (x, y) or (x, y, label), got {rows!r:.80}")
        labels = [row[2] if len(row) == 3 else 1 for row in rows]
        if any(label not in (0, 1) for label in labels):
            raise InvalidRequestError(f"points: labels must be 1 (object) or 0 (background), got {labels!r:.80}")
        try:
            add(wire.POINT_COORDS, np.array([row[:2] for row in rows], dtype=np.float32))
        except (TypeError, ValueError) as error:
            raise InvalidRequestError(f"points: must be numbers, got {rows!r:.80} ({error})") from None
        add(wire.POINT_LABELS, np.array(labels, dtype=np.int32))
    if box is not None:
        try:
            values = np.asarray(box, dtype=np.float32).reshape(-1)
        except (TypeError, ValueError) as error:
            raise InvalidRequestError(f"box: must be four numbers, got {box!r:.80} ({error})") from None
        if values.size != 4:
            raise InvalidRequestError(f"box: is (x0, y0, x1, y1), got {list(box)!r:.80}")
        add(wire.BOX, values)
    return tensors


# The wire tensors the SDK's ``points`` argument travels as, named by the server in its refusals.
_POINT_TENSORS = (wire.POINT_COORDS.name, wire.POINT_LABELS.name)


def in_sdk_terms(failure: SmartEditError) -> SmartEditError:
    """A refusal of ``segment`` that names a point tensor, said of the ``points`` argument the caller gave."""
    if not isinstance(failure, InvalidRequestError) or failure.field not in _POINT_TENSORS:
        return failure
    return InvalidRequestError("points" + str(failure)[len(failure.field):], failure.status, "points")

