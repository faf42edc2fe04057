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
