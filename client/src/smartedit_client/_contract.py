"""The wire contract of the ``inpaint`` ensemble (DESIGN §2), declared once.

The client builds requests from it; the server side generates the ensemble config and validates
requests from it. Tensor names follow diffusers' argument names. Every tensor holds one element:
the ensemble has ``max_batch_size: 0`` and each tensor has shape ``[1]``.
"""

from __future__ import annotations

from dataclasses import dataclass

MODEL_NAME = "inpaint"
DEFAULT_CROP_PADDING = 32


@dataclass(frozen=True)
class WireTensor:
    name: str
    datatype: str  # the KServe v2 / Triton datatype name: "BYTES", "INT32", "INT64", "FP32"
    required: bool
    meaning: str


IMAGE = WireTensor("image", "BYTES", True, "encoded PNG / JPEG / WebP")
MASK_IMAGE = WireTensor("mask_image", "BYTES", True, "encoded image; white (>=128) = repaint, black = keep")
PROMPT = WireTensor("prompt", "BYTES", True, "UTF-8 text (may be empty)")
NEGATIVE_PROMPT = WireTensor("negative_prompt", "BYTES", False, 'default ""')
NUM_INFERENCE_STEPS = WireTensor("num_inference_steps", "INT32", False, "default from the model's config")
GUIDANCE_SCALE = WireTensor("guidance_scale", "FP32", False, "default 7.5")
STRENGTH = WireTensor("strength", "FP32", False, "default 1.0")
SEED = WireTensor("seed", "INT64", False, "random when absent")
SCHEDULER = WireTensor("scheduler", "BYTES", False, "ddim (default), euler, ...")
CROP_PADDING = WireTensor("crop_padding", "INT32", False,
                          "pixels of context around the mask's box when a large photo is edited as a crop; "
                          f"default {DEFAULT_CROP_PADDING}")

EDITED_IMAGE = WireTensor("edited_image", "BYTES", True, "PNG, same size as image")
SEED_USED = WireTensor("seed_used", "INT64", True, "the seed actually used")

INPUTS: tuple[WireTensor, ...] = (
    IMAGE, MASK_IMAGE, PROMPT, NEGATIVE_PROMPT, NUM_INFERENCE_STEPS, GUIDANCE_SCALE, STRENGTH, SEED, SCHEDULER,
    CROP_PADDING,
)
OUTPUTS: tuple[WireTensor, ...] = (EDITED_IMAGE, SEED_USED)

TENSOR_SHAPE = (1,)


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

STREAM_INPUTS: tuple[WireTensor, ...] = INPUTS + (PREVIEW_EVERY,)
STREAM_OUTPUTS: tuple[WireTensor, ...] = (STEP, TOTAL_STEPS, PREVIEW_IMAGE, EDITED_IMAGE, SEED_USED, ERROR_CODE,
                                          ERROR_MESSAGE)

# Triton has no RESOURCE_EXHAUSTED status: a request refused for lack of capacity comes back as
# UNAVAILABLE, the status of a server that is down or draining too. The server's refusals say why in
# one of these fixed phrases (SmartEdit's engine: "server at capacity"; Triton's own bounded queues:
# "Exceeds maximum queue size"), which is how the client tells "retry later" from "not serving".
CAPACITY_REFUSALS: tuple[str, ...] = ("server at capacity", "Exceeds maximum queue size")
