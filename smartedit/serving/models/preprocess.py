"""``preprocess``: record the edit as in flight (or refuse it while the server drains), reserve its
place in the engine, validate the request, decode image and mask, tokenize, resolve parameters."""

import time
import uuid

import triton_python_backend_utils as pb_utils

from smartedit.serving.model_args import ModelArgs
from smartedit.serving import steps
from smartedit.serving.decoupled_calls import release_finished_calls
from smartedit.errors import RequestError
from smartedit.ops.model_processes import Callees
from smartedit.ops.server_state import BETWEEN_STEPS_S, ServerState
from smartedit.diffusion.families import family_parameters, prompts_of
from smartedit.edit.parameters import resolve_parameters
from smartedit.edit.preprocessing import prepare_request
from smartedit.serving.request_metrics import RequestCounter
from smartedit.serving.settings import PreprocessSettings
from smartedit.serving.structured_log import model_logger, timed_stage
from smartedit.serving.triton_io import (
    admission_call, internal_error, invalid_argument, optional_scalar, request_deadline, unavailable,
)

log = model_logger("preprocess")


class TritonPythonModel:
    def initialize(self, args):
        model = ModelArgs.of(args)
        self.settings = PreprocessSettings.parse(model.parameters)
        self.info = model.pipeline_info()
        self.prompts = prompts_of(self.info)
        self.family_parameters = family_parameters(self.info)
        self.tokenizers = self.prompts.load_tokenizers(model.folder)
        self.state = ServerState.of_this_server()
        self.callees = Callees(self.state)
        # The inpaint ensemble's requests that end here (smartedit.serving.request_metrics); the others end later.
        self.requests = RequestCounter("inpaint", model.pipeline)

    def finalize(self):
        release_finished_calls()  # its admission calls to the engine
        self.requests.close()

    def execute(self, requests):
        return [self._prepare(request) for request in requests]

    def _prepare(self, request):
        request_id = request.request_id()
        deadline = request_deadline(request)
        # The edit's token names it in the in-flight ledger until postprocess (or the scheduler step, on
        # a failure) ends it, and its places in the engine. Recorded before the drain is checked: a drain
        # that starts now either refuses this edit or waits for it (smartedit.ops.server_state).
        token = uuid.uuid4().hex
        # Until the denoising step takes it over (BETWEEN_STEPS_S: an encoder step that fails ends the edit
        # where nothing can end its entry).
        self.state.begin(token, min(deadline or float("inf"), time.time() + BETWEEN_STEPS_S))
        reserved = False
        try:
            with timed_stage(log, request_id, "preprocess") as fields:
                refusal = self.state.refusal()
                if refusal is not None:
                    fields.update(outcome="refused", error=refusal)
                    self.state.end(token)
                    self.requests.count("refused", "shutting_down")
                    return unavailable(refusal)
                read = lambda name: optional_scalar(request, name)  # noqa: E731
                # The scalars first: cheap, checked first.
                params = resolve_parameters(read, self.settings, self.family_parameters)
                if self.settings.admission_model:
                    # Before any decoding: a server at capacity refuses now, not after the work.
                    refusal = admission_call(self.settings.admission_model, steps.RESERVE, token, request_id,
                                             places=params.num_images, callees=self.callees)
                    if refusal is not None:
                        fields.update(outcome="refused", error=refusal.error.message())
                        self.state.end(token)
                        self.requests.count("refused", refusal.reason)
                        return pb_utils.InferenceResponse(output_tensors=[], error=refusal.error)
                    reserved = True
                tensors, log_fields = prepare_request(read, self.tokenizers, self.info, self.settings,
                                                      deadline=deadline, reservation=token, params=params)
                fields.update(log_fields)
        except RequestError as error:
            self._abandon(token, reserved, request_id)
            self.requests.count("invalid", error.field)
            return invalid_argument(error)
        except Exception as error:  # logged by the stage, with its traceback; the places go back at once
            self._abandon(token, reserved, request_id)
            self.requests.count("failed", "preprocess")
            return internal_error(f"preprocess failed: {error}")
        return pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(spec.name, value)
                                                         for spec, value in tensors.items()])

    def _abandon(self, token, reserved, request_id):
        """The edit goes no further: its ledger entry goes, and its places go back to the engine."""
        self.state.end(token)
        if reserved:
            admission_call(self.settings.admission_model, steps.RELEASE, token, request_id, callees=self.callees)
