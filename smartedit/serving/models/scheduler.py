"""``scheduler``: the ``inpaint`` ensemble's denoising step, run by one of two engines.

- ``engine: batched`` (default): the edit goes to the ``denoise_engine`` model through BLS and this
  step answers with the engine's final response. ``execute`` returns at once and answers arrive
  later through each request's response sender, so one instance holds any number of edits while
  the engine steps them together. (A non-decoupled model may answer from another thread this way;
  a decoupled step would make the whole ensemble decoupled, which unary gRPC refuses.)
- ``engine: per_request``: the loop of ``smartedit.diffusion.denoise`` runs here, one edit per instance at a
  time, with a BLS call to ``unet`` every step; concurrent edits meet only in the UNet's batcher.

Either way the loop stops when the caller's deadline passes (Triton does not tell a model inside an
ensemble that its client went away, so the deadline is what reaches it). An edit that fails here
ends the ensemble, so it leaves the server's in-flight ledger here (otherwise postprocess removes it).
"""

import json
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

from smartedit.serving.model_args import ModelArgs
from smartedit.serving import steps
from smartedit.serving.decoupled_calls import decoupled_responses, release_finished_calls
from smartedit.diffusion.control import control_image
from smartedit.diffusion.denoise import SAMPLE, EditInputs, decoder_input, run_to_end
from smartedit.diffusion.families import prompts_of, start_denoising
from smartedit.errors import ServiceInterrupted
from smartedit.ops.model_processes import Callees
from smartedit.ops.server_state import BETWEEN_STEPS_S, UNBOUNDED_REQUEST_S, ServerState
from smartedit.edit.parameters import EditParameters
from smartedit.serving.request_metrics import RequestCounter, outcome_of
from smartedit.engine.metrics import SchedulerMetrics
from smartedit.serving.settings import BATCHED, SchedulerSettings
from smartedit.diffusion.spec import UNET, VAE_ENCODER
from smartedit.serving.structured_log import model_logger, timed_stage
from smartedit.serving.triton_io import (
    array, call_model, cancelled, code_name, error_of_response, internal_error, optional_scalar, reason_of_response,
    unavailable, unet_request,
)

log = model_logger("scheduler")


def _token(request) -> str:
    """The edit's token: its entry in the in-flight ledger ("" for a caller that sent none)."""
    token = optional_scalar(request, steps.RESERVATION.name)
    return token.decode() if token else ""
FINAL = pb_utils.TRITONSERVER_RESPONSE_COMPLETE_FINAL
MAX_FORWARDED_EDITS = 1024


