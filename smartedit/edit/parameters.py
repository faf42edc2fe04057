"""The record of one edit: its parameters resolved once, in preprocess, and read by every later step.

Preprocess checks the request's scalar inputs against their declarations in the wire contract
(``smartedit_client._contract.PARAMETERS``: type, range, choices), applies the defaults (this record's
own, the server's configuration, the task's), draws the seed, and sends the result on as one tensor (``steps.EDIT_PARAMETERS``,
JSON). The loop and postprocess read the same record back. Adding a scalar parameter is: declare it
in the contract (with its default), use it where it matters, test it: the record's field, the SDK's
option, the CLI's flag, the gateway's field, the editor's input and ``server_info`` follow.
"""

from __future__ import annotations

import dataclasses
import json
import math
import secrets
from typing import Any, Callable, Mapping

import numpy as np

from smartedit.errors import RequestError
from smartedit.diffusion.samplers import SAMPLERS, SAMPLERS_WITH_ETA
from smartedit.serving.settings import PreprocessSettings
from smartedit.edit.tasks import (
    INPAINT, INPAINTING_TASKS, INSTRUCT, REPLACE_BACKGROUND, TASK_DEFAULTS, TEXT_EDIT, TEXT_EDIT_SCHEDULER,
)
from smartedit_client import _contract as wire

INT64_MAX = 2**63 - 1


class _EditRecord:
    """What every edit's record answers, besides its parameters (``EditParameters``)."""

    @property
    def inverts_mask(self) -> bool:
        """Whether the mask marks what to keep: ``invert_mask``, or a background replacement."""
        return self.invert_mask or self.task == REPLACE_BACKGROUND

    @property
    def shapes_mask(self) -> bool:
        """Whether the models repaint anything other than the mask as sent."""
        return self.inverts_mask or self.mask_grow != 0

    @property
    def seeds(self) -> list[int]:
        """The seed of each variation: ``seed + i``."""
        return [self.seed + i for i in range(self.num_images)]

    def variation(self, index: int) -> "EditParameters":
        """Variation ``index`` as a request of its own: one image, its own seed."""
        return dataclasses.replace(self, seed=self.seed + index, num_images=1)

    @property
    def denoising_steps(self) -> int:
        """The denoising steps the loop runs: ``num_inference_steps`` less the part ``strength`` skips."""
        return int(self.num_inference_steps * self.strength)

    @property
    def loop_steps(self) -> int:
        """Every step the loop runs: the denoising steps, after as many inversion steps for a text edit."""
        return self.denoising_steps * (2 if self.task == TEXT_EDIT else 1)

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True, ensure_ascii=False)

    @classmethod
    def from_json(cls, text: str | bytes) -> "EditParameters":
        return cls(**json.loads(text))

    def as_tensor(self) -> np.ndarray:
        """The record as the step models pass it on: one BYTES element."""
        return np.array([self.to_json().encode("utf-8")], dtype=np.object_)

    @classmethod
    def from_tensor(cls, value: np.ndarray) -> "EditParameters":
        return cls.from_json(value.reshape(-1)[0])


def _record_field(spec: wire.WireTensor) -> tuple:
    if spec.required:
        return spec.name, spec.python_type
    return spec.name, spec.python_type, dataclasses.field(default=spec.default)


# One edit's parameters with every default applied: what the edit is, reproducibly. Its fields are the
# wire contract's parameters (``wire.PARAMETERS``: name, type, default), in the contract's order: a
# parameter declared there is a field here, with no edit of this module.
EditParameters = dataclasses.make_dataclass(
    "EditParameters", [_record_field(spec) for spec in wire.PARAMETERS], bases=(_EditRecord,), frozen=True)
EditParameters.__module__ = __name__  # make_dataclass's own argument for it is Python 3.12's
EditParameters.__doc__ = ("One edit's parameters with every default applied (fields: the wire contract's "
                          "parameters, smartedit_client._contract.PARAMETERS).")


