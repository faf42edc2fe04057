"""What the commands that export share (``export``, ``demo``, ``loadtest``): the model to export, the
export itself with the command line's options, and the server's address from them."""

from __future__ import annotations

import logging
from pathlib import Path

from smartedit.engine.latency_table import SHIPPED_LATENCY_TABLE
from smartedit.ops.server import ServerAddress

log = logging.getLogger("smartedit")

BUILD = Path("build")
DEFAULT_TINY_MODEL = BUILD / "tiny-model"
DEFAULT_TINY_TEXT_TO_IMAGE = BUILD / "tiny-text-to-image"  # `smartedit tiny-model --text-to-image`
DEFAULT_TINY_INSTRUCT = BUILD / "tiny-instruct"  # `smartedit tiny-model --instruct`
DEFAULT_REPOSITORY = BUILD / "model_repository"
DEFAULT_LATENCY_TABLE = SHIPPED_LATENCY_TABLE  # --profile simulated


TINY_PIPELINE_NAME = "tiny"  # the embedded default's pipeline name
DEFAULT_TINY_SDXL = BUILD / "tiny-sdxl"  # `--tiny sdxl`, `smartedit tiny-model --sdxl`
TINY_SDXL_PIPELINE_NAME = "tiny-sdxl"
TINY_FAMILIES = ("sd", "sdxl")  # --tiny: the embedded models, one per family shape


def _tiny_model_source(tiny: str = "sd") -> str:
    """The embedded tiny model of ``tiny``'s shape (built on first use)."""
    if tiny == "sdxl":
        from smartedit.export.tiny_sdxl import is_current_tiny_sdxl, write_tiny_sdxl

        if not is_current_tiny_sdxl(DEFAULT_TINY_SDXL):
            log.info("--tiny sdxl: building the embedded tiny SDXL model at %s", DEFAULT_TINY_SDXL)
            write_tiny_sdxl(DEFAULT_TINY_SDXL)
        return str(DEFAULT_TINY_SDXL)
    from smartedit.export.tiny_model import is_current_tiny_pipeline, write_tiny_pipeline

    if not is_current_tiny_pipeline(DEFAULT_TINY_MODEL):
        log.info("no --model given: building the embedded tiny model at %s", DEFAULT_TINY_MODEL)
        write_tiny_pipeline(DEFAULT_TINY_MODEL)
    return str(DEFAULT_TINY_MODEL)


def pipeline_arguments(models: list[str] | None, tiny: str | None = None) -> list[tuple[str, str, str]]:
    """(pipeline name, model source, provenance name) per ``--model [NAME=]PATH``; without any, the
    embedded tiny model (``tiny``: "sd", pipeline ``tiny``, or "sdxl", pipeline ``tiny-sdxl``).

    Raises:
        ValueError: a name that cannot be a pipeline's, or a name given twice (naming the argument); ``tiny``
            with a ``--model``.
    """
    from smartedit.serving.pipelines import pipeline_names
    from smartedit_client._contract import PIPELINE_NAME

    models = [model for model in models or () if model]  # the chart passes `--model=` for the default
    if tiny is not None and models:
        raise ValueError(f"--tiny {tiny} chooses the embedded model served when no --model is given; drop one")
    if tiny == "sdxl":
        return [(TINY_SDXL_PIPELINE_NAME, _tiny_model_source("sdxl"), "smartedit-tiny-sdxl (embedded)")]
    if not models:
        return [(TINY_PIPELINE_NAME, _tiny_model_source(), "smartedit-tiny (embedded default)")]
    found = []
    for argument in models:
        name, separator, source = argument.partition("=")
        if not separator or not PIPELINE_NAME.fullmatch(name):  # a bare PATH (which may itself hold a '=')
            source = argument
            name = Path(source.rstrip("/")).name
            if not PIPELINE_NAME.fullmatch(name):
                raise ValueError(f"--model {argument!r}: its folder's name {name!r} cannot name a pipeline (letters, "
                                 f"digits, '_', '-'): give one, --model NAME={argument}")
        found.append((name, source, _model_name(source)))
    pipeline_names([name for name, _, _ in found])  # refuses a name given twice, and clashing names
    return found


