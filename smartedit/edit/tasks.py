"""The tasks a request may name, and what each changes about an edit.

- ``inpaint``: the mask is repainted as the prompt describes (diffusers' inpainting, unchanged).
- ``remove``: the masked object is erased and the background continued through the hole. A plain
  inpaint with an empty prompt tends to paint a new object there, so the hole is first filled by a
  classical inpainting (OpenCV's Telea method, which propagates the surrounding colours inward), and
  the model then denoises from that fill (strength 0.75, not from pure noise) with a neutral prompt
  and a negative prompt against objects; the mask is grown 8 px so the object's fringe goes too.
- ``replace_background``: the mask marks the subject to keep; everything else is repainted from the
  prompt, and the edit is pasted back with an 8 px feathered edge so the subject does not look cut out.
- ``instruct``: the prompt is an instruction ("make it winter"), the whole photo the model's condition
  (InstructPix2Pix); the mask is optional: without one the whole photo is the edit, with one only the
  masked part is pasted back. Only families that take the photo as a condition serve it.
- ``text_edit``: the photo's latents are inverted with DDIM under ``source_prompt`` (what the photo shows),
  then denoised under ``prompt`` (what it should show) from the inverted latents; with a mask, outside it
  the latents follow the inversion's trajectory (DiffEdit's rule) and the pixels are pasted back; without
  one the whole photo is edited. Served by families with a 4-channel text-to-image UNet (SD and SDXL);
  DDIM only, strength 1 by default.

Each task only sets defaults (a request's own values win) and, for ``remove``, the image the loop
starts from.
"""

from __future__ import annotations

import cv2
import numpy as np

INPAINT, REMOVE, REPLACE_BACKGROUND = "inpaint", "remove", "replace_background"
INSTRUCT, TEXT_EDIT = "instruct", "text_edit"
# The tasks of a family whose UNet repaints a mask (inpainting and latent-blending families).
INPAINTING_TASKS = (INPAINT, REMOVE, REPLACE_BACKGROUND)
# The tasks that edit the whole photo when the request sends no mask; the others need one.
MASK_OPTIONAL = frozenset({INSTRUCT, TEXT_EDIT})
# The sampler a text edit runs with: DDIM's deterministic step is what inverts (and what diffusers' DiffEdit uses).
TEXT_EDIT_SCHEDULER = "ddim"

REMOVAL_PROMPT = "empty background, seamless continuation of the surroundings"
REMOVAL_NEGATIVE_PROMPT = "object, person, animal, text, watermark, logo, frame, duplicate, blurry"

# Fields of the edit's record each task sets when the request leaves them out (smartedit.edit.parameters).
TASK_DEFAULTS: dict[str, dict] = {
    INPAINT: {},
    REMOVE: {"prompt": REMOVAL_PROMPT, "negative_prompt": REMOVAL_NEGATIVE_PROMPT, "strength": 0.75,
             "mask_grow": 8},
    REPLACE_BACKGROUND: {"mask_blur": 8},
    INSTRUCT: {},
    # strength 1: the whole schedule, whatever the family's default (SDXL's 0.9999 would skip a step)
    TEXT_EDIT: {"scheduler": TEXT_EDIT_SCHEDULER, "strength": 1.0},
}


def prefill_hole(pixels: np.ndarray, repaint: np.ndarray) -> np.ndarray:
    """``pixels`` ([h, w, 3] uint8) with the ``repaint`` ([h, w] bool) area filled from its surroundings
    (Telea's fast-marching inpainting, radius 5 px): where ``remove`` starts denoising from."""
    if not repaint.any() or repaint.all():
        return pixels
    return cv2.inpaint(np.ascontiguousarray(pixels), repaint.astype(np.uint8) * 255, 5, cv2.INPAINT_TELEA)
