"""What the server offers, as the ``server_info`` model answers it: declared once, read from the same
declarations the server validates with (the wire contract, the preprocess settings, the task defaults,
each exported pipeline's facts and provenance)."""

from __future__ import annotations

import json
from typing import Any

from smartedit.edit.parameters import bounds, default_values
from smartedit.edit.provenance import Provenance, smartedit_version
from smartedit.diffusion.families import family_parameters
from smartedit.diffusion.samplers import SAMPLERS, suited_samplers
from smartedit.serving.pipelines import PipelineNames
from smartedit.serving.settings import PreprocessSettings, pipeline_settings
from smartedit.diffusion.spec import PipelineInfo
from smartedit.edit.tasks import TASK_DEFAULTS
from smartedit_client import _contract as wire


def describe_pipeline(names: PipelineNames, info: PipelineInfo, settings: PreprocessSettings,
                      provenance: Provenance) -> dict[str, Any]:
    """One pipeline: its model and family, the names it is served as, and what its edits take."""
    suited = suited_samplers(info.scheduler_class)
    settings = pipeline_settings(settings, suited)  # as the export wrote its preprocess's
    family = family_parameters(info)
    defaults = default_values(settings, family)
    parameters = {}
    for spec in wire.PARAMETERS:
        if spec.name in family.refused:
            continue
        minimum, maximum = bounds(spec, settings)
        entry = {"type": spec.datatype, "required": spec.required, "meaning": spec.meaning}
        if not spec.required and spec is not wire.SEED:
            entry["default"] = defaults[spec.name]
        if minimum is not None:
            entry["minimum"] = minimum
        if maximum is not None:
            entry["maximum"] = maximum
        choices = spec.choices or (tuple(SAMPLERS) if spec is wire.SCHEDULER else ())
        if choices:
            entry["choices"] = list(choices)
        parameters[spec.name] = entry
    unary, stream = wire.pipeline_model_names(names.pipeline)
    return {
        "name": names.pipeline,
        "models": {"unary": unary, "stream": stream},  # what the SDK's pipeline= calls
        "model": provenance.model,
        "family": info.family,  # the family whose loop serves it (smartedit.diffusion.families)
        "weights_sha256": provenance.weights_sha256,
        "working_resolution": info.working_resolution,
        "vae_scale_factor": info.vae_scale_factor,
        "samplers": list(SAMPLERS),
        # The samplers its weights are made for: the consistency samplers (lcm, tcd; 4-8 steps) for distilled
        # weights (an LCM/TCD checkpoint, or an LCM-/TCD-LoRA fused at export with --scheduler), the others else.
        "suited_samplers": suited,
        # The ControlNets its edits may name (``controlnet``), each with its UNet in one graph: none, or one.
        "controlnets": [info.controlnet] if info.controlnet else [],
        # The images an edit may carry besides the photo and its mask (a ControlNet pipeline's control_image).
        "image_inputs": ({spec.name: {"meaning": spec.meaning} for spec in wire.IMAGE_OPTIONS}
                         if info.controlnet else {}),
        "tasks": list(family.tasks),
        "task_defaults": {task: dict(TASK_DEFAULTS[task]) for task in family.tasks},
        "parameters": parameters,
        # What the stream takes besides the parameters: how it reports, and what it resumes from.
        "stream_inputs": {spec.name: {"type": spec.datatype, "meaning": spec.meaning,
                                      **({"minimum": spec.minimum} if spec.minimum is not None else {})}
                          for spec in wire.STREAM_ONLY_INPUTS},
    }


def describe(served: list[tuple[PipelineNames, PipelineInfo, Provenance]],
             settings: PreprocessSettings) -> dict[str, Any]:
    """The server: every pipeline (``pipelines``, first first), the first one's facts at the top level as
    well (what ``inpaint`` serves; a caller of a one-pipeline server reads them there), and the limits."""
    pipelines = [describe_pipeline(names, info, settings, provenance) for names, info, provenance in served]
    first = {key: value for key, value in pipelines[0].items() if key not in ("name", "models")}
    return {
        **first,
        "pipeline": pipelines[0]["name"],
        "pipelines": pipelines,
        "smartedit_version": smartedit_version(),
        "limits": {
            "max_image_pixels": settings.max_image_pixels,
            "min_image_side": settings.min_image_side,
            "max_prompt_bytes": settings.max_prompt_bytes,
            "max_steps_at_working_resolution": settings.max_steps_at_working_resolution,
            "max_num_images": wire.MAX_NUM_IMAGES,
        },
    }


def describe_json(served: list[tuple[PipelineNames, PipelineInfo, Provenance]], settings: PreprocessSettings) -> str:
    return json.dumps(describe(served, settings), sort_keys=True)
