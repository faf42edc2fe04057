"""``preprocess``: validate the request, decode image and mask, tokenize, resolve parameters."""

import json
from pathlib import Path

import numpy as np
import triton_python_backend_utils as pb_utils
from transformers import AutoTokenizer

from smartedit import steps
from smartedit.errors import RequestError
from smartedit.preprocessing import prepare_images, resolve_parameters, tokenize
from smartedit.settings import PreprocessSettings, parameters_of
from smartedit.spec import PipelineInfo
from smartedit.structured_log import model_logger, timed_stage
from smartedit.triton_io import invalid_argument, optional_scalar, request_deadline, required_scalar
from smartedit_client import _contract as wire

log = model_logger("preprocess")


class TritonPythonModel:
    def initialize(self, args):
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.settings = PreprocessSettings.parse(parameters_of(json.loads(args["model_config"])))
        self.info = PipelineInfo.load(version_dir / "pipeline.json")
        self.tokenizer = AutoTokenizer.from_pretrained(version_dir / "tokenizer")

    def execute(self, requests):
        responses = []
        for request in requests:
            try:
                with timed_stage(log, request.request_id(), "preprocess") as fields:
                    tensors = self._prepare(request, fields)
                responses.append(pb_utils.InferenceResponse(output_tensors=tensors))
            except RequestError as error:
                responses.append(invalid_argument(error))
        return responses

    def _prepare(self, request, log_fields):
        # Scalars first: they are cheap to check, images are not.
        params = resolve_parameters(
            prompt=required_scalar(request, wire.PROMPT.name),
            negative_prompt=optional_scalar(request, wire.NEGATIVE_PROMPT.name),
            num_inference_steps=optional_scalar(request, wire.NUM_INFERENCE_STEPS.name),
            guidance_scale=optional_scalar(request, wire.GUIDANCE_SCALE.name),
            strength=optional_scalar(request, wire.STRENGTH.name),
            seed=optional_scalar(request, wire.SEED.name),
            scheduler=optional_scalar(request, wire.SCHEDULER.name),
            settings=self.settings,
        )
        images = prepare_images(
            required_scalar(request, wire.IMAGE.name),
            required_scalar(request, wire.MASK_IMAGE.name),
            self.info,
            self.settings,
        )
        height, width = images.original_image.shape[:2]
        log_fields.update(width=int(width), height=int(height), scheduler=params.scheduler,
                          num_inference_steps=params.num_inference_steps, seed=params.seed)
        input_ids = tokenize(self.tokenizer, params.negative_prompt, params.prompt)
        tensors = {
            steps.INPUT_IDS: input_ids,
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
            steps.DEADLINE: np.array([request_deadline(request)], dtype=np.float64),
        }
        return [pb_utils.Tensor(spec.name, value) for spec, value in tensors.items()]
