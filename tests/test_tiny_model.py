import hashlib
from pathlib import Path

import torch


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_files(tiny_model_dir, tmp_path):
    from smartedit.tiny_model import write_tiny_pipeline

    again = write_tiny_pipeline(tmp_path / "again", seed=0)
    assert _digests(again) == _digests(tiny_model_dir)


def test_other_seed_gives_other_weights(tmp_path):
    from smartedit.tiny_model import build_tiny_pipeline

    unet_a = build_tiny_pipeline(0)[0]
    unet_b = build_tiny_pipeline(1)[0]
    assert not torch.equal(unet_a.conv_in.weight, unet_b.conv_in.weight)


def test_loads_as_an_inpainting_pipeline(tiny_pipeline):
    from diffusers import StableDiffusionInpaintPipeline

    assert isinstance(tiny_pipeline, StableDiffusionInpaintPipeline)
    assert tiny_pipeline.unet.config.in_channels == 9
    ids = tiny_pipeline.tokenizer("a cat", padding="max_length", max_length=77).input_ids
    assert ids[0] == tiny_pipeline.tokenizer.bos_token_id and len(ids) == 77
    assert len(set(ids[1:4])) == 3  # characters map to distinct tokens, not to <unk>
