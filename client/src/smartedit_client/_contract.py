"""The wire contract of the ``inpaint`` ensemble (DESIGN §2), declared once.

The client builds requests from it; the server side generates the ensemble config and validates
requests from it. Tensor names follow diffusers' argument names. Every tensor holds one element:
the ensemble has ``max_batch_size: 0`` and each tensor has shape ``[1]``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

MODEL_NAME = "inpaint"
# A served pipeline's name (``smartedit export --model NAME=PATH``): part of its models' names.
PIPELINE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}")
DEFAULT_CROP_PADDING = 32
MAX_NUM_IMAGES = 8
TASKS = ("inpaint", "remove", "replace_background", "instruct", "text_edit")


@dataclass(frozen=True)
class WireTensor:
    """One tensor of the contract. For an input: its type, and, for the scalar parameters, the range
    (inclusive) or the choices, which the server checks and the CLI, the gateway's OpenAPI document, the
    editor's panel and ``server_info`` show, and ``default``: what a request that leaves the parameter
    out gets, unless the server's configuration or the task sets another (``server_info`` lists the
    defaults in force). ``meaning`` says them in words.

    A scalar parameter is declared here once: the server's record of an edit
    (``smartedit.edit.parameters.EditParameters``), the SDK's options, the CLI's flags, the gateway's
    fields, the editor's panel and ``server_info`` are made from the declaration."""

    name: str
    datatype: str  # the KServe v2 / Triton datatype name: "BYTES", "INT32", "INT64", "FP32", "BOOL"
    required: bool
    meaning: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()
    default: Any = None

    @property
    def python_type(self) -> type:
        """The Python type of the parameter's value."""
        return PYTHON_TYPES[self.datatype]


PYTHON_TYPES = {"BYTES": str, "BOOL": bool, "INT32": int, "INT64": int, "FP32": float}


IMAGE = WireTensor("image", "BYTES", True, "encoded PNG / JPEG / WebP")
MASK_IMAGE = WireTensor("mask_image", "BYTES", False,
                        "encoded image; white (>=128) = repaint, black = keep; with transparency, a painted layer: "
                        "transparent = keep, opaque white = repaint (composited over black). Required, except for "
                        "tasks instruct and text_edit: without one the whole photo is edited")
PROMPT = WireTensor("prompt", "BYTES", True, "UTF-8 text (may be empty)")
NEGATIVE_PROMPT = WireTensor("negative_prompt", "BYTES", False, 'default ""', default="")
TASK = WireTensor("task", "BYTES", False,
                  "inpaint (default): repaint the mask as the prompt says; remove: erase the masked object, "
                  "continuing the background; replace_background: keep the masked subject, repaint the rest; "
                  "instruct: edit the photo as the prompt instructs (InstructPix2Pix pipelines: their only task and "
                  "their default), inside the mask if one is sent; text_edit: invert the photo under source_prompt "
                  "(DDIM) and denoise it under prompt, inside the mask if one is sent (4-channel SD and SDXL "
                  "pipelines; scheduler ddim)",
                  choices=TASKS, default="inpaint")
NUM_INFERENCE_STEPS = WireTensor("num_inference_steps", "INT32", False, "default from the model's config",
                                 minimum=1, default=50)
GUIDANCE_SCALE = WireTensor("guidance_scale", "FP32", False, "default 7.5; <= 1 turns guidance off", minimum=0.0,
                            default=7.5)
STRENGTH = WireTensor("strength", "FP32", False, "in (0, 1]; default 1.0 (0.75 for remove)", maximum=1.0,
                      default=1.0)
IMAGE_GUIDANCE_SCALE = WireTensor("image_guidance_scale", "FP32", False,
                                  "InstructPix2Pix only: how closely the edit keeps to the photo; default 1.5; "
                                  "guidance is off unless guidance_scale > 1 and this >= 1", minimum=0.0, default=1.5)
SOURCE_PROMPT = WireTensor("source_prompt", "BYTES", False,
                           "task text_edit only (4-channel SD and SDXL pipelines): what the photo shows, the "
                           'prompt it is inverted under; default ""', default="")
ETA = WireTensor("eta", "FP32", False,
                 "DDIM's eta: the noise each step adds back (ddim), or TCD's gamma (tcd); default 0",
                 minimum=0.0, maximum=1.0, default=0.0)
SEED = WireTensor("seed", "INT64", False, "random when absent", default=0)  # the server draws one: never 0 by default
SCHEDULER = WireTensor("scheduler", "BYTES", False,
                       "ddim (default), euler, ...; lcm, tcd for LCM/TCD-distilled weights", default="ddim")
