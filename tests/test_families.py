"""Which family a pipeline folder is, and the export's refusal of a family this server does not know."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from smartedit.diffusion.recognize import KNOWN, SD_INPAINT, SD_LATENT_BLEND, UnknownFamily, identify, read_found
from smartedit.export.pipeline_loader import found_in
from smartedit.export.tiny_model import build_tiny_pipeline, stable_diffusion_scheduler, write_tokenizer


def _tiny_sdxl_inpaint(folder: Path) -> Path:
    """A tiny SDXL inpainting pipeline (diffusers' fast-test configs: two CLIP encoders, text_time)."""
    from diffusers import AutoencoderKL, StableDiffusionXLInpaintPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection, CLIPTokenizer

    write_tokenizer(folder / "tok")
    tokenizer = CLIPTokenizer.from_pretrained(folder / "tok")
    text_config = CLIPTextConfig(bos_token_id=512, eos_token_id=513, pad_token_id=513, hidden_size=32,
                                 intermediate_size=37, num_attention_heads=4, num_hidden_layers=2, vocab_size=514,
                                 projection_dim=32, max_position_embeddings=77)
    unet = UNet2DConditionModel(block_out_channels=(32, 64), layers_per_block=2, sample_size=32, in_channels=9,
                                out_channels=4, down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), attention_head_dim=(2, 4),
                                use_linear_projection=True, addition_embed_type="text_time",
                                addition_time_embed_dim=8, transformer_layers_per_block=(1, 2),
                                projection_class_embeddings_input_dim=8 * 6 + 32, cross_attention_dim=64)
    vae = AutoencoderKL(block_out_channels=[32, 64], in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=["DownEncoderBlock2D"] * 2, up_block_types=["UpDecoderBlock2D"] * 2)
    pipeline = StableDiffusionXLInpaintPipeline(
        vae=vae, text_encoder=CLIPTextModel(text_config), text_encoder_2=CLIPTextModelWithProjection(text_config),
        tokenizer=tokenizer, tokenizer_2=tokenizer, unet=unet, scheduler=stable_diffusion_scheduler())
    pipeline.save_pretrained(folder / "pipeline")
    return folder / "pipeline"


def _tiny_instruct_pix2pix(folder: Path) -> Path:
    """A tiny InstructPix2Pix pipeline: the tiny model's parts with an 8-channel UNet (latents + image latents)."""
    from diffusers import StableDiffusionInstructPix2PixPipeline, UNet2DConditionModel
    from transformers import CLIPTokenizer

    unet9, vae, text_encoder, scheduler = build_tiny_pipeline(0)
    unet = UNet2DConditionModel.from_config(dict(unet9.config, in_channels=8))
    write_tokenizer(folder / "tok")
    pipeline = StableDiffusionInstructPix2PixPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=CLIPTokenizer.from_pretrained(folder / "tok"), unet=unet,
        scheduler=scheduler, safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipeline.save_pretrained(folder / "pipeline")
    return folder / "pipeline"


def _export_error(model: Path, out: Path) -> str:
    result = subprocess.run([sys.executable, "-m", "smartedit", "export", "--model", str(model), "--out", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    assert not out.exists()
    return result.stderr.strip().splitlines()[-1]


def test_the_tiny_default_is_sd_inpaint_and_its_text_to_image_twin_sd_latent_blend(tiny_model_dir,
                                                                                  tiny_text_to_image_dir):
    assert identify(found_in(str(tiny_model_dir))) is SD_INPAINT
    assert identify(found_in(str(tiny_text_to_image_dir))) is SD_LATENT_BLEND


@pytest.mark.parametrize("build, found", [
    (_tiny_sdxl_inpaint, "an SDXL pipeline (two text encoders) (StableDiffusionXLInpaintPipeline, a UNet of 9 "
                         "input channels)"),
    (_tiny_instruct_pix2pix, "an InstructPix2Pix pipeline (image-conditioned UNet) "
                             "(StableDiffusionInstructPix2PixPipeline, a UNet of 8 input channels)"),
])
def test_export_refuses_a_family_it_does_not_know_naming_what_it_found_and_what_it_knows(tmp_path, build, found):
    folder = build(tmp_path)
    line = _export_error(folder, tmp_path / "out")
    assert line.startswith(f"smartedit: --model {folder}: it is {found}, of no family this server knows. Known: "
                           f"sd-inpaint (Stable Diffusion 1.x/2.x inpainting"), line


def test_what_a_folder_declares_decides_without_its_weights():
    index = {"_class_name": "FluxFillPipeline", "transformer": ["diffusers", "FluxTransformer2DModel"],
             "text_encoder": ["transformers", "CLIPTextModel"], "text_encoder_2": ["transformers", "T5EncoderModel"],
             "vae": ["diffusers", "AutoencoderKL"], "image_encoder": [None, None]}
    found = read_found(index, None, {"latent_channels": 16})
    assert found.components == {"transformer", "text_encoder", "text_encoder_2", "vae"}  # a null entry is absent
    with pytest.raises(UnknownFamily, match=r"it is a FLUX pipeline \(FluxFillPipeline, no UNet \(transformer\)\)"):
        identify(found)
    text_to_image = read_found({"_class_name": "StableDiffusionPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
                                "text_encoder": ["transformers", "CLIPTextModel"]}, {"in_channels": 4},
                               {"latent_channels": 4})
    assert identify(text_to_image) is SD_LATENT_BLEND  # served by latent blending
    # A UNet with inputs beyond latents, timestep and text (unCLIP's image embeddings) is neither family.
    unclip = read_found({"_class_name": "StableUnCLIPPipeline", "unet": ["diffusers", "UNet2DConditionModel"],
                         "text_encoder": ["transformers", "CLIPTextModel"]},
                        {"in_channels": 4, "class_embed_type": "projection"}, {"latent_channels": 4})
    with pytest.raises(UnknownFamily, match=r"it is a pipeline \(StableUnCLIPPipeline, a UNet of 4 input channels\)"):
        identify(unclip)
    assert [family.name for family in KNOWN] == ["sd-inpaint", "sd-latent-blend"]


def test_every_family_declares_its_components_and_weights_and_the_exporter_has_each_graph(tiny_pipeline):
    from smartedit.diffusion.families import FAMILIES
    from smartedit.edit.provenance import weights_digest
    from smartedit.export.onnx_export import GRAPHS

    for name, family in FAMILIES.items():
        assert family.COMPONENTS and family.WEIGHTS, name
        assert set(GRAPHS[name]) == {spec.name for spec in family.COMPONENTS}, name
        assert all(hasattr(tiny_pipeline, module) for module in family.WEIGHTS), name
    # provenance hashes what the family names, in its order
    assert weights_digest(tiny_pipeline, ("unet",)) != weights_digest(tiny_pipeline, ("text_encoder", "unet", "vae"))
