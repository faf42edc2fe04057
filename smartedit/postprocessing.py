"""Turn the decoded image into the response: pixels, scaled back to its box, pasted into the original, PNG."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from smartedit.photos import decode_photo


def to_pixels(decoded: np.ndarray) -> np.ndarray:
    """``[1, 3, h, w]`` in ``[-1, 1]`` to ``[h, w, 3]`` uint8, rounding as diffusers' ``numpy_to_pil``."""
    image = np.clip(decoded[0].astype(np.float32) / 2 + 0.5, 0.0, 1.0).transpose(1, 2, 0)
    return (image * 255).round().astype(np.uint8)


def compose(generated: np.ndarray, original: np.ndarray, repaint_mask: np.ndarray,
            box: tuple[int, int, int, int]) -> np.ndarray:
    """The edit pasted into the original: ``generated`` scaled to the ``box`` it was made from
    (left, top, right, bottom), and only the pixels ``repaint_mask`` (the box's) marks taken from it.

    Every other pixel is exactly as sent. ``original`` is RGB, or RGBA whose alpha channel comes back
    unchanged everywhere: an edit repaints colour, not transparency.
    """
    left, top, right, bottom = (int(v) for v in box)
    if generated.shape[:2] != (bottom - top, right - left):
        generated = np.asarray(Image.fromarray(generated).resize((right - left, bottom - top), resample=Image.LANCZOS))
    edited = original.copy()
    region = edited[top:bottom, left:right, :3]
    region[repaint_mask] = generated[repaint_mask]
    return edited


# Past this many pixels a PNG is written with zlib level 1 rather than PIL's default 6: a 24 MP photo
# then takes 1.7 s instead of 6.4 s to encode, for a file ~7% larger.
FAST_PNG_PIXELS = 2_000_000


def encode_png(pixels: np.ndarray) -> bytes:
    """PNG of ``[h, w, 3]`` RGB or ``[h, w, 4]`` RGBA pixels."""
    buffer = io.BytesIO()
    level = 1 if pixels.shape[0] * pixels.shape[1] > FAST_PNG_PIXELS else 6
    Image.fromarray(pixels, mode="RGB" if pixels.shape[2] == 3 else "RGBA").save(buffer, format="PNG",
                                                                                 compress_level=level)
    return buffer.getvalue()


def finish_edit(decoded: np.ndarray, image_bytes: bytes, mask_bytes: bytes, box: tuple[int, int, int, int]) -> bytes:
    """The response's PNG from the VAE decoder's output and the request's image and mask (decoded here
    again, as preprocess did): what the ``postprocess`` step does."""
    photo = decode_photo(image_bytes, mask_bytes, settings=None)
    return encode_png(compose(to_pixels(decoded), photo.original(), photo.repaint_mask(box), box))
