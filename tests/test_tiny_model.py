import hashlib
from pathlib import Path

import torch


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_same_seed_gives_identical_files(tiny_model_dir, tmp_path):
    from smartedit.export.tiny_model import write_tiny_pipeline

    again = write_tiny_pipeline(tmp_path / "again", seed=0)
    assert _digests(again) == _digests(tiny_model_dir)


def test_other_seed_gives_other_weights(tmp_path):
    from smartedit.export.tiny_model import build_tiny_pipeline

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


def export_errors(*argv) -> str:
    import subprocess
    import sys

    result = subprocess.run([sys.executable, "-m", "smartedit", "export", *argv], capture_output=True, text=True,
                            timeout=300)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    return result.stderr.strip().splitlines()[-1]


def test_export_of_a_missing_or_non_pipeline_folder_says_so_in_one_line(tmp_path):
    assert export_errors("--model", str(tmp_path / "nope"), "--out", str(tmp_path / "out")) == (
        f"smartedit: --model {tmp_path / 'nope'}: no such folder (give a diffusers pipeline folder or a "
        f"hub id such as runwayml/stable-diffusion-inpainting)")
    assert export_errors("--model", str(tmp_path), "--out", str(tmp_path / "out")) == (
        f"smartedit: --model {tmp_path}: not a diffusers pipeline folder (it has no model_index.json)")


def test_export_of_a_unet_of_no_known_layout_says_what_it_found(tiny_model_dir, tmp_path):
    import shutil

    from diffusers import UNet2DConditionModel

    folder = tmp_path / "five-channels"
    shutil.copytree(tiny_model_dir, folder)
    config = dict(UNet2DConditionModel.load_config(folder / "unet"), in_channels=5)
    shutil.rmtree(folder / "unet")
    UNet2DConditionModel.from_config(config).save_pretrained(folder / "unet")
    line = export_errors("--model", str(folder), "--out", str(tmp_path / "out"))
    assert line.startswith(f"smartedit: --model {folder}: it is a pipeline (StableDiffusionInpaintPipeline, "
                           f"a UNet of 5 input channels), of no family this server "
                           f"knows. Known: sd-inpaint"), line