# Longest value of a text parameter other than the prompts (a task or sampler name), in bytes.
MAX_NAME_BYTES = 64


def bounds(spec: wire.WireTensor, settings: PreprocessSettings) -> tuple[float | None, float | None]:
    """(minimum, maximum) of a numeric parameter: the contract's, or the server's where it sets one."""
    maximum = settings.max_num_inference_steps if spec is wire.NUM_INFERENCE_STEPS else spec.maximum
    return spec.minimum, maximum


def _decoded(spec: wire.WireTensor, raw: Any, settings: PreprocessSettings) -> Any:
    """The request's value of ``spec`` as a Python value of the declared type, range-checked."""
    name = spec.name
    if spec.datatype == "BYTES":
        raw = bytes(raw)
        prompt = name in (wire.PROMPT.name, wire.NEGATIVE_PROMPT.name, wire.SOURCE_PROMPT.name)
        limit = settings.max_prompt_bytes if prompt else MAX_NAME_BYTES
        if len(raw) > limit:
            detail = " (a CLIP text encoder reads only a prompt's first 77 tokens)" if prompt else ""
            raise RequestError(name, f"is {len(raw)} bytes; the limit is {limit}{detail}")
        try:
            value = raw.decode("utf-8")
        except UnicodeDecodeError as error:
            raise RequestError(name, f"is not valid UTF-8 ({error})") from None
        if spec.choices:
            value = value.strip().lower()
            if value not in spec.choices:
                raise RequestError(name, f"unknown {name} {value!r}; known: {', '.join(spec.choices)}")
        return value
    if spec.datatype == "BOOL":
        return bool(raw)
    # An FP32 value is read as the shortest decimal that is that float32 (the 0.7 the caller typed, not
    # 0.699999988): what diffusers is given in Python, and what a default of the same value is. Else
    # int(10 steps x strength 0.7) would run 6 steps where diffusers runs 7, and a replayed PNG would
    # carry 0.9998999834 where the first carried the default 0.9999.
    value = float(str(raw)) if spec.datatype.startswith("FP") else int(raw)
    if isinstance(value, float) and not math.isfinite(value):
        raise RequestError(name, f"must be a finite number, got {value}")
    minimum, maximum = bounds(spec, settings)
    if minimum is not None and maximum is not None and not minimum <= value <= maximum:
        raise RequestError(name, f"must be between {minimum:g} and {maximum:g}, got {value}")
    if minimum is not None and value < minimum:
        raise RequestError(name, f"must be >= {minimum:g}, got {value}")
    if maximum is not None and value > maximum:
        raise RequestError(name, f"must be <= {maximum:g}, got {value}")
    return value


@dataclasses.dataclass(frozen=True)
class FamilyParameters:
    """What a pipeline's family says about the request's parameters (``families.family_parameters``)."""

    family: str = ""
    # Its defaults where they differ from the contract's (SDXL's strength 0.9999).
    defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    # Parameters other families take and this one does not (InstructPix2Pix's image_guidance_scale on an SD
    # pipeline): a request that sets one is refused by name rather than silently ignored. The edit's record
    # holds None for them, so that a result PNG does not carry them and its replay is not refused.
    refused: frozenset[str] = frozenset()
    # The tasks its pipelines serve (the first is their default when the family's defaults name none).
    tasks: tuple[str, ...] = INPAINTING_TASKS
    # Why it refuses a parameter, where the family is not the reason (a pipeline without a ControlNet), by name.
    reasons: Mapping[str, str] = dataclasses.field(default_factory=dict)


def default_values(settings: PreprocessSettings, family: FamilyParameters = FamilyParameters()) -> dict[str, Any]:
    """What a parameter left out becomes, before the task's defaults: the contract's defaults, over which
    the pipeline's family sets its own and the server's configuration sets the steps, guidance, sampler
    and crop padding."""
    defaults = {spec.name: spec.default for spec in wire.PARAMETERS if not spec.required}
    defaults[wire.TASK.name] = family.tasks[0]
    defaults.update({name: None for name in family.refused})
    defaults.update(family.defaults)
    defaults.update({
        wire.NUM_INFERENCE_STEPS.name: settings.default_num_inference_steps,
        wire.GUIDANCE_SCALE.name: settings.default_guidance_scale,
        wire.SCHEDULER.name: settings.default_scheduler,
        wire.CROP_PADDING.name: settings.default_crop_padding,
    })
    return defaults


