"""The result of one edit."""

from __future__ import annotations

from dataclasses import dataclass

from PIL import Image


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
        """Write the PNG bytes as received (no re-encoding)."""
        with open(path, "wb") as handle:
            handle.write(self.png)
