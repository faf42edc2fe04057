"""Write a complete Triton model repository for one runtime profile, serving one or more pipelines.

Per pipeline (its models' names: smartedit.serving.pipelines; the first pipeline's are the plain ones):
    <out>/text_encoder|unet|vae_encoder|vae_decoder/   config.pbtxt, 1/model.onnx (+ 1/model.py on onnx-cpu)
                                                       or 1/model.plan (tensorrt)
    <out>/preprocess/   config.pbtxt, 1/model.py, 1/pipeline.json, 1/tokenizer/
    <out>/scheduler/    config.pbtxt, 1/model.py, 1/pipeline.json, 1/scheduler_config.json
    <out>/denoise_engine/  config.pbtxt, 1/model.py, 1/pipeline.json, 1/scheduler_config.json, 1/preview.json
    <out>/postprocess/  config.pbtxt, 1/model.py
    <out>/inpaint/      config.pbtxt, 1/            (the ensemble; also inpaint_NAME)
    <out>/inpaint_stream/  config.pbtxt, 1/model.py, 1/pipeline.json, 1/tokenizer/   (the streaming entry;
                                                                                     also inpaint_stream_NAME)
Once:
    <out>/server_info/  config.pbtxt, 1/model.py, 1/pipelines.json, 1/pipelines/NAME/{pipeline,provenance}.json
    <out>/segment/, sam_*/  (click-to-mask)

The repository is built in a sibling folder and moved into place at the end, so a failed export
never leaves a half-written repository where a server would load it.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from smartedit.serving import steps
from smartedit.serving.ensembles import ONLY_PIPELINE, inpaint_ensemble_config
from smartedit.serving.pipelines import PipelineNames, pipeline_names, read_pipeline_list, write_pipeline_list
from smartedit.diffusion.preview import PREVIEW_FILENAME, LatentPreview, fit_latent_preview
from smartedit.edit.provenance import PROVENANCE_FILENAME, Provenance, weights_digest
from smartedit.serving.settings import (
    BATCHED, ENGINES, PER_REQUEST, PIPELINE_PARAMETER, EngineSettings, PreprocessSettings, pipeline_settings,
)
from smartedit.diffusion.samplers import suited_samplers
from smartedit.diffusion.families import CONTROLNET_MODULE, components_of, fp32_components, prompts_of, weights_of
from smartedit.diffusion.spec import UNET, PipelineInfo
from smartedit.serving.triton_config import (
    ONNX_CPU, ONNX_GPU, RUNTIME_PROFILES, SIMULATED, TENSORRT, BatchingSettings, component_config, parse_pbtxt,
    step_config, to_pbtxt,
)
from smartedit.export import onnx_export, tensorrt, verify
from smartedit.export.segmentation import write_segmentation
from smartedit_client import _contract as wire

log = logging.getLogger(__name__)

# The Python models' sources, shipped in the package (smartedit/serving/model_repository).
SOURCES = Path(__file__).resolve().parent.parent / "serving" / "model_repository"
ONNX_CPU_HOST = SOURCES / "onnx_cpu_component" / "model.py"
VERSION = "1"


# Per profile: (UNet rows per call, edits denoising at once, edits waiting) of the batched engine.
# On a CPU a UNet row costs nearly as much batched as alone, so a small batch keeps latency sane;
# on a GPU one call costs little more for 32 rows than for 2, which is where the engine pays off.
ENGINE_DEFAULTS = {
    ONNX_CPU: (16, 8, 16),
    ONNX_GPU: (32, 16, 64),
    TENSORRT: (32, 16, 64),
    SIMULATED: (64, 32, 64),  # the shipped latency table's; a table sets its own
}


# How long the UNet's batcher waits for company. The batched engine is its only caller and batches
# itself: waiting would only add latency to every step. Separate per-request loops meet there.
UNET_QUEUE_DELAY_US = {BATCHED: 0, PER_REQUEST: 2000}


@dataclass(frozen=True)
class RepositoryOptions:
    profile: str = ONNX_CPU
    precision: str = onnx_export.FP32_PRECISION
    # Batching of the components; None: the profile's defaults (see ``batching_for``).
    batching: dict[str, BatchingSettings] | None = None
    # The ensemble's loop: "batched" (the denoise_engine) or "per_request" (one edit per scheduler instance).
    engine: str = BATCHED
    # Batched engine admission; None: the profile's default (ENGINE_DEFAULTS).
    max_active_edits: int | None = None
    max_queued_edits: int | None = None
    # Per-request loop instances: each runs one edit at a time, so this many edits denoise concurrently
    # and their UNet calls can meet in the UNet's dynamic batcher. (The batched engine needs one.)
    scheduler_instances: int = 2
    preprocess: PreprocessSettings = PreprocessSettings()
    tensorrt_accelerator: bool = False  # onnx-gpu: let ONNX Runtime use its TensorRT EP
    engine_sides: tuple[int, int, int] = (256, 512, 1024)  # tensorrt: min / opt / max image side
    verify: bool = True
    # Click-to-mask (smartedit.segmentation.sam): serve SAM behind the `segment` model; its checkpoint (a folder or hub
    # id), or None for the embedded tiny one.
    segmentation: bool = True
    sam_model: str | None = None

    def __post_init__(self):
        if self.profile not in RUNTIME_PROFILES + (SIMULATED,):
            raise ValueError(f"unknown runtime profile {self.profile!r}; choose one of {', '.join(RUNTIME_PROFILES)}")
        if self.profile == ONNX_CPU and self.precision == onnx_export.FP16_PRECISION:
            raise ValueError("fp16 is for the GPU profiles (onnx-gpu, tensorrt); ONNX Runtime on CPU runs fp32")
        if self.engine not in ENGINES:
            raise ValueError(f"unknown engine {self.engine!r}; choose one of {', '.join(ENGINES)}")
        if self.scheduler_instances < 1:
            raise ValueError(f"scheduler_instances must be >= 1, got {self.scheduler_instances}")
        self.engine_settings()  # range-checks the admission bounds now, not at model load

    def batching_for(self, component: str) -> BatchingSettings:
        if self.batching and component in self.batching:
            return self.batching[component]
        if component == "unet":
            return BatchingSettings(max_batch_size=ENGINE_DEFAULTS[self.profile][0],
                                    max_queue_delay_microseconds=UNET_QUEUE_DELAY_US[self.engine])
        if component == "vae_decoder":
            # A request's variations (num_images) reach the decoder as one batch.
            return BatchingSettings(max_batch_size=wire.MAX_NUM_IMAGES)
        return BatchingSettings(max_batch_size=8 if component == "text_encoder" else 4)

    def engine_settings(self) -> EngineSettings:
        _, active, queued = ENGINE_DEFAULTS[self.profile]
        return EngineSettings.parse({
            "max_active_edits": str(active if self.max_active_edits is None else self.max_active_edits),
            "max_queued_edits": str(queued if self.max_queued_edits is None else self.max_queued_edits),
            "max_unet_rows": str(self.batching_for("unet").max_batch_size),
        })


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


def _write_components(pipeline, info: PipelineInfo, out: Path, options: RepositoryOptions, onnx_dir: Path,
                      names: PipelineNames) -> None:
    # TensorRT engines are built in FP16 from FP32 graphs; the ONNX profiles serve the graph itself.
    graphs_dir = onnx_dir if options.profile == TENSORRT else out
    # What stays FP32 on the FP16 profiles: SDXL's VAE, which overflows in FP16 (the family says).
    keep_fp32 = fp32_components(info, pipeline.vae.config)
    for spec in components_of(info):
        fp16 = options.profile == TENSORRT or options.precision == onnx_export.FP16_PRECISION
        if fp16 and spec.name in keep_fp32:
            log.info("%s stays FP32: the VAE's config says force_upcast (give an FP16-safe VAE with --vae to run "
                     "it in FP16)", spec.name)
            fp16 = False
        precision = onnx_export.FP32_PRECISION if options.profile == TENSORRT or not fp16 else options.precision
        served = names.model(spec.name)
        version_dir = graphs_dir / served / VERSION
        # One component FP32 at a time: a pipeline loaded in FP16 to fit in memory (smartedit.export.memory).
        with onnx_export.in_fp32(pipeline, spec.name, info.family):
            onnx_path = onnx_export.export_component(pipeline, spec, info, version_dir)
            if precision == onnx_export.FP16_PRECISION:
                onnx_export.convert_to_fp16(onnx_path)
            if options.verify and _fits_verifying(pipeline, spec.name, info.family):
                for result in verify.verify(pipeline, spec, onnx_path, info, precision):
                    log.info("%s matches PyTorch at batch %d, %dx%d: max error %.2g", spec.name, *result.shape,
                             result.max_abs_error)
        batching = options.batching_for(spec.name)
        if options.profile == TENSORRT:
            sides = tensorrt.Range(*options.engine_sides)
            # Kernels are tuned for the opt batch: half the max, about what the batched engine sends.
            opt_batch = min(batching.max_batch_size, max(2, batching.max_batch_size // 2))
            profile = tensorrt.EngineProfile(batch=tensorrt.Range(1, opt_batch, batching.max_batch_size),
                                             height=sides, width=sides)
            tensorrt.build_engine(onnx_path, out / served / VERSION / tensorrt.PLAN_FILENAME, spec, info, profile,
                                  fp16=fp16)
        parameters = {}
        if options.profile == ONNX_CPU:
            shutil.copy(ONNX_CPU_HOST, out / served / VERSION / "model.py")
            # The UNet runs every step: giving its arena back after each call costs a quarter of an edit's
            # time (256x256, 20 steps: 0.96 against 0.76 s); the encoders and decoder run once per edit.
            parameters["shrink_arena"] = "false" if spec.name == UNET.name else "true"
            parameters["pipeline_weights_bytes"] = str(_fp32_weights_bytes(pipeline, info))
        config = component_config(spec, info, options.profile, batching, parameters=parameters,
                                  tensorrt_accelerator=options.tensorrt_accelerator)
        config.name = served
        _write(out / served / "config.pbtxt", to_pbtxt(config))


def _fp32_weights_bytes(pipeline, info: PipelineInfo) -> int:
    """The pipeline's served weights in FP32 (13 GiB for SDXL, 4.3 GiB for SD 1.5)."""
    return sum(p.numel() * 4 for module in weights_of(info) for p in getattr(pipeline, module).parameters())