CROP_PADDING = WireTensor("crop_padding", "INT32", False,
                          "pixels of context around the mask's box when a large photo is edited as a crop; "
                          f"default {DEFAULT_CROP_PADDING}", minimum=0, maximum=2048, default=DEFAULT_CROP_PADDING)
MASK_GROW = WireTensor("mask_grow", "INT32", False,
                       "pixels to grow the mask by (negative: shrink); default 0 (8 for remove)",
                       minimum=-256, maximum=256, default=0)
MASK_BLUR = WireTensor("mask_blur", "INT32", False,
                       "feather width in pixels when the edit is pasted back; pixels farther than this from "
                       "the mask stay as sent; default 0 (8 for replace_background)", minimum=0, maximum=256,
                       default=0)
INVERT_MASK = WireTensor("invert_mask", "BOOL", False, "repaint the black part instead; default false",
                         default=False)
NUM_IMAGES = WireTensor("num_images", "INT32", False,
                        f"variations to make, 1-{MAX_NUM_IMAGES}; variation i uses seed + i; default 1",
                        minimum=1, maximum=MAX_NUM_IMAGES, default=1)

# ControlNet (a pipeline exported with ``--controlnet``; refused by name elsewhere). The conditioning image is sent
# (control_image) or made on the server from the photo (control): either way cropped and scaled with the edit's region.
CONTROL_IMAGE = WireTensor("control_image", "BYTES", False,
                           "ControlNet pipelines: the conditioning image (PNG / JPEG / WebP, the size of image; an "
                           "edge map, a depth map, ... as the ControlNet was trained on), cropped and scaled with the "
                           "edit's region; or let the server make one with control")
CONTROLNET = WireTensor("controlnet", "BYTES", False,
                        "ControlNet pipelines: which ControlNet (server_info lists a pipeline's); default its own",
                        default="")
CONTROL = WireTensor("control", "BYTES", False,
                     "ControlNet pipelines: none (default, unless control_image is sent: then image); image: the "
                     "control_image sent; canny: the photo's Canny edges, made on the server; inpaint: the photo "
                     "with the repainted pixels set to -1 (an inpainting ControlNet's condition)",
                     choices=("none", "image", "canny", "inpaint"), default="none")
CONTROL_LOW_THRESHOLD = WireTensor("control_low_threshold", "INT32", False,
                                   "control canny: OpenCV Canny's low threshold; default 100", minimum=0, maximum=255,
                                   default=100)
CONTROL_HIGH_THRESHOLD = WireTensor("control_high_threshold", "INT32", False,
                                    "control canny: OpenCV Canny's high threshold; default 200", minimum=0,
                                    maximum=255, default=200)
CONTROLNET_CONDITIONING_SCALE = WireTensor("controlnet_conditioning_scale", "FP32", False,
                                           "ControlNet pipelines: how strongly the control steers the edit (its "
                                           "residuals' factor); default 0.5 (SDXL pipelines: 1.0, as diffusers'; "
                                           "server_info gives a pipeline's)", minimum=0.0, maximum=10.0, default=0.5)
CONTROL_GUIDANCE_START = WireTensor("control_guidance_start", "FP32", False,
                                    "ControlNet pipelines: the fraction of the steps after which the control starts; "
                                    "default 0", minimum=0.0, maximum=1.0, default=0.0)
CONTROL_GUIDANCE_END = WireTensor("control_guidance_end", "FP32", False,
                                  "ControlNet pipelines: the fraction of the steps after which the control stops; "
                                  "default 1", minimum=0.0, maximum=1.0, default=1.0)
GUESS_MODE = WireTensor("guess_mode", "BOOL", False,
                        "ControlNet pipelines: the control steers the prompt's row alone, its shallow residuals "
                        "weakened (diffusers' guess mode); default false", default=False)
# Every ControlNet input: a pipeline without a ControlNet refuses them by name.
CONTROL_INPUTS: tuple[WireTensor, ...] = (
    CONTROL_IMAGE, CONTROLNET, CONTROL, CONTROL_LOW_THRESHOLD, CONTROL_HIGH_THRESHOLD, CONTROLNET_CONDITIONING_SCALE,
    CONTROL_GUIDANCE_START, CONTROL_GUIDANCE_END, GUESS_MODE)

EDITED_IMAGE = WireTensor("edited_image", "BYTES", True,
                          "[num_images] PNGs, same size as image, each carrying its parameters (PNG_PARAMETERS_KEY)")
