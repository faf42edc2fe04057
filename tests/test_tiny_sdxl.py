"""The SDXL family's tiny model: built from configs, seeded, and an SDXL pipeline as diffusers knows one."""

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from smartedit.export.tiny_sdxl import (
    FIRST_ENCODER_WIDTH, POOLED_WIDTH, SECOND_ENCODER_WIDTH, TIME_EMBED_WIDTH, TIME_IDS, build_tiny_sdxl,
    write_tiny_sdxl,
)


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture(scope="module")
def tiny_sdxl_dir(tmp_path_factory) -> Path:
    return write_tiny_sdxl(tmp_path_factory.mktemp("tiny-sdxl"))


def test_same_seed_gives_identical_files_and_another_seed_other_weights(tiny_sdxl_dir, tmp_path):
    assert _digests(write_tiny_sdxl(tmp_path / "again")) == _digests(tiny_sdxl_dir)
    first, other = build_tiny_sdxl(0), build_tiny_sdxl(1)
    for index in (0, 2, 3):  # the UNet and both text encoders
        assert not torch.equal(next(first[index].parameters()), next(other[index].parameters()))


def test_it_has_sdxl_s_two_encoders_and_text_time_conditioning(tiny_sdxl_dir):
    from diffusers import StableDiffusionXLInpaintPipeline

    pipeline = StableDiffusionXLInpaintPipeline.from_pretrained(tiny_sdxl_dir)
    assert pipeline.unet.config.in_channels == 9
    assert pipeline.unet.config.addition_embed_type == "text_time"
    # The penultimate hidden states of both encoders, concatenated, are what the UNet attends to; the
    # second's pooled projection and the time ids' embeddings make its added conditioning.
    assert pipeline.text_encoder.config.hidden_size == FIRST_ENCODER_WIDTH
    assert pipeline.text_encoder_2.config.hidden_size == SECOND_ENCODER_WIDTH != FIRST_ENCODER_WIDTH
    assert pipeline.unet.config.cross_attention_dim == FIRST_ENCODER_WIDTH + SECOND_ENCODER_WIDTH
    assert pipeline.text_encoder_2.config.projection_dim == POOLED_WIDTH
    assert pipeline.unet.config.projection_class_embeddings_input_dim == TIME_IDS * TIME_EMBED_WIDTH + POOLED_WIDTH
    assert pipeline.tokenizer_2.pad_token == "!" and pipeline.tokenizer.pad_token == "<|endoftext|>"
    assert pipeline.config.force_zeros_for_empty_prompt and not pipeline.config.requires_aesthetics_score


@pytest.mark.parametrize("negative_prompt", [None, "blurry"])  # None: the force-zeros path
def test_diffusers_inpaints_with_it(tiny_sdxl_dir, negative_prompt):
    from diffusers import StableDiffusionXLInpaintPipeline

    pipeline = StableDiffusionXLInpaintPipeline.from_pretrained(tiny_sdxl_dir)
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 96, 3), dtype=np.uint8))
    mask = Image.new("L", (96, 64), 0)
    mask.paste(255, (32, 16, 64, 48))
    images = pipeline(prompt="a red box", negative_prompt=negative_prompt, image=photo, mask_image=mask,
                      height=64, width=96, num_inference_steps=3, strength=0.7, output_type="np",
                      generator=torch.Generator().manual_seed(0)).images
    assert images.shape == (1, 64, 96, 3) and np.isfinite(images).all()


def test_the_four_channel_variant_is_an_sdxl_base_pipeline(tmp_path):
    from diffusers import StableDiffusionXLPipeline

    pipeline = StableDiffusionXLPipeline.from_pretrained(write_tiny_sdxl(tmp_path / "base", text_to_image=True))
    assert pipeline.unet.config.in_channels == 4


def test_the_embedded_folders_stamps_tell_the_sd_and_sdxl_tiny_models_apart(tiny_sdxl_dir, tiny_model_dir):
    from smartedit.export.tiny_model import is_current_tiny_pipeline
    from smartedit.export.tiny_sdxl import is_current_tiny_sdxl

    assert is_current_tiny_sdxl(tiny_sdxl_dir) and not is_current_tiny_pipeline(tiny_sdxl_dir)
    assert is_current_tiny_pipeline(tiny_model_dir) and not is_current_tiny_sdxl(tiny_model_dir)


def test_tiny_sdxl_is_chosen_only_when_no_model_is_given(tiny_model_dir):
    from smartedit.cli.exporting import pipeline_arguments

    with pytest.raises(ValueError, match="--tiny sdxl chooses the embedded model served when no --model is given"):
        pipeline_arguments([str(tiny_model_dir)], "sdxl")


@pytest.mark.parametrize("aesthetic", [False, True])
def test_the_size_ids_are_diffusers_own_for_the_edit_s_size(tiny_sdxl_dir, aesthetic):
    """``time_ids`` against the pipeline's own ``_get_add_time_ids`` at the size diffusers is given (negative
    row, then positive), in both forms; the aesthetic-score one with a UNet that takes 5 ids."""
    from diffusers import StableDiffusionXLInpaintPipeline, UNet2DConditionModel

    from smartedit.diffusion.families.sdxl_conditioning import time_ids
    from smartedit.diffusion.spec import PipelineInfo

    pipeline = StableDiffusionXLInpaintPipeline.from_pretrained(tiny_sdxl_dir)
    if aesthetic:
        pipeline.register_to_config(requires_aesthetics_score=True)
        pipeline.unet = UNet2DConditionModel.from_config(dict(
            pipeline.unet.config, projection_class_embeddings_input_dim=5 * TIME_EMBED_WIDTH + POOLED_WIDTH))
    info = PipelineInfo.from_pipeline(pipeline)
    assert (info.time_ids, info.requires_aesthetics_score) == ((5, True) if aesthetic else (6, False))
    height, width = 48, 80
    positive, negative = pipeline._get_add_time_ids(
        (height, width), (0, 0), (height, width), aesthetic_score=6.0, negative_aesthetic_score=2.5,
        negative_original_size=(height, width), negative_crops_coords_top_left=(0, 0),
        negative_target_size=(height, width), dtype=torch.float32, text_encoder_projection_dim=POOLED_WIDTH)
    assert torch.equal(time_ids(info, height, width), torch.cat([negative, positive]))
    assert not torch.equal(time_ids(info, height, width), time_ids(info, width, height))  # not square-blind


def test_a_pipeline_whose_ids_do_not_fit_its_unet_is_refused_naming_the_setting(tiny_sdxl_dir):
    from diffusers import StableDiffusionXLInpaintPipeline

    from smartedit.export.pipeline_loader import UnsupportedModel, check_servable

    pipeline = StableDiffusionXLInpaintPipeline.from_pretrained(tiny_sdxl_dir)
    pipeline.register_to_config(requires_aesthetics_score=True)  # 5 ids, for a UNet that takes 6
    with pytest.raises(UnsupportedModel, match="set requires_aesthetics_score in model_index.json to match"):
        check_servable(pipeline, "x")
