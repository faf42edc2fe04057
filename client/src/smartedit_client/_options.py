"""The options of an edit, declared once for every method that sends one (sync and async, unary and
streamed). Names and meanings are the wire contract's inputs (``_contract.PARAMETERS``); an option
left out, or None, takes the server's default (``server_info()`` lists them)."""

from __future__ import annotations

from typing import TypedDict

from smartedit_client import _contract as wire


class EditOptions(TypedDict, total=False):
    """Attributes:
        negative_prompt: what to steer away from.
        task: ``"inpaint"`` (default), ``"remove"`` (erase the masked object, continuing the background)
            or ``"replace_background"`` (keep the masked subject, repaint the rest).
        num_inference_steps: denoising steps.
        guidance_scale: classifier-free guidance scale; <= 1 disables guidance.
        strength: in (0, 1]; below 1 starts from the noised image instead of pure noise.
        eta: DDIM's eta in [0, 1]: the noise each step adds back (``ddim`` only; default 0).
        seed: makes the result reproducible; the server draws one when left out (``seed_used``).
        scheduler: the sampler, e.g. ``"ddim"`` or ``"euler"``.
        crop_padding: pixels of context kept around the mask's box when a photo larger than the
            model's working resolution is edited as a crop (server default 32).
        mask_grow: pixels to grow the mask by; negative shrinks it.
        mask_blur: feather width in pixels of the paste-back; pixels farther from the mask stay as sent.
        invert_mask: repaint the black part of the mask instead of the white.
        num_images: variations to make (1-8); variation i uses seed + i and equals a one-image request
            with that seed.
    """

    negative_prompt: str
    task: str
    num_inference_steps: int
    guidance_scale: float
    strength: float
    eta: float
    seed: int
    scheduler: str
    crop_padding: int
    mask_grow: int
    mask_blur: int
    invert_mask: bool
    num_images: int


def checked_options(method: str, options: dict) -> dict:
    """``options`` as given, or TypeError naming an option the contract does not have (as Python would
    for a misspelt keyword argument)."""
    known = {spec.name for spec in wire.PARAMETERS}
    for name in options:
        if name not in known:
            raise TypeError(f"{method}() got an unexpected keyword argument {name!r}")
    return options