def _fits_verifying(pipeline, name: str, family: str) -> bool:
    """Whether checking the graph against PyTorch fits in memory: ONNX Runtime holds the component's FP32
    weights (and its working copies) beside PyTorch's. SDXL's 10 GB UNet does not on a 24 GB machine."""
    import psutil

    weights = sum(p.numel() * 4 for p in onnx_export.GRAPHS[family][name](pipeline).parameters())
    available = psutil.virtual_memory().available
    if 2 * weights < available:
        return True
    log.warning("not checking %s against PyTorch: ONNX Runtime would need ~%.1f GiB beside PyTorch's, and %.1f GiB "
                "is available", name, 2 * weights / 2**30, available / 2**30)
    return False


def _write_steps(info: PipelineInfo, tokenizers: dict, scheduler_config: dict, preview: LatentPreview, out: Path,
                 options: RepositoryOptions, provenance: Provenance, names: PipelineNames = ONLY_PIPELINE) -> None:
    """Pipeline ``names``' Python steps, its ensembles and its streams.

    ``tokenizers``: the pipeline's tokenizers its family reads (``PromptEncoding.tokenizers``), by module name.
    """
    prompts = prompts_of(info)
    batched = options.engine == BATCHED
    model = names.model
    preprocess = dataclasses.replace(options.preprocess, admission_model=admission_model(options.engine, names))
    preprocess_settings = {k: str(v) for k, v in vars(preprocess).items()}
    engine_settings = {k: str(v) for k, v in vars(options.engine_settings()).items()}
    engine_settings.update(unet_model=model("unet"), vae_encoder_model=model("vae_encoder"))
    callees = {"engine_model": model(steps.DENOISE_ENGINE), "unet_model": model("unet"),
               "vae_encoder_model": model("vae_encoder")}
    stream_settings = dict(preprocess_settings, model_suffix=names.suffix)
    configs = {
        steps.PREPROCESS: step_config(model(steps.PREPROCESS), steps.PREPROCESS_INPUTS,
                                      steps.preprocess_outputs(prompts), parameters=preprocess_settings),
        # Batched, the step only forwards to the engine and answers asynchronously: one instance suffices.
        steps.SCHEDULER: step_config(model(steps.SCHEDULER), steps.scheduler_inputs(prompts), steps.SCHEDULER_OUTPUTS,
                                     instance_count=1 if batched else options.scheduler_instances,
                                     parameters=dict(callees, engine=options.engine)),
        steps.DENOISE_ENGINE: step_config(model(steps.DENOISE_ENGINE), steps.engine_inputs(prompts),
                                          steps.ENGINE_OUTPUTS, parameters=engine_settings, decoupled=True),
        steps.POSTPROCESS: step_config(model(steps.POSTPROCESS), steps.POSTPROCESS_INPUTS,
                                       steps.POSTPROCESS_OUTPUTS),
    }
    # The streaming entries validate requests themselves, with preprocess's settings (StreamSettings reads
    # the same keys); the first pipeline's is served under two names, each a model of its own.
    for _, stream in names.entries:
        configs[stream] = step_config(stream, steps.STREAM_INPUTS, steps.STREAM_OUTPUTS,
                                      parameters=stream_settings, decoupled=True)
    streams = [stream for _, stream in names.entries]
    for source, config in configs.items():
        config.parameters[PIPELINE_PARAMETER].string_value = names.pipeline
        version_dir = out / config.name / VERSION
        version_dir.mkdir(parents=True, exist_ok=True)
        source = steps.INPAINT_STREAM if source in streams else source
        shutil.copy(SOURCES / source / VERSION / "model.py", version_dir / "model.py")
        _write(out / config.name / "config.pbtxt", to_pbtxt(config))
    loop_models = [model(steps.SCHEDULER), model(steps.DENOISE_ENGINE)]
    request_models = [model(steps.PREPROCESS)] + streams
    for name in request_models + loop_models:
        _write(out / name / VERSION / "pipeline.json", info.to_json())
    for name in request_models:
        for module in prompts.tokenizers:
            tokenizers[module].save_pretrained(out / name / VERSION / module)
    for name in loop_models:
        _write(out / name / VERSION / "scheduler_config.json",
               json.dumps(scheduler_config, indent=2, sort_keys=True, default=list))
    _write(out / model(steps.DENOISE_ENGINE) / VERSION / PREVIEW_FILENAME, preview.to_json())
    for name in [model(steps.POSTPROCESS)] + streams:  # the PNGs carry it
        _write(out / name / VERSION / PROVENANCE_FILENAME, provenance.to_json())
    for ensemble_name, _ in names.entries:
        (out / ensemble_name / VERSION).mkdir(parents=True, exist_ok=True)
        _write(out / ensemble_name / "config.pbtxt", to_pbtxt(inpaint_ensemble_config(ensemble_name, names, prompts)))


