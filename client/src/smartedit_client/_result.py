"""The result of one edit."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

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


@dataclass(frozen=True)
class InpaintResult:
    """One edited image.

    Attributes:
        image: the edited image, the size of the input image.
        png: the PNG bytes exactly as the server sent them.
        seed_used: the seed the server used; send it back to reproduce this image.
        request_id: the id the server's log lines for this edit carry.
        elapsed_s: wall-clock seconds of the call, as the client saw it.
    """

    image: Image.Image
    png: bytes
    seed_used: int
    request_id: str
    elapsed_s: float

    def save(self, path) -> None:
        """Write the image in the format of ``path``'s extension: ``.png`` writes the PNG bytes as
        received (no re-encoding); ``.jpg``/``.jpeg`` (quality 95, alpha dropped) and ``.webp``
        (lossless) re-encode it.

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
