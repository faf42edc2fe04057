"""Each exported ONNX graph matches PyTorch; a graph that does not is caught."""

import pytest

from smartedit.export import onnx_export, verify
from smartedit.diffusion.spec import COMPONENTS, PipelineInfo


@pytest.mark.parametrize("spec", COMPONENTS, ids=lambda s: s.name)
def test_served_graph_matches_pytorch(spec, tiny_pipeline, model_repository):
    info = PipelineInfo.from_pipeline(tiny_pipeline)
    onnx_path = model_repository / spec.name / "1" / onnx_export.ONNX_FILENAME
    # Sizes beyond the export's own check: odd latent sizes, batch 3.
    f = info.vae_scale_factor
    sizes = verify.verification_sizes(info) + [(3, 5 * f, 9 * f)]
    for result in verify.compare(tiny_pipeline, spec, onnx_path, info, sizes):
        assert result.relative_error < 1e-4, result


def test_graph_names_and_dynamic_axes_follow_the_spec(model_repository):
    import onnx

    for spec in COMPONENTS:
        model = onnx.load(str(model_repository / spec.name / "1" / "model.onnx"))
        graph = model.graph
        assert [i.name for i in graph.input] == spec.input_names
        assert [o.name for o in graph.output] == spec.output_names
        for tensor, declared in zip(graph.input, spec.inputs):
            dims = tensor.type.tensor_type.shape.dim
            assert dims[0].dim_param == "batch"
            assert len(dims) == 1 + len(declared.dims)
        default_domain = next(o for o in model.opset_import if o.domain in ("", "ai.onnx"))
        assert default_domain.version >= 17


def test_mismatching_graph_is_rejected_with_a_clear_message(tiny_pipeline, model_repository, tmp_path):
    from smartedit.export.tiny_model import build_tiny_pipeline

    other_unet = build_tiny_pipeline(seed=1)[0].eval()
    info = PipelineInfo.from_pipeline(tiny_pipeline)
    spec = next(s for s in COMPONENTS if s.name == "unet")
    original = tiny_pipeline.unet
    tiny_pipeline.unet = other_unet  # the graph on disk no longer comes from this UNet
    try:
        with pytest.raises(verify.ExportMismatch, match="unet: the ONNX graph .* differs from PyTorch"):
            verify.verify(tiny_pipeline, spec, model_repository / "unet" / "1" / "model.onnx", info, "fp32")
    finally:
        tiny_pipeline.unet = original


def test_fp16_export_keeps_fp32_io_and_matches(tiny_pipeline, tmp_path):
    import onnx

    paths = onnx_export.export_pipeline(tiny_pipeline, tmp_path, precision="fp16", names=("text_encoder", "unet"))
    info = PipelineInfo.from_pipeline(tiny_pipeline)
    for name, path in paths.items():
        model = onnx.load(str(path))
        assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
        assert model.graph.input[0].type.tensor_type.elem_type in (onnx.TensorProto.FLOAT, onnx.TensorProto.INT64)
        spec = next(s for s in COMPONENTS if s.name == name)
        verify.verify(tiny_pipeline, spec, path, info, "fp16")


def _initializer_types(path) -> set[int]:
    import onnx

    return {tensor.data_type for tensor in onnx.load(str(path), load_external_data=False).graph.initializer}


def test_sdxl_s_vae_stays_fp32_on_the_fp16_profiles_unless_its_config_says_it_is_fp16_safe(tiny_sdxl_dir, tmp_path):
    """diffusers upcasts SDXL's VAE when its config says force_upcast (SDXL's VAE overflows in FP16); the
    export keeps it FP32 then, and `--vae` with an FP16-safe VAE (force_upcast false) makes it FP16."""
    import json
    import subprocess
    import sys

    import onnx

    from smartedit.export.pipeline_loader import load_pipeline

    safe_vae = tmp_path / "fp16-safe-vae"
    vae = load_pipeline(tiny_sdxl_dir).vae
    vae.register_to_config(force_upcast=False)
    vae.save_pretrained(safe_vae)
    assert json.loads((safe_vae / "config.json").read_text())["force_upcast"] is False
    fp16 = onnx.TensorProto.FLOAT16
    for vae_arguments, vae_in_fp16 in (([], False), (["--vae", str(safe_vae)], True)):
        out = tmp_path / f"repository-{vae_in_fp16}"
        result = subprocess.run([sys.executable, "-m", "smartedit", "export", "--model", f"xl={tiny_sdxl_dir}",
                                 *vae_arguments, "--profile", "onnx-gpu", "--precision", "fp16", "--no-verify",
                                 "--no-segmentation", "--out", str(out)], capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr[-3000:]
        assert fp16 in _initializer_types(out / "unet" / "1" / "model.onnx")
        assert fp16 in _initializer_types(out / "text_encoder" / "1" / "model.onnx")
        for name in ("vae_encoder", "vae_decoder"):
            assert (fp16 in _initializer_types(out / name / "1" / "model.onnx")) == vae_in_fp16, (vae_arguments, name)
    provenance = json.loads((tmp_path / "repository-True" / "postprocess" / "1" / "provenance.json").read_text())
    assert provenance["model"] == f"{tiny_sdxl_dir.name} + VAE fp16-safe-vae"


def test_a_vae_of_another_latent_space_is_refused_naming_both(tiny_sdxl_dir, tiny_model_dir, tmp_path):
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "smartedit", "export", "--model", str(tiny_sdxl_dir), "--vae",
                             str(tiny_model_dir), "--out", str(tmp_path / "out")], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr[-2000:]
    assert "its latents (4 channels at 1/8 scale, scaling factor 0.18215) are not the pipeline's (4 channels at 1/8 " \
           "scale, scaling factor 0.13025)" in result.stderr, result.stderr[-2000:]
    assert not (tmp_path / "out").exists()
