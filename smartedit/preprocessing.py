"""Validate one edit request and turn it into the tensors the pipeline takes.

Everything here runs before any model does work, and every rejection is a ``RequestError`` naming
the field and the bad value. The image arithmetic is diffusers' ``VaeImageProcessor`` (image:
``[-1, 1]``; mask: grayscale, binarised at 0.5), so served results match the reference pipeline.
"""

from __future__ import annotations

import io
import math
import secrets
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image, ImageOps

from smartedit import steps
from smartedit.errors import RequestError
from smartedit.samplers import SAMPLERS
from smartedit.settings import PreprocessSettings
from smartedit.spec import PipelineInfo
from smartedit_client import _contract as wire

ACCEPTED_FORMATS = ("PNG", "JPEG", "WEBP")
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


@dataclass(frozen=True)
class PreparedImages:
    original_image: np.ndarray  # [H, W, 3] uint8 RGB, or [H, W, 4] RGBA when sent with transparency; upright
    repaint_mask: np.ndarray  # [H, W] bool, upright
    init_image: np.ndarray  # [1, 3, h, w] float32 in [-1, 1], h and w multiples of the VAE factor
    masked_image: np.ndarray  # [1, 3, h, w] float32, 0 where repainted
    latent_mask: np.ndarray  # [1, 1, h/f, w/f] float32, 1 = repaint


def _describe(data: bytes) -> str:
    head = data[:16]
    return f"{len(data)} bytes starting {head!r}"


def decode_image(field: str, data: bytes, settings: PreprocessSettings) -> Image.Image:
    """Decode and fully load an encoded image, or raise ``RequestError`` naming ``field``."""
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
    if width * height > settings.max_image_pixels:
        raise RequestError(field, f"is {width}x{height} = {width * height} pixels; the limit is "
                                  f"{settings.max_image_pixels}")
    if min(width, height) < settings.min_image_side:
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


def processing_size(width: int, height: int, info: PipelineInfo) -> tuple[int, int]:
    """The size the models run at: each side rounded down to a multiple of the VAE factor."""
    factor = info.vae_scale_factor
    return width - width % factor, height - height % factor


def prepare_images(image_bytes: bytes, mask_bytes: bytes, info: PipelineInfo,
                   settings: PreprocessSettings) -> PreparedImages:
    image, alpha = split_alpha(decode_image("image", image_bytes, settings))
    mask = decode_image("mask_image", mask_bytes, settings).convert("L")
    if mask.size != image.size:
        raise RequestError("mask_image", f"is {mask.size[0]}x{mask.size[1]} but image is "
                                         f"{image.size[0]}x{image.size[1]} (upright, after its EXIF orientation); "
                                         f"they must be the same size")
    original = np.asarray(image, dtype=np.uint8)
    if alpha is not None:
        original = np.dstack([original, alpha])
    repaint_mask = np.asarray(mask, dtype=np.uint8) >= 128
    width, height = processing_size(image.size[0], image.size[1], info)
    if (width, height) != image.size:
        # diffusers' VaeImageProcessor resamples with Lanczos; postprocess scales the result back.
        image = image.resize((width, height), resample=Image.LANCZOS)
        mask = mask.resize((width, height), resample=Image.LANCZOS)
    init_image = np.asarray(image, dtype=np.float32) / 255.0
    init_image = (2.0 * init_image - 1.0).transpose(2, 0, 1)[None]
    mask_condition = (np.asarray(mask, dtype=np.float32) / 255.0 >= 0.5).astype(np.float32)[None, None]
    masked_image = init_image * (mask_condition < 0.5)
    latent_mask = torch.nn.functional.interpolate(
        torch.from_numpy(mask_condition),
        size=(height // info.vae_scale_factor, width // info.vae_scale_factor),
    ).numpy()
    return PreparedImages(
        original_image=np.ascontiguousarray(original),
        repaint_mask=repaint_mask,
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
    seed_value = secrets.randbelow(INT64_MAX) if seed is None else int(seed)
    return EditParameters(
        prompt=prompt_text,
        negative_prompt=negative_text,
        num_inference_steps=steps,
        guidance_scale=guidance,
        strength=strength_value,
        seed=seed_value,
        scheduler=sampler,
    )


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
    )
    images = prepare_images(required(wire.IMAGE.name), required(wire.MASK_IMAGE.name), info, settings)
    height, width = images.original_image.shape[:2]
    tensors = {
        steps.INPUT_IDS: tokenize(tokenizer, params.negative_prompt, params.prompt),
        steps.MASKED_IMAGE: images.masked_image,
        steps.INIT_IMAGE: images.init_image,
        steps.LATENT_MASK: images.latent_mask,
        steps.ORIGINAL_IMAGE: images.original_image,
        steps.REPAINT_MASK: images.repaint_mask,
        steps.STEPS: np.array([params.num_inference_steps], dtype=np.int32),
        steps.GUIDANCE: np.array([params.guidance_scale], dtype=np.float32),
        steps.STRENGTH: np.array([params.strength], dtype=np.float32),
        steps.SAMPLER: np.array([params.scheduler.encode()], dtype=np.object_),
        steps.SEED_USED: np.array([params.seed], dtype=np.int64),
        steps.DEADLINE: np.array([deadline], dtype=np.float64),
        steps.RESERVATION: np.array([reservation.encode()], dtype=np.object_),
    }
    log_fields = dict(width=int(width), height=int(height), scheduler=params.scheduler,
                      num_inference_steps=params.num_inference_steps, seed=params.seed)
    return tensors, log_fields
