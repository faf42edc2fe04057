"""The tensors of the Python step models (preprocess, scheduler, postprocess), declared once.

The step models read their tensor names from here and the config generator writes their configs
from here. Step models have ``max_batch_size: 0`` (one request is one edit), so dims are full
shapes with -1 for the axes that vary per request. They are declared with the type components' are
(``TensorSpec``): one tensor declaration type for every model the server serves.
"""

from __future__ import annotations

from dataclasses import replace

from smartedit.diffusion.prompts import PromptEncoding
from smartedit.diffusion.spec import CONTROL_IMAGE, TensorSpec
from smartedit_client import _contract as wire

PREPROCESS, SCHEDULER, POSTPROCESS = "preprocess", "scheduler", "postprocess"
# The batched denoising engine: a decoupled model the `scheduler` step (and the streaming entry) call.
DENOISE_ENGINE = "denoise_engine"
# The streaming entry point (decoupled): the wire contract's stream, served by one Python model.
INPAINT_STREAM = wire.STREAM_MODEL_NAME
SERVER_INFO_MODEL = wire.INFO_MODEL_NAME


def wire_input(tensor: wire.WireTensor) -> TensorSpec:
    # Optional even where the wire contract requires the tensor: Triton 2.51's ensemble does not
    # check required inputs itself (a missing one ends in "unexpected deadlock"), so preprocess
    # must run and reject the request with a message naming the missing field.
    return TensorSpec(tensor.name, tensor.datatype, wire.TENSOR_SHAPE, optional=True)


# Outputs of preprocess: the prompt's token ids (the family's, ``PromptEncoding.ids_tensors``) and these.
# The request's parameters come out resolved (defaults applied, seed drawn) as one record, EDIT_PARAMETERS,
# which the loop and postprocess read: a new parameter needs no new tensor.
MASKED_IMAGE = TensorSpec("masked_image", "FP32", (1, 3, -1, -1))  # in [-1, 1], 0 where repainted
INIT_IMAGE = TensorSpec("init_image", "FP32", (1, 3, -1, -1))  # in [-1, 1]; encoded when the family needs it
LATENT_MASK = TensorSpec("latent_mask", "FP32", (1, 1, -1, -1))  # 1 = repaint, at latent resolution
# A controlled edit's conditioning image at the working size, in the ControlNet's range (smartedit.edit.control_images);
# every edit carries it, [1, 3, 1, 1] zeros when it has no control (an ensemble passes every tensor it maps).
CONTROL_CONDITION = TensorSpec(CONTROL_IMAGE, "FP32", (1, 3, -1, -1))
# The box of the original that the models edit (left, top, right, bottom; smartedit.edit.regions). Postprocess
# pastes the edit back into the request's own image and mask, which it decodes again: cheaper than
# sending a 24 MP photo's pixels through the stubs' shared memory, which never shrinks.
EDIT_BOX = TensorSpec("edit_box", "INT32", (4,))
# The edit's record (smartedit.edit.parameters.EditParameters, JSON): every scalar parameter resolved once.
EDIT_PARAMETERS = TensorSpec("edit_parameters", "BYTES", (1,))
SEED_USED = TensorSpec(wire.SEED_USED.name, wire.SEED_USED.datatype, wire.OUTPUT_SHAPE)  # one per image
# When the caller gives up, as ``time.time()`` seconds; 0 when it set no timeout. Preprocess computes it
# from Triton's request timeout, which the client sets from its own and the ensemble passes to every step.
DEADLINE = TensorSpec("deadline", "FP64", (1,))
# The edit's token, made by preprocess: it names the edit in the server's in-flight ledger until
# postprocess answers it (smartedit.ops.server_state: what a drain waits for), and the places preprocess
# reserved under it in the engine before decoding anything, so that the engine refuses at once what it
# cannot take; the edit claims its place when it arrives.
RESERVATION = TensorSpec("reservation", "BYTES", (1,))