class TritonPythonModel:
    def initialize(self, args):
        model = ModelArgs.of(args)
        self.settings = SchedulerSettings.parse(model.parameters)
        self.state = ServerState.of_this_server()
        self.requests = RequestCounter("inpaint", model.pipeline)  # the ensemble's requests that end in this step
        self.callees = Callees(self.state)
        if self.settings.engine == BATCHED:
            # One thread per edit in flight, each blocked in its BLS call while the engine works. (The
            # Python backend's async_exec runs the same blocking call on asyncio's default executor,
            # which has min(32, cores + 4) threads: 6 edits at a time on a 2-core machine.) Threads
            # are started as needed; past this many, edits would wait here unseen, so it is generous:
            # the engine refuses what it cannot take, and a refused edit frees its thread at once.
            self._forwarders = ThreadPoolExecutor(MAX_FORWARDED_EDITS, thread_name_prefix="scheduler-forward")
            return
        self.info = model.pipeline_info()
        self.prompts = prompts_of(self.info)
        self.scheduler_config = json.loads((model.folder / "scheduler_config.json").read_text())
        torch.set_num_threads(1)  # the loop's own arithmetic is tiny; leave the cores to the UNet
        self.metrics = SchedulerMetrics(model.name, model.version, model.instance)

    def finalize(self):
        if self.settings.engine == BATCHED:
            self._forwarders.shutdown(wait=True)
        else:
            self.metrics.release()
        release_finished_calls()
        self.requests.close()

    def execute(self, requests):
        for request in requests:
            # In flight here until its deadline: the denoising is the long part.
            deadline = float(array(request, steps.DEADLINE.name).reshape(-1)[0])
            self.state.extend(_token(request), deadline or time.time() + UNBOUNDED_REQUEST_S)
        if self.settings.engine == BATCHED:
            for request in requests:
                self._forwarders.submit(self._forward, request, request.get_response_sender())
            return None
        responses = []
        for request in requests:
            try:
                responses.append(self._denoise(request))
            except ServiceInterrupted as error:  # the UNet's process died: send the edit again
                responses.append(unavailable(str(error)))
                self._end(request, "interrupted", "model_process_died")
                continue
            except Exception as error:  # logged by the stage; one failed edit must not fail the others
                responses.append(internal_error(f"denoising failed: {error}"))
            if responses[-1].has_error():
                stopped = code_name(responses[-1].error()) == "CANCELLED"  # its deadline passed, or the drain's
                self._end(request, *(("cancelled", "deadline") if stopped else ("failed", "denoise")))
            else:
                self._to_postprocess(request)
        return responses

    def _to_postprocess(self, request):
        """Denoised: postprocess ends the entry, unless the decoder step fails first (then it lapses soon)."""
        self.state.extend(_token(request), time.time() + BETWEEN_STEPS_S)

    def _end(self, request, outcome: str, reason: str):
        """The edit failed here, so no postprocess will end its ledger entry, nor count it."""
        self.state.end(_token(request))
        self.requests.count(outcome, reason)

    # --- batched: forward to the engine -------------------------------------------------------------

    def _forward(self, request, sender):
        answer = None
        ended = {"outcome": "failed", "reason": "denoise"}  # how an error answer is counted
        try:
            engine_request = pb_utils.InferenceRequest(
                model_name=self.settings.engine_model, inputs=request.inputs(), request_id=request.request_id(),
                requested_output_names=[steps.LATENTS.name, steps.ERROR_CODE.name, steps.ERROR_MESSAGE.name,
                                        steps.ERROR_REASON.name])

            def exchange():
                final = None
                for response in decoupled_responses(engine_request):
                    error = error_of_response(response)
                    if error is not None:
                        reason = reason_of_response(response) or "denoise"
                        ended.update(outcome=outcome_of(code_name(error), reason), reason=reason)
                        final = pb_utils.InferenceResponse(output_tensors=[], error=error)
                        continue
                    latents = pb_utils.get_output_tensor_by_name(response, steps.LATENTS.name)
                    if latents is not None:
                        final = pb_utils.InferenceResponse(output_tensors=[latents])
                return final

            # Watched: an engine whose process dies never answers, and the edit would hang until its client
            # gave up (smartedit.ops.model_processes).
            answer = self.callees.wait(self.settings.engine_model, exchange,
                                       failed=lambda final: final is None or final.has_error())
            answer = answer or internal_error("the denoising engine ended the edit without an answer")
        except ServiceInterrupted as error:
            answer = unavailable(str(error))
            ended = {"outcome": "interrupted", "reason": "model_process_died"}
        except Exception as error:
            log.exception("forwarding to the engine failed")
            answer = internal_error(f"forwarding to the denoising engine failed: {error}")
            ended = {"outcome": "failed", "reason": "denoise"}
        finally:
            if answer is None or answer.has_error():
                self._end(request, ended["outcome"], ended["reason"])
            else:
                self._to_postprocess(request)
            sender.send(answer, flags=FINAL)

    # --- per request: the loop runs here -------------------------------------------------------------

    def _unet(self, record, inputs):
        model = self.settings.unet_model
        pids = self.callees.pids(model)
        with self.metrics.unet_call(record, rows=inputs[SAMPLE].shape[0]):
            try:
                (noise_pred,) = call_model(model, unet_request({name: value.numpy() for name, value in inputs.items()}),
                                           UNET.output_names)
            except Exception as error:  # a dead UNet process: answered UNAVAILABLE, "send again"
                raise self.callees.explain(model, pids, error) from error
        return torch.from_numpy(noise_pred)

    def _encode_init_image(self, init_image):
        mean, std = call_model(self.settings.vae_encoder_model, {VAE_ENCODER.inputs[0].name: init_image},
                               VAE_ENCODER.output_names)
        return torch.from_numpy(mean), torch.from_numpy(std)

    def _denoise(self, request):
        params = EditParameters.from_tensor(array(request, steps.EDIT_PARAMETERS.name))
        with timed_stage(log, request.request_id(), "denoise") as fields, self.metrics.edit() as record:
            fields.update(task=params.task, sampler=params.scheduler, num_inference_steps=params.num_inference_steps,
                          num_images=params.num_images)
            response = self._run_loops(request, params, record)
            fields.update(steps_run=record.steps, outcome=record.outcome)
        return response

    def _run_loops(self, request, params, record):
        """Each variation's loop in turn (its own seed); the latents of all, in order."""
        init_image = array(request, steps.INIT_IMAGE.name)
        deadline = float(array(request, steps.DEADLINE.name).reshape(-1)[0])
        inputs = EditInputs(
            prompt={spec.name: torch.from_numpy(array(request, spec.name)) for spec in self.prompts.embedding_tensors},
            masked_image_mean=torch.from_numpy(array(request, steps.MASKED_IMAGE_MEAN.name)),
            masked_image_std=torch.from_numpy(array(request, steps.MASKED_IMAGE_STD.name)),
            latent_mask=torch.from_numpy(array(request, steps.LATENT_MASK.name)),
            control_image=control_image(array(request, steps.CONTROL_CONDITION.name), params),
        )
        # Inside an ensemble is_cancelled() stays false (Triton 2.51), so the deadline is what stops it;
        # a caller of this step alone would be seen.
        caller_gone = lambda: (request.is_cancelled() or (bool(deadline) and time.time() >= deadline)  # noqa: E731
                               or self.state.cancel_reason() is not None)  # the drain's timeout
        latents, encoded = [], []

        def encode_init_image():  # once for all variations
            if not encoded:
                encoded.append(self._encode_init_image(init_image))
            return encoded[0]

        for index in range(params.num_images):
            state = start_denoising(self.info, self.scheduler_config, params.variation(index), inputs,
                                    encode_init_image)
            if not run_to_end(state, lambda unet_inputs: self._unet(record, unet_inputs), should_stop=caller_gone):
                record.outcome = "cancelled"
                return cancelled(f"cancelled after {state.step_index} of {state.total_steps} steps of image "
                                 f"{index + 1} of {params.num_images}: the caller's deadline passed or it cancelled")
            latents.append(decoder_input(state, self.info).numpy().astype(np.float32))
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(steps.LATENTS.name, np.concatenate(latents))])
