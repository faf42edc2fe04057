"""What a server offers (``InpaintClient.server_info``): its model, sizes, samplers, tasks, and every
parameter's type, range and default, as the server itself declares and applies them."""

from __future__ import annotations

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
        parameters: each request parameter by name.
        task_defaults: what each task sets when the request leaves a parameter out.
        limits: the largest image (pixels), longest prompt (bytes), most variations, cost budget.
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

    @classmethod
    def from_json(cls, text: str | bytes) -> "ServerInfo":
        raw = json.loads(text)
        parameters = {name: ParameterInfo(name=name, type=entry["type"], meaning=entry.get("meaning", ""),
                                          required=entry.get("required", False), default=entry.get("default"),
                                          minimum=entry.get("minimum"), maximum=entry.get("maximum"),
                                          choices=tuple(entry.get("choices", ())))
                      for name, entry in raw["parameters"].items()}
        return cls(model=raw["model"], family=raw["family"], weights_sha256=raw["weights_sha256"],
                   smartedit_version=raw["smartedit_version"], working_resolution=raw["working_resolution"],
                   samplers=tuple(raw["samplers"]), tasks=tuple(raw["tasks"]), parameters=parameters,
                   task_defaults=raw.get("task_defaults", {}), limits=raw.get("limits", {}))

    def describe(self) -> str:
        """A readable summary, one fact per line (what ``smartedit-edit --info`` prints)."""
        lines = [f"model: {self.model} ({self.family}), weights sha256 {self.weights_sha256[:16]}...",
                 f"server: SmartEdit {self.smartedit_version}; edits run at {self.working_resolution} px",
                 f"samplers: {', '.join(self.samplers)}",
                 f"tasks: {', '.join(self.tasks)}",
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
