"""Validate one edit request and turn it into the tensors the pipeline takes.

Everything here runs before any model does work, and every rejection is a ``RequestError`` naming
the field and the bad value. The image arithmetic is diffusers' ``VaeImageProcessor`` (image:
``[-1, 1]``; mask: grayscale, binarised at 0.5), so served results match the reference pipeline.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image

from smartedit import steps
from smartedit.errors import RequestError
from smartedit.photos import Photo, decode_photo
from smartedit.regions import EditRegion, plan_edit_region
from smartedit.samplers import SAMPLERS
from smartedit.settings import PreprocessSettings
from smartedit.spec import PipelineInfo
from smartedit_client import _contract as wire

MAX_CROP_PADDING = 2048
INT64_MAX = 2**63 - 1


@dataclass(frozen=True)
class EditParameters:
    """The request's parameters with defaults applied and the seed drawn."""

    prompt: str
    negative_prompt: str
    num_inference_steps: int
    guidance_scale: float
    strength: float
    seed: int
    scheduler: str
    crop_padding: int


@dataclass(frozen=True)
class PreparedImages:
    photo: Photo  # image and mask as sent, upright
    region: EditRegion  # the box of the photo the models edit, and the size they edit it at
    init_image: np.ndarray  # [1, 3, h, w] float32 in [-1, 1]: the box at the region's size
    masked_image: np.ndarray  # [1, 3, h, w] float32, 0 where repainted
    latent_mask: np.ndarray  # [1, 1, h/f, w/f] float32, 1 = repaint

    # Made on demand (postprocess makes them again from the request's bytes): a 24 MP photo's pixels
    # are 72 MB that preprocess need not hold.
    @property
    def original_image(self) -> np.ndarray:
        """[H, W, 3] uint8 RGB, or [H, W, 4] RGBA when sent with transparency."""
        return self.photo.original()

    @property
    def repaint_mask(self) -> np.ndarray:
        """[box height, box width] bool: the mask as sent, inside the region's box."""
        return self.photo.repaint_mask(self.region.box)


