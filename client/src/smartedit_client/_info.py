"""What a server offers (``InpaintClient.server_info``): its model, sizes, samplers, tasks, and every
parameter's type, range and default, as the server itself declares and applies them."""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class ParameterInfo:
    """One request parameter: its wire type, meaning, and the server's default and range (None: none)."""

    name: str
    type: str
    meaning: str
    required: bool = False
    default: Any = None
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()


@dataclass(frozen=True)
class ServerInfo:
    """Attributes:
        model: the model the server was exported from (a hub id, a folder's name).
        family: the model family that serves it, by the name smartedit.diffusion.families gives it
            ("sd-inpaint": an SD 1.x/2.x inpainting checkpoint; "sd-latent-blend": any SD 1.x/2.x checkpoint
            with a 4-channel UNet, inpainting by latent blending).
        weights_sha256: digest of the exported weights (results' PNGs carry it too).
        smartedit_version: the server's SmartEdit version.
        working_resolution: the side, in pixels, of the area edits run at (larger photos are cropped
            around the mask or downscaled to it).
        samplers, tasks: the values ``scheduler`` and ``task`` take.
        suited_samplers: the samplers the pipeline's weights are made for: ``lcm`` and ``tcd`` (4-8 steps) for
            consistency-distilled weights (an LCM/TCD checkpoint or LoRA), the multi-step samplers otherwise.
        parameters: each request parameter by name.
        task_defaults: what each task sets when the request leaves a parameter out.
        limits: the largest image (pixels), longest prompt (bytes), most variations, cost budget.
        pipeline: the pipeline the attributes above describe (the client's, or the server's first).
        pipelines: every pipeline the server serves, by name (``smartedit export --model NAME=PATH``),
            each described as above; the first is the one ``inpaint`` serves.
    """

    model: str
    family: str
    weights_sha256: str
    smartedit_version: str
    working_resolution: int
    samplers: tuple[str, ...]
    tasks: tuple[str, ...]
    parameters: dict[str, ParameterInfo]
    task_defaults: dict[str, dict[str, Any]] = field(default_factory=dict)
    limits: dict[str, int] = field(default_factory=dict)
    pipeline: str = ""
    pipelines: dict[str, "ServerInfo"] = field(default_factory=dict)
    suited_samplers: tuple[str, ...] = ()
    # The ControlNets its edits may name (``controlnet``): none, or the one exported with it.
    controlnets: tuple[str, ...] = ()

    @classmethod
    def from_json(cls, text: str | bytes, pipeline: str | None = None) -> "ServerInfo":
        """The server's answer; its attributes describe ``pipeline`` (None: the server's first).

        Raises:
            ValueError: the server has no pipeline ``pipeline``.
        """
        raw = json.loads(text)
        # A server from before several pipelines describes its one pipeline at the top level only.
        listed = raw.get("pipelines") or [dict(raw, name=raw.get("pipeline", ""))]
        pipelines = {entry["name"]: cls._one(entry, raw) for entry in listed}
        name = listed[0]["name"] if pipeline is None else pipeline
        if name not in pipelines:
            raise ValueError(f"pipeline {pipeline!r}: the server has no such pipeline; it serves "
                             f"{', '.join(map(repr, pipelines))}")
        return dataclasses.replace(pipelines[name], pipelines=pipelines)

    @classmethod
    def _one(cls, entry: dict, server: dict) -> "ServerInfo":
        parameters = {name: ParameterInfo(name=name, type=spec["type"], meaning=spec.get("meaning", ""),
                                          required=spec.get("required", False), default=spec.get("default"),
                                          minimum=spec.get("minimum"), maximum=spec.get("maximum"),
                                          choices=tuple(spec.get("choices", ())))
                      for name, spec in entry["parameters"].items()}
        return cls(model=entry["model"], family=entry["family"], weights_sha256=entry["weights_sha256"],
                   smartedit_version=server["smartedit_version"], working_resolution=entry["working_resolution"],
                   samplers=tuple(entry["samplers"]), tasks=tuple(entry["tasks"]), parameters=parameters,
                   task_defaults=entry.get("task_defaults", {}), limits=server.get("limits", {}),
                   pipeline=entry["name"],
                   # A server from before it said which suit: every sampler it has.
                   suited_samplers=tuple(entry.get("suited_samplers", entry["samplers"])),
                   controlnets=tuple(entry.get("controlnets", ())))

    def describe(self) -> str:
        """A readable summary, one fact per line (what ``smartedit-edit --info`` prints)."""
        lines = [f"pipeline: {self.pipeline}" + (f" (of {', '.join(self.pipelines)})" if len(self.pipelines) > 1 else ""),
                 f"model: {self.model} ({self.family}), weights sha256 {self.weights_sha256[:16]}...",
                 f"server: SmartEdit {self.smartedit_version}; edits run at {self.working_resolution} px",
                 f"samplers: {', '.join(self.samplers)} (suited to its weights: {', '.join(self.suited_samplers)})",
                 f"tasks: {', '.join(self.tasks)}",
                 *([f"controlnet: {', '.join(self.controlnets)} (control_image, or control canny / inpaint)"]
                   if self.controlnets else []),
                 "limits: " + ", ".join(f"{name} {value}" for name, value in self.limits.items()),
                 "parameters:"]
        for parameter in self.parameters.values():
            bounds = ""
            if parameter.minimum is not None or parameter.maximum is not None:
                low = "" if parameter.minimum is None else f"{parameter.minimum:g}"
                high = "" if parameter.maximum is None else f"{parameter.maximum:g}"
                bounds = f" [{low}..{high}]"
            choices = f" one of {', '.join(parameter.choices)}" if parameter.choices else ""
            default = " required" if parameter.required else (
                f" default {parameter.default!r}" if parameter.default is not None else "")
            lines.append(f"  {parameter.name} ({parameter.type}){bounds}{choices}{default}")
        for task, values in self.task_defaults.items():
            if values:
                lines.append(f"task {task} sets: " + ", ".join(f"{k}={v!r}" for k, v in values.items()))
        return "\n".join(lines)
