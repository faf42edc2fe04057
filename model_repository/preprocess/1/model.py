"""``preprocess``: validate the request, decode image and mask, tokenize, resolve parameters."""

import json
from pathlib import Path

import triton_python_backend_utils as pb_utils
from transformers import AutoTokenizer

from smartedit.errors import RequestError
from smartedit.preprocessing import prepare_request
from smartedit.settings import PreprocessSettings, parameters_of
from smartedit.spec import PipelineInfo
from smartedit.structured_log import model_logger, timed_stage
from smartedit.triton_io import invalid_argument, optional_scalar, request_deadline

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
                    tensors, log_fields = prepare_request(
                        lambda name: optional_scalar(request, name), self.tokenizer, self.info, self.settings,
                        deadline=request_deadline(request))
                    fields.update(log_fields)
                outputs = [pb_utils.Tensor(spec.name, value) for spec, value in tensors.items()]
                responses.append(pb_utils.InferenceResponse(output_tensors=outputs))
            except RequestError as error:
                responses.append(invalid_argument(error))
        return responses
