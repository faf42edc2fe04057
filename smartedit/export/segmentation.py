"""The click-to-mask models of a repository (``smartedit.segmentation.sam``): ``sam_image_encoder`` and
``sam_mask_decoder`` (ONNX, served like the diffusion components) and the ``segment`` entry point."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

from smartedit.serving import steps
from smartedit.segmentation.sam import PROCESSOR_FOLDER, SAM_INFO_FILENAME, export_sam, load_sam, sam_specs
from smartedit.serving.triton_config import (
    ONNX_CPU, ONNX_GPU, BatchingSettings, component_config, step_config, to_pbtxt,
)

log = logging.getLogger(__name__)


def write_segmentation(out: Path, profile: str, sam_model: str | None, segment_parameters: dict[str, str],
                       sources: Path, onnx_host: Path, version: str = "1") -> None:
    """Export SAM (``sam_model``: a folder or hub id; the tiny default when None) into ``out``.

    SAM's graphs run on ONNX Runtime on every profile (the CPU host for onnx-cpu; the native
    onnxruntime backend, CUDA, on the GPU profiles): no TensorRT engine is built for them.
    """
    model, processor, name = load_sam(sam_model)
    info = export_sam(model, processor, name, out)
    served_as = ONNX_CPU if profile == ONNX_CPU else ONNX_GPU
    for spec in sam_specs(info):
        parameters = {"shrink_arena": "true"} if served_as == ONNX_CPU else {}
        if served_as == ONNX_CPU:
            shutil.copy(onnx_host, out / spec.name / version / "model.py")
        config = component_config(spec, None, served_as, BatchingSettings(max_batch_size=4), parameters=parameters)
        (out / spec.name / "config.pbtxt").write_text(to_pbtxt(config))
    folder = out / steps.SEGMENT / version
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(sources / steps.SEGMENT / version / "model.py", folder / "model.py")
    (folder / SAM_INFO_FILENAME).write_text(info.to_json())
    processor.save_pretrained(folder / PROCESSOR_FOLDER)
    config = step_config(steps.SEGMENT, steps.SEGMENT_INPUTS, steps.SEGMENT_OUTPUTS, parameters=segment_parameters)
    (out / steps.SEGMENT / "config.pbtxt").write_text(to_pbtxt(config))
    log.info("wrote the segmentation models (%s)", name)
