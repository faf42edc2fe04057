"""Where in a photo an edit runs, and at what size: crop-around-mask at the model's working resolution.

A diffusion model is trained at one resolution (512 px for SD 1.x) and costs, in time and memory,
what its latent area costs: a 24 MP photo edited at its own size is far beyond both. So, as
AUTOMATIC1111's "inpaint only masked" and IOPaint's crop strategy do, an edit runs on a box around
the mask scaled to the working resolution, and postprocess scales the result back and pastes only
the masked pixels into the original. The rules:

- A photo no larger than the working area (``working_resolution²`` pixels) is edited whole at its own
  size, each side rounded down to a multiple of the VAE factor -- what diffusers' pipeline does.
- Otherwise the box is the mask's bounding box grown by ``padding`` pixels on each side, then grown
  (about its centre, inside the photo) to the aspect of its processing size and to at least half of
  that size, so the model sees some context and never enlarges the box more than 2x. The processing
  size has the working area, the box's aspect (about 2:1 at most: a thinner box is grown across),
  and sides in steps of ``working_resolution / 8``:
  boxes of similar shape share a size, so the engine can batch their UNet rows together.
- A box covering half the photo or more becomes the whole photo, scaled to the working area
  (aspect kept, sides multiples of the VAE factor). So does a box that the photo's edge keeps from
  growing, enlarged no more than 2x. A photo thinner than 2:1 thus keeps its own aspect: a panorama
  can fall outside a TensorRT engine's profile (sides 256..1024 on SD).

Sizes are rounded down, so an edit never exceeds the working area: the cost budget's unit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from smartedit.errors import RequestError
from smartedit.diffusion.spec import PipelineInfo

# A box this much of the photo, or more, is edited as the whole photo: the crop would save little.
WHOLE_PHOTO_FRACTION = 0.5
# The most a box is enlarged to reach the working resolution; a smaller box is grown for context.
MAX_UPSCALE = 2.0
# A thinner box is grown across for context: crops then stay within TensorRT's profiles (sides 256..1024
# on SD) and come in fewer shapes.
MAX_ASPECT = 2.0
# Processing sides of cropped boxes are multiples of working_resolution / SIZE_STEPS (and of the VAE factor).
SIZE_STEPS = 8


@dataclass(frozen=True)
class EditRegion:
    """A box of the upright original (right and bottom exclusive) and the size the models edit it at."""

    left: int
    top: int
    right: int
    bottom: int
    width: int  # multiples of the VAE factor
    height: int

    @property
    def box(self) -> tuple[int, int, int, int]:
        return self.left, self.top, self.right, self.bottom

    @property
    def box_size(self) -> tuple[int, int]:
        return self.right - self.left, self.bottom - self.top


def mask_bounds(repaint_mask: np.ndarray) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of the pixels to repaint; ``RequestError`` when there are none."""
    rows, columns = np.flatnonzero(repaint_mask.any(axis=1)), np.flatnonzero(repaint_mask.any(axis=0))
    if rows.size == 0:
        raise RequestError("mask_image", "has no pixel to repaint: white (>= 128) marks what to repaint, and "
                                         "this mask is black everywhere")
    return int(columns[0]), int(rows[0]), int(columns[-1]) + 1, int(rows[-1]) + 1


def fit_working_area(aspect: float, resolution: int, quantum: int) -> tuple[int, int]:
    """Sides in multiples of ``quantum`` with ``aspect`` (width / height) and the largest area up to
    ``resolution``² (rounded down, so that the cost budget's working area is never exceeded)."""
    return (max(quantum, math.floor(resolution * math.sqrt(aspect) / quantum) * quantum),
            max(quantum, math.floor(resolution / math.sqrt(aspect) / quantum) * quantum))


def _grow(start: int, end: int, length: float, limit: int) -> tuple[int, int]:
    """[start, end) grown about its centre to ``length`` (never shrunk), shifted to fit in [0, limit)."""
    length = min(limit, max(end - start, math.ceil(length)))
    begin = round((start + end - length) / 2)
    begin = min(max(0, begin), limit - length)
    return begin, begin + length


def plan_edit_region(repaint_mask: np.ndarray, info: PipelineInfo, padding: int) -> EditRegion:
    """The box of the photo to edit and the size to edit it at, for a ``[H, W]`` bool mask."""
    height, width = repaint_mask.shape
    factor, resolution = info.vae_scale_factor, info.working_resolution
    if min(width, height) < factor:
        raise RequestError("image", f"is {width}x{height}; each side must be at least {factor} pixels, the "
                                    f"model's VAE factor")
    left, top, right, bottom = mask_bounds(repaint_mask)
    if width * height <= resolution * resolution:
        return EditRegion(0, 0, width, height, width - width % factor, height - height % factor)

    whole = EditRegion(0, 0, width, height, *fit_working_area(width / height, resolution, factor))
    left, top = max(0, left - padding), max(0, top - padding)
    right, bottom = min(width, right + padding), min(height, bottom + padding)
    if (right - left) * (bottom - top) >= WHOLE_PHOTO_FRACTION * width * height:
        return whole

    quantum = max(factor, resolution // SIZE_STEPS // factor * factor)
    aspect = min(max((right - left) / (bottom - top), 1 / MAX_ASPECT), MAX_ASPECT)
    size_w, size_h = fit_working_area(aspect, resolution, quantum)
    # Grow to the processing size's aspect and to at least 1 / MAX_UPSCALE of it, inside the photo.
    want_w = max(right - left, (bottom - top) * size_w / size_h, size_w / MAX_UPSCALE)
    left, right = _grow(left, right, want_w, width)
    top, bottom = _grow(top, bottom, want_w * size_h / size_w, height)
    box_w, box_h = right - left, bottom - top
    if box_w * box_h >= WHOLE_PHOTO_FRACTION * width * height:
        return whole
    if abs(box_w / box_h - size_w / size_h) > 0.01 * size_w / size_h:
        # The photo's edge stopped the growth: keep the box's own aspect, at the VAE factor's steps, and
        # enlarge it no more than MAX_UPSCALE.
        scale = min(MAX_UPSCALE, resolution / math.sqrt(box_w * box_h))
        size_w = max(factor, math.floor(box_w * scale / factor) * factor)
        size_h = max(factor, math.floor(box_h * scale / factor) * factor)
    return EditRegion(left, top, right, bottom, size_w, size_h)
