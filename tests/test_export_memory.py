"""Fitting an export in memory: sizes read from the weights on disk, the plan (FP32, FP16 component by
component, or a refusal naming the memory), and one weights file per component."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from smartedit.export.memory import GIB, ExportTooLarge, parameters_on_disk, plan_export

# SDXL inpainting's modules, by parameter count (its published architecture: 2.57e9 UNet, 1.39e9 OpenCLIP
# bigG with projection, 1.23e8 CLIP ViT-L, 8.4e7 VAE).
SDXL = {"text_encoder": 123_060_480, "text_encoder_2": 694_659_840, "unet": 2_567_463_684, "vae": 83_653_863}


def test_the_parameters_are_read_from_the_safetensors_headers_diffusers_would_load(tiny_sdxl_dir):
    from smartedit.export.pipeline_loader import load_pipeline

    found = parameters_on_disk(tiny_sdxl_dir, ("text_encoder", "text_encoder_2", "unet", "vae"))
    pipeline = load_pipeline(tiny_sdxl_dir)
    assert found == {name: sum(p.numel() for p in getattr(pipeline, name).parameters()) for name in found}
    (tiny_sdxl_dir / "unet" / "diffusion_pytorch_model.fp16.safetensors").write_bytes(b"not read")  # a variant
    try:
        assert parameters_on_disk(tiny_sdxl_dir, ("unet",)) == {"unet": found["unet"]}
    finally:
        (tiny_sdxl_dir / "unet" / "diffusion_pytorch_model.fp16.safetensors").unlink()
    assert parameters_on_disk(tiny_sdxl_dir, ("unet", "no_such_module")) is None  # then: loaded as before


def test_sdxl_is_exported_from_fp16_on_24_gb_and_refused_on_8_naming_the_memory():
    roomy = plan_export(SDXL, available_bytes=64 * GIB)
    assert not roomy.low_memory
    machine = plan_export(SDXL, available_bytes=17 * GIB)  # a 24 GB machine with a test server running
    assert machine.low_memory and machine.low_memory_peak_bytes < 17 * GIB < machine.fp32_peak_bytes
    with pytest.raises(ExportTooLarge, match=r"~\d+\.\d GiB in FP32, ~\d+\.\d GiB component by component from FP16, "
                                             r"8\.0 GiB available"):
        plan_export(SDXL, available_bytes=8 * GIB)


def test_a_graph_s_weights_in_many_files_are_moved_into_one(tmp_path):
    import onnx
    import onnxruntime as ort

    from smartedit.export.onnx_export import consolidate_external_data

    class Two(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.first, self.second = torch.nn.Linear(64, 64), torch.nn.Linear(64, 8)

        def forward(self, x):
            return self.second(torch.relu(self.first(x)))

    module = Two().eval()
    path = tmp_path / "model.onnx"
    torch.onnx.export(module, (torch.randn(2, 64),), str(path), input_names=["x"], output_names=["y"], dynamo=False)
    model = onnx.load(str(path))
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=False, size_threshold=0)
    assert len(list(tmp_path.iterdir())) > 3  # one file per tensor, as the exporter writes a graph past 2 GiB
    consolidate_external_data(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "model.onnx.data"]
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors

    offsets = [ExternalDataInfo(t).offset for t in _get_all_tensors(onnx.load(str(path), load_external_data=False))]
    assert len(offsets) == 4 and all(offset % 4096 == 0 for offset in offsets)  # mappable from the file
    x = np.random.default_rng(0).standard_normal((2, 64)).astype(np.float32)
    (served,) = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})
    with torch.inference_mode():
        np.testing.assert_allclose(served, module(torch.from_numpy(x)).numpy(), rtol=1e-5, atol=1e-6)