PREPROCESS_INPUTS = tuple(wire_input(t) for t in wire.INPUTS)


def preprocess_outputs(prompts: PromptEncoding) -> tuple[TensorSpec, ...]:
    """Preprocess's outputs for a family that encodes prompts as ``prompts`` says."""
    return prompts.ids_tensors + (MASKED_IMAGE, INIT_IMAGE, LATENT_MASK, CONTROL_CONDITION, EDIT_BOX, EDIT_PARAMETERS,
                                  SEED_USED, DEADLINE, RESERVATION)


# The loop's inputs: what preprocess resolved, the prompt's embeddings (the family's,
# ``PromptEncoding.embedding_tensors``) and the masked image's latent distribution from the ensemble's
# component steps.
MASKED_IMAGE_MEAN = TensorSpec("masked_image_latent_mean", "FP32", (1, -1, -1, -1))
MASKED_IMAGE_STD = TensorSpec("masked_image_latent_std", "FP32", (1, -1, -1, -1))
# Denoised, divided by the VAE scaling factor: one row per image (num_images).
LATENTS = TensorSpec("latents", "FP32", (-1, -1, -1, -1))



def scheduler_inputs(prompts: PromptEncoding) -> tuple[TensorSpec, ...]:
    """The loop's inputs for a family that encodes prompts as ``prompts`` says."""
    return prompts.embedding_tensors + (MASKED_IMAGE_MEAN, MASKED_IMAGE_STD, LATENT_MASK, INIT_IMAGE, CONTROL_CONDITION,
                                        EDIT_PARAMETERS, DEADLINE, RESERVATION)


SCHEDULER_OUTPUTS = (LATENTS,)

# The engine takes the loop's inputs plus, from the streaming entry, how often to send previews and
# the token under which that entry marks the edit cancelled (smartedit.engine.cancellation). It answers with
# progress responses (step, total_steps, and preview_pixels every preview_every steps) when asked, then
# one final response: the latents, or the error as error_code (a TritonError code name) and
# error_message. (Triton 2.51 turns every error that comes back through BLS into INTERNAL, and the
# callers must tell a refusal for capacity, UNAVAILABLE, from a cancellation or a fault.)
PREVIEW_EVERY = TensorSpec(wire.PREVIEW_EVERY.name, wire.PREVIEW_EVERY.datatype, (1,), optional=True)
CANCEL_TOKEN = TensorSpec("cancel_token", "BYTES", (1,), optional=True)
# A request holding only `admission` ("reserve" or "release") and `reservation` keeps or gives back a
# place; it is answered at once, with an empty response or the refusal.
ADMISSION = TensorSpec("admission", "BYTES", (1,), optional=True)
RESERVE, RELEASE = b"reserve", b"release"
PLACES = TensorSpec("places", "INT32", (1,), optional=True)  # with "reserve": one per image of the edit, default 1
# From the streaming entry, for checkpoints: how often, and the header fields its states carry besides the
# engine's own (JSON: the model's identity, the photo's digests; smartedit.diffusion.resume).
CHECKPOINT_EVERY = TensorSpec(wire.CHECKPOINT_EVERY.name, wire.CHECKPOINT_EVERY.datatype, (1,), optional=True)
CHECKPOINT_HEADER = TensorSpec("checkpoint_header", "BYTES", (1,), optional=True)
# To resume: the state sent back, and the painter's change in latent space (scaled, E(edited) - E(checkpoint)).
RESUME_STATE = TensorSpec(wire.RESUME_STATE.name, wire.RESUME_STATE.datatype, (1,), optional=True)
RESUME_DELTA = TensorSpec("resume_delta", "FP32", (1, -1, -1, -1), optional=True)
STEP = TensorSpec(wire.STEP.name, wire.STEP.datatype, (1,))
TOTAL_STEPS = TensorSpec(wire.TOTAL_STEPS.name, wire.TOTAL_STEPS.datatype, (1,))
PREVIEW_PIXELS = TensorSpec("preview_pixels", "UINT8", (-1, -1, 3))  # RGB at latent resolution
# At a checkpoint: the state's bytes, and the predicted clean latents as the decoder takes them (unscaled).
CHECKPOINT_STATE = TensorSpec(wire.CHECKPOINT_STATE.name, wire.CHECKPOINT_STATE.datatype, (1,))
CHECKPOINT_LATENTS = TensorSpec("checkpoint_latents", "FP32", (1, -1, -1, -1))
# As the stream's, but the engine's code is a TritonError code name (its callers rebuild the error).
ERROR_CODE = TensorSpec(wire.ERROR_CODE.name, wire.ERROR_CODE.datatype, (1,))
ERROR_MESSAGE = TensorSpec(wire.ERROR_MESSAGE.name, wire.ERROR_MESSAGE.datatype, (1,))
# Why, in a word, for the request counters (smartedit.serving.request_metrics): at_capacity, deadline, denoise, ...
ERROR_REASON = TensorSpec("error_reason", "BYTES", (1,))



