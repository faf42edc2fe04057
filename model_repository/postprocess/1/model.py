"""``postprocess``: the edit scaled back to its box and pasted into the request's image where masked, PNG."""

import numpy as np
import triton_python_backend_utils as pb_utils

from smartedit import steps
from smartedit.postprocessing import finish_edit
from smartedit.structured_log import model_logger, timed_stage
from smartedit.triton_io import array
from smartedit_client import _contract as wire

log = model_logger("postprocess")


class TritonPythonModel:
    def initialize(self, args):
        pass

    def execute(self, requests):
        responses = []
        for request in requests:
            with timed_stage(log, request.request_id(), "postprocess") as fields:
                encoded = finish_edit(
                    array(request, steps.DECODED_IMAGE.name),
                    array(request, wire.IMAGE.name).reshape(-1)[0],
                    array(request, wire.MASK_IMAGE.name).reshape(-1)[0],
                    array(request, steps.EDIT_BOX.name),
                )
                fields.update(png_bytes=len(encoded))
            png = np.array([encoded], dtype=np.object_)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(steps.EDITED_IMAGE.name, png)]))
        return responses