def _per_pipeline(flag: str, arguments: list[str] | None, pipelines: list[str]) -> list[tuple[str, str]]:
    """(pipeline name, value) per ``flag [NAME=]VALUE``; a bare VALUE is the one pipeline's.

    Raises:
        ValueError: a bare VALUE with several pipelines, or a NAME no ``--model`` gives.
    """
    from smartedit_client._contract import PIPELINE_NAME

    found = []
    for argument in arguments or ():
        name, separator, value = argument.partition("=")
        if separator and name not in pipelines and PIPELINE_NAME.fullmatch(name) and not Path(argument).exists():
            raise ValueError(f"{flag} {argument!r}: no pipeline is named {name!r} (pipelines: {', '.join(pipelines)})")
        if not separator or name not in pipelines:
            if len(pipelines) != 1:
                raise ValueError(f"{flag} {argument!r}: which pipeline's? Give {flag} NAME={argument} with NAME one "
                                 f"of {', '.join(pipelines)}")
            name, value = pipelines[0], argument
        found.append((name, value))
    return found


def vae_arguments(vaes: list[str] | None, pipelines: list[str]) -> dict[str, str]:
    """Pipeline name -> VAE source per ``--vae [NAME=]PATH``; a bare PATH is the one pipeline's.

    Raises:
        ValueError: a bare PATH with several pipelines, a NAME no ``--model`` gives, or a pipeline given two.
    """
    found: dict[str, str] = {}
    for name, source in _per_pipeline("--vae", vaes, pipelines):
        if name in found:
            raise ValueError(f"--vae: pipeline {name!r} is given two VAEs")
        found[name] = source
    return found


def lora_arguments(loras: list[str] | None, pipelines: list[str]) -> dict[str, list]:
    """Pipeline name -> its LoRA adapters, in the order given, per ``--lora [NAME=]FILE[:SCALE]``.

    Raises:
        ValueError: as ``_per_pipeline``; a file that is missing or not .safetensors, a scale that is no number.
    """
    from smartedit.export.lora import LoraAdapter

    found: dict[str, list] = {}
    for name, value in _per_pipeline("--lora", loras, pipelines):
        found.setdefault(name, []).append(LoraAdapter.parse(value))
    return found


def scheduler_arguments(schedulers: list[str] | None, pipelines: list[str]) -> dict[str, str]:
    """Pipeline name -> the sampler its weights are made for, per ``--scheduler [NAME=]SAMPLER``.

    Raises:
        ValueError: as ``_per_pipeline``; an unknown sampler; a pipeline given two.
    """
    from smartedit.diffusion.samplers import SAMPLERS

    found: dict[str, str] = {}
    for name, sampler in _per_pipeline("--scheduler", schedulers, pipelines):
        if sampler not in SAMPLERS:
            raise ValueError(f"--scheduler {sampler!r}: unknown sampler; known: {', '.join(SAMPLERS)}")
        if name in found:
            raise ValueError(f"--scheduler: pipeline {name!r} is given two samplers")
        found[name] = sampler
    return found


def controlnet_arguments(controlnets: list[str] | None, pipelines: list[str]) -> dict[str, tuple[str, str]]:
    """Pipeline name -> (the ControlNet's name, its source) per ``--controlnet [NAME=][CNAME=]PATH``.

    Raises:
        ValueError: no pipeline NAME with several pipelines; a name that cannot name a ControlNet; a pipeline given
            two.
    """
    from smartedit_client._contract import PIPELINE_NAME

    found: dict[str, tuple[str, str]] = {}
    for argument in controlnets or ():
        # A leading NAME= is a pipeline's name only when one is so named; else it may be the ControlNet's.
        name, separator, value = argument.partition("=")
        if not (separator and name in pipelines and not Path(argument).exists()):
            if len(pipelines) != 1:
                raise ValueError(f"--controlnet {argument!r}: which pipeline's? Give --controlnet NAME={argument} "
                                 f"with NAME one of {', '.join(pipelines)}")
            name, value = pipelines[0], argument
        control_name, separator, source = value.partition("=")
        if not separator or not PIPELINE_NAME.fullmatch(control_name) or Path(value).exists():
            source = value
            control_name = Path(source.rstrip("/")).name
            if not PIPELINE_NAME.fullmatch(control_name):
                raise ValueError(f"--controlnet {value!r}: its folder's name {control_name!r} cannot name a ControlNet "
                                 f"(letters, digits, '_', '-'): give one, --controlnet CNAME={value}")
        if name in found:
            raise ValueError(f"--controlnet: pipeline {name!r} is given two ControlNets ({found[name][0]} and "
                             f"{control_name}); a pipeline serves one: export the base again under another name "
                             f"(--model OTHER=PATH) for the other")
        found[name] = (control_name, source)
    return found


