"""``smartedit eval``'s figures and its edits file, on their own (the command against a server: the text-edit
tests in test_latent_blend_serving.py)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import png_bytes, scene
from smartedit.evaluation.metrics import ClipScorer, psnr, ssim
from smartedit.evaluation.suite import EditFigures, markdown_table, read_edits


def write_tiny_clip(folder: Path, tokenizer_folder: Path, seed: int = 0) -> Path:
    """A CLIP model of random weights from a small config (as transformers' own tests build one), with the tiny
    model's CLIP tokenizer and a 32-pixel image processor, saved as a CLIP model's folder is."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(tokenizer_folder)
    torch.manual_seed(seed)
    small = dict(hidden_size=32, intermediate_size=37, num_attention_heads=4, num_hidden_layers=2)
    config = CLIPConfig(text_config=dict(small, vocab_size=1000, max_position_embeddings=77,
                                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                         pad_token_id=tokenizer.pad_token_id),
                        vision_config=dict(small, image_size=32, patch_size=4), projection_dim=16)
    CLIPModel(config).save_pretrained(folder)
    CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}),
                  tokenizer=tokenizer).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def tiny_clip_dir(tiny_model_dir, tmp_path_factory) -> Path:
    return write_tiny_clip(tmp_path_factory.mktemp("tiny-clip"), tiny_model_dir / "tokenizer")


def test_outside_the_mask_a_byte_exact_result_scores_inf_and_exactly_one():
    image, mask = scene(64, 48, seed=3)
    original, inside = np.asarray(image), np.asarray(mask) >= 128
    edited = original.copy()
    edited[inside] = 255 - edited[inside]  # the edit: inside only
    assert psnr(original, edited, ~inside) == math.inf and ssim(original, edited, ~inside) == 1.0
    assert psnr(original, edited) < 20 and ssim(original, edited) < 0.9  # over the whole photo it shows
    leaked = edited.copy()
    row, column = np.argwhere(~inside)[0]
    leaked[row, column] = 255 - leaked[row, column]  # one pixel outside changed: both see it
    assert psnr(original, leaked, ~inside) < 60 and ssim(original, leaked, ~inside) < 1.0
    assert math.isnan(psnr(original, edited, np.zeros_like(inside)))  # no pixel: no figure


def test_psnr_is_the_textbook_figure():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    b = np.clip(a.astype(int) + rng.integers(-3, 4, a.shape), 0, 255).astype(np.uint8)
    mse = np.mean((a.astype(float) - b) ** 2)
    assert psnr(a, b) == pytest.approx(10 * math.log10(255**2 / mse))


def test_the_clip_score_is_100_times_the_positive_cosine_of_clip_s_projections(tiny_clip_dir):
    from transformers import CLIPModel, CLIPProcessor

    scorer = ClipScorer(tiny_clip_dir)
    model, processor = CLIPModel.from_pretrained(tiny_clip_dir), CLIPProcessor.from_pretrained(tiny_clip_dir)
    scores = []
    for seed, text in enumerate(["a red chair", "a photo of a room", "snow", "a dog on a beach", "sunset"]):
        image = scene(64, 48, seed=seed)[0]
        inputs = processor(text=[text], images=[image], return_tensors="pt", padding=True)
        with torch.inference_mode():
            image_features = model.visual_projection(model.vision_model(pixel_values=inputs["pixel_values"])
                                                     .pooler_output)
            text_features = model.text_projection(model.text_model(input_ids=inputs["input_ids"]).pooler_output)
        cosine = float(torch.nn.functional.cosine_similarity(image_features, text_features))
        scores.append(scorer(image, text))
        assert scores[-1] == pytest.approx(100 * max(cosine, 0.0), abs=1e-4)
    assert any(score > 0 for score in scores) and len(set(scores)) > 1


def _folder(tmp_path: Path, edits) -> Path:
    image, mask = scene(64, 48)
    (tmp_path / "photo.png").write_bytes(png_bytes(image))
    (tmp_path / "mask.png").write_bytes(png_bytes(mask))
    (tmp_path / "edits.json").write_text(json.dumps(edits))
    return tmp_path


def test_an_edits_file_is_read_with_its_files_and_parameters(tmp_path):
    folder = _folder(tmp_path, [{"image": "photo.png", "mask": "mask.png", "prompt": "a lamp", "seed": 3},
                                {"image": "photo.png", "prompt": "dusk", "task": "text_edit", "name": "whole",
                                 "source_prompt": "day", "pipeline": "blend"}])
    first, second = read_edits(folder)
    assert (first.name, first.image, first.mask, first.options) == (
        "1: photo.png", folder / "photo.png", folder / "mask.png", {"prompt": "a lamp", "seed": 3})
    assert second.name == "whole" and second.mask is None
    assert second.options == {"prompt": "dusk", "task": "text_edit", "source_prompt": "day", "pipeline": "blend"}
    assert read_edits(folder / "edits.json") == [first, second]


@pytest.mark.parametrize("edits, message", [
    ([{"image": "photo.png", "prompt": "x", "strenght": 0.5}], "edit 0: unknown key 'strenght'"),
    ([{"image": "photo.png"}], "edit 0: 'prompt' is required"),
    ([{"image": "photo.png", "prompt": "x"}, {"image": "nope.png", "prompt": "x"}], "edit 1: image "),
    ([], "must hold a non-empty JSON list of edits"),
])
def test_a_wrong_edits_file_is_refused_naming_the_edit_and_the_key(tmp_path, edits, message):
    with pytest.raises(ValueError, match=message):
        read_edits(_folder(tmp_path, edits))


def test_the_table_shows_inf_for_byte_exact_a_dash_for_not_measured_and_the_means():
    rows = [EditFigures("1: a.png", "inpaint", "a | b", math.inf, 1.0, math.nan, math.nan, math.nan, 1.5),
            EditFigures("2: a.png", "text_edit", "dusk", math.nan, math.nan, 21.25, 0.5, 30.0, 2.5)]
    lines = markdown_table(rows).splitlines()
    assert lines[0].startswith("| edit | task | prompt | outside PSNR (dB) | outside SSIM |")
    assert lines[2] == "| 1: a.png | inpaint | a \\| b | ∞ | 1.0000 | — | — | — | 1.50 |"
    assert lines[3] == "| 2: a.png | text_edit | dusk | — | — | 21.25 | 0.5000 | 30.00 | 2.50 |"
    assert lines[4] == "| mean of 2 |  |  | ∞ | 1.0000 | 21.25 | 0.5000 | 30.00 | 2.00 |"
