"""A component (text_encoder, unet, vae_encoder, vae_decoder) on a simulated device.

This is the ``simulated`` runtime profile, for benchmarks: it takes and returns the component's
real tensors (names, shapes, dtypes, the bytes moved through Triton) but instead of computing, it
keeps the call busy for the latency table's ``a + b · rows`` (``b`` scaled by the image's pixel count
against the table's reference size), counted from when the call starts, so that its own handling of
the tensors is part of that time rather than added to it, and answers zeros. One instance runs one
call at a time, like one GPU. Requests of a dynamic batch that agree in shape run as one call, as a
native backend batches them.

Components given the same ``shared_device`` (the UNets of several pipelines, say) stand for one GPU: a
call waits for the others' calls on it to end (an exclusive lock on a file of that name, per server) and
its time counts from when it has the device.
"""

import fcntl
import os
import tempfile
import time

import numpy as np
import triton_python_backend_utils as pb_utils

from smartedit.serving.model_args import ModelArgs
from smartedit.engine.latency_table import ComponentLatency
from smartedit.serving.settings import parse_float, parse_int
from smartedit.diffusion.families import components_of


class TritonPythonModel:
    def initialize(self, args):
        model = ModelArgs.of(args)
        params = model.parameters
        self.latency = ComponentLatency(a_ms=parse_float("latency_a_ms", params["latency_a_ms"], 0.0),
                                        b_ms=parse_float("latency_b_ms", params["latency_b_ms"], 0.0),
                                        max_batch_size=1)
        self.reference_pixels = parse_int("reference_pixels", params["reference_pixels"], 1)
        self.info = model.pipeline_info()
        # The component it stands for: its family's (SDXL's UNet takes more inputs than SD's), by the name the
        # export gave it (the served name has the pipeline's suffix: unet_sdxl).
        component = params.get("component", model.name)
        self.spec = next(c for c in components_of(self.info) if c.name == component)
        shared = params.get("shared_device", "")
        # The stub's parent is this server's tritonserver: one lock per server, whatever else runs here.
        self.device = (open(os.path.join(tempfile.gettempdir(), f"smartedit-simulated-{shared}-{os.getppid()}.lock"),
                            "a+") if shared else None)

    def finalize(self):
        if self.device is not None:
            self.device.close()

    def execute(self, requests):
        if self.device is None:
            return self._execute(requests)
        fcntl.flock(self.device, fcntl.LOCK_EX)
        try:
            return self._execute(requests)
        finally:
            fcntl.flock(self.device, fcntl.LOCK_UN)

    def _execute(self, requests):
        started = time.perf_counter()
        responses = [None] * len(requests)
        groups = {}
        for index, request in enumerate(requests):
            shapes = {t.name: tuple(pb_utils.get_input_tensor_by_name(request, t.name).as_numpy().shape)
                      for t in self.spec.inputs}
            key = tuple((name, shape[1:]) for name, shape in shapes.items())
            groups.setdefault(key, []).append((index, shapes))
        busy_until = started
        for members in groups.values():  # one device: the groups' calls run one after another
            busy_until = self._run_group(members, responses, busy_until)
        return responses

    def _run_group(self, members, responses, started: float) -> float:
        height, width = self.spec.image_size(self.info, members[0][1])
        area_ratio = (height * width) / self.reference_pixels if height else 1.0
        rows = sum(next(iter(shapes.values()))[0] for _, shapes in members)
        done = started + self.latency.seconds(rows, area_ratio)
        self._answer(members, responses, height, width)
        time.sleep(max(0.0, done - time.perf_counter()))
        return done

    def _answer(self, members, responses, height, width):
        for index, shapes in members:
            batch = next(iter(shapes.values()))[0]
            outputs = [pb_utils.Tensor(t.name, np.zeros(t.shape(self.info, batch, height, width), dtype=t.numpy_dtype))
                       for t in self.spec.outputs]
            responses[index] = pb_utils.InferenceResponse(output_tensors=outputs)
