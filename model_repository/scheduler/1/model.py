"""``scheduler``: the denoising loop of one edit, calling ``unet`` through BLS each step.

The loop itself is ``smartedit.denoise`` (it reads like diffusers' ``__call__``); this model only
moves tensors between Triton and it, and checks for cancellation between steps.
"""

import json
from pathlib import Path

import numpy as np
import torch
import triton_python_backend_utils as pb_utils

from smartedit import steps
from smartedit.denoise import decoder_input, run_to_end, start_denoising
from smartedit.settings import SchedulerSettings, parameters_of
from smartedit.scheduler_metrics import SchedulerMetrics
from smartedit.spec import UNET, VAE_ENCODER, PipelineInfo
from smartedit.structured_log import model_logger, timed_stage
from smartedit.triton_io import array, call_model, cancelled, internal_error

log = model_logger("scheduler")


class TritonPythonModel:
    def initialize(self, args):
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.settings = SchedulerSettings.parse(parameters_of(json.loads(args["model_config"])))
        self.info = PipelineInfo.load(version_dir / "pipeline.json")
        self.scheduler_config = json.loads((version_dir / "scheduler_config.json").read_text())
        torch.set_num_threads(1)  # the loop's own arithmetic is tiny; leave the cores to the UNet
        self.metrics = SchedulerMetrics(args["model_name"], args["model_version"], args["model_instance_name"])

    def finalize(self):
        # The Python backend wants each Metric released before its MetricFamily.
        del self.metrics

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                responses.append(self._denoise(request))
            except Exception as error:  # logged by the stage; one failed edit must not fail the others
                responses.append(internal_error(f"denoising failed: {error}"))
        return responses

    def _unet(self, record, sample, timestep, encoder_hidden_states):
        # A scalar-per-row tensor travels as [rows, 1]; the unet config reshapes it to [rows].
        values = (sample.numpy(), timestep.numpy().reshape(-1, 1), encoder_hidden_states.numpy())
        with self.metrics.unet_call(record):
            (noise_pred,) = call_model(self.settings.unet_model, dict(zip(UNET.input_names, values)),
                                       UNET.output_names)
        return torch.from_numpy(noise_pred)

    def _encode_init_image(self, init_image):
        mean, std = call_model(self.settings.vae_encoder_model, {VAE_ENCODER.inputs[0].name: init_image},
                               VAE_ENCODER.output_names)
        return torch.from_numpy(mean), torch.from_numpy(std)

    def _denoise(self, request):
        def scalar(spec):
            return array(request, spec.name).reshape(-1)[0]

        with timed_stage(log, request.request_id(), "denoise") as fields, self.metrics.edit() as record:
            sampler, num_steps = scalar(steps.SAMPLER).decode(), int(scalar(steps.STEPS))
            fields.update(sampler=sampler, num_inference_steps=num_steps)
            response = self._run_loop(request, scalar, sampler, num_steps, record)
            fields.update(steps_run=record.steps, outcome=record.outcome)
        return response

    def _run_loop(self, request, scalar, sampler, num_steps, record):
        init_image = array(request, steps.INIT_IMAGE.name)
        state = start_denoising(
            info=self.info,
            scheduler_config=self.scheduler_config,
            sampler=sampler,
            num_inference_steps=num_steps,
            strength=float(scalar(steps.STRENGTH)),
            guidance_scale=float(scalar(steps.GUIDANCE)),
            seed=int(scalar(steps.SEED_USED)),
            prompt_embeds=torch.from_numpy(array(request, steps.PROMPT_EMBEDS.name)),
            masked_image_mean=torch.from_numpy(array(request, steps.MASKED_IMAGE_MEAN.name)),
            masked_image_std=torch.from_numpy(array(request, steps.MASKED_IMAGE_STD.name)),
            latent_mask=torch.from_numpy(array(request, steps.LATENT_MASK.name)),
            encode_init_image=lambda: self._encode_init_image(init_image),
        )
        finished = run_to_end(state, lambda *inputs: self._unet(record, *inputs), should_stop=request.is_cancelled)
        if not finished:
            record.outcome = "cancelled"
            return cancelled(f"cancelled after {state.step_index} of {state.total_steps} steps")
        latents = decoder_input(state, self.info).numpy().astype(np.float32)
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(steps.LATENTS.name, latents)])
