"""Turn the decoded image into the response: pixels, original size, paste-back, PNG."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image


def to_pixels(decoded: np.ndarray) -> np.ndarray:
    """``[1, 3, h, w]`` in ``[-1, 1]`` to ``[h, w, 3]`` uint8, rounding as diffusers' ``numpy_to_pil``."""
    image = np.clip(decoded[0].astype(np.float32) / 2 + 0.5, 0.0, 1.0).transpose(1, 2, 0)
    return (image * 255).round().astype(np.uint8)


def compose(generated: np.ndarray, original: np.ndarray, repaint_mask: np.ndarray) -> np.ndarray:
    """The edit at the original size, with every pixel outside the mask exactly as sent.

    ``original`` is RGB, or RGBA whose alpha channel comes back unchanged everywhere: an edit
    repaints colour, not transparency.
    """
    height, width = original.shape[:2]
    if generated.shape[:2] != (height, width):
        generated = np.asarray(Image.fromarray(generated).resize((width, height), resample=Image.LANCZOS))
    rgb = np.where(repaint_mask[..., None], generated, original[..., :3])
    return rgb if original.shape[2] == 3 else np.dstack([rgb, original[..., 3]])


def encode_png(pixels: np.ndarray) -> bytes:
    """PNG of ``[h, w, 3]`` RGB or ``[h, w, 4]`` RGBA pixels."""
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode="RGB" if pixels.shape[2] == 3 else "RGBA").save(buffer, format="PNG")
    return buffer.getvalue()


def finish_edit(decoded: np.ndarray, original: np.ndarray, repaint_mask: np.ndarray) -> bytes:
    """The response's PNG from the VAE decoder's output: what the ``postprocess`` step does."""
    return encode_png(compose(to_pixels(decoded), original, repaint_mask))
