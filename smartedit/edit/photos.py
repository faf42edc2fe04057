"""The request's image and mask, decoded as displayed: what preprocess edits and postprocess pastes into.

Both steps decode the same bytes the same way (postprocess decodes them again rather than receive a
24 MP photo's pixels through shared memory), so a pixel outside the mask comes back exactly as sent.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageOps

from smartedit.errors import RequestError
from smartedit.serving.settings import PreprocessSettings

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP")
# Pillow refuses to open an image past 2 x its own limit (89 MP) as a "decompression bomb", before its
# size can be read: a 30000x30000 PNG was refused as "not a PNG, JPEG or WebP image". decode_image
# checks every image against the server's own limit (25 MP by default) from the header, right after
# opening and before decoding anything, so Pillow's check is left to it.
Image.MAX_IMAGE_PIXELS = None


def _describe(data: bytes) -> str:
    head = data[:16]
    return f"{len(data)} bytes starting {head!r}"


def decode_image(field: str, data: bytes, settings: PreprocessSettings | None) -> Image.Image:
    """Decode and fully load an encoded image, upright, or raise ``RequestError`` naming ``field``.

    ``settings`` gives the size limits, checked from the header before decoding; None for bytes that
    preprocess has already accepted.
    """
    if not data:
        raise RequestError(field, "is empty; expected an encoded PNG, JPEG or WebP image")
    try:
        image = Image.open(io.BytesIO(data))
    except Exception:
        raise RequestError(field, f"is not a PNG, JPEG or WebP image ({_describe(data)})") from None
    if image.format not in ACCEPTED_FORMATS:
        raise RequestError(field, f"has format {image.format}; accepted: {', '.join(ACCEPTED_FORMATS)}")
    width, height = image.size
    # Checked from the header, before decoding, so a huge image costs nothing.
    if settings is not None and width * height > settings.max_image_pixels:
        raise RequestError(field, f"is {width}x{height} = {width * height} pixels; the limit is "
                                  f"{settings.max_image_pixels}")
    if settings is not None and min(width, height) < settings.min_image_side:
        raise RequestError(field, f"is {width}x{height}; each side must be at least {settings.min_image_side} pixels")
    try:
        image.load()  # a truncated or corrupt file fails here, not later in a model
        # Upright as displayed: a phone photo is stored sideways with an EXIF orientation tag, and
        # its mask was drawn on what the user saw.
        return ImageOps.exif_transpose(image)
    except RequestError:
        raise
    except Exception as error:
        raise RequestError(field, f"could not be decoded as {image.format}: {error}") from None


def _has_alpha(image: Image.Image) -> bool:
    return image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or (image.mode == "P" and "transparency" in image.info)


def split_alpha(image: Image.Image) -> tuple[Image.Image, np.ndarray | None]:
    """The RGB the models edit, and the alpha channel to give back (None for an opaque format).

    Grayscale and palette images are edited in RGB and come back as RGB (RGBA with transparency).
    """
    if not _has_alpha(image):
        return image.convert("RGB"), None
    rgba = image.convert("RGBA")
    return rgba.convert("RGB"), np.asarray(rgba.getchannel("A"), dtype=np.uint8)


def mask_luminance(mask: Image.Image) -> Image.Image:
    """A mask as mode "L" (white = repaint). A mask with transparency is read as a painted layer: its
    transparent pixels keep, its opaque paint counts by its brightness, as if composited over black
    (what image tools export from a layer painted on nothing; ``convert("L")`` would drop the alpha and
    turn transparent white into repaint-everything)."""
    if not _has_alpha(mask):
        return mask.convert("L")
    layer = mask.convert("RGBA")
    return Image.alpha_composite(Image.new("RGBA", layer.size, (0, 0, 0, 255)), layer).convert("L")


def conditioning_rgb(field: str, image: Image.Image) -> Image.Image:
    """A ControlNet's conditioning image as the RGB it is read as: a drawing on a transparent layer composited over
    black (the black a ControlNet's edge and line maps have where nothing is drawn).

    Raises:
        RequestError: naming ``field``, for a 16- or 32-bit image (a depth map saved raw), which 8-bit RGB would clip:
            its values mean what the tool that made it chose; send it scaled to 8 bits.
    """
    if image.mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F"):
        raise RequestError(field, f"is a {'32-bit float' if image.mode == 'F' else '16/32-bit integer'} image (mode "
                                  f"{image.mode}); send it as an 8-bit PNG (L or RGB), its values scaled to 0-255")
    if not _has_alpha(image):
        return image.convert("RGB")
    return Image.alpha_composite(Image.new("RGBA", image.size, (0, 0, 0, 255)), image.convert("RGBA")).convert("RGB")


@dataclass(frozen=True)
class Photo:
    rgb: Image.Image  # what the models edit, upright
    alpha: np.ndarray | None  # [H, W] uint8 to give back, None for an opaque image
    mask: Image.Image  # mode "L", same size as rgb

    def original(self) -> np.ndarray:
        """[H, W, 3] uint8 RGB, or [H, W, 4] RGBA when sent with transparency."""
        rgb = np.asarray(self.rgb, dtype=np.uint8)
        return rgb if self.alpha is None else np.dstack([rgb, self.alpha])

    def repaint_mask(self, box: tuple[int, int, int, int] | None = None) -> np.ndarray:
        """[H, W] bool: white (>= 128) is repainted; only inside ``box`` (left, top, right, bottom) if given."""
        mask = self.mask if box is None else self.mask.crop(tuple(int(v) for v in box))
        return np.asarray(mask, dtype=np.uint8) >= 128


def decode_photo(image_bytes: bytes, mask_bytes: bytes | None, settings: PreprocessSettings | None) -> Photo:
    """Image and mask, upright, checked to be the same size (``RequestError`` naming the field if not).
    No mask (``mask_bytes`` None): all of the photo is repainted, as if the mask were white everywhere."""
    rgb, alpha = split_alpha(decode_image("image", image_bytes, settings))
    if mask_bytes is None:
        return Photo(rgb=rgb, alpha=alpha, mask=Image.new("L", rgb.size, 255))
    mask = mask_luminance(decode_image("mask_image", mask_bytes, settings))
    if mask.size != rgb.size:
        raise RequestError("mask_image", f"is {mask.size[0]}x{mask.size[1]} but image is "
                                         f"{rgb.size[0]}x{rgb.size[1]} (upright, after its EXIF orientation); "
                                         f"they must be the same size")
    return Photo(rgb=rgb, alpha=alpha, mask=mask)
