"""Write a model repository for the simulated device: the benchmark's stand-in for a GPU.

The step models (preprocess, the loop, the streaming entry, postprocess) are the real ones; the
components of the table's family are ``model_repository/simulated_component`` instances that sleep as
the latency table says. Shapes and family come from the table's ``pipeline`` (SD 1.5's for the shipped
table, SDXL's for ``sdxl-1024-h100.json``), so no weights are needed; the tokenizers are the tiny
model's byte-level one (token values do not matter to a device that does not compute) and the noise
schedule is Stable Diffusion's (SDXL's is the same). Several tables make several pipelines in one
repository.
"""

from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
from pathlib import Path

from smartedit.engine.latency_table import LatencyTable
from smartedit.diffusion.preview import LatentPreview
from smartedit.edit.provenance import Provenance
from smartedit.diffusion.families import components_of, prompts_of
from smartedit.export.tiny_model import stable_diffusion_scheduler, write_tokenizer
from smartedit.serving.triton_config import SIMULATED, BatchingSettings, component_config, to_pbtxt
from smartedit.export.repository import (
    SOURCES, UNET_QUEUE_DELAY_US, VERSION, RepositoryOptions, _write, _write_server_info, _write_steps,
    write_atomically,
)
from smartedit.serving.ensembles import ONLY_PIPELINE
from smartedit.serving.pipelines import PipelineNames, pipeline_names

log = logging.getLogger(__name__)

SIMULATED_HOST = SOURCES / "simulated_component" / "model.py"


def simulated_options(table: LatencyTable, options: RepositoryOptions = RepositoryOptions()) -> RepositoryOptions:
    """``options`` with the table's batch sizes and engine bounds (where ``options`` sets none)."""
    batching = {name: BatchingSettings(max_batch_size=figures.max_batch_size) for name, figures in
                table.components.items()}
    batching["unet"] = BatchingSettings(max_batch_size=table.unet.max_batch_size,
                                        max_queue_delay_microseconds=UNET_QUEUE_DELAY_US[options.engine])
    return dataclasses.replace(
        options, profile=SIMULATED, batching=batching, verify=False,
        max_active_edits=options.max_active_edits or table.max_active_edits,
        max_queued_edits=table.max_queued_edits if options.max_queued_edits is None else options.max_queued_edits)


def build_simulated_repository(table_path: Path, out: Path,
                               options: RepositoryOptions = RepositoryOptions()) -> Path:
    """A repository serving one simulated pipeline, the device of the latency table at ``table_path``."""
    return build_simulated_pipelines([(ONLY_PIPELINE.pipeline, Path(table_path))], out, options)


def build_simulated_pipelines(tables: list[tuple[str, Path]], out: Path,
                              options: RepositoryOptions = RepositoryOptions(), shared_unet: bool = False) -> Path:
    """A repository serving one simulated pipeline per (name, latency table), the first also under the plain
    names (SD 1.5 and SDXL side by side, say). Each pipeline's components sleep as its table says, its shapes
    and family are its table's ``pipeline``, and its batch sizes and engine bounds its table's (where
    ``options`` sets none). Each component is a device of its own, unless ``shared_unet``: then the
    pipelines' UNets take turns on one device, as on one GPU (their UNet calls do not overlap)."""
    loaded = [(name, LatencyTable.load(path), Path(path)) for name, path in tables]
    pipelines = pipeline_names([name for name, _, _ in loaded])

    def write(staging: Path) -> None:
        served = []
        for names, (_, table, path) in zip(pipelines, loaded):
            pipeline_options = simulated_options(table, options)
            info = table.pipeline
            _write_simulated_components(table, pipeline_options, names, staging, shared_unet)
            prompts = prompts_of(info)
            with tempfile.TemporaryDirectory() as folder:
                from transformers import CLIPTokenizer

                write_tokenizer(Path(folder))
                tokenizer = CLIPTokenizer.from_pretrained(folder, model_max_length=info.text_length)
            # Token values do not matter to a device that does not compute: every tokenizer is the tiny one.
            tokenizers = {module: tokenizer for module in prompts.tokenizers}
            preview = LatentPreview.neutral(info.latent_channels)
            # No weights: the components only wait as long as the latency table says.
            provenance = Provenance(model=f"simulated device ({path.name})", weights_sha256="none")
            _write_steps(info, tokenizers, dict(stable_diffusion_scheduler().config), preview, staging,
                         pipeline_options, provenance, names)
            served.append((names, info, provenance))
        _write_server_info(staging, options, served)

    out = Path(out)
    write_atomically(out, write)
    log.info("wrote the simulated-device model repository (%s) to %s",
             ", ".join(f"{name}: {path}" for name, _, path in loaded), out)
    return out


def _write_simulated_components(table: LatencyTable, options: RepositoryOptions, names: PipelineNames,
                                staging: Path, shared_unet: bool) -> None:
    info = table.pipeline
    reference_pixels = table.reference_image_size[0] * table.reference_image_size[1]
    for spec in components_of(info):
        figures = table.components[spec.name]
        served = names.model(spec.name)
        version_dir = staging / served / VERSION
        version_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(SIMULATED_HOST, version_dir / "model.py")
        _write(version_dir / "pipeline.json", info.to_json())
        config = component_config(spec, info, SIMULATED, options.batching_for(spec.name), parameters={
            "latency_a_ms": figures.a_ms, "latency_b_ms": figures.b_ms, "reference_pixels": reference_pixels,
            "component": spec.name, "shared_device": "unet" if shared_unet and spec.name == "unet" else ""})
        config.name = served
        _write(staging / served / "config.pbtxt", to_pbtxt(config))
