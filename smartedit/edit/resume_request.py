"""A request that resumes an edit from a checkpoint: what its state must match, and what it changes.

A state continues the edit it was saved from only: on the same weights (the model's identity), from the
same photo and mask (their digests), with the same parameters (its record, which the request may not
override). Everything here is checked before any model runs, each refusal naming ``resume_state`` or the
field that conflicts with it.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable

import numpy as np

from smartedit.diffusion.resume_state import ResumeState, ResumeStateError
from smartedit.diffusion.spec import PipelineInfo
from smartedit.edit.photos import decode_image
from smartedit.edit.preprocessing import normalized
from smartedit.edit.provenance import Provenance
from smartedit.errors import RequestError
from smartedit.serving.settings import PreprocessSettings
from smartedit_client import _contract as wire


def model_identity(info: PipelineInfo, provenance: Provenance) -> dict[str, str]:
    """What a state records of the model that made it, and a resumed edit's model must match."""
    return {"family": info.family, "weights_sha256": provenance.weights_sha256, "model": provenance.model}


# The request's images a state is tied to, by the field that sends each: its digest's key in the state's header.
_DIGESTS = ((wire.IMAGE.name, "image_sha256"), (wire.MASK_IMAGE.name, "mask_sha256"),
            (wire.CONTROL_IMAGE.name, "control_image_sha256"))


def photo_digests(image: bytes, mask: bytes | None, control_image: bytes | None = None) -> dict[str, str | None]:
    """SHA-256 of the request's image, mask and ControlNet conditioning image bytes (None: not sent)."""
    sent = {wire.IMAGE.name: image, wire.MASK_IMAGE.name: mask, wire.CONTROL_IMAGE.name: control_image}
    return {key: None if sent[field] is None else hashlib.sha256(bytes(sent[field])).hexdigest()
            for field, key in _DIGESTS}


def checkpoint_header(info: PipelineInfo, provenance: Provenance, image: bytes, mask: bytes | None,
                      control_image: bytes | None = None) -> dict:
    """The header fields a checkpoint's state carries from the request (the engine adds the loop's)."""
    return {"model": model_identity(info, provenance), "photo": photo_digests(image, mask, control_image)}


def check_resumable(saved: ResumeState, info: PipelineInfo, provenance: Provenance, image: bytes,
                    mask: bytes | None, control_image: bytes | None = None) -> None:
    """Refuse a state that another model made, or that was made from another photo, mask or conditioning image
    (``control_image``: a ControlNet edit's, sent again with the resume as the photo is).

    Raises:
        ResumeStateError: naming why.
    """
    made_by, serving = saved.value("model", dict), model_identity(info, provenance)
    for key in ("family", "weights_sha256"):
        if made_by.get(key) != serving[key]:
            raise ResumeStateError(
                f"was made by another model ({made_by.get('model')!r}, family {made_by.get('family')}, weights "
                f"sha256 {str(made_by.get('weights_sha256'))[:12]}...) than this pipeline serves "
                f"({serving['model']!r}, family {serving['family']}, weights sha256 {serving['weights_sha256'][:12]}"
                f"...): resume on the pipeline that made the checkpoint")
    made_from, sent = saved.value("photo", dict), photo_digests(image, mask, control_image)
    for field, key in _DIGESTS:
        if made_from.get(key) == sent[key]:
            continue
        if sent[key] is None:
            raise RequestError(field, "is required: the checkpoint's edit was sent with one (send the same bytes "
                                      "with resume_state)")
        if made_from.get(key) is None:
            raise RequestError(field, "is not taken: the checkpoint's edit was sent without one")
        raise RequestError(field, f"is not the {field} the checkpoint's edit was sent with (its SHA-256 "
                                  f"differs): send the same bytes with resume_state")


def record_reader(saved: ResumeState, read: Callable[[str], Any]) -> Callable[[str], Any]:
    """The request's scalar inputs as ``resolve_parameters`` reads them, from the state's record (checked
    again as a request's are); the images and the stream's own inputs from the request.

    Raises:
        RequestError: the request sets a parameter; the state's record holds them all.
    """
    record = saved.value("record", dict)
    parameters = {spec.name: spec for spec in wire.PARAMETERS}
    for name in parameters:
        if read(name) is not None:
            raise RequestError(name, "is not taken with resume_state: a resumed edit runs with the parameters of "
                                     "the edit it continues, which its state holds")

    def reader(name: str) -> Any:
        if name not in parameters:
            return read(name)
        value = record.get(name)
        return value.encode("utf-8") if isinstance(value, str) else value
    return reader


def resume_image_pixels(data: bytes, size: tuple[int, int], settings: PreprocessSettings) -> np.ndarray:
    """The painted checkpoint image as ``[1, 3, h, w]`` float32 in ``[-1, 1]``; it must be the checkpoint's
    ``size`` (width, height).

    Raises:
        RequestError: naming ``resume_image``.
    """
    image = decode_image(wire.RESUME_IMAGE.name, data, settings)
    if image.size != tuple(size):
        raise RequestError(wire.RESUME_IMAGE.name, f"is {image.size[0]}x{image.size[1]}; the checkpoint image it "
                                                   f"paints on is {size[0]}x{size[1]} (send it at that size)")
    return np.ascontiguousarray(normalized(np.asarray(image.convert("RGB"), dtype=np.uint8)))