def resolve_parameters(read: Callable[[str], Any], settings: PreprocessSettings,
                       family: FamilyParameters = FamilyParameters()) -> EditParameters:
    """The request's record: every scalar input checked, defaults applied, the seed drawn.

    Args:
        read: the one element of a wire input by name, or None when the request left it out.
        family: what the pipeline's family says about parameters (``families.family_parameters``); none
            when left out.

    Raises:
        RequestError: naming the first bad field and its value.
    """
    sent = {}
    for spec in wire.PARAMETERS:
        raw = read(spec.name)
        if raw is None:
            if spec.required:
                raise RequestError(spec.name, "is required")
            continue
        if spec.name in family.refused:
            why = family.reasons.get(spec.name, f"family {family.family}")
            raise RequestError(spec.name, f"is not taken by this pipeline ({why}); see server_info's pipelines for "
                                          f"the parameters each takes")
        sent[spec.name] = _decoded(spec, raw, settings)
    defaults = default_values(settings, family)
    task = sent.get(wire.TASK.name, defaults[wire.TASK.name])
    if task not in family.tasks:
        why = family.reasons.get(wire.TASK.name, f"family {family.family}")
        raise RequestError(wire.TASK.name, f"{task} is not served by this pipeline ({why}); its tasks: "
                                           f"{', '.join(family.tasks)}")
    # Left out: the task's default, else the server's, else the record's.
    values = {**defaults, **TASK_DEFAULTS[task], **sent}
    if not values[wire.PROMPT.name] and task != INPAINT:
        values[wire.PROMPT.name] = TASK_DEFAULTS[task].get("prompt", "")
    if wire.SEED.name not in sent:
        values[wire.SEED.name] = secrets.randbelow(INT64_MAX - wire.MAX_NUM_IMAGES)
    _resolve_control(values, sent, read(wire.CONTROL_IMAGE.name) is not None, family)
    params = EditParameters(**values)
    _check_combinations(params)
    return params


# What each control setting applies to: every control (the ControlNet, its scale and window, guess mode), or canny's
# edges alone (the thresholds).
_CONTROL_SETTINGS = (wire.CONTROLNET, wire.CONTROLNET_CONDITIONING_SCALE, wire.CONTROL_GUIDANCE_START,
                     wire.CONTROL_GUIDANCE_END, wire.GUESS_MODE)
_CANNY_SETTINGS = (wire.CONTROL_LOW_THRESHOLD, wire.CONTROL_HIGH_THRESHOLD)


