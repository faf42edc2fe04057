"""Which family a pipeline folder is, and the export's refusal of a family this server does not know."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from smartedit.diffusion.recognize import (
    INSTRUCT_PIX2PIX, KNOWN, SD_INPAINT, SD_LATENT_BLEND, SDXL_INPAINT, SDXL_LATENT_BLEND, UnknownFamily, identify,
    read_found,
)
from smartedit.export.pipeline_loader import found_in
from smartedit.export.tiny_model import build_tiny_pipeline, write_tokenizer


def _tiny_upscaler(folder: Path) -> Path:
    """A tiny x4 upscaler pipeline: the tiny model's parts with a 7-channel UNet (latents + the low-resolution
    image's pixels) embedding the noise level as a class: a family this server does not serve."""
    from diffusers import DDPMScheduler, StableDiffusionUpscalePipeline, UNet2DConditionModel
    from transformers import CLIPTokenizer

    unet9, vae, text_encoder, scheduler = build_tiny_pipeline(0)
    unet = UNet2DConditionModel.from_config(dict(unet9.config, in_channels=7, num_class_embeds=1000))
    write_tokenizer(folder / "tok")
    pipeline = StableDiffusionUpscalePipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=CLIPTokenizer.from_pretrained(folder / "tok"), unet=unet,
        low_res_scheduler=DDPMScheduler(), scheduler=scheduler, max_noise_level=350)
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


def test_the_tiny_instruct_model_is_instruct_pix2pix(tiny_instruct_dir):
    assert identify(found_in(str(tiny_instruct_dir))) is INSTRUCT_PIX2PIX


def test_the_tiny_sdxl_models_are_the_sdxl_families(tiny_sdxl_dir, tiny_sdxl_base_dir):
    assert identify(found_in(str(tiny_sdxl_dir))) is SDXL_INPAINT
    assert identify(found_in(str(tiny_sdxl_base_dir))) is SDXL_LATENT_BLEND  # a StableDiffusionXLPipeline folder


@pytest.mark.parametrize("build, found", [
    (_tiny_upscaler, "a pipeline (StableDiffusionUpscalePipeline, a UNet of 7 input channels)"),
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
    # SDXL's refiner: one text encoder (the second), aesthetic-score ids; not a family served here.
    refiner = read_found({"_class_name": "StableDiffusionXLImg2ImgPipeline",
                          "unet": ["diffusers", "UNet2DConditionModel"], "text_encoder": [None, None],
                          "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
                          "requires_aesthetics_score": True},
                         {"in_channels": 4, "addition_embed_type": "text_time"}, {"latent_channels": 4})
    with pytest.raises(UnknownFamily, match=r"it is an SDXL pipeline \(two text encoders\) "
                                            r"\(StableDiffusionXLImg2ImgPipeline, a UNet of 4 input channels\)"):
        identify(refiner)
    assert [family.name for family in KNOWN] == ["sd-inpaint", "sd-latent-blend", "sdxl-inpaint", "sdxl-latent-blend",
                                                 "instruct-pix2pix"]


def test_every_family_declares_its_components_and_weights_and_the_exporter_has_each_graph(
        tiny_pipeline, tiny_text_to_image_pipeline, tiny_sdxl_pipeline, tiny_sdxl_base_pipeline,
        tiny_instruct_pipeline):
    from smartedit.diffusion.families import FAMILIES
    from smartedit.diffusion.spec import PipelineInfo
    from smartedit.edit.provenance import weights_digest
    from smartedit.export.onnx_export import GRAPHS
    from smartedit_client._contract import TASKS

    tiny = {PipelineInfo.from_pipeline(pipeline).family: pipeline for pipeline in (
        tiny_pipeline, tiny_text_to_image_pipeline, tiny_sdxl_pipeline, tiny_sdxl_base_pipeline,
        tiny_instruct_pipeline)}
    assert set(tiny) == set(FAMILIES)  # a tiny model of every family
    for name, family in FAMILIES.items():
        assert family.COMPONENTS and family.WEIGHTS, name
        assert set(GRAPHS[name]) == {spec.name for spec in family.COMPONENTS}, name
        assert all(hasattr(tiny[name], module) for module in family.WEIGHTS), name
        assert family.TASKS and set(family.TASKS) <= set(TASKS), name
    # provenance hashes what the family names, in its order
    assert weights_digest(tiny_pipeline, ("unet",)) != weights_digest(tiny_pipeline, ("text_encoder", "unet", "vae"))
