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
DEFAULT_REPOSITORY = BUILD / "model_repository"
DEFAULT_LATENCY_TABLE = SHIPPED_LATENCY_TABLE  # --profile simulated


def _model_source(model: str | None) -> str:
    """The model to export: the one given, or the embedded tiny model (built on first use)."""
    if model:
        return model
    from smartedit.export.tiny_model import is_current_tiny_pipeline, write_tiny_pipeline

    if not is_current_tiny_pipeline(DEFAULT_TINY_MODEL):
        log.info("no --model given: building the embedded tiny model at %s", DEFAULT_TINY_MODEL)
        write_tiny_pipeline(DEFAULT_TINY_MODEL)
    return str(DEFAULT_TINY_MODEL)


def export_repository(args, out: Path) -> Path:
    """Export ``args.model`` (or the embedded default) into a model repository at ``out``."""
    from smartedit.export.pipeline_loader import load_pipeline
    from smartedit.export.repository import build_repository
    from smartedit.serving.triton_config import SIMULATED

    try:
        options = repository_options(args)
        if args.profile == SIMULATED:
            from smartedit.export.simulated import build_simulated_repository

            if args.model:
                raise ValueError("--profile simulated takes no --model: its shapes and timings come from "
                                 "--latency-table")
            return build_simulated_repository(Path(args.latency_table), out, options)
    except ValueError as error:
        raise SystemExit(f"smartedit: {error}") from None
    from smartedit.export.pipeline_loader import UnsupportedModel

    source = _model_source(args.model)
    log.info("loading %s", source)
    try:
        pipeline = load_pipeline(source)
    except UnsupportedModel as error:
        raise SystemExit(f"smartedit: --model {error}") from None
    return build_repository(pipeline, out, options, onnx_dir=Path(args.onnx_dir) if args.onnx_dir else None,
                            model_name=_model_name(args.model))


def _model_name(model: str | None) -> str:
    """How results name the model: a hub id as given, a local folder by its name."""
    if not model:
        return "smartedit-tiny (embedded default)"
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
