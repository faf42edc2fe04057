"""Generated configs parse as ModelConfig; GPU profiles serve the same tensors as onnx-cpu."""

import pytest
from tritonclient.grpc import model_config_pb2 as mc

from smartedit.serving import steps
from smartedit.diffusion.prompts import SD_PROMPTS
from smartedit.serving.ensembles import ONLY_PIPELINE, ensemble_steps, inpaint_ensemble_config
from smartedit.serving.settings import (
    EngineSettings, OnnxHostSettings, PreprocessSettings, SchedulerSettings, parse_bool,
)
from smartedit.diffusion.spec import COMPONENTS, PipelineInfo
from smartedit.serving.triton_config import (
    ONNX_CPU, ONNX_GPU, RUNTIME_PROFILES, TENSORRT, component_config, parse_pbtxt, to_pbtxt,
)
from smartedit_client import _contract as wire

INFO = PipelineInfo(vae_scale_factor=8, latent_channels=4, unet_in_channels=9, text_length=77,
                    text_hidden_size=768, vae_scaling_factor=0.18215, unet_sample_size=64,
                    working_resolution=512)


def _tensors(config):
    return [(t.name, t.data_type, list(t.dims), t.HasField("reshape"), list(t.reshape.shape))
            for t in list(config.input) + list(config.output)]


@pytest.mark.parametrize("profile", RUNTIME_PROFILES)
@pytest.mark.parametrize("spec", COMPONENTS, ids=lambda s: s.name)
def test_component_configs_parse_and_agree_across_profiles(spec, profile):
    config = parse_pbtxt(to_pbtxt(component_config(spec, INFO, profile)))
    reference = component_config(spec, INFO, ONNX_CPU)
    assert _tensors(config) == _tensors(reference)
    assert config.max_batch_size > 0 and config.HasField("dynamic_batching")
    expected = {ONNX_CPU: ("python", ""), ONNX_GPU: ("", "onnxruntime_onnx"), TENSORRT: ("", "tensorrt_plan")}[profile]
    assert (config.backend, config.platform) == expected
    kind = mc.ModelInstanceGroup.KIND_CPU if profile == ONNX_CPU else mc.ModelInstanceGroup.KIND_GPU
    assert config.instance_group[0].kind == kind


def test_written_repository_configs_parse(model_repository):
    names = set()
    for path in model_repository.glob("*/config.pbtxt"):
        config = parse_pbtxt(path.read_text())
        assert config.name == path.parent.name
        names.add(config.name)
    assert names == {"preprocess", "text_encoder", "vae_encoder", "scheduler", "denoise_engine", "unet",
                     "vae_decoder", "postprocess", "inpaint", "inpaint_stream", "server_info", "segment",
                     "sam_image_encoder", "sam_mask_decoder",
                     "inpaint_default", "inpaint_stream_default"}  # the pipeline under its name too


def test_unet_timestep_is_one_scalar_per_row():
    unet = component_config(next(s for s in COMPONENTS if s.name == "unet"), INFO, TENSORRT)
    timestep = next(t for t in unet.input if t.name == "timestep")
    assert list(timestep.dims) == [1] and timestep.HasField("reshape") and list(timestep.reshape.shape) == []


def test_onnx_gpu_can_enable_the_tensorrt_execution_provider():
    config = component_config(COMPONENTS[2], INFO, ONNX_GPU, tensorrt_accelerator=True)
    accelerator = config.optimization.execution_accelerators.gpu_execution_accelerator[0]
    assert accelerator.name == "tensorrt" and accelerator.parameters["precision_mode"] == "FP16"


def test_unknown_profile_is_rejected():
    with pytest.raises(ValueError, match="unknown runtime profile 'onnx-tpu'"):
        component_config(COMPONENTS[0], INFO, "onnx-tpu")


def test_ensemble_implements_the_wire_contract():
    config = parse_pbtxt(to_pbtxt(inpaint_ensemble_config("inpaint", ONLY_PIPELINE, SD_PROMPTS)))
    assert config.name == "inpaint" and config.platform == "ensemble" and config.max_batch_size == 0
    inputs = {t.name: t for t in config.input}
    assert list(inputs) == [t.name for t in wire.INPUTS]
    for tensor in wire.INPUTS:
        assert inputs[tensor.name].optional  # required ones are enforced by preprocess, by name
        assert list(inputs[tensor.name].dims) == [1]
    assert [t.name for t in config.output] == ["edited_image", "seed_used"]


