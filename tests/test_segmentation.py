"""Segment Anything behind ``segment``: the exported graphs and the served masks against transformers'
``SamModel`` + ``SamProcessor`` run in the test, the embedding cache seen in Triton's statistics, bad
prompts refused naming the field; the SDK (blocking and async) and the gateway's ``POST /segment``."""

from __future__ import annotations

import asyncio
import io
import json
import subprocess

import numpy as np
import onnxruntime as ort
import pytest
import torch
import tritonclient.grpc as grpcclient
from PIL import Image

from conftest import png_bytes
from smartedit.segmentation.sam import SAM_DECODER, SAM_ENCODER, build_tiny_sam, export_sam, prompt_arrays
from smartedit_client import AsyncInpaintClient, InvalidRequestError

PROMPTS = [
    dict(points=[(80, 60, 1)]),
    dict(points=[(80, 60, 1), (20, 30, 0)]),
    dict(box=(30, 20, 120, 100)),
    dict(points=[(70, 50, 1)], box=(30, 20, 120, 100)),
]
IDS = ["click", "click-and-background", "box", "click-in-box"]


@pytest.fixture(scope="module")
def tiny_sam():
    return build_tiny_sam()


def _photo(seed=1, size=(160, 120)) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8))


def reference(tiny_sam, image: Image.Image, points=None, box=None):
    """(mask [H, W] bool, low-res logits, iou) from transformers' own SamModel and SamProcessor."""
    model, processor = tiny_sam
    kwargs = {}
    if points:
        kwargs.update(input_points=[[[list(p[:2]) for p in points]]], input_labels=[[[p[2] for p in points]]])
    if box is not None:
        kwargs.update(input_boxes=[[list(box)]])
    inputs = processor(image, return_tensors="pt", **kwargs)
    with torch.no_grad():
        out = model(pixel_values=inputs["pixel_values"], multimask_output=False,
                    **{k: inputs[k] for k in ("input_points", "input_labels", "input_boxes") if k in inputs})
    masks = processor.image_processor.post_process_masks(out.pred_masks, inputs["original_sizes"],
                                                         inputs["reshaped_input_sizes"])
    return masks[0][0, 0].numpy(), out.pred_masks[:, 0, 0].numpy(), float(out.iou_scores.flatten()[0])


def iou(a: np.ndarray, b: np.ndarray) -> float:
    return float((a & b).sum() / max((a | b).sum(), 1))


@pytest.mark.parametrize("prompt", PROMPTS, ids=IDS)
def test_exported_graphs_match_sam(tiny_sam, tmp_path, prompt):
    model, processor = tiny_sam
    export_sam(model, processor, "tiny", tmp_path)
    encoder = ort.InferenceSession(str(tmp_path / SAM_ENCODER / "1" / "model.onnx"))
    decoder = ort.InferenceSession(str(tmp_path / SAM_DECODER / "1" / "model.onnx"))
    image = _photo()
    expected_mask, expected_logits, expected_iou = reference(tiny_sam, image, **prompt)
    prepared = processor(image, return_tensors="np")
    (embeddings,) = encoder.run(None, {"pixel_values": prepared["pixel_values"].astype(np.float32)})
    points = prompt.get("points")
    coords, labels = prompt_arrays(None if points is None else np.array([p[:2] for p in points]),
                                   None if points is None else np.array([p[2] for p in points]),
                                   None if prompt.get("box") is None else np.array(prompt["box"]),
                                   tuple(prepared["original_sizes"][0]), tuple(prepared["reshaped_input_sizes"][0]))
    logits, scores = decoder.run(None, {"image_embeddings": embeddings, "point_coords": coords[None],
                                        "point_labels": labels[None]})
    assert np.abs(logits - expected_logits).max() < 1e-4 * max(1.0, np.abs(expected_logits).max())
    assert abs(float(scores.flatten()[0]) - expected_iou) < 1e-4
    served = processor.image_processor.post_process_masks(torch.from_numpy(logits[:, None]),
                                                          prepared["original_sizes"].tolist(),
                                                          prepared["reshaped_input_sizes"].tolist())[0][0, 0].numpy()
    assert iou(served, expected_mask) >= 0.99


def test_the_tiny_sams_masks_depend_on_the_prompt(tiny_sam):
    image = _photo()
    masks = [reference(tiny_sam, image, **prompt)[0] for prompt in PROMPTS]
    assert len({mask.tobytes() for mask in masks}) == len(masks)  # else the parity tests would prove little


