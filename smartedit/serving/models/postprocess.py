"""``postprocess``: each image scaled back to its box and pasted into the request's image where masked
(feathered as the record says), PNG carrying its parameters; the edit leaves the in-flight ledger."""


import numpy as np
import triton_python_backend_utils as pb_utils

from smartedit.serving.model_args import ModelArgs
from smartedit.serving import steps
from smartedit.ops.server_state import ServerState
from smartedit.edit.parameters import EditParameters
from smartedit.edit.postprocessing import finish_edit
from smartedit.edit.provenance import PROVENANCE_FILENAME, Provenance
from smartedit.serving.request_metrics import RequestCounter
from smartedit.serving.structured_log import model_logger, timed_stage
from smartedit.serving.triton_io import array, optional_scalar
from smartedit_client import _contract as wire

log = model_logger("postprocess")


class TritonPythonModel:
    def initialize(self, args):
        model = ModelArgs.of(args)
        self.provenance = Provenance.load(model.folder / PROVENANCE_FILENAME)
        self.state = ServerState.of_this_server()
        self.requests = RequestCounter("inpaint", model.pipeline)

    def finalize(self):
        self.requests.close()

    def execute(self, requests):
        responses = []
        for request in requests:
            token = optional_scalar(request, steps.RESERVATION.name)
            outcome = ("failed", "postprocess")
            try:
                with timed_stage(log, request.request_id(), "postprocess") as fields:
                    encoded = finish_edit(
                        array(request, steps.DECODED_IMAGE.name),
                        array(request, wire.IMAGE.name).reshape(-1)[0],
                        optional_scalar(request, wire.MASK_IMAGE.name),
                        array(request, steps.EDIT_BOX.name),
                        EditParameters.from_tensor(array(request, steps.EDIT_PARAMETERS.name)),
                        self.provenance,
                    )
                    fields.update(png_bytes=sum(len(png) for png in encoded), images=len(encoded))
                outcome = ("ok", "")
            finally:  # answered either way: a drain need not wait for it any more
                self.state.end(token.decode() if token else "")
                self.requests.count(*outcome)
            pngs = pb_utils.Tensor(steps.EDITED_IMAGE.name, np.array(encoded, dtype=np.object_))
            responses.append(pb_utils.InferenceResponse(output_tensors=[pngs]))
        return responses
