"""Typed settings of the Python models, parsed from their config ``parameters {}``.

Every value is parsed explicitly and range-checked at model load, so a typo in a config fails the
load with a message naming the parameter, instead of surprising a request later. (The counter-
example is ``bool("false") == True``.)
"""

from __future__ import annotations

import dataclasses

import json
from dataclasses import dataclass, fields
from typing import Any, Mapping

from smartedit.serving import steps
from smartedit_client import _contract as wire

_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


# The config parameter naming the pipeline a model serves (smartedit.serving.pipelines), for its logs
# and metrics: every model of a pipeline has it, and every settings class passes over it.
PIPELINE_PARAMETER = "pipeline"


def parameters_of(model_config: Mapping[str, Any] | str) -> dict[str, str]:
    """``{key: string_value}`` from a Triton model config (the dict or JSON the backend passes)."""
    return {key: value["string_value"] for key, value in _raw_parameters(model_config).items()}


def pipeline_of(model_config: Mapping[str, Any] | str) -> str:
    """The pipeline a model serves, for its logs and metrics ("" when its config names none)."""
    return _raw_parameters(model_config).get(PIPELINE_PARAMETER, {}).get("string_value", "")


def _raw_parameters(model_config: Mapping[str, Any] | str) -> Mapping[str, Any]:
    if isinstance(model_config, str):
        model_config = json.loads(model_config)
    return model_config.get("parameters", {}) or {}


def parse_bool(name: str, text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"parameter {name!r} must be true or false, got {text!r}")


def parse_int(name: str, text: str, minimum: int | None = None, maximum: int | None = None) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise ValueError(f"parameter {name!r} must be an integer, got {text!r}") from None
    _check_range(name, value, minimum, maximum)
    return value


def parse_float(name: str, text: str, minimum: float | None = None, maximum: float | None = None) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError(f"parameter {name!r} must be a number, got {text!r}") from None
    if value != value:
        raise ValueError(f"parameter {name!r} must be a number, got NaN")
    _check_range(name, value, minimum, maximum)
    return value


def _check_range(name, value, minimum, maximum) -> None:
    if minimum is not None and value < minimum:
        raise ValueError(f"parameter {name!r} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"parameter {name!r} must be <= {maximum}, got {value}")


def _reject_unknown(cls, params: Mapping[str, str]) -> None:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(params) - known - {PIPELINE_PARAMETER})  # every model of a pipeline has that one
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for {cls.__name__}; known: {sorted(known)}")


@dataclass(frozen=True)
class PreprocessSettings:
    """Request defaults and limits, applied before any work is done."""

    default_num_inference_steps: int = 50
    # Below SD schedulers' edge (1000 training timesteps, "leading" spacing, steps_offset 1): 1000 steps
    # put one at timestep 1000, which DDIM and PNDM index past the end of their tables, and at 999 DPM++ 2M
    # and UniPC step from 1000 to 999 and return NaN (diffusers' own pipeline does the same).
    # tests/test_denoise.py runs every sampler at this bound.
    max_num_inference_steps: int = 990
    default_guidance_scale: float = 7.5
    default_scheduler: str = "ddim"
    # Largest accepted image, in pixels (25.2 MP: a 6000x4000 or 6144x4096 photo). The models edit at
    # their working resolution whatever the photo's size (smartedit.edit.regions), so this bounds only the
    # memory of decoding the photo and pasting the edit back: about 5 bytes per pixel, 126 MB here.
    max_image_pixels: int = 6144 * 4096
    # Smallest side, in pixels; below one latent pixel per UNet level nothing useful comes out.
    min_image_side: int = 8
    # Longest prompt / negative prompt, in UTF-8 bytes. CLIP reads only the first 77 tokens; the cap
    # keeps a request from making the tokenizer chew megabytes.
    max_prompt_bytes: int = 4096
    # Pixels of context around the mask's box when a photo larger than the working area is edited as a
    # crop (the request's crop_padding overrides it).
    default_crop_padding: int = wire.DEFAULT_CROP_PADDING
    # The cost budget of one edit: this many denoising steps at the working resolution's latent area. An
    # edit's cost is its latent area x num_inference_steps x strength; a smaller edit may run more steps.
    max_steps_at_working_resolution: int = 500
    # The engine to reserve a place with before any work (the batched engine's model); "": none, as
    # with the per-request loop, where edits wait in Triton's queue for a scheduler instance.
    admission_model: str = ""

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> "PreprocessSettings":
        _reject_unknown(cls, params)
        d = cls()
        get = params.get
        return cls(
            default_num_inference_steps=parse_int(
                "default_num_inference_steps", get("default_num_inference_steps", str(d.default_num_inference_steps)), 1),
            max_num_inference_steps=parse_int(
                "max_num_inference_steps", get("max_num_inference_steps", str(d.max_num_inference_steps)), 1),
            default_guidance_scale=parse_float(
                "default_guidance_scale", get("default_guidance_scale", str(d.default_guidance_scale)), 0.0),
            default_scheduler=get("default_scheduler", d.default_scheduler).strip(),
            max_image_pixels=parse_int("max_image_pixels", get("max_image_pixels", str(d.max_image_pixels)), 64),
            min_image_side=parse_int("min_image_side", get("min_image_side", str(d.min_image_side)), 1),
            max_prompt_bytes=parse_int("max_prompt_bytes", get("max_prompt_bytes", str(d.max_prompt_bytes)), 1),
            default_crop_padding=parse_int("default_crop_padding",
                                           get("default_crop_padding", str(d.default_crop_padding)), 0, 2048),
            max_steps_at_working_resolution=parse_int(
                "max_steps_at_working_resolution",
                get("max_steps_at_working_resolution", str(d.max_steps_at_working_resolution)), 1),
            admission_model=get("admission_model", d.admission_model).strip(),
        )