def export_repository(args, out: Path) -> Path:
    """Export every ``args.model`` (or the embedded default) into a model repository at ``out``."""
    from smartedit.diffusion.samplers import make_scheduler
    from smartedit.export.lora import AdapterMismatch, fuse_adapters
    from smartedit.export.pipeline_loader import UnsupportedModel, attach_controlnet, load_pipeline, replace_vae
    from smartedit.export.repository import PipelineSource, build_pipelines_repository
    from smartedit.serving.triton_config import SIMULATED

    try:
        options = repository_options(args)
        if args.profile == SIMULATED:
            from smartedit.export.simulated import build_simulated_repository

            if args.model or getattr(args, "controlnet", None):
                raise ValueError("--profile simulated takes no --model or --controlnet: its shapes and timings come "
                                 "from --latency-table")
            return build_simulated_repository(Path(args.latency_table), out, options)
        wanted = pipeline_arguments(args.model, getattr(args, "tiny", None))
        names = [name for name, _, _ in wanted]
        vaes = vae_arguments(getattr(args, "vae", None), names)
        loras = lora_arguments(getattr(args, "lora", None), names)
        schedulers = scheduler_arguments(getattr(args, "scheduler", None), names)
        controlnets = controlnet_arguments(getattr(args, "controlnet", None), names)
    except ValueError as error:
        raise SystemExit(f"smartedit: {error}") from None
    sources = []
    for name, source, model_name in wanted:
        log.info("loading %s (pipeline %r)", source, name)
        try:
            pipeline = load_pipeline(source)
        except UnsupportedModel as error:
            raise SystemExit(f"smartedit: --model {error}") from None
        if name in vaes:
            log.info("pipeline %r: the VAE from %s", name, vaes[name])
            try:
                replace_vae(pipeline, vaes[name])
            except UnsupportedModel as error:
                raise SystemExit(f"smartedit: --vae {error}") from None
            model_name = f"{model_name} + VAE {_model_name(vaes[name])}"
        adapters = ()
        if name in loras:
            try:
                adapters = tuple(fuse_adapters(pipeline, loras[name]))
            except AdapterMismatch as error:
                raise SystemExit(f"smartedit: {error}") from None
        if name in schedulers:  # as diffusers' LCM-LoRA recipe: the sampler the weights are distilled for
            pipeline.scheduler = make_scheduler(schedulers[name], pipeline.scheduler.config)
        controlnet = ""
        if name in controlnets:
            controlnet, controlnet_source = controlnets[name]
            log.info("pipeline %r: the ControlNet %r from %s", name, controlnet, controlnet_source)
            try:
                attach_controlnet(pipeline, controlnet_source)
            except UnsupportedModel as error:
                raise SystemExit(f"smartedit: --controlnet {error}") from None
            model_name = f"{model_name} + ControlNet {_model_name(controlnet_source)}"
        sources.append(PipelineSource(name, pipeline, model_name, adapters, controlnet))
    return build_pipelines_repository(sources, out, options,
                                      onnx_dir=Path(args.onnx_dir) if args.onnx_dir else None)


def _model_name(model: str) -> str:
    """How results name the model: a hub id as given, a local folder by its name."""
    return Path(model).name if Path(model).exists() else model


def repository_options(args):
    from smartedit.export.repository import RepositoryOptions
    from smartedit.serving.settings import PreprocessSettings

    return RepositoryOptions(
        profile=args.profile,
        precision=args.precision,
        engine=args.engine.replace("-", "_"),
        max_active_edits=args.max_active_edits,
        max_queued_edits=args.max_queued_edits,
        scheduler_instances=args.scheduler_instances,
        preprocess=PreprocessSettings(default_num_inference_steps=args.default_steps),
        tensorrt_accelerator=args.onnx_tensorrt_ep,
        verify=not args.no_verify,
        segmentation=not args.no_segmentation,
        sam_model=args.sam_model,
    )


def server_address(args) -> ServerAddress:
    return ServerAddress(host=args.host, grpc_port=args.grpc_port, http_port=args.http_port,
                         metrics_port=args.metrics_port)
