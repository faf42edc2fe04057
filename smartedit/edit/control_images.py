"""The conditioning images a ControlNet edit can have the server make from the photo, as diffusers' ControlNet
documentation makes them: ``canny`` (OpenCV's Canny edges, white on black, in three channels) and ``inpaint``
(the photo in [0, 1] with the pixels to repaint set to -1, for an inpainting ControlNet such as
``control_v11p_sd15_inpaint``)."""

from __future__ import annotations

import numpy as np

CANNY, INPAINT = "canny", "inpaint"
CONTROLS = (CANNY, INPAINT)
DEFAULT_LOW_THRESHOLD, DEFAULT_HIGH_THRESHOLD = 100, 200  # diffusers' ControlNet examples'


def canny_condition(photo: np.ndarray, low_threshold: int = DEFAULT_LOW_THRESHOLD,
                    high_threshold: int = DEFAULT_HIGH_THRESHOLD) -> np.ndarray:
    """``photo`` ([H, W, 3] uint8 RGB) -> its Canny edges, [H, W, 3] uint8 (0 or 255)."""
    import cv2

    edges = cv2.Canny(np.ascontiguousarray(photo), low_threshold, high_threshold)
    return np.repeat(edges[:, :, None], 3, axis=2)


def inpaint_condition(photo: np.ndarray, repaint: np.ndarray) -> np.ndarray:
    """``photo`` ([H, W, 3] uint8) and ``repaint`` ([H, W] bool, True = repaint) -> [1, 3, H, W] float32: the photo
    in [0, 1], -1 where it is repainted (diffusers' ``make_inpaint_condition``)."""
    image = photo.astype(np.float32) / 255.0
    image[repaint] = -1.0
    return np.ascontiguousarray(image.transpose(2, 0, 1)[None])


def image_condition(pixels: np.ndarray) -> np.ndarray:
    """A conditioning image ([H, W, 3] uint8) as the ControlNet takes it: [1, 3, H, W] float32 in [0, 1] (diffusers'
    control image processor does not normalize to [-1, 1])."""
    return np.ascontiguousarray((pixels.astype(np.float32) / 255.0).transpose(2, 0, 1)[None])
