"""Validate one edit request and turn it into the tensors the pipeline takes.

Everything here runs before any model does work, and every rejection is a ``RequestError`` naming
the field and the bad value. The image arithmetic is diffusers' ``VaeImageProcessor`` (image:
``[-1, 1]``; mask: grayscale, binarised at 0.5), so served results match the reference pipeline.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch
from PIL import Image

from smartedit.serving import steps
from smartedit.errors import RequestError
from smartedit.edit.masks import repaint_area
from smartedit.edit.parameters import EditParameters, resolve_parameters
from smartedit.edit.control_images import CANNY, INPAINT, canny_condition, image_condition, inpaint_condition
from smartedit.edit.photos import Photo, conditioning_rgb, decode_image, decode_photo
from smartedit.edit.regions import EditRegion, plan_edit_region
from smartedit.serving.settings import PreprocessSettings
from smartedit.diffusion.families import family_parameters, prompts_of
from smartedit.diffusion.spec import PipelineInfo, TensorSpec
from smartedit.edit.tasks import MASK_OPTIONAL, REMOVE, TEXT_EDIT, prefill_hole
from smartedit_client import _contract as wire

# What an edit without control carries as its conditioning image (every edit carries one through the ensemble).
NO_CONTROL = np.zeros((1, 3, 1, 1), dtype=np.float32)


@dataclass(frozen=True)
class PreparedImages:
    photo: Photo  # image and mask as sent, upright
    region: EditRegion  # the box of the photo the models edit, and the size they edit it at
    init_image: np.ndarray  # [1, 3, h, w] float32 in [-1, 1]: the box at the region's size
    masked_image: np.ndarray  # [1, 3, h, w] float32, 0 where repainted
    latent_mask: np.ndarray  # [1, 1, h/f, w/f] float32, 1 = repaint
    repaint: np.ndarray  # [H, W] bool: the photo's pixels the models repaint (the mask, shaped)
    # [1, 3, h, w] float32: a ControlNet's conditioning image for the region (smartedit.edit.control_images); [1, 3,
    # 1, 1] zeros for an edit without control
    control_condition: np.ndarray = field(default_factory=NO_CONTROL.copy)

    # Made on demand (postprocess makes them again from the request's bytes): a 24 MP photo's pixels
    # are 72 MB that preprocess need not hold.
    @property
    def original_image(self) -> np.ndarray:
        """[H, W, 3] uint8 RGB, or [H, W, 4] RGBA when sent with transparency."""
        return self.photo.original()

    @property
    def repaint_mask(self) -> np.ndarray:
        """[box height, box width] bool: the repainted pixels inside the region's box."""
        left, top, right, bottom = self.region.box
        return self.repaint[top:bottom, left:right]


