"""TensorRT profiles and commands; the build itself needs TensorRT, which is not installable here."""

import pytest

from smartedit.export import tensorrt
from smartedit.diffusion.spec import COMPONENTS, PipelineInfo

INFO = PipelineInfo(vae_scale_factor=8, latent_channels=4, unet_in_channels=9, text_length=77,
                    text_hidden_size=768, vae_scaling_factor=0.18215, unet_sample_size=64,
                    working_resolution=512)
PROFILE = tensorrt.EngineProfile(batch=tensorrt.Range(1, 2, 8), height=tensorrt.Range(256, 512, 1024),
                                 width=tensorrt.Range(256, 768, 1024))


def _by_name(spec_name):
    spec = next(s for s in COMPONENTS if s.name == spec_name)
    return {p.name: p for p in tensorrt.input_profiles(spec, INFO, PROFILE)}


def test_unet_profile_covers_batch_and_resolution():
    profiles = _by_name("unet")
    assert profiles["sample"].minimum == (1, 9, 32, 32)
    assert profiles["sample"].optimum == (2, 9, 64, 96)
    assert profiles["sample"].maximum == (8, 9, 128, 128)
    assert profiles["timestep"].optimum == (2,)
    assert profiles["encoder_hidden_states"].maximum == (8, 77, 768)


def test_vae_and_text_profiles():
    assert _by_name("vae_decoder")["latents"].optimum == (2, 4, 64, 96)
    assert _by_name("vae_encoder")["image"].maximum == (8, 3, 1024, 1024)
    assert _by_name("text_encoder")["input_ids"].minimum == (1, 77)


def test_resolution_off_the_vae_grid_is_rejected():
    bad = tensorrt.EngineProfile(batch=tensorrt.Range(1, 1, 1), height=tensorrt.Range(250, 512, 1024),
                                 width=tensorrt.Range(256, 512, 1024))
    with pytest.raises(ValueError, match="250 is not a multiple of the VAE factor 8"):
        tensorrt.input_profiles(COMPONENTS[2], INFO, bad)


def test_range_must_be_ordered():
    with pytest.raises(ValueError, match="min <= opt <= max"):
        tensorrt.Range(4, 2, 8)


def test_trtexec_command(tmp_path):
    command = tensorrt.trtexec_command("trtexec", tmp_path / "m.onnx", tmp_path / "m.plan",
                                       tensorrt.input_profiles(COMPONENTS[2], INFO, PROFILE), 4096)
    assert "--fp16" in command
    assert "--optShapes=sample:2x9x64x96,timestep:2,encoder_hidden_states:2x77x768" in command
    assert "--memPoolSize=workspace:4096M" in command
    # SDXL's VAE is built FP32 (it overflows in FP16)
    vae = tensorrt.trtexec_command("trtexec", tmp_path / "v.onnx", tmp_path / "v.plan",
                                   tensorrt.input_profiles(COMPONENTS[3], INFO, PROFILE), 4096, fp16=False)
    assert "--fp16" not in vae and "--saveEngine=" + str(tmp_path / "v.plan") in vae


@pytest.mark.skipif(tensorrt.tensorrt_available(), reason="TensorRT is installed here")
def test_build_stops_with_a_clear_message_without_tensorrt(tmp_path):
    with pytest.raises(tensorrt.TensorRTUnavailable, match="TensorRT is not installed here"):
        tensorrt.build_engine(tmp_path / "m.onnx", tmp_path / "m.plan", COMPONENTS[2], INFO, PROFILE)


@pytest.mark.skipif(tensorrt.tensorrt_available(), reason="TensorRT is installed here")
def test_tensorrt_export_leaves_no_repository_behind(tiny_pipeline, tmp_path):
    from smartedit.export.repository import RepositoryOptions, build_repository

    out = tmp_path / "repo"
    with pytest.raises(tensorrt.TensorRTUnavailable):
        build_repository(tiny_pipeline, out, RepositoryOptions(profile="tensorrt", verify=False))
    assert not out.exists() and not (tmp_path / "repo.partial").exists()
