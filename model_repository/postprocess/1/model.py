"""``postprocess``: pixels at the original size, unmasked pixels pasted back, PNG."""

import numpy as np
import triton_python_backend_utils as pb_utils

from smartedit import steps
from smartedit.postprocessing import compose, encode_png, to_pixels
from smartedit.triton_io import array


class TritonPythonModel:
    def initialize(self, args):
        pass

    def execute(self, requests):
        responses = []
        for request in requests:
            pixels = compose(
                to_pixels(array(request, steps.DECODED_IMAGE.name)),
                array(request, steps.ORIGINAL_IMAGE.name),
                array(request, steps.REPAINT_MASK.name),
            )
            png = np.array([encode_png(pixels)], dtype=np.object_)
            responses.append(pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(steps.EDITED_IMAGE.name, png)]))
        return responses
