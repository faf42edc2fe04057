"""What the server offers, as the ``server_info`` model answers it: declared once, read from the same
declarations the server validates with (the wire contract, the preprocess settings, the task defaults,
the exported pipeline's facts and provenance)."""

from __future__ import annotations

import json
from typing import Any

from smartedit.edit.parameters import bounds, default_values
from smartedit.edit.provenance import Provenance, smartedit_version
from smartedit.diffusion.samplers import SAMPLERS
from smartedit.serving.settings import PreprocessSettings
from smartedit.diffusion.spec import PipelineInfo
from smartedit.edit.tasks import TASK_DEFAULTS
from smartedit_client import _contract as wire


def describe(info: PipelineInfo, settings: PreprocessSettings, provenance: Provenance) -> dict[str, Any]:
    defaults = default_values(settings)
    parameters = {}
    for spec in wire.PARAMETERS:
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
    return {
        "model": provenance.model,
        "family": info.family,  # the family whose loop serves it (smartedit.diffusion.families)
        "weights_sha256": provenance.weights_sha256,
        "smartedit_version": smartedit_version(),
        "working_resolution": info.working_resolution,
        "vae_scale_factor": info.vae_scale_factor,
        "samplers": list(SAMPLERS),
        "tasks": list(wire.TASKS),
        "task_defaults": {task: dict(values) for task, values in TASK_DEFAULTS.items()},
        "parameters": parameters,
        "limits": {
            "max_image_pixels": settings.max_image_pixels,
            "min_image_side": settings.min_image_side,
            "max_prompt_bytes": settings.max_prompt_bytes,
            "max_steps_at_working_resolution": settings.max_steps_at_working_resolution,
            "max_num_images": wire.MAX_NUM_IMAGES,
        },
    }


def describe_json(info: PipelineInfo, settings: PreprocessSettings, provenance: Provenance) -> str:
    return json.dumps(describe(info, settings, provenance), sort_keys=True)