def prepare_images(image_bytes: bytes, mask_bytes: bytes, info: PipelineInfo, settings: PreprocessSettings,
                   crop_padding: int | None = None) -> PreparedImages:
    """Decode image and mask (``smartedit.photos``), choose the region to edit (``smartedit.regions``), and
    make the model inputs.

    ``crop_padding``: pixels around the mask's box (``settings.default_crop_padding`` when None).
    """
    photo = decode_photo(image_bytes, mask_bytes, settings)
    image, mask, repaint_mask = photo.rgb, photo.mask, photo.repaint_mask()
    padding = settings.default_crop_padding if crop_padding is None else crop_padding
    region = plan_edit_region(repaint_mask, info, padding)
    if region.box_size != image.size:
        image, mask = image.crop(region.box), mask.crop(region.box)
    if (region.width, region.height) != image.size:
        # diffusers' VaeImageProcessor resamples with Lanczos; postprocess scales the result back.
        image = image.resize((region.width, region.height), resample=Image.LANCZOS)
        mask = mask.resize((region.width, region.height), resample=Image.LANCZOS)
    init_image = np.asarray(image, dtype=np.float32) / 255.0
    init_image = (2.0 * init_image - 1.0).transpose(2, 0, 1)[None]
    mask_condition = (np.asarray(mask, dtype=np.float32) / 255.0 >= 0.5).astype(np.float32)[None, None]
    masked_image = init_image * (mask_condition < 0.5)
    latent_mask = torch.nn.functional.interpolate(
        torch.from_numpy(mask_condition),
        size=(region.height // info.vae_scale_factor, region.width // info.vae_scale_factor),
    ).numpy()
    return PreparedImages(
        photo=photo,
        region=region,
        init_image=np.ascontiguousarray(init_image, dtype=np.float32),
        masked_image=np.ascontiguousarray(masked_image, dtype=np.float32),
        latent_mask=np.ascontiguousarray(latent_mask, dtype=np.float32),
    )


def _text(field: str, value: bytes | None, max_bytes: int | None = None) -> str:
    if value is None:
        return ""
    if max_bytes is not None and len(value) > max_bytes:
        raise RequestError(field, f"is {len(value)} bytes; the limit is {max_bytes} (the text encoder reads only "
                                  f"its first 77 tokens)")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as error:
        raise RequestError(field, f"is not valid UTF-8 ({error})") from None


def resolve_parameters(
    prompt: bytes,
    negative_prompt: bytes | None,
    num_inference_steps: int | None,
    guidance_scale: float | None,
    strength: float | None,
    seed: int | None,
    scheduler: bytes | None,
    settings: PreprocessSettings,
    crop_padding: int | None = None,
) -> EditParameters:
    """Check every scalar parameter and apply the defaults."""
    prompt_text = _text("prompt", prompt, settings.max_prompt_bytes)
    negative_text = _text("negative_prompt", negative_prompt, settings.max_prompt_bytes)
    steps = settings.default_num_inference_steps if num_inference_steps is None else int(num_inference_steps)
    if not 1 <= steps <= settings.max_num_inference_steps:
        raise RequestError("num_inference_steps", f"must be between 1 and {settings.max_num_inference_steps}, got {steps}")
    guidance = settings.default_guidance_scale if guidance_scale is None else float(guidance_scale)
    if not math.isfinite(guidance) or guidance < 0:
        raise RequestError("guidance_scale", f"must be a finite number >= 0, got {guidance}")
    strength_value = 1.0 if strength is None else float(strength)
    if not math.isfinite(strength_value) or not 0.0 < strength_value <= 1.0:
        raise RequestError("strength", f"must be in (0, 1], got {strength_value}")
    if int(steps * strength_value) < 1:
        raise RequestError("strength", f"{strength_value} with num_inference_steps {steps} leaves no step to run; "
                                       f"raise either so that steps x strength >= 1")
    sampler = settings.default_scheduler if scheduler is None else _text("scheduler", scheduler).strip().lower()
    if sampler not in SAMPLERS:
        raise RequestError("scheduler", f"unknown scheduler {sampler!r}; known: {', '.join(sorted(SAMPLERS))}")
    padding = settings.default_crop_padding if crop_padding is None else int(crop_padding)
    if not 0 <= padding <= MAX_CROP_PADDING:
        raise RequestError("crop_padding", f"must be between 0 and {MAX_CROP_PADDING} pixels, got {padding}")
    seed_value = secrets.randbelow(INT64_MAX) if seed is None else int(seed)
    return EditParameters(
        prompt=prompt_text,
        negative_prompt=negative_text,
        num_inference_steps=steps,
        guidance_scale=guidance,
        strength=strength_value,
        seed=seed_value,
        scheduler=sampler,
        crop_padding=padding,
    )


def check_cost(params: EditParameters, region: EditRegion, info: PipelineInfo, settings: PreprocessSettings) -> None:
    """Refuse an edit whose latent area x denoising steps exceeds the budget: what the model costs.

    The budget is ``max_steps_at_working_resolution`` steps at the working resolution's latent area; an
    edit at a smaller size may run proportionally more steps.
    """
    factor = info.vae_scale_factor
    latent_area = (region.width // factor) * (region.height // factor)
    denoising_steps = int(params.num_inference_steps * params.strength)
    budget = settings.max_steps_at_working_resolution * (info.working_resolution // factor) ** 2
    if latent_area * denoising_steps > budget:
        raise RequestError("num_inference_steps", f"{params.num_inference_steps} x strength {params.strength:g} = "
                                                  f"{denoising_steps} denoising steps at {region.width}x{region.height} "
                                                  f"exceed the budget of this server: at most "
                                                  f"{budget // latent_area} denoising steps (num_inference_steps "
                                                  f"x strength) at that size")


def tokenize(tokenizer, negative_prompt: str, prompt: str) -> np.ndarray:
    """Token ids ``[2, model_max_length]``: row 0 the negative prompt, row 1 the prompt.

    Padded and truncated as ``encode_prompt`` does (CLIP sees at most ``model_max_length`` tokens).
    """
    ids = tokenizer(
        [negative_prompt, prompt],
        padding="max_length",
        max_length=tokenizer.model_max_length,
        truncation=True,
        return_tensors="np",
    ).input_ids
    return ids.astype(np.int64)


def prepare_request(read: Callable[[str], Any], tokenizer, info: PipelineInfo, settings: PreprocessSettings,
                    deadline: float, reservation: str = "") -> tuple[dict[steps.StepTensor, np.ndarray], dict[str, Any]]:
    """Everything preprocess hands on for one request: the step tensors, and the fields to log.

    Args:
        read: the one element of a wire input by name, or None when the request left it out.
        deadline: ``time.time()`` at which the caller gives up, 0 for none (``request_deadline``).
        reservation: the token of the place reserved in the engine for this edit, "" for none.

    Raises:
        RequestError: naming the first bad field, before any image is decoded when a scalar is bad.
    """
    def required(name: str):
        value = read(name)
        if value is None:
            raise RequestError(name, "is required")
        return value

    # Scalars first: they are cheap to check, images are not.
    params = resolve_parameters(
        prompt=required(wire.PROMPT.name),
        negative_prompt=read(wire.NEGATIVE_PROMPT.name),
        num_inference_steps=read(wire.NUM_INFERENCE_STEPS.name),
        guidance_scale=read(wire.GUIDANCE_SCALE.name),
        strength=read(wire.STRENGTH.name),
        seed=read(wire.SEED.name),
        scheduler=read(wire.SCHEDULER.name),
        settings=settings,
        crop_padding=read(wire.CROP_PADDING.name),
    )
    images = prepare_images(required(wire.IMAGE.name), required(wire.MASK_IMAGE.name), info, settings,
                            params.crop_padding)
    check_cost(params, images.region, info, settings)
    width, height = images.photo.rgb.size
    tensors = {
        steps.INPUT_IDS: tokenize(tokenizer, params.negative_prompt, params.prompt),
        steps.MASKED_IMAGE: images.masked_image,
        steps.INIT_IMAGE: images.init_image,
        steps.LATENT_MASK: images.latent_mask,
        steps.EDIT_BOX: np.array(images.region.box, dtype=np.int32),
        steps.STEPS: np.array([params.num_inference_steps], dtype=np.int32),
        steps.GUIDANCE: np.array([params.guidance_scale], dtype=np.float32),
        steps.STRENGTH: np.array([params.strength], dtype=np.float32),
        steps.SAMPLER: np.array([params.scheduler.encode()], dtype=np.object_),
        steps.SEED_USED: np.array([params.seed], dtype=np.int64),
        steps.DEADLINE: np.array([deadline], dtype=np.float64),
        steps.RESERVATION: np.array([reservation.encode()], dtype=np.object_),
    }
    log_fields = dict(width=int(width), height=int(height), edit_box=list(images.region.box),
                      edit_width=images.region.width, edit_height=images.region.height, scheduler=params.scheduler,
                      num_inference_steps=params.num_inference_steps, seed=params.seed)
    return tensors, log_fields
