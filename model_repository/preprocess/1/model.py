"""``preprocess``: reserve the edit's place in the engine, validate the request, decode image and mask,
tokenize, resolve parameters."""

import json
import uuid
from pathlib import Path

import triton_python_backend_utils as pb_utils
from transformers import AutoTokenizer

from smartedit import steps
from smartedit.errors import RequestError
from smartedit.parameters import resolve_parameters
from smartedit.preprocessing import prepare_request
from smartedit.settings import PreprocessSettings, parameters_of
from smartedit.spec import PipelineInfo
from smartedit.structured_log import model_logger, timed_stage
from smartedit.triton_io import admission_call, internal_error, invalid_argument, optional_scalar, request_deadline

log = model_logger("preprocess")


class TritonPythonModel:
    def initialize(self, args):
        version_dir = Path(args["model_repository"]) / args["model_version"]
        self.settings = PreprocessSettings.parse(parameters_of(json.loads(args["model_config"])))
        self.info = PipelineInfo.load(version_dir / "pipeline.json")
        self.tokenizer = AutoTokenizer.from_pretrained(version_dir / "tokenizer")

    def execute(self, requests):
        return [self._prepare(request) for request in requests]

    def _prepare(self, request):
        request_id = request.request_id()
        reservation = ""
        try:
            with timed_stage(log, request_id, "preprocess") as fields:
                read = lambda name: optional_scalar(request, name)  # noqa: E731
                params = resolve_parameters(read, self.settings)  # the scalars: cheap, checked first
                if self.settings.admission_model:
                    # Before any decoding: a server at capacity refuses now, not after the work.
                    reservation = uuid.uuid4().hex
                    refusal = admission_call(self.settings.admission_model, steps.RESERVE, reservation, request_id,
                                             places=params.num_images)
                    if refusal is not None:
                        reservation = ""
                        fields.update(outcome="refused", error=refusal.message())
                        return pb_utils.InferenceResponse(output_tensors=[], error=refusal)
                tensors, log_fields = prepare_request(read, self.tokenizer, self.info, self.settings,
                                                      deadline=request_deadline(request), reservation=reservation,
                                                      params=params)
                fields.update(log_fields)
        except RequestError as error:
            if reservation:
                admission_call(self.settings.admission_model, steps.RELEASE, reservation, request_id)
            return invalid_argument(error)
        except Exception as error:  # logged by the stage, with its traceback; the places go back at once
            if reservation:
                admission_call(self.settings.admission_model, steps.RELEASE, reservation, request_id)
            return internal_error(f"preprocess failed: {error}")
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(spec.name, value)
                                                         for spec, value in tensors.items()])