@pytest.mark.functional
@pytest.mark.parametrize("prompt", PROMPTS, ids=IDS)
def test_served_masks_are_sams(client, tiny_sam, prompt):
    image = _photo(seed=2)
    result = client.segment(image=image, **prompt)
    expected_mask, _, expected_iou = reference(tiny_sam, image, **prompt)
    served = np.asarray(result.mask) == 255
    assert result.mask.mode == "L" and result.mask.size == image.size
    assert iou(served, expected_mask) >= 0.99
    assert abs(result.score - expected_iou) < 1e-4


def _encoder_executions(server) -> int:
    with grpcclient.InferenceServerClient(server.address.grpc) as raw:
        statistics = raw.get_inference_statistics(SAM_ENCODER, as_json=True)
    return int(statistics["model_stats"][0]["inference_stats"]["success"].get("count", 0))


@pytest.mark.functional
def test_a_second_click_on_the_same_image_does_not_rerun_the_encoder(client, server):
    image = png_bytes(_photo(seed=3))
    before = _encoder_executions(server)
    first = client.segment(image=image, points=[(40, 40)])
    assert _encoder_executions(server) == before + 1
    second = client.segment(image=image, points=[(100, 80), (10, 10, 0)])
    client.segment(image=image, box=(5, 5, 150, 110))
    assert _encoder_executions(server) == before + 1  # only the decoder ran
    assert first.png != second.png or first.score != second.score
    client.segment(image=png_bytes(_photo(seed=4)), points=[(40, 40)])
    assert _encoder_executions(server) == before + 2  # another image: encoded once


@pytest.mark.functional
@pytest.mark.parametrize("prompt,field,fragment", [
    (dict(points=[(10, 10, 2)]), "points", "points: labels must be 1 (object) or 0 (background), got"),  # the SDK's
    (dict(points=[(500, 10)]), "points", "points: must lie inside the 160x120 image"),  # the server's point_coords
    (dict(box=(50, 50, 10, 80)), "box", "box: must be x0, y0, x1, y1 with x0 < x1"),
])
def test_bad_prompts_are_refused_naming_the_argument(client, prompt, field, fragment):
    with pytest.raises(InvalidRequestError) as refused:
        client.segment(image=_photo(), **prompt)
    assert str(refused.value).startswith(fragment) and refused.value.field == field, str(refused.value)


def test_no_prompt_is_refused_before_sending_naming_points_and_box():
    from smartedit_client import InpaintClient

    with InpaintClient("127.0.0.1:1") as client, pytest.raises(InvalidRequestError) as refused:
        client.segment(image=png_bytes(_photo()))
    assert str(refused.value).startswith("points or box is required") and refused.value.field == "points"


@pytest.mark.functional
def test_the_async_client_segments_alike(client, server):
    image = png_bytes(_photo(seed=5))

    async def main():
        async with AsyncInpaintClient(server.address.grpc) as aclient:
            return await aclient.segment(image=image, points=[(60, 60)])

    assert asyncio.run(main()).png == client.segment(image=image, points=[(60, 60)]).png


@pytest.mark.functional
def test_the_gateway_segments_with_curl_and_the_mask_feeds_an_edit(client, server, tmp_path):
    from test_gateway import gateway

    image = _photo(seed=6)
    (tmp_path / "photo.png").write_bytes(png_bytes(image))
    with gateway(server.address.grpc, tmp_path / "gateway.log") as url:
        run = subprocess.run(["curl", "-sS", "-f", "-F", f"image=@{tmp_path / 'photo.png'}", "-F", "points=[[80, 60, 1]]",
                              f"{url}/segment", "-o", str(tmp_path / "mask.png")], capture_output=True, text=True,
                             timeout=60)
        assert run.returncode == 0, run.stderr
        bad = subprocess.run(["curl", "-sS", "-F", f"image=@{tmp_path / 'photo.png'}", "-F", "points=[[80]]",
                              f"{url}/segment"], capture_output=True, text=True, timeout=60)
    assert (tmp_path / "mask.png").read_bytes() == client.segment(image=image, points=[(80, 60, 1)]).png
    assert json.loads(bad.stdout)["field"] == "points"
    mask = Image.open(io.BytesIO((tmp_path / "mask.png").read_bytes()))
    edited = client.inpaint(image=image, mask_image=mask, prompt="x", num_inference_steps=2, seed=1)
    keep = np.asarray(mask) < 128
    assert np.array_equal(np.asarray(edited.image)[keep], np.asarray(image)[keep])
