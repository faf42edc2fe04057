"""``server_info``: what this server offers (every pipeline: model, family, working resolution, samplers,
tasks, every parameter's range and default), as JSON in one BYTES output. Served on the inference API, which the restricted admin
APIs (model config among them) leave open to every client.

Being the lightest model, it also publishes what ``smartedit serve`` counts (model processes replaced,
restarts, drains) and the drain's state as metrics (smartedit.ops.event_metrics)."""


import numpy as np
import triton_python_backend_utils as pb_utils

from smartedit.serving.model_args import ModelArgs
from smartedit.serving import steps
from smartedit.ops.event_metrics import EventMetrics
from smartedit.ops.server_state import ServerState
from smartedit.edit.provenance import PROVENANCE_FILENAME, Provenance
from smartedit.serving.pipelines import read_pipeline_list
from smartedit.serving.server_info import describe_json
from smartedit.serving.settings import PreprocessSettings
from smartedit.diffusion.spec import PipelineInfo


class TritonPythonModel:
    def initialize(self, args):
        model = ModelArgs.of(args)
        version_dir = model.folder
        settings = PreprocessSettings.parse(model.parameters)
        served = [(names, PipelineInfo.load(version_dir / "pipelines" / names.pipeline / "pipeline.json"),
                   Provenance.load(version_dir / "pipelines" / names.pipeline / PROVENANCE_FILENAME))
                  for names in read_pipeline_list(version_dir)]
        text = describe_json(served, settings)
        self.answer = np.array([text.encode("utf-8")], dtype=np.object_)
        self.events = EventMetrics(ServerState.of_this_server())

    def finalize(self):
        self.events.close()

    def execute(self, requests):
        return [pb_utils.InferenceResponse(output_tensors=[pb_utils.Tensor(steps.SERVER_INFO.name, self.answer)])
                for _ in requests]