def _resolve_control(values: dict, sent: dict, has_control_image: bool, family: FamilyParameters) -> None:
    """The edit's control settings: a sent ``control_image`` is the control unless the request names another; the
    ``controlnet`` is the pipeline's. A setting that does not apply is refused when sent (it would do nothing) and
    recorded as None otherwise, so that the result PNG carries only what made it (and replays on any pipeline)."""
    name = wire.CONTROL.name
    if name in family.refused:
        if has_control_image:
            raise RequestError(wire.CONTROL_IMAGE.name, f"is not taken by this pipeline "
                                                        f"({family.reasons.get(name, f'family {family.family}')})")
        return
    if has_control_image and name not in sent:
        values[name] = "image"
    control = values[name]
    served = family.defaults.get(wire.CONTROLNET.name)
    if sent.get(wire.CONTROLNET.name, served) not in (served, ""):
        raise RequestError(wire.CONTROLNET.name, f"{sent[wire.CONTROLNET.name]!r} is not served by this pipeline; "
                                                 f"its ControlNet: {served!r}")
    if has_control_image and control != "image":
        made = ("which makes its own conditioning image from the photo" if control != "none" else
                "which leaves the edit uncontrolled")
        raise RequestError(wire.CONTROL_IMAGE.name, f"is sent with control {control}, {made}: send control image "
                                                    f"(or leave control out) to use it")
    if control == "image" and not has_control_image:
        raise RequestError(wire.CONTROL_IMAGE.name, "is required for control image")
    unused = _CONTROL_SETTINGS + _CANNY_SETTINGS if control == "none" else () if control == "canny" else _CANNY_SETTINGS
    for spec in unused:
        if spec.name in sent:
            needs = ("control canny" if spec in _CANNY_SETTINGS else
                     "a control (control_image, or control canny / inpaint)")
            raise RequestError(spec.name, f"{sent[spec.name]} does nothing with control {control}: it needs {needs}")
        values[spec.name] = None
    if control == "none":
        values[name] = None
        return
    values[wire.CONTROLNET.name] = served
    start, end = values[wire.CONTROL_GUIDANCE_START.name], values[wire.CONTROL_GUIDANCE_END.name]
    if start >= end:
        field = wire.CONTROL_GUIDANCE_END.name if wire.CONTROL_GUIDANCE_START.name not in sent else \
            wire.CONTROL_GUIDANCE_START.name
        raise RequestError(field, f"control_guidance_start {start} must be below control_guidance_end {end} (the "
                                  f"control acts between the two)")
    if control == "canny" and values[wire.CONTROL_LOW_THRESHOLD.name] > values[wire.CONTROL_HIGH_THRESHOLD.name]:
        raise RequestError(wire.CONTROL_LOW_THRESHOLD.name,
                           f"{values[wire.CONTROL_LOW_THRESHOLD.name]} is above control_high_threshold "
                           f"{values[wire.CONTROL_HIGH_THRESHOLD.name]}")


def _check_combinations(params: EditParameters) -> None:
    """What each value allows alone but not together."""
    if params.task == INSTRUCT and params.strength != 1.0:
        raise RequestError("strength", f"{params.strength} is not taken by task instruct: an instruction edit runs "
                                       f"every step from noise, conditioned on the photo (InstructPix2Pix has no "
                                       f"strength)")
    if not params.strength > 0.0:
        raise RequestError("strength", f"must be in (0, 1], got {params.strength}")
    if params.denoising_steps < 1:
        raise RequestError("strength", f"{params.strength} with num_inference_steps {params.num_inference_steps} "
                                       f"leaves no step to run; raise either so that steps x strength >= 1")
    if params.task == TEXT_EDIT and params.scheduler != TEXT_EDIT_SCHEDULER:
        raise RequestError("scheduler", f"{params.scheduler} is not taken by task text_edit: the photo is inverted "
                                        f"with DDIM and denoised with it (scheduler {TEXT_EDIT_SCHEDULER}, its "
                                        f"default)")
    if params.source_prompt and params.task != TEXT_EDIT:
        raise RequestError("source_prompt", f"is taken by task text_edit only (what the photo shows, to invert it "
                                            f"under), not by task {params.task}")
    if params.scheduler not in SAMPLERS:
        raise RequestError("scheduler", f"unknown scheduler {params.scheduler!r}; known: {', '.join(sorted(SAMPLERS))}")
    if params.eta and params.scheduler not in SAMPLERS_WITH_ETA:
        raise RequestError("eta", f"{params.eta} has no effect with scheduler {params.scheduler}: only "
                                  f"{' and '.join(sorted(SAMPLERS_WITH_ETA))} take it (DDIM's eta, TCD's gamma)")
    if params.seed + params.num_images - 1 > INT64_MAX:
        raise RequestError("seed", f"{params.seed} + num_images {params.num_images} - 1 is past the INT64 range "
                                   f"(variation i uses seed + i)")
    if params.invert_mask and params.task == REPLACE_BACKGROUND:
        raise RequestError("invert_mask", "true contradicts task replace_background, whose mask already marks the "
                                          "subject to keep (the part repainted is its inverse)")
