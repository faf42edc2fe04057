"""``denoise_engine``: the batched denoising engine of one loop instance (smartedit.engine.core).

A decoupled model: ``execute`` admits each request into the engine (or refuses it at once with
UNAVAILABLE, "server at capacity") and returns; the engine's worker steps every active edit in
shared UNet calls (BLS to ``unet``), and answers go out through each request's response sender:
progress responses when the caller asked for them (``preview_every``), then one final response
with the latents, or the edit's error as tensors (``error_as_tensors``: an error's code does not
survive BLS in Triton 2.51). Callers: the ``inpaint`` ensemble's ``scheduler`` step and
the ``inpaint_stream`` entry, both through BLS.
"""

import functools
import json
import threading

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

from smartedit.serving.model_args import ModelArgs
from smartedit.serving import steps
from smartedit.engine.cancellation import CancelBoard
from smartedit.diffusion.control import control_image as _control_image
from smartedit.diffusion.denoise import EditInputs, decoder_input
from smartedit.diffusion.families import family_of, prompts_of, start_denoising
from smartedit.diffusion.resume import CLEAN, resume
from smartedit.diffusion.resume_state import ResumeState
from smartedit.engine.core import INVALID, AtCapacity, DenoiseEngine, EditRequest, EngineLimits, TooManyImages
from smartedit.errors import RequestError
from smartedit.ops.model_processes import Callees
from smartedit.ops.server_state import ServerState
from smartedit.edit.parameters import EditParameters
from smartedit.diffusion.preview import PREVIEW_FILENAME, LatentPreview
from smartedit.engine.metrics import EngineReporter, SchedulerMetrics
from smartedit.serving.settings import EngineSettings
from smartedit.diffusion.spec import UNET, VAE_ENCODER, PipelineInfo
from smartedit.serving.structured_log import model_logger
from smartedit.serving.triton_io import call_model, error_as_tensors, unet_request

log = model_logger("denoise_engine")
FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL


def _input(request, tensor):
    found = pb_utils.get_input_tensor_by_name(request, tensor.name)
    # Copied: the request's memory is released with its final response, the edit may outlive that.
    return None if found is None else np.array(found.as_numpy(), copy=True)


def _scalar(request, tensor):
    value = _input(request, tensor)
    return None if value is None else value.reshape(-1)[0]


class ResponseSink:
    """Sends one edit's answers through its request's response sender (from the engine's outbox).

    An edit of ``num_images`` variations is that many edits in the engine, each with its own seed, all
    answering here: progress is variation 0's (they run the same steps, side by side), the final
    answer the latents of all of them in order, or the first failure, after which the others stop.
    """

    def __init__(self, sender, info: PipelineInfo, preview: LatentPreview, num_images: int,
                 checkpoint_header: dict | None = None):
        self._sender, self._info, self._preview = sender, info, preview
        self._checkpoint_header = checkpoint_header or {}  # what a checkpoint's state says besides the loop's
        self._latents: list = [None] * num_images
        self._lock = threading.Lock()
        self.ended = False  # answered: a variation failed or all finished; the others are stopped

    def variation(self, index: int) -> "_VariationSink":
        return _VariationSink(self, index)

    def progress(self, index, step, total_steps, preview_latents, checkpoint=None):
        if index != 0:
            return
        tensors = [pb_utils.Tensor(steps.STEP.name, np.array([step], dtype=np.int32)),
                   pb_utils.Tensor(steps.TOTAL_STEPS.name, np.array([total_steps], dtype=np.int32))]
        if preview_latents is not None:
            tensors.append(pb_utils.Tensor(steps.PREVIEW_PIXELS.name, self._preview.render(preview_latents)))
        if checkpoint is not None:
            checkpoint.header.update(self._checkpoint_header)
            clean = checkpoint.tensors[CLEAN] / self._info.vae_scaling_factor
            tensors += [pb_utils.Tensor(steps.CHECKPOINT_STATE.name,
                                        np.array([checkpoint.to_bytes()], dtype=np.object_)),
                        pb_utils.Tensor(steps.CHECKPOINT_LATENTS.name, clean.numpy().astype(np.float32))]
        with self._lock:  # never after the final answer
            if not self.ended:
                self._sender.send(pb_utils.InferenceResponse(output_tensors=tensors))

    def finished(self, index, state):
        latents = decoder_input(state, self._info).numpy().astype(np.float32)
        with self._lock:
            if self.ended:
                return
            self._latents[index] = latents
            if any(latents is None for latents in self._latents):
                return
            self.ended = True
            response = pb_utils.InferenceResponse(output_tensors=[
                pb_utils.Tensor(steps.LATENTS.name, np.concatenate(self._latents))])
            self._sender.send(response, flags=FINAL)

    def abandon(self) -> bool:
        """End the edit without an answer, its variations stopping at their next step; whether the caller
        is to answer (False: a variation has answered already)."""
        with self._lock:
            claimed, self.ended = not self.ended, True
            return claimed

    def _end(self, response) -> None:
        with self._lock:  # one final answer, sent once, and nothing after it
            if self.ended:
                return
            self.ended = True
            self._sender.send(response, flags=FINAL)

    def failed(self, index, message, reason="denoise"):
        if reason == INVALID:  # the request's fault, found once its edit started (a resume state that does not fit)
            self._end(error_as_tensors("INVALID_ARG", message, reason))
            return
        self._end(error_as_tensors("INTERNAL", f"denoising failed: {message}", reason or "denoise"))

    def cancelled(self, index, message, reason=""):
        self._end(error_as_tensors("CANCELLED", f"denoising cancelled: {message}", reason))

    def interrupted(self, index, message, reason=""):
        self._end(error_as_tensors("UNAVAILABLE", message, reason))