SEED_USED = WireTensor("seed_used", "INT64", True, "[num_images] the seed each image used")

INPUTS: tuple[WireTensor, ...] = (
    IMAGE, MASK_IMAGE, PROMPT, NEGATIVE_PROMPT, TASK, NUM_INFERENCE_STEPS, GUIDANCE_SCALE, STRENGTH, ETA, SEED,
    SCHEDULER, CROP_PADDING, MASK_GROW, MASK_BLUR, INVERT_MASK, NUM_IMAGES, IMAGE_GUIDANCE_SCALE,
    SOURCE_PROMPT, *CONTROL_INPUTS,
)
OUTPUTS: tuple[WireTensor, ...] = (EDITED_IMAGE, SEED_USED)
# The inputs that are one scalar parameter of the edit (not the images): what the server resolves
# into its record of the edit, and what an output PNG's parameters hold.
# The images besides the photo and its mask that an edit may carry (the SDK takes them as options).
IMAGE_OPTIONS: tuple[WireTensor, ...] = (CONTROL_IMAGE,)
PARAMETERS: tuple[WireTensor, ...] = tuple(t for t in INPUTS if t not in (IMAGE, MASK_IMAGE, *IMAGE_OPTIONS))

# Each output PNG carries the edit's parameters as JSON in a PNG text chunk under this key.
PNG_PARAMETERS_KEY = "smartedit"

TENSOR_SHAPE = (1,)  # every input; the outputs are [num_images]
OUTPUT_SHAPE = (-1,)


def request_timeout_us(seconds: float) -> int:
    """Triton's request timeout (the ``timeout`` request parameter) is in microseconds."""
    return max(1, int(seconds * 1_000_000))


# How long past a call's timeout the client waits for the server's own answer before it cancels the
# call. The timeout travels as Triton's request timeout, and the server stops the edit by it within a
# denoising step; the client's gRPC deadline comes this much later, because Triton 2.51 can crash
# (SIGSEGV) when a call is cancelled just as its response is sent (server issue #7368, fixed in 24.12).
DEADLINE_GRACE_S = 5.0

# The streaming entry: the same edit over a gRPC bidirectional stream (a decoupled model). It takes
# the same inputs plus preview_every, and answers with a progress response after every denoising
# step (step, total_steps; preview_image too every preview_every steps and at the last step), then
# one final response holding edited_image and seed_used, the same bytes `inpaint` returns -- or,
# when the edit fails, error_code and error_message: the KServe stream carries an error as a bare
# message with no status, so the status travels as a tensor. Closing the stream cancels the edit.
STREAM_MODEL_NAME = "inpaint_stream"


def pipeline_model_names(pipeline: str | None) -> tuple[str, str]:
    """The (unary ensemble, stream) a server serves pipeline ``pipeline`` as: ``inpaint_NAME`` and
    ``inpaint_stream_NAME``; None: the server's first pipeline, ``inpaint`` and ``inpaint_stream``."""
    if pipeline is None:
        return MODEL_NAME, STREAM_MODEL_NAME
    if not isinstance(pipeline, str) or not PIPELINE_NAME.fullmatch(pipeline):
        raise ValueError(f"pipeline must be a name of letters, digits, '_' and '-' (as the server lists them in "
                         f"server_info), got {pipeline!r}")
    return f"{MODEL_NAME}_{pipeline}", f"{STREAM_MODEL_NAME}_{pipeline}"


DEFAULT_PREVIEW_EVERY = 5
PREVIEW_EVERY = WireTensor("preview_every", "INT32", False,
                           f"steps between previews; default {DEFAULT_PREVIEW_EVERY}, 0 = progress only")
STEP = WireTensor("step", "INT32", False, "denoising steps done so far")
TOTAL_STEPS = WireTensor("total_steps", "INT32", False, "denoising steps the edit runs")
PREVIEW_IMAGE = WireTensor("preview_image", "BYTES", False,
                           "small PNG of the edited region in progress, at latent resolution (1/8 of its processing size on SD)")

ERROR_CODE = WireTensor("error_code", "BYTES", False,
                        "on failure: the gRPC status name (INVALID_ARGUMENT, UNAVAILABLE, CANCELLED, INTERNAL)")
ERROR_MESSAGE = WireTensor("error_message", "BYTES", False, "on failure: what went wrong, naming the field if one")