# What a pipeline whose weights suit only the consistency samplers (an LCM/TCD checkpoint, or --scheduler lcm
# with an LCM-LoRA) defaults to instead of the server's multi-step defaults: its own sampler, the 4 steps and
# guidance 1 (one UNet row a step) that LCM-LoRA's authors recommend.
FEW_STEP_DEFAULT_STEPS, FEW_STEP_DEFAULT_GUIDANCE = 4, 1.0


def pipeline_settings(settings: PreprocessSettings, suited_samplers: list[str]) -> PreprocessSettings:
    """``settings`` as one pipeline applies them: where the server's default sampler does not suit its weights
    (``samplers.suited_samplers``) but a few-step one does, that one, at its steps and guidance."""
    from smartedit.diffusion.samplers import FEW_STEP_SAMPLERS

    if settings.default_scheduler in suited_samplers or not set(suited_samplers) <= FEW_STEP_SAMPLERS:
        return settings
    return dataclasses.replace(settings, default_scheduler=suited_samplers[0],
                               default_num_inference_steps=FEW_STEP_DEFAULT_STEPS,
                               default_guidance_scale=FEW_STEP_DEFAULT_GUIDANCE)


BATCHED, PER_REQUEST = "batched", "per_request"
ENGINES = (BATCHED, PER_REQUEST)


@dataclass(frozen=True)
class SchedulerSettings:
    """The ``inpaint`` ensemble's loop step: which engine runs its edits, and where BLS calls go.

    ``batched`` (default) hands each edit to the ``denoise_engine`` model, which steps every active
    edit in shared UNet calls; ``per_request`` runs the edit's loop here, one edit per instance at a
    time (the engine before the batched one; kept so the two can be compared).
    """

    engine: str = BATCHED
    engine_model: str = steps.DENOISE_ENGINE
    unet_model: str = "unet"
    vae_encoder_model: str = "vae_encoder"

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> "SchedulerSettings":
        _reject_unknown(cls, params)
        d = cls()
        engine = params.get("engine", d.engine).strip().lower().replace("-", "_")
        if engine not in ENGINES:
            raise ValueError(f"parameter 'engine' must be one of {', '.join(ENGINES)}, got {params['engine']!r}")
        return cls(
            engine=engine,
            engine_model=params.get("engine_model", d.engine_model).strip(),
            unet_model=params.get("unet_model", d.unet_model).strip(),
            vae_encoder_model=params.get("vae_encoder_model", d.vae_encoder_model).strip(),
        )


@dataclass(frozen=True)
class EngineSettings:
    """The batched engine (``denoise_engine``): its admission bounds and the UNet it calls.

    ``max_active_edits`` edits denoise at once (2 UNet rows each under guidance), up to
    ``max_queued_edits`` more wait for a slot, and any request beyond both is refused at once.
    ``max_unet_rows`` is the UNet's max batch: an iteration with more rows makes several calls.
    """

    max_active_edits: int = 8
    max_queued_edits: int = 16
    max_unet_rows: int = 16
    # The most cohorts of active edits whose UNet calls take turns, so that one's host work overlaps the
    # other's device time (smartedit.engine.core); how many are open the engine chooses from measured costs.
    unet_lanes: int = 2
    # 0: the measured costs choose the lanes; n > 0: as many open as would hold n rows each (a fixed rule).
    lane_min_rows: int = 0
    unet_model: str = "unet"
    vae_encoder_model: str = "vae_encoder"
    # Threads that prepare admitted edits (scheduler set-up; a VAE-encoder BLS call when strength < 1).
    prepare_workers: int = 2
    # A place reserved for an edit (by preprocess, before decoding it) lapses if the edit has not come.
    reservation_ttl_s: float = 60.0

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> "EngineSettings":
        _reject_unknown(cls, params)
        d = cls()
        get = params.get
        return cls(
            max_active_edits=parse_int("max_active_edits", get("max_active_edits", str(d.max_active_edits)), 1, 4096),
            max_queued_edits=parse_int("max_queued_edits", get("max_queued_edits", str(d.max_queued_edits)), 0, 65536),
            max_unet_rows=parse_int("max_unet_rows", get("max_unet_rows", str(d.max_unet_rows)), 2, 4096),
            unet_lanes=parse_int("unet_lanes", get("unet_lanes", str(d.unet_lanes)), 1, 4),
            lane_min_rows=parse_int("lane_min_rows", get("lane_min_rows", str(d.lane_min_rows)), 0, 4096),
            unet_model=get("unet_model", d.unet_model).strip(),
            vae_encoder_model=get("vae_encoder_model", d.vae_encoder_model).strip(),
            prepare_workers=parse_int("prepare_workers", get("prepare_workers", str(d.prepare_workers)), 1, 64),
            reservation_ttl_s=parse_float("reservation_ttl_s", get("reservation_ttl_s", str(d.reservation_ttl_s)),
                                          1.0, 3600.0),
        )