def test_every_ensemble_step_input_is_produced_before_it_is_used():
    available = {t.name for t in wire.INPUTS}
    for _, input_map, output_map in ensemble_steps(ONLY_PIPELINE, SD_PROMPTS):
        missing = set(input_map.values()) - available
        assert not missing, missing
        available |= set(output_map.values())
    assert {t.name for t in wire.OUTPUTS} <= available


def test_settings_parse_booleans_explicitly_and_check_ranges():
    assert parse_bool("x", "false") is False and parse_bool("x", "True") is True
    with pytest.raises(ValueError, match="'x' must be true or false"):
        parse_bool("x", "nope")
    assert PreprocessSettings.parse({"default_num_inference_steps": "30"}).default_num_inference_steps == 30
    with pytest.raises(ValueError, match="default_num_inference_steps' must be >= 1, got 0"):
        PreprocessSettings.parse({"default_num_inference_steps": "0"})
    with pytest.raises(ValueError, match="unknown parameter"):
        OnnxHostSettings.parse({"intra_op_threads": "2"})
    with pytest.raises(ValueError, match="must be an integer"):
        OnnxHostSettings.parse({"intra_op_num_threads": "two"})


def test_step_models_declare_what_the_ensemble_maps():
    declared = {
        steps.PREPROCESS: (steps.PREPROCESS_INPUTS, steps.preprocess_outputs(SD_PROMPTS)),
        steps.SCHEDULER: (steps.scheduler_inputs(SD_PROMPTS), steps.SCHEDULER_OUTPUTS),
        steps.POSTPROCESS: (steps.POSTPROCESS_INPUTS, steps.POSTPROCESS_OUTPUTS),
    }
    components = {c.name: (c.inputs, c.outputs) for c in COMPONENTS}
    for model, input_map, output_map in ensemble_steps(ONLY_PIPELINE, SD_PROMPTS):
        ins, outs = declared.get(model) or components[model]
        assert set(input_map) == {t.name for t in ins}
        assert set(output_map) == {t.name for t in outs}


def _parameters(config) -> dict[str, str]:
    return {key: value.string_value for key, value in config.parameters.items()}


def test_the_engine_is_decoupled_but_no_step_of_the_ensemble_is(model_repository):
    def config(name):
        return parse_pbtxt((model_repository / name / "config.pbtxt").read_text())

    engine = config("denoise_engine")
    assert engine.model_transaction_policy.decoupled
    # A decoupled step would make the ensemble decoupled, and gRPC's unary ModelInfer refuses those.
    for model, _, _ in ensemble_steps(ONLY_PIPELINE, SD_PROMPTS):
        assert not config(model).model_transaction_policy.decoupled, model
    settings = EngineSettings.parse(_parameters(engine))
    unet = config("unet")
    assert settings.max_unet_rows == unet.max_batch_size  # the engine never sends more rows than the UNet takes
    # Triton's batcher queues the engine's calls (max_queue_delay_microseconds reads 0 without one, so
    # its presence is checked first), and sends each at once: the engine batches, waiting adds latency.
    assert unet.HasField("dynamic_batching")
    assert unet.dynamic_batching.max_queue_delay_microseconds == 0
    assert SchedulerSettings.parse(_parameters(config("scheduler"))).engine == "batched"


def test_engine_settings_are_range_checked_and_the_engine_name_is_explicit():
    assert EngineSettings.parse({"max_active_edits": "4"}).max_active_edits == 4
    with pytest.raises(ValueError, match="'max_unet_rows' must be >= 2, got 1"):
        EngineSettings.parse({"max_unet_rows": "1"})
    with pytest.raises(ValueError, match="'max_queued_edits' must be >= 0"):
        EngineSettings.parse({"max_queued_edits": "-1"})
    assert SchedulerSettings.parse({"engine": "per-request"}).engine == "per_request"
    with pytest.raises(ValueError, match="'engine' must be one of batched, per_request, got 'turbo'"):
        SchedulerSettings.parse({"engine": "turbo"})


def test_per_request_export_keeps_the_old_loop_and_lets_concurrent_loops_meet_in_the_batcher():
    from smartedit.export.repository import RepositoryOptions

    options = RepositoryOptions(engine="per_request", scheduler_instances=3)
    assert options.batching_for("unet").max_queue_delay_microseconds > 0
    with pytest.raises(ValueError, match="unknown engine 'turbo'"):
        RepositoryOptions(engine="turbo")
    with pytest.raises(ValueError, match="'max_active_edits' must be >= 1, got 0"):
        RepositoryOptions(max_active_edits=0)