def _write_server_info(out: Path, options: RepositoryOptions,
                       served: list[tuple[PipelineNames, PipelineInfo, Provenance]]) -> None:
    """The ``server_info`` model: it describes every pipeline, with the limits and defaults preprocess
    applies (the same settings)."""
    settings = {k: str(v) for k, v in vars(options.preprocess).items()}
    config = step_config(steps.SERVER_INFO_MODEL, (), (steps.SERVER_INFO,), parameters=settings)
    version_dir = out / steps.SERVER_INFO_MODEL / VERSION
    version_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy(SOURCES / steps.SERVER_INFO_MODEL / VERSION / "model.py", version_dir / "model.py")
    _write(out / steps.SERVER_INFO_MODEL / "config.pbtxt", to_pbtxt(config))
    write_pipeline_list(version_dir, [names for names, _, _ in served])
    for names, info, provenance in served:
        _write(version_dir / "pipelines" / names.pipeline / "pipeline.json", info.to_json())
        _write(version_dir / "pipelines" / names.pipeline / PROVENANCE_FILENAME, provenance.to_json())


@dataclass(frozen=True)
class PipelineSource:
    """One pipeline to serve: its name (``smartedit export --model NAME=PATH``), the loaded diffusers
    pipeline, and what the results' provenance names the model (a hub id, a folder's name)."""

    name: str
    pipeline: Any
    model_name: str = "unknown"
    adapters: tuple[dict, ...] = ()  # the LoRA adapters fused into its weights (smartedit.export.lora)
    # The name of the ControlNet it is served with (``pipeline.controlnet``: smartedit.export.pipeline_loader), ""
    # for none
    controlnet: str = ""


