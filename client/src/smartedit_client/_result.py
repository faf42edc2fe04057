"""The result of one edit: its images, each with the PNG bytes as sent and the parameters they carry."""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from smartedit_client import _contract as wire

# How ``save`` writes each file extension: None keeps the server's PNG bytes as they are.
SAVE_FORMATS = {".png": None, ".jpg": "JPEG", ".jpeg": "JPEG", ".webp": "WEBP"}


def check_output_path(path) -> None:
    """Raise ValueError unless ``save`` can write ``path``: a known extension, in a writable folder.

    Checked before an edit is sent, so that a typo in the path does not cost the edit.
    """
    path = Path(path)
    if path.is_dir():
        raise ValueError(f"{os.fspath(path)!r} is a folder; give a file name")
    if path.suffix.lower() not in SAVE_FORMATS:
        raise ValueError(f"{os.fspath(path)!r}: the file extension decides the format; use one of "
                         f"{', '.join(SAVE_FORMATS)}")
    folder = path.parent
    if not folder.is_dir():
        raise ValueError(f"{os.fspath(path)!r}: the folder {os.fspath(folder)!r} does not exist")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"{os.fspath(path)!r}: the folder {os.fspath(folder)!r} is not writable")


def png_parameters(png: bytes) -> dict | None:
    """The parameters a SmartEdit result PNG carries (``PNG_PARAMETERS_KEY``), or None for another PNG.

    Raises:
        ValueError: ``png`` is not a PNG, or its SmartEdit chunk is not JSON.
    """
    try:
        image = Image.open(io.BytesIO(png))
    except Exception:
        raise ValueError(f"not an image ({len(png)} bytes starting {png[:8]!r})") from None
    if image.format != "PNG":
        raise ValueError(f"is a {image.format}, not a PNG: only SmartEdit's PNGs carry their parameters")
    text = image.text.get(wire.PNG_PARAMETERS_KEY) if hasattr(image, "text") else None
    if text is None:
        return None
    try:
        return json.loads(text)
    except json.JSONDecodeError as error:
        raise ValueError(f"its {wire.PNG_PARAMETERS_KEY!r} text chunk is not JSON: {error}") from None


def replayable(carried: dict) -> dict:
    """From what a result PNG carries (``png_parameters``), the ``inpaint`` arguments that make it again."""
    known = {spec.name for spec in wire.PARAMETERS}
    return {name: value for name, value in carried.get("parameters", {}).items() if name in known}


@dataclass(frozen=True)
class EditedImage:
    """One image of an edit (one variation).

    Attributes:
        image: the edited image, the size of the input image.
        png: the PNG bytes exactly as the server sent them; they carry the edit's parameters.
        seed_used: the seed this image used; send it back (with ``num_images=1``) to reproduce it.
    """

    image: Image.Image
    png: bytes
    seed_used: int

    @property
    def parameters(self) -> dict | None:
        """What the PNG carries: ``{"parameters": {...}, "model": ..., "weights_sha256": ...,
        "smartedit_version": ...}``, with ``"adapters": [{"file", "sha256", "scale"}, ...]`` when LoRA adapters
        were fused into the model at export (None from a server that does not write them)."""
        return png_parameters(self.png)

    def save(self, path) -> None:
        """Write the image in the format of ``path``'s extension: ``.png`` writes the PNG bytes as
        received (no re-encoding, parameters kept); ``.jpg``/``.jpeg`` (quality 95, alpha dropped) and
        ``.webp`` (lossless) re-encode it.

        Raises:
            ValueError: another extension, or a folder that does not exist or cannot be written.
        """
        check_output_path(path)
        image_format = SAVE_FORMATS[Path(path).suffix.lower()]
        if image_format is None:
            with open(path, "wb") as handle:
                handle.write(self.png)
        elif image_format == "JPEG":
            self.image.convert("RGB").save(path, format="JPEG", quality=95)
        else:
            self.image.save(path, format=image_format, lossless=True)


@dataclass(frozen=True)
class InpaintResult:
    """The result of one edit: its images (``num_images`` of them, variation i with seed + i).

    ``image``, ``png``, ``seed_used``, ``parameters`` and ``save`` are the first image's.

    Attributes:
        images: every image of the edit, in order.
        request_id: the id the server's log lines for this edit carry.
        elapsed_s: wall-clock seconds of the call, as the client saw it.
        checkpoints: the ``CheckpointEvent``s a streamed edit sent (``checkpoint_every``), in order; none
            otherwise.
    """

    images: tuple[EditedImage, ...]
    request_id: str
    elapsed_s: float
    checkpoints: tuple = ()  # a streamed edit's CheckpointEvents (checkpoint_every), in order

    @classmethod
    def from_pngs(cls, pngs, seeds, request_id: str, elapsed_s: float) -> "InpaintResult":
        images = []
        for png, seed in zip(pngs, seeds):
            image = Image.open(io.BytesIO(png))
            image.load()
            images.append(EditedImage(image=image, png=bytes(png), seed_used=int(seed)))
        return cls(images=tuple(images), request_id=request_id, elapsed_s=elapsed_s)

    @property
    def image(self) -> Image.Image:
        return self.images[0].image

    @property
    def png(self) -> bytes:
        return self.images[0].png

    @property
    def seed_used(self) -> int:
        return self.images[0].seed_used

    @property
    def parameters(self) -> dict | None:
        return self.images[0].parameters

    def save(self, path) -> None:
        """The first image's ``EditedImage.save``."""
        self.images[0].save(path)
