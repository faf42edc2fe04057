"""A latency table: what each component costs on some device, as ``t(rows) = a + b · rows``.

The simulated runtime profile (``smartedit export --profile simulated``) serves components that
sleep for these times instead of computing, with the real tensor names, shapes and data movement,
so the loop, BLS, batching and the engine's overheads are real and only the arithmetic is assumed.
A table is a JSON file a user can replace with figures measured on their own GPU:

    {
      "description": "...",
      "reference_image_size": [512, 512],     # the image size the figures are for
      "pipeline": { ...PipelineInfo fields: the model's shapes... },
      "components": {"unet": {"a_ms": 5.6, "b_ms": 2.0, "max_batch_size": 64}, ...},
      "engine": {"max_active_edits": 32, "max_queued_edits": 64}
    }

At another image size, the per-row cost ``b`` scales with the pixel count; ``a`` does not.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from smartedit.diffusion.families import components_of
from smartedit.diffusion.spec import PipelineInfo

# SD 1.5 at 512 px on an H100 (assumed figures: see the file's note), shipped with the package.
SHIPPED_LATENCY_TABLE = Path(__file__).resolve().parent / "latency" / "sd15-512-h100.json"


@dataclass(frozen=True)
class ComponentLatency:
    a_ms: float  # fixed cost of one call (launch, weights streamed once)
    b_ms: float  # cost per batch row at the reference size
    max_batch_size: int

    def seconds(self, rows: int, area_ratio: float = 1.0) -> float:
        return (self.a_ms + self.b_ms * rows * area_ratio) / 1000.0


@dataclass(frozen=True)
class LatencyTable:
    description: str
    reference_image_size: tuple[int, int]  # (height, width)
    pipeline: PipelineInfo
    components: dict[str, ComponentLatency]
    max_active_edits: int
    max_queued_edits: int

    @classmethod
    def load(cls, path: Path) -> "LatencyTable":
        data = json.loads(Path(path).read_text())
        try:
            components = {name: ComponentLatency(**figures) for name, figures in data["components"].items()}
            pipeline = PipelineInfo.from_dict(data["pipeline"])
            missing = sorted({c.name for c in components_of(pipeline)} - set(components))
            if missing:
                raise ValueError(f"no figures for {', '.join(missing)}")
            for name, figures in components.items():
                if figures.a_ms < 0 or figures.b_ms < 0 or figures.max_batch_size < 1:
                    raise ValueError(f"{name}: a_ms and b_ms must be >= 0 and max_batch_size >= 1, got {figures}")
            height, width = data["reference_image_size"]
            return cls(description=data.get("description", ""), reference_image_size=(int(height), int(width)),
                       pipeline=pipeline, components=components,
                       max_active_edits=int(data["engine"]["max_active_edits"]),
                       max_queued_edits=int(data["engine"]["max_queued_edits"]))
        except (KeyError, TypeError, ValueError) as error:
            raise ValueError(f"latency table {path} is not valid: {error}") from None

    @property
    def unet(self) -> ComponentLatency:
        return self.components["unet"]

    def unet_step_s(self, rows: int) -> float:
        """One UNet call of ``rows`` rows at the reference size, chunked to the UNet's max batch."""
        full, rest = divmod(rows, self.unet.max_batch_size)
        calls = [self.unet.max_batch_size] * full + ([rest] if rest else [])
        return sum(self.unet.seconds(r) for r in calls)

    def device_limit(self, concurrency: int, steps: int, rows_per_edit: int = 2) -> float:
        """Edits per second the device allows when ``concurrency`` edits step together all the time:
        ``c / (steps · (a + b · rows_per_step(c)))``."""
        return concurrency / (steps * self.unet_step_s(concurrency * rows_per_edit))

    def edit_device_s(self, steps: int, rows_per_edit: int = 2) -> float:
        """Device time of one edit alone: its UNet steps, plus the encoders and the decoder."""
        other = sum(self.components[name].seconds(rows) for name, rows in
                    (("text_encoder", 2), ("vae_encoder", 1), ("vae_decoder", 1)))
        return steps * self.unet_step_s(rows_per_edit) + other