def build_repository(pipeline, out: Path, options: RepositoryOptions = RepositoryOptions(),
                     onnx_dir: Path | None = None, model_name: str = "unknown", name: str = "default") -> Path:
    """Export ``pipeline`` as the one pipeline ``name`` and write the model repository for
    ``options.profile`` at ``out``.

    ``model_name``: what the results' provenance names the model (a hub id, a folder's name).
    """
    return build_pipelines_repository([PipelineSource(name, pipeline, model_name)], out, options, onnx_dir)


def build_pipelines_repository(sources: list[PipelineSource], out: Path,
                               options: RepositoryOptions = RepositoryOptions(), onnx_dir: Path | None = None) -> Path:
    """Export every pipeline of ``sources`` into one model repository at ``out``, the first also served
    under the plain names (smartedit.serving.pipelines)."""
    pipelines = pipeline_names([source.name for source in sources])
    out = Path(out)
    onnx_dir = Path(onnx_dir or out.with_name(out.name + "-onnx"))

    def write(staging: Path) -> None:
        served = []
        for names, source in zip(pipelines, sources):
            pipeline = source.pipeline
            if bool(source.controlnet) != (getattr(pipeline, CONTROLNET_MODULE, None) is not None):
                raise ValueError(f"pipeline {source.name!r}: a ControlNet is named ({source.controlnet!r}) without "
                                 f"one attached, or attached without a name: use attach_controlnet and name it")
            info = dataclasses.replace(PipelineInfo.from_pipeline(pipeline), controlnet=source.controlnet)
            provenance = Provenance(model=source.model_name, weights_sha256=weights_digest(pipeline, weights_of(info)),
                                    adapters=source.adapters)
            log.info("exporting pipeline %r (%s, family %s)", names.pipeline, source.model_name, info.family)
            _write_components(pipeline, info, staging, options, onnx_dir, names)
            preview = fit_latent_preview(pipeline.vae, info.vae_scaling_factor, info.vae_scale_factor)
            tokenizers = {module: getattr(pipeline, module) for module in prompts_of(info).tokenizers}
            # A pipeline of few-step weights defaults to its sampler (smartedit.serving.settings.pipeline_settings)
            own_options = dataclasses.replace(options, preprocess=pipeline_settings(
                options.preprocess, suited_samplers(info.scheduler_class)))
            _write_steps(info, tokenizers, dict(pipeline.scheduler.config), preview, staging, own_options,
                         provenance, names)
            served.append((names, info, provenance))
        _write_server_info(staging, options, served)
        if options.segmentation:
            segment_parameters = {"max_image_pixels": str(options.preprocess.max_image_pixels),
                                  "min_image_side": str(options.preprocess.min_image_side)}
            write_segmentation(staging, options.profile, options.sam_model, segment_parameters, SOURCES, ONNX_CPU_HOST)

    write_atomically(out, write)
    log.info("wrote the %s model repository to %s (pipelines: %s)", options.profile, out,
             ", ".join(p.pipeline for p in pipelines))
    return out