def engine_inputs(prompts: PromptEncoding) -> tuple[TensorSpec, ...]:
    """The engine's inputs, every one optional to Triton: an admission request carries two of them; the
    engine checks the rest."""
    return tuple(replace(t, optional=True) for t in scheduler_inputs(prompts)) + (PREVIEW_EVERY, CANCEL_TOKEN,
                                                                                  ADMISSION, PLACES,
                                                                                  CHECKPOINT_EVERY, CHECKPOINT_HEADER,
                                                                                  RESUME_STATE, RESUME_DELTA)


ENGINE_OUTPUTS = (LATENTS, STEP, TOTAL_STEPS, PREVIEW_PIXELS, CHECKPOINT_STATE, CHECKPOINT_LATENTS, ERROR_CODE,
                  ERROR_MESSAGE, ERROR_REASON)

DECODED_IMAGE = TensorSpec("decoded_image", "FP32", (-1, 3, -1, -1))  # in [-1, 1], one row per image
EDITED_IMAGE = TensorSpec(wire.EDITED_IMAGE.name, wire.EDITED_IMAGE.datatype, wire.OUTPUT_SHAPE)

POSTPROCESS_INPUTS = (DECODED_IMAGE, TensorSpec(wire.IMAGE.name, wire.IMAGE.datatype, wire.TENSOR_SHAPE),
                      # absent for a task that needs no mask (smartedit.edit.tasks.MASK_OPTIONAL)
                      TensorSpec(wire.MASK_IMAGE.name, wire.MASK_IMAGE.datatype, wire.TENSOR_SHAPE, optional=True),
                      EDIT_BOX,
                      EDIT_PARAMETERS, RESERVATION)
POSTPROCESS_OUTPUTS = (EDITED_IMAGE,)

STREAM_INPUTS = tuple(wire_input(t) for t in wire.STREAM_INPUTS)
STREAM_OUTPUTS = tuple(TensorSpec(t.name, t.datatype, wire.OUTPUT_SHAPE if t in wire.OUTPUTS else wire.TENSOR_SHAPE)
                       for t in wire.STREAM_OUTPUTS)

SERVER_INFO = TensorSpec(wire.SERVER_INFO.name, wire.SERVER_INFO.datatype, wire.TENSOR_SHAPE)

# The click-to-mask entry (smartedit.segmentation.sam): the wire contract's segment model.
SEGMENT = wire.SEGMENT_MODEL_NAME
SEGMENT_INPUTS = tuple(TensorSpec(t.name, t.datatype, wire.SEGMENT_SHAPES.get(t.name, wire.TENSOR_SHAPE), optional=True)
                       for t in wire.SEGMENT_INPUTS)
SEGMENT_OUTPUTS = tuple(TensorSpec(t.name, t.datatype, wire.TENSOR_SHAPE) for t in wire.SEGMENT_OUTPUTS)