@dataclass(frozen=True)
class StreamSettings:
    """The streaming entry (``inpaint_stream``): its own settings, and preprocess's, which it applies
    itself (same keys and meaning as in preprocess's config, so both validate requests alike)."""

    preprocess: PreprocessSettings = PreprocessSettings()
    # What its pipeline's models' names end in (smartedit.serving.pipelines): "" for the first pipeline's.
    model_suffix: str = ""
    # Streams open at once; each holds a thread for the edit's life. Past it, streams are refused.
    max_open_streams: int = 128
    default_preview_every: int = wire.DEFAULT_PREVIEW_EVERY

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> "StreamSettings":
        own = {f.name for f in fields(cls)} - {"preprocess"}
        d = cls()
        get = params.get
        return cls(
            preprocess=PreprocessSettings.parse({k: v for k, v in params.items() if k not in own}),
            model_suffix=get("model_suffix", d.model_suffix).strip(),
            max_open_streams=parse_int("max_open_streams", get("max_open_streams", str(d.max_open_streams)), 1, 65536),
            default_preview_every=parse_int("default_preview_every",
                                            get("default_preview_every", str(d.default_preview_every)), 0),
        )

    def model(self, base: str) -> str:
        """The name its pipeline serves model ``base`` as (``PipelineNames.model``)."""
        return base + self.model_suffix

    @property
    def engine_model(self) -> str:
        return self.model(steps.DENOISE_ENGINE)


@dataclass(frozen=True)
class SegmentSettings:
    """The ``segment`` model (click-to-mask): image limits as preprocess's, and its embedding cache."""

    max_image_pixels: int = PreprocessSettings.max_image_pixels
    min_image_side: int = PreprocessSettings.min_image_side
    # Images whose SAM embedding is kept (by content hash), so that further clicks on one cost only the
    # decoder. 4 MB each on SAM ViT-B (256 x 64 x 64 floats).
    max_cached_images: int = 16
    max_points: int = 64

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> "SegmentSettings":
        _reject_unknown(cls, params)
        d = cls()
        get = params.get
        return cls(
            max_image_pixels=parse_int("max_image_pixels", get("max_image_pixels", str(d.max_image_pixels)), 64),
            min_image_side=parse_int("min_image_side", get("min_image_side", str(d.min_image_side)), 1),
            max_cached_images=parse_int("max_cached_images", get("max_cached_images", str(d.max_cached_images)), 0),
            max_points=parse_int("max_points", get("max_points", str(d.max_points)), 1, 1024),
        )

    def image_limits(self) -> PreprocessSettings:
        """Preprocess's settings with these image limits: what ``decode_image`` checks against."""
        return PreprocessSettings(max_image_pixels=self.max_image_pixels, min_image_side=self.min_image_side)


@dataclass(frozen=True)
class OnnxHostSettings:
    """ONNX Runtime session options of a Python-hosted component (the onnx-cpu profile)."""

    intra_op_num_threads: int = 0  # 0: ONNX Runtime picks (one per core)
    model_filename: str = "model.onnx"
    # Give the memory arena's unused blocks back after each call: an edit of a new size otherwise grows
    # the arena for good (the arena keeps blocks for every size it has served).
    shrink_arena: bool = True
    # The FP32 weights of the whole pipeline the component belongs to, in bytes (0: not known): a pipeline
    # whose weights are more than half the memory left (SDXL's 13 GiB on 24 GB) serves its graphs without
    # prepacking (see onnx_cpu_component).
    pipeline_weights_bytes: int = 0

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> "OnnxHostSettings":
        _reject_unknown(cls, params)
        d = cls()
        return cls(
            intra_op_num_threads=parse_int(
                "intra_op_num_threads", params.get("intra_op_num_threads", str(d.intra_op_num_threads)), 0, 256),
            model_filename=params.get("model_filename", d.model_filename).strip(),
            shrink_arena=parse_bool("shrink_arena", params.get("shrink_arena", str(d.shrink_arena))),
            pipeline_weights_bytes=parse_int("pipeline_weights_bytes",
                                             params.get("pipeline_weights_bytes", str(d.pipeline_weights_bytes)),
                                             0, 2**62),
        )