def outdated_models(repository: Path) -> list[str]:
    """The models of ``repository`` whose ``model.py`` is SmartEdit's but not this version's (an export by
    another version, whose code may import modules that no longer exist); models of other authors are not
    SmartEdit's business."""
    shipped = {path.read_bytes() for path in SOURCES.rglob("model.py")}
    found = []
    for source in sorted(Path(repository).glob(f"*/{VERSION}/model.py")):
        code = source.read_bytes()
        if b"smartedit" in code and code not in shipped:
            found.append(source.parent.parent.name)
    return found


def write_atomically(out: Path, write) -> None:
    """``write(staging)`` into a sibling folder, then move it to ``out``: a failed export never leaves
    a half-written repository where a server would load it."""
    if not ONNX_CPU_HOST.exists():
        raise FileNotFoundError(f"the Python models' sources are not at {SOURCES}: the installed package is "
                                f"incomplete: install it again (`pip install .`)")
    staging = out.with_name(out.name + ".partial")
    shutil.rmtree(staging, ignore_errors=True)
    try:
        write(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    shutil.rmtree(out, ignore_errors=True)
    staging.rename(out)


def admission_model(engine: str, names: PipelineNames = ONLY_PIPELINE) -> str:
    """Where preprocess reserves an edit's place before any work: the pipeline's batched engine; with
    the per-request loop, nowhere (edits wait in Triton's queue for a scheduler instance)."""
    return names.model(steps.DENOISE_ENGINE) if engine == BATCHED else ""


def switch_engine(repository: Path, engine: str, scheduler_instances: int = 2) -> None:
    """Make an exported repository's ensembles use ``engine``, without exporting again.

    Rewrites, for every pipeline, what ``RepositoryOptions.engine`` decides: the scheduler step's
    ``engine`` parameter and instance count, where preprocess reserves places, and how long the UNet's
    batcher waits for company.
    """
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}; choose one of {', '.join(ENGINES)}")
    repository = Path(repository)
    for names in read_pipeline_list(repository / steps.SERVER_INFO_MODEL / VERSION):
        preprocess_path = repository / names.model(steps.PREPROCESS) / "config.pbtxt"
        preprocess = parse_pbtxt(preprocess_path.read_text())
        preprocess.parameters["admission_model"].string_value = admission_model(engine, names)
        preprocess_path.write_text(to_pbtxt(preprocess))
        scheduler_path = repository / names.model(steps.SCHEDULER) / "config.pbtxt"
        scheduler = parse_pbtxt(scheduler_path.read_text())
        scheduler.parameters["engine"].string_value = engine
        scheduler.instance_group[0].count = 1 if engine == BATCHED else scheduler_instances
        scheduler_path.write_text(to_pbtxt(scheduler))
        unet_path = repository / names.model("unet") / "config.pbtxt"
        unet = parse_pbtxt(unet_path.read_text())
        unet.dynamic_batching.max_queue_delay_microseconds = UNET_QUEUE_DELAY_US[engine]
        unet_path.write_text(to_pbtxt(unet))
