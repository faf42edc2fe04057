"""Mask tools: what the request's mask options make of the mask it sent.

- ``invert_mask`` (and ``task=replace_background``, whose mask marks what to keep) swap repaint and keep;
- ``mask_grow`` r > 0 repaints every pixel within r px (Euclidean) of the mask, r < 0 keeps the mask's
  pixels within |r| px of its edge (the photo's border is not an edge);
- ``mask_blur`` b feathers the paste-back: the edit's weight falls from 255 where every pixel within
  b px (a (2b+1)² square) is repainted to 0 past b px from the mask; pixels with weight 0 stay exactly
  as sent, pixels with weight 255 are exactly the edit's.

The models repaint the inverted, grown mask; the feathering applies only when the edit is pasted back.
Preprocess and postprocess both shape the mask here, from the same bytes and the same record.
"""

from __future__ import annotations

import cv2
import numpy as np


def _bounds(mask: np.ndarray) -> tuple[int, int, int, int] | None:
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1


def grow(mask: np.ndarray, pixels: int) -> np.ndarray:
    """``mask`` ([H, W] bool) grown by ``pixels`` (shrunk when negative), computed only around the mask."""
    if pixels == 0:
        return mask
    found = _bounds(mask)
    if found is None:
        return mask
    height, width = mask.shape
    reach = abs(pixels) + 1
    top, bottom = max(0, found[0] - reach), min(height, found[1] + reach)
    left, right = max(0, found[2] - reach), min(width, found[3] + reach)
    window = mask[top:bottom, left:right]
    if pixels > 0:
        # Distance of each pixel to the nearest mask pixel: the mask's pixels are the zeros.
        distance = cv2.distanceTransform((~window).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
        shaped = distance <= pixels
    else:
        # Distance of each mask pixel to the nearest kept pixel; past the photo's border the mask goes on.
        padded = cv2.copyMakeBorder(window.astype(np.uint8), reach, reach, reach, reach, cv2.BORDER_REPLICATE)
        distance = cv2.distanceTransform(padded, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)[reach:-reach, reach:-reach]
        shaped = distance > -pixels
    result = mask.copy()
    result[top:bottom, left:right] = shaped
    return result


def shape_mask(mask: np.ndarray, *, invert: bool, grow_by: int) -> np.ndarray:
    """The repaint mask the models see: the sent mask ([H, W] bool, True = white), inverted, then grown."""
    return grow(~mask if invert else mask, grow_by)


def repaint_area(photo, params) -> np.ndarray:
    """[H, W] bool: the pixels of ``photo`` (``smartedit.edit.photos.Photo``) the models repaint, from the mask as
    sent and the edit's record (``smartedit.edit.parameters.EditParameters``: its mask options and task)."""
    return shape_mask(photo.repaint_mask(), invert=params.inverts_mask, grow_by=params.mask_grow)


def feather(repaint: np.ndarray, blur: int) -> np.ndarray:
    """Paste-back weights ([h, w] uint8, 255 = all edit) of a repaint mask, feathered over ``blur`` px.

    A Gaussian (sigma blur/2) cut off at ``blur`` px, and no weight farther than ``blur`` px (Euclidean)
    from the mask: a subject eroded by the feather width stays exactly as sent. Past the array's border
    the mask goes on, as at the photo's edge. Only the band around the mask's edge is computed, so a
    whole 24 MP photo costs no photo-sized float arrays.
    """
    weights = repaint.astype(np.uint8) * 255
    if blur <= 0 or repaint.all() or not repaint.any():
        return weights
    # The band where weights are neither 0 nor 255 lies within ``blur`` px of both a repainted and a
    # kept pixel; with ``blur`` px more around it, the kernel sees all it needs.
    kept_bounds, repaint_bounds = _bounds(~repaint), _bounds(repaint)
    height, width = repaint.shape
    reach = 2 * blur + 1
    top = max(0, max(kept_bounds[0], repaint_bounds[0]) - reach)
    bottom = min(height, min(kept_bounds[1], repaint_bounds[1]) + reach)
    left = max(0, max(kept_bounds[2], repaint_bounds[2]) - reach)
    right = min(width, min(kept_bounds[3], repaint_bounds[3]) + reach)
    if top >= bottom or left >= right:
        return weights
    window = repaint[top:bottom, left:right]
    size = 2 * blur + 1
    blurred = cv2.GaussianBlur(window.astype(np.float32), (size, size), sigmaX=blur / 2, sigmaY=blur / 2,
                               borderType=cv2.BORDER_REPLICATE)
    # Distance of each pixel to the nearest repainted one (the repainted pixels are the zeros).
    distance = cv2.distanceTransform((~window).astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    blurred[distance > blur] = 0.0
    weights[top:bottom, left:right] = np.clip(np.rint(blurred * 255.0), 0, 255).astype(np.uint8)
    return weights


def blend_into(region: np.ndarray, edited: np.ndarray, weights: np.ndarray) -> None:
    """Mix ``edited`` into ``region`` ([h, w, c] uint8, in place) by ``weights`` ([h, w] uint8), rounding to
    nearest: weight 0 leaves ``region``'s pixel, 255 takes ``edited``'s, exactly. Arithmetic runs only
    on the feathered pixels, so a 24 MP photo costs no photo-sized temporaries."""
    full = weights == 255
    region[full] = edited[full]
    partial = (weights > 0) & ~full
    if partial.any():
        w = weights[partial].astype(np.uint32)[:, None]
        mixed = (region[partial].astype(np.uint32) * (255 - w) + edited[partial].astype(np.uint32) * w + 127) // 255
        region[partial] = mixed.astype(np.uint8)
