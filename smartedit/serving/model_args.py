"""What Triton hands a Python model's ``initialize``, read once: every SmartEdit model reads the same
things from it (its settings, the files the export wrote beside its code, the pipeline it serves).
Imported only inside the Python backend stub (it names the process's pipeline in its logs)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from smartedit.diffusion.spec import PipelineInfo
from smartedit.serving.settings import parameters_of, pipeline_of
from smartedit.serving.structured_log import log_pipeline


@dataclass(frozen=True)
class ModelArgs:
    name: str  # as served: ``unet_NAME`` for pipeline NAME's (smartedit.serving.pipelines)
    version: str
    instance: str
    folder: Path  # <repository>/<model>/<version>: model.py and the files the export wrote beside it
    config: Mapping[str, Any]

    @classmethod
    def of(cls, args: Mapping[str, str]) -> "ModelArgs":
        """``args`` read; every later log line of this process names the pipeline its model serves."""
        model = cls(name=args["model_name"], version=args["model_version"],
                    instance=args.get("model_instance_name", ""),
                    folder=Path(args["model_repository"]) / args["model_version"],
                    config=json.loads(args["model_config"]))
        log_pipeline(model.pipeline)
        return model

    @property
    def parameters(self) -> dict[str, str]:
        """Its config's ``parameters``: what its settings class parses."""
        return parameters_of(self.config)

    @property
    def pipeline(self) -> str:
        """The pipeline it serves ("" for a model of the whole server: segment, server_info, ...)."""
        return pipeline_of(self.config)

    def pipeline_info(self) -> PipelineInfo:
        return PipelineInfo.load(self.folder / "pipeline.json")