# Checkpoints and resuming (the stream only): every checkpoint_every steps a progress response carries
# checkpoint_image (the decoded predicted clean image, at the edit's working size) and checkpoint_state;
# a request that sends that state back as resume_state (with the same image and mask_image, and control_image
# when the edit was sent one; no parameter: they come from the state) continues the edit from that step, and
# with resume_image (the checkpoint image, painted on) from the latents moved by the painter's change.
CHECKPOINT_EVERY = WireTensor("checkpoint_every", "INT32", False,
                              "steps between checkpoints (a checkpoint_image and its checkpoint_state); default 0, "
                              "none; one image (num_images 1), any task but text_edit", minimum=0, default=0)
RESUME_STATE = WireTensor("resume_state", "BYTES", False,
                          "a checkpoint's checkpoint_state, as sent: continue that edit from its step (send the "
                          "same image and mask_image, and control_image when the edit was sent one; no parameter: "
                          "they come from the state)")
RESUME_IMAGE = WireTensor("resume_image", "BYTES", False,
                          "with resume_state: the checkpoint's checkpoint_image, painted on (PNG, same size); the "
                          "edit continues from the latents moved by the change")
CHECKPOINT_IMAGE = WireTensor("checkpoint_image", "BYTES", False,
                              "PNG at the edit's working size: the predicted clean image at this step (the edited "
                              "region, before it is scaled back and pasted)")
CHECKPOINT_STATE = WireTensor("checkpoint_state", "BYTES", False,
                              "the edit's state at this step (the README's resume-state format): send it back as "
                              "resume_state")
# The stream's inputs besides the edit's own: how it reports, and what it resumes from.
STREAM_ONLY_INPUTS: tuple[WireTensor, ...] = (PREVIEW_EVERY, CHECKPOINT_EVERY, RESUME_STATE, RESUME_IMAGE)

STREAM_INPUTS: tuple[WireTensor, ...] = INPUTS + STREAM_ONLY_INPUTS
STREAM_OUTPUTS: tuple[WireTensor, ...] = (STEP, TOTAL_STEPS, PREVIEW_IMAGE, CHECKPOINT_IMAGE, CHECKPOINT_STATE,
                                          EDITED_IMAGE, SEED_USED, ERROR_CODE, ERROR_MESSAGE)

# What the server offers: a model with no inputs answering JSON (model, family, working resolution,
# samplers, tasks, each parameter's type, range and default, limits). On the inference API, so that the
# restricted admin APIs (model config among them) need not be opened to read it.
INFO_MODEL_NAME = "server_info"
SERVER_INFO = WireTensor("server_info", "BYTES", True, "JSON describing what the server offers")

# Click-to-mask (Segment Anything): the ``segment`` model. Points are the photo's pixels (x, y), labelled
# 1 (on the object) or 0 (background); a box is (x0, y0, x1, y1). At least one of the two.
SEGMENT_MODEL_NAME = "segment"
POINT_COORDS = WireTensor("point_coords", "FP32", False, "[n, 2] clicks, (x, y) in the photo's pixels")
POINT_LABELS = WireTensor("point_labels", "INT32", False, "[n] 1 = on the object, 0 = background")
BOX = WireTensor("box", "FP32", False, "[4] x0, y0, x1, y1 around the object, in the photo's pixels")
SEGMENT_IMAGE = WireTensor("image", "BYTES", True, "encoded PNG / JPEG / WebP (EXIF orientation applied)")
MASK = WireTensor("mask", "BYTES", True, "PNG, mode L, the photo's size: 255 = the object, 0 = the rest")
SCORE = WireTensor("score", "FP32", True, "the model's predicted IoU of the mask")
SEGMENT_INPUTS: tuple[WireTensor, ...] = (SEGMENT_IMAGE, POINT_COORDS, POINT_LABELS, BOX)
SEGMENT_OUTPUTS: tuple[WireTensor, ...] = (MASK, SCORE)
SEGMENT_SHAPES = {POINT_COORDS.name: (-1, 2), POINT_LABELS.name: (-1,), BOX.name: (4,)}

# Triton has no RESOURCE_EXHAUSTED status: a request refused for lack of capacity comes back as
# UNAVAILABLE, the status of a server that is down or draining too. The server's refusals say why in
# one of these fixed phrases (SmartEdit's engine: "server at capacity"; Triton's own bounded queues:
# "Exceeds maximum queue size"), which is how the client tells "retry later" from "not serving".
CAPACITY_REFUSALS: tuple[str, ...] = ("server at capacity", "Exceeds maximum queue size")
