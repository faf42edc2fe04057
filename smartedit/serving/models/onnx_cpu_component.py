"""A component (text_encoder, unet, vae_encoder, vae_decoder) served by ONNX Runtime on CPU.

This is the ``onnx-cpu`` runtime profile: the export copies this file next to each component's
``model.onnx``. Triton's dynamic batcher hands ``execute`` several requests at once; requests whose
tensors agree in every axis but the batch axis run as one ONNX Runtime call, which is the batching
the native backends do.
"""


import numpy as np
import onnxruntime as ort
import psutil
import triton_python_backend_utils as pb_utils

from smartedit.serving.model_args import ModelArgs
from smartedit.serving.settings import OnnxHostSettings


class TritonPythonModel:
    def initialize(self, args):
        model = ModelArgs.of(args)
        config = model.config
        settings = OnnxHostSettings.parse(model.parameters)
        path = model.folder / settings.model_filename
        options = ort.SessionOptions()
        if settings.intra_op_num_threads:
            options.intra_op_num_threads = settings.intra_op_num_threads
        if settings.pipeline_weights_bytes > psutil.virtual_memory().available / 2:
            # A pipeline whose weights are most of the memory left (SDXL's 13 GiB on 24 GB): ONNX Runtime maps
            # the weights of a graph over 2 GiB from its file (the export aligns them for that), but prepacking
            # copies each matrix into the process's own memory (9 GiB more for SDXL's UNet alone, and the
            # server is then killed for memory mid-edit). Without it a call packs as it goes: 15-60% slower,
            # measured on SDXL's text encoders at 2 x 77 tokens; pipelines that fit (SD 1.5) keep it.
            options.add_session_config_entry("session.disable_prepacking", "1")
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.run_options = ort.RunOptions()
        if settings.shrink_arena:
            self.run_options.add_run_config_entry("memory.enable_memory_arena_shrinkage", "cpu:0")
        # Inputs declared with `reshape { shape: [] }` are one scalar per batch row: [batch].
        self.input_shapes = {
            tensor["name"]: tuple(tensor["reshape"]["shape"]) if "reshape" in tensor else None
            for tensor in config["input"]
        }
        self.output_names = [tensor["name"] for tensor in config["output"]]

    def execute(self, requests):
        responses = [None] * len(requests)
        groups = {}
        for index, request in enumerate(requests):
            inputs = {name: pb_utils.get_input_tensor_by_name(request, name).as_numpy() for name in self.input_shapes}
            key = tuple((name, value.shape[1:], value.dtype.str) for name, value in inputs.items())
            groups.setdefault(key, []).append((index, inputs))
        for members in groups.values():
            self._run_group(members, responses)
        return responses

    def _run_group(self, members, responses):
        feeds = {}
        for name, reshape in self.input_shapes.items():
            batch = np.concatenate([inputs[name] for _, inputs in members], axis=0)
            feeds[name] = batch.reshape((batch.shape[0],) + reshape) if reshape is not None else batch
        try:
            outputs = self.session.run(self.output_names, feeds, self.run_options)
        except Exception as error:
            for index, _ in members:
                responses[index] = pb_utils.InferenceResponse(
                    output_tensors=[], error=pb_utils.TritonError(f"ONNX Runtime failed: {error}"))
            return
        sizes = [next(iter(inputs.values())).shape[0] for _, inputs in members]
        offsets = np.cumsum([0] + sizes)
        for (index, _), start, stop in zip(members, offsets[:-1], offsets[1:]):
            tensors = [pb_utils.Tensor(name, np.ascontiguousarray(value[start:stop]))
                       for name, value in zip(self.output_names, outputs)]
            responses[index] = pb_utils.InferenceResponse(output_tensors=tensors)