def prepare_images(image_bytes: bytes, mask_bytes: bytes | None, info: PipelineInfo, settings: PreprocessSettings,
                   params: EditParameters | None = None, control_bytes: bytes | None = None) -> PreparedImages:
    """Decode image and mask (``smartedit.edit.photos``), shape the mask as the request's record says
    (``smartedit.edit.masks``), choose the region to edit (``smartedit.edit.regions``), and make the model inputs.

    ``mask_bytes``: None edits the whole photo (a task that needs no mask: ``tasks.MASK_OPTIONAL``).
    ``params``: the edit's record (a plain inpaint with the server's crop padding when None).
    ``control_bytes``: the request's ``control_image``, for ``params.control`` image.
    """
    params = params or EditParameters(prompt="", crop_padding=settings.default_crop_padding)
    photo = decode_photo(image_bytes, mask_bytes, settings)
    repaint = repaint_area(photo, params)
    if not repaint.any():
        raise _nothing_to_repaint(photo, params)
    # The box holds the feathered edge too: past it, nothing of the edit is pasted.
    region = plan_edit_region(repaint, info, params.crop_padding + params.mask_blur)
    image = photo.rgb
    # The mask as sent when no option changes it, so that a plain inpaint resamples it as diffusers does.
    mask = Image.fromarray(repaint.astype(np.uint8) * 255) if params.shapes_mask else photo.mask
    if region.box_size != image.size:
        image, mask = image.crop(region.box), mask.crop(region.box)
    if (region.width, region.height) != image.size:
        # diffusers' VaeImageProcessor resamples with Lanczos; postprocess scales the result back.
        image = image.resize((region.width, region.height), resample=Image.LANCZOS)
        mask = mask.resize((region.width, region.height), resample=Image.LANCZOS)
    mask_condition = (np.asarray(mask, dtype=np.float32) / 255.0 >= 0.5).astype(np.float32)[None, None]
    pixels = np.asarray(image, dtype=np.uint8)
    masked_image = normalized(pixels) * (mask_condition < 0.5)
    if params.task == REMOVE:
        # Denoising starts from the hole filled from its surroundings (smartedit.edit.tasks), not from the object.
        pixels = prefill_hole(pixels, mask_condition[0, 0] >= 0.5)
    # From those pixels: a removal's edges are the fill's, not the object's, which the control would draw again.
    control_condition = _control_condition(params, control_bytes, photo, region, pixels, mask_condition[0, 0] >= 0.5,
                                           settings)
    latent_mask = torch.nn.functional.interpolate(
        torch.from_numpy(mask_condition),
        size=(region.height // info.vae_scale_factor, region.width // info.vae_scale_factor),
    ).numpy()
    return PreparedImages(
        photo=photo,
        region=region,
        init_image=np.ascontiguousarray(normalized(pixels), dtype=np.float32),
        masked_image=np.ascontiguousarray(masked_image, dtype=np.float32),
        latent_mask=np.ascontiguousarray(latent_mask, dtype=np.float32),
        repaint=repaint,
        control_condition=control_condition,
    )


def _control_condition(params: EditParameters, control_bytes: bytes | None, photo: Photo, region: EditRegion,
                       pixels: np.ndarray, repainted: np.ndarray, settings: PreprocessSettings) -> np.ndarray:
    """The edit's conditioning image for the region at its working size: the one sent (cropped and scaled as the
    photo is, Lanczos as diffusers' control image processor), or the one ``control`` makes from the photo's
    ``pixels`` (the region at its working size) and what is ``repainted`` there."""
    control = params.control  # None on a pipeline without a ControlNet
    if control == CANNY:
        return image_condition(canny_condition(pixels, params.control_low_threshold, params.control_high_threshold))
    if control == INPAINT:
        return inpaint_condition(pixels, repainted)
    if control != "image":
        return NO_CONTROL
    sent = conditioning_rgb(wire.CONTROL_IMAGE.name, decode_image(wire.CONTROL_IMAGE.name, control_bytes, settings))
    if sent.size != photo.rgb.size:
        raise RequestError(wire.CONTROL_IMAGE.name, f"is {sent.size[0]}x{sent.size[1]} but image is "
                                                    f"{photo.rgb.size[0]}x{photo.rgb.size[1]} (upright, after its EXIF "
                                                    f"orientation); they must be the same size")
    if region.box_size != sent.size:
        sent = sent.crop(region.box)
    if (region.width, region.height) != sent.size:
        sent = sent.resize((region.width, region.height), resample=Image.LANCZOS)
    return image_condition(np.asarray(sent, dtype=np.uint8))


def _nothing_to_repaint(photo: Photo, params: EditParameters) -> RequestError:
    """Why the shaped mask is empty, naming what emptied it."""
    sent = photo.repaint_mask()
    if params.inverts_mask:
        if sent.all():
            keeper = "invert_mask" if params.invert_mask else f"task {params.task}"
            return RequestError("mask_image", f"is white everywhere, and with {keeper} white marks what to keep: "
                                              f"nothing is left to repaint")
    elif not sent.any():
        return RequestError("mask_image", "has no pixel to repaint: white (>= 128) marks what to repaint, and this "
                                          "mask is black everywhere")
    return RequestError("mask_grow", f"{params.mask_grow} shrinks the mask to nothing")


def normalized(pixels: np.ndarray) -> np.ndarray:
    """[h, w, 3] uint8 to [1, 3, h, w] float32 in [-1, 1], as ``VaeImageProcessor``."""
    return (2.0 * (pixels.astype(np.float32) / 255.0) - 1.0).transpose(2, 0, 1)[None]


def check_cost(params: EditParameters, region: EditRegion, info: PipelineInfo, settings: PreprocessSettings) -> None:
    """Refuse an edit whose latent area x loop steps exceeds the budget: what the model costs.

    The budget is ``max_steps_at_working_resolution`` steps at the working resolution's latent area; an
    edit at a smaller size may run proportionally more steps. Each of ``num_images`` variations counts, and
    a text edit's inversion steps count as much as its denoising steps.
    """
    factor = info.vae_scale_factor
    latent_area = (region.width // factor) * (region.height // factor)
    steps_each = params.loop_steps
    budget = settings.max_steps_at_working_resolution * (info.working_resolution // factor) ** 2
    if latent_area * steps_each * params.num_images <= budget:
        return
    if latent_area * steps_each <= budget:  # one image would fit: the variations are what cost too much
        raise RequestError("num_images", f"{params.num_images} images x {steps_each} denoising steps at "
                                         f"{region.width}x{region.height} exceed the budget of this server: at most "
                                         f"{budget // (latent_area * steps_each)} images at these settings")
    inverted = " (and as many inversion steps)" if steps_each != params.denoising_steps else ""
    limited = ("inversion and denoising steps together" if inverted else
               "denoising steps (num_inference_steps x strength)")
    raise RequestError("num_inference_steps", f"{params.num_inference_steps} x strength {params.strength:g} = "
                                              f"{params.denoising_steps} denoising steps{inverted} at "
                                              f"{region.width}x{region.height} exceed the budget of this server: at "
                                              f"most {budget // latent_area} {limited} at that size")


def prepare_request(read: Callable[[str], Any], tokenizers: Sequence, info: PipelineInfo, settings: PreprocessSettings,
                    deadline: float, reservation: str = "", params: EditParameters | None = None,
                    ) -> tuple[dict[TensorSpec, np.ndarray], dict[str, Any]]:
    """Everything preprocess hands on for one request: the step tensors, and the fields to log.

    Args:
        read: the one element of a wire input by name, or None when the request left it out.
        tokenizers: the pipeline's, as its family's ``PROMPTS`` lists them (``load_tokenizers``).
        deadline: ``time.time()`` at which the caller gives up, 0 for none (``request_deadline``).
        reservation: the edit's token (its in-flight ledger entry, and the places reserved in the engine
            under it), "" for none.
        params: the request's record when the caller has resolved it already (``resolve_parameters``).

    Raises:
        RequestError: naming the first bad field, before any image is decoded when a scalar is bad.
    """
    # Scalars first: they are cheap to check, images are not.
    params = params or resolve_parameters(read, settings, family_parameters(info))
    mask_bytes = read(wire.MASK_IMAGE.name)
    if mask_bytes is None and params.task not in MASK_OPTIONAL:
        raise RequestError(wire.MASK_IMAGE.name, f"is required for task {params.task} (only tasks "
                                                 f"{' and '.join(sorted(MASK_OPTIONAL))} edit the whole photo "
                                                 f"without one)")
    if mask_bytes is None and params.invert_mask:
        raise RequestError(wire.INVERT_MASK.name, "true needs a mask_image to invert: without one the whole photo is "
                                                  "edited")
    images = prepare_images(_required(read, wire.IMAGE.name), mask_bytes, info, settings, params,
                            read(wire.CONTROL_IMAGE.name))
    check_cost(params, images.region, info, settings)
    width, height = images.photo.rgb.size
    prompts = prompts_of(info)
    # A text edit's third row: the prompt its photo is inverted under.
    extra = (params.source_prompt,) if params.task == TEXT_EDIT else ()
    ids = prompts.tokenize(tokenizers, params.negative_prompt, params.prompt, *extra)
    tensors = {
        **{spec: ids[spec.name] for spec in prompts.ids_tensors},
        steps.MASKED_IMAGE: images.masked_image,
        steps.INIT_IMAGE: images.init_image,
        steps.LATENT_MASK: images.latent_mask,
        steps.CONTROL_CONDITION: images.control_condition,
        steps.EDIT_BOX: np.array(images.region.box, dtype=np.int32),
        steps.EDIT_PARAMETERS: params.as_tensor(),
        steps.SEED_USED: np.array(params.seeds, dtype=np.int64),
        steps.DEADLINE: np.array([deadline], dtype=np.float64),
        steps.RESERVATION: np.array([reservation.encode()], dtype=np.object_),
    }
    log_fields = dict(width=int(width), height=int(height), edit_box=list(images.region.box),
                      edit_width=images.region.width, edit_height=images.region.height, task=params.task,
                      scheduler=params.scheduler, num_inference_steps=params.num_inference_steps, seed=params.seed,
                      num_images=params.num_images)
    return tensors, log_fields


def _required(read: Callable[[str], Any], name: str):
    value = read(name)
    if value is None:
        raise RequestError(name, "is required")
    return value
