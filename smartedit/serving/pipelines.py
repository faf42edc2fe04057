"""Several pipelines in one server: the names of pipeline NAME's models.

Each pipeline has models of its own (components, preprocess, loop, engine, postprocess, stream), so
each has its own admission bounds and its results are those of a server holding it alone. The first
pipeline's models keep the plain names (``unet``, ``preprocess``, ..., the ensemble ``inpaint``, the
stream ``inpaint_stream``): a caller of a one-pipeline server sees no change. Every other pipeline's
models carry ``_NAME``. Every pipeline is also served under its name, as ``inpaint_NAME`` and
``inpaint_stream_NAME`` (for the first: an ensemble over its plain-named models, and a second stream
model calling them).

The export writes the list (``PIPELINES_FILENAME``, in ``server_info``'s folder), first pipeline first.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from smartedit_client import _contract as wire

PIPELINES_FILENAME = "pipelines.json"


@dataclass(frozen=True)
class PipelineNames:
    pipeline: str
    first: bool

    def __post_init__(self):
        if not wire.PIPELINE_NAME.fullmatch(self.pipeline):
            raise ValueError(f"pipeline name {self.pipeline!r}: use letters, digits, '_' and '-' (at most 64, "
                             f"starting with a letter or digit); it becomes part of its models' names")

    @property
    def suffix(self) -> str:
        """What this pipeline's models' names end in."""
        return "" if self.first else f"_{self.pipeline}"

    def model(self, base: str) -> str:
        """The name this pipeline's model ``base`` (``unet``, ``preprocess``, ...) is served as."""
        return base + self.suffix

    @property
    def entries(self) -> tuple[tuple[str, str], ...]:
        """(unary ensemble, stream) names this pipeline answers to: its own, and the plain ones for the first."""
        named = wire.pipeline_model_names(self.pipeline)
        return (named, wire.pipeline_model_names(None)) if self.first else (named,)

    def served_models(self) -> list[str]:
        """The names of every model of this pipeline (its steps, components and entries)."""
        from smartedit.diffusion.spec import COMPONENTS
        from smartedit.serving import steps

        bases = [spec.name for spec in COMPONENTS] + [steps.PREPROCESS, steps.SCHEDULER, steps.DENOISE_ENGINE,
                                                      steps.POSTPROCESS]
        return [self.model(base) for base in bases] + [name for entry in self.entries for name in entry]


def pipeline_names(names: list[str]) -> list[PipelineNames]:
    """Every pipeline's names, the first first; refuses a name given twice and names whose models would
    clash (``stream_x`` beside ``x``: both would be ``inpaint_stream_x``)."""
    if not names:
        raise ValueError("a model repository serves at least one pipeline")
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise ValueError(f"pipeline name {duplicates[0]!r} is given twice: name each --model NAME=PATH differently")
    pipelines = [PipelineNames(name, first=index == 0) for index, name in enumerate(names)]
    owner: dict[str, str] = {}
    for pipeline in pipelines:
        for model in pipeline.served_models():
            if model in owner and owner[model] != pipeline.pipeline:
                raise ValueError(f"pipelines {owner[model]!r} and {pipeline.pipeline!r} would both serve a model "
                                 f"named {model!r}: rename one")
            owner[model] = pipeline.pipeline
    return pipelines


def write_pipeline_list(folder: Path, pipelines: list[PipelineNames]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / PIPELINES_FILENAME).write_text(json.dumps([p.pipeline for p in pipelines]) + "\n")


def read_pipeline_list(folder: Path) -> list[PipelineNames]:
    """The pipelines an export wrote beside ``server_info``; a repository exported before several
    pipelines existed has none: its one pipeline is the plain-named one, called ``default``."""
    path = Path(folder) / PIPELINES_FILENAME
    names = json.loads(path.read_text()) if path.exists() else ["default"]
    return pipeline_names(names)