class EditAnswered(Exception):
    """Submitting a request's variations failed after one of them had already answered it."""


class _VariationSink:
    """The engine's ``EditSink`` of one variation: its answers go to the edit's ``ResponseSink``."""

    def __init__(self, edit: ResponseSink, index: int):
        self._edit, self._index = edit, index

    def progress(self, step, total_steps, preview_latents, checkpoint=None):
        self._edit.progress(self._index, step, total_steps, preview_latents, checkpoint)

    def finished(self, state):
        self._edit.finished(self._index, state)

    def failed(self, message, reason=""):
        self._edit.failed(self._index, message, reason)

    def cancelled(self, message, reason=""):
        self._edit.cancelled(self._index, message, reason)

    def interrupted(self, message, reason=""):
        self._edit.interrupted(self._index, message, reason)


class TritonPythonModel:
    def initialize(self, args):
        model = ModelArgs.of(args)
        self.settings = EngineSettings.parse(model.parameters)
        self.info = model.pipeline_info()
        self.prompts = prompts_of(self.info)
        self.scheduler_config = json.loads((model.folder / "scheduler_config.json").read_text())
        self.preview = LatentPreview.load(model.folder / PREVIEW_FILENAME)
        self.cancel_board = CancelBoard.of_this_server()
        self.state = ServerState.of_this_server()
        self.callees = Callees(self.state)
        # The loop's own arithmetic is small; leave the cores to the UNet (on onnx-cpu, the same machine).
        torch.set_num_threads(1)
        self.metrics = SchedulerMetrics(model.name, model.version, model.instance)
        limits = EngineLimits(max_active_edits=self.settings.max_active_edits,
                              max_queued_edits=self.settings.max_queued_edits,
                              max_unet_rows=self.settings.max_unet_rows,
                              unet_lanes=self.settings.unet_lanes, lane_min_rows=self.settings.lane_min_rows)
        self.engine = DenoiseEngine(self._unet, limits, logger=log, metrics=EngineReporter(self.metrics),
                                    prepare_workers=self.settings.prepare_workers,
                                    shutdown_reason=self.state.cancel_reason)

    def finalize(self):
        # Triton unloads a model once its in-flight requests are answered, so the engine is idle here.
        stopped = self.engine.close()
        self.cancel_board.remove_if_empty()
        if stopped:
            # The Python backend wants each Metric released before its MetricFamily; a worker still
            # running would update released metrics, so they are kept if it did not stop.
            self.metrics.release()

    def execute(self, requests):
        for request in requests:
            sender = request.get_response_sender()
            try:
                action = _scalar(request, steps.ADMISSION)
                if action is not None:
                    self._admission(request, action)
                    sender.send(pb_utils.InferenceResponse(output_tensors=[]), flags=FINAL)
                    continue
                self._submit_edit(request, sender)
            except AtCapacity as error:
                # Triton has no RESOURCE_EXHAUSTED: a refusal for capacity is UNAVAILABLE, like Triton's own
                # "Exceeds maximum queue size", and says "server at capacity", which the client recognises.
                sender.send(error_as_tensors("UNAVAILABLE", str(error), "at_capacity"), flags=FINAL)
            except TooManyImages as error:  # no retry would help
                sender.send(error_as_tensors("INVALID_ARG", f"num_images: {error}", "num_images"), flags=FINAL)
            except EditAnswered:
                pass  # a variation already failed and answered the request
            except RequestError as error:  # a resume state that is not one (the stream checks it first)
                sender.send(error_as_tensors("INVALID_ARG", str(error), INVALID), flags=FINAL)
            except Exception as error:  # malformed inputs from a caller: answer it, keep serving
                sender.send(error_as_tensors("INTERNAL", f"denoise_engine could not take the edit: {error}", "denoise"),
                            flags=FINAL)
        return None

    def _admission(self, request, action: bytes) -> None:
        token = _scalar(request, steps.RESERVATION).decode()
        if action == steps.RESERVE:
            places = _scalar(request, steps.PLACES)
            self.engine.reserve(token, request.request_id(), ttl_s=self.settings.reservation_ttl_s,
                                places=1 if places is None else int(places))
        elif action == steps.RELEASE:
            self.engine.release(token)
        else:
            raise ValueError(f"admission must be {steps.RESERVE!r} or {steps.RELEASE!r}, got {action!r}")

    def _unet(self, inputs):
        model = self.settings.unet_model
        pids = self.callees.pids(model)
        try:
            (noise_pred,) = call_model(model, unet_request(inputs), UNET.output_names)
        except Exception as error:  # a dead UNet process: the engine answers UNAVAILABLE, "send again"
            raise self.callees.explain(model, pids, error) from error
        return noise_pred

    def _submit_edit(self, request, sender) -> None:
        """One engine edit per image of the request, each with its own seed (``EditParameters.variation``)."""
        params = EditParameters.from_tensor(_input(request, steps.EDIT_PARAMETERS))
        deadline = float(_scalar(request, steps.DEADLINE))
        prompt = {spec.name: torch.from_numpy(_input(request, spec)) for spec in self.prompts.embedding_tensors}
        inputs = EditInputs(prompt=prompt,
                            masked_image_mean=torch.from_numpy(_input(request, steps.MASKED_IMAGE_MEAN)),
                            masked_image_std=torch.from_numpy(_input(request, steps.MASKED_IMAGE_STD)),
                            latent_mask=torch.from_numpy(_input(request, steps.LATENT_MASK)),
                            control_image=_control_image(_input(request, steps.CONTROL_CONDITION), params))
        # Only encoded when the family needs the photo's latents; the request's copy stays out of memory otherwise.
        init_image = _input(request, steps.INIT_IMAGE) if family_of(self.info).encodes_init_image(params) else None
        request_id = request.request_id()
        encoded, encode_lock = [], threading.Lock()  # the init image is encoded once for all variations

        def encode_init_image():
            with encode_lock:
                if not encoded:
                    model = self.settings.vae_encoder_model
                    pids = self.callees.pids(model)
                    try:
                        mean, std = call_model(model, {VAE_ENCODER.inputs[0].name: init_image},
                                               VAE_ENCODER.output_names, request_id=request_id)
                    except Exception as error:
                        raise self.callees.explain(model, pids, error) from error
                    encoded.append((torch.from_numpy(mean), torch.from_numpy(std)))
            return encoded[0]

        preview_every = _scalar(request, steps.PREVIEW_EVERY)
        checkpoint_every = _scalar(request, steps.CHECKPOINT_EVERY)
        header = _scalar(request, steps.CHECKPOINT_HEADER)
        header = dict(json.loads(header), record=json.loads(params.to_json())) if header is not None else None
        prepare = functools.partial(start_denoising, self.info, self.scheduler_config)
        resume_state = _scalar(request, steps.RESUME_STATE)
        if resume_state is not None:  # the stream checked it against the request; its fit is checked on start
            saved = ResumeState.from_bytes(resume_state)
            delta = _input(request, steps.RESUME_DELTA)
            delta = None if delta is None else torch.from_numpy(delta)
            prepare = lambda *args: resume(start_denoising(self.info, self.scheduler_config, *args),  # noqa: E731
                                           saved, delta)
        token = _scalar(request, steps.CANCEL_TOKEN)
        token = token.decode() if token is not None else None
        reservation = _scalar(request, steps.RESERVATION)
        if params.num_images > self.engine.capacity:  # else the first would be admitted, the rest refused
            self.engine.check_places(params.num_images)
        sink = ResponseSink(sender, self.info, self.preview, params.num_images, checkpoint_header=header)
        caller_gone = (lambda: self.cancel_board.is_cancelled(token)) if token else (lambda: False)
        try:
            for index in range(params.num_images):
                variation = params.variation(index)
                self.engine.submit(EditRequest(
                    request_id=request_id,
                    prepare=functools.partial(prepare, variation, inputs, encode_init_image),
                    sink=sink.variation(index),
                    deadline=deadline or None,
                    # A variation stops when its caller left, or when another variation ended the edit.
                    cancelled=lambda: sink.ended or caller_gone(),
                    # Progress and previews follow the first variation; the others report nothing.
                    preview_every=None if preview_every is None or index else int(preview_every),
                    checkpoint_every=0 if checkpoint_every is None or index else int(checkpoint_every),
                    reservation=reservation.decode() if reservation else None,
                    log_fields={"task": params.task, "sampler": params.scheduler,
                                "num_inference_steps": params.num_inference_steps, "seed": variation.seed},
                ))
        except Exception:
            # The variations already admitted stop and answer nothing, and their unclaimed places go back.
            answer_here = sink.abandon()
            if reservation:
                self.engine.release(reservation.decode())
            if not answer_here:
                raise EditAnswered() from None
            raise
