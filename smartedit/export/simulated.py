"""Write a model repository for the simulated device: the benchmark's stand-in for a GPU.

The step models (preprocess, the loop, the streaming entry, postprocess) are the real ones; the
four components are ``model_repository/simulated_component`` instances that sleep as the latency
table says. Shapes come from the table's ``pipeline`` (SD 1.5's for the shipped table), so no
weights are needed; the tokenizer is the tiny model's byte-level one (token values do not matter
to a device that does not compute) and the noise schedule is Stable Diffusion's.
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
from smartedit.diffusion.spec import COMPONENTS
from smartedit.export.tiny_model import stable_diffusion_scheduler, write_tokenizer
from smartedit.serving.triton_config import SIMULATED, BatchingSettings, component_config, to_pbtxt
from smartedit.export.repository import (
    SOURCES, UNET_QUEUE_DELAY_US, VERSION, RepositoryOptions, _write, _write_server_info, _write_steps,
    write_atomically,
)
from smartedit.serving.ensembles import ONLY_PIPELINE

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
    table = LatencyTable.load(table_path)
    options = simulated_options(table, options)
    info = table.pipeline
    reference_pixels = table.reference_image_size[0] * table.reference_image_size[1]

    def write(staging: Path) -> None:
        for spec in COMPONENTS:
            figures = table.components[spec.name]
            version_dir = staging / spec.name / VERSION
            version_dir.mkdir(parents=True, exist_ok=True)
            shutil.copy(SIMULATED_HOST, version_dir / "model.py")
            _write(version_dir / "pipeline.json", info.to_json())
            config = component_config(spec, info, SIMULATED, options.batching_for(spec.name), parameters={
                "latency_a_ms": figures.a_ms, "latency_b_ms": figures.b_ms, "reference_pixels": reference_pixels})
            _write(staging / spec.name / "config.pbtxt", to_pbtxt(config))
        with tempfile.TemporaryDirectory() as folder:
            from transformers import CLIPTokenizer

            write_tokenizer(Path(folder))
            tokenizer = CLIPTokenizer.from_pretrained(folder, model_max_length=info.text_length)
        preview = LatentPreview.neutral(info.latent_channels)
        # No weights: the components only wait as long as the latency table says.
        provenance = Provenance(model=f"simulated device ({Path(table_path).name})", weights_sha256="none")
        _write_steps(info, {"tokenizer": tokenizer}, dict(stable_diffusion_scheduler().config), preview, staging,
                     options, provenance, ONLY_PIPELINE)
        _write_server_info(staging, options, [(ONLY_PIPELINE, info, provenance)])

    out = Path(out)
    write_atomically(out, write)
    log.info("wrote the simulated-device model repository (%s) to %s", table_path, out)
    return out
