"""Segment Anything on Triton: click-to-mask for the editor.

Two components, exported to ONNX from ``transformers``' ``SamModel`` and served like the diffusion
components (``onnx-cpu``: ONNX Runtime in a Python model):

- ``sam_image_encoder``: ``pixel_values [B, 3, S, S]`` -> ``image_embeddings [B, C, h, w]``: the
  expensive part, run once per image (the ``segment`` model caches its output by content hash);
- ``sam_mask_decoder``: ``image_embeddings`` + prompt points -> low-resolution mask logits and the
  predicted IoU. Boxes travel as two corner points labelled 2 and 3 and a points-only prompt ends with
  a padding point labelled -1, which is exactly how ``SamPromptEncoder`` embeds them, so one graph
  serves points, a box, or both.

Pre- and post-processing are ``SamProcessor``'s own (resize to the longest side, normalise, pad;
masks upsampled, cropped, resized back, thresholded at 0), so a served mask is the reference's.
Default: a tiny SAM built from a seeded config (no download); ``--sam-model`` takes a folder or hub id.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from smartedit.diffusion.spec import ComponentSpec, TensorSpec

log = logging.getLogger(__name__)

SAM_ENCODER, SAM_DECODER, SEGMENT = "sam_image_encoder", "sam_mask_decoder", "segment"
SAM_INFO_FILENAME = "sam.json"
PROCESSOR_FOLDER = "processor"
TINY_SAM_NAME = "smartedit-tiny-sam (embedded default)"
# Prompt labels as SamPromptEncoder embeds them.
NEGATIVE, POSITIVE, BOX_TOP_LEFT, BOX_BOTTOM_RIGHT, PADDING = 0, 1, 2, 3, -1


@dataclass(frozen=True)
class SamInfo:
    """The shapes the served SAM works with, written next to the ``segment`` model."""

    model: str
    image_size: int  # the encoder's square input side (the processor pads to it)
    embedding_channels: int
    embedding_size: int
    mask_size: int  # side of the decoder's low-resolution mask

    @classmethod
    def from_model(cls, model, name: str) -> "SamInfo":
        prompt = model.config.prompt_encoder_config
        return cls(model=name, image_size=int(prompt.image_size), embedding_channels=int(prompt.hidden_size),
                   embedding_size=int(prompt.image_embedding_size), mask_size=4 * int(prompt.image_embedding_size))

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def load(cls, path: Path) -> "SamInfo":
        return cls(**json.loads(Path(path).read_text()))


def sam_specs(info: SamInfo) -> tuple[ComponentSpec, ComponentSpec]:
    """The two served components' tensors (batch axis excluded; ``num_points`` varies per call)."""
    embedding = (info.embedding_channels, info.embedding_size, info.embedding_size)
    encoder = ComponentSpec(
        name=SAM_ENCODER,
        inputs=(TensorSpec("pixel_values", "FP32", (3, info.image_size, info.image_size)),),
        outputs=(TensorSpec("image_embeddings", "FP32", embedding),),
    )
    decoder = ComponentSpec(
        name=SAM_DECODER,
        inputs=(TensorSpec("image_embeddings", "FP32", embedding),
                TensorSpec("point_coords", "FP32", ("num_points", 2)),
                TensorSpec("point_labels", "INT64", ("num_points",))),
        outputs=(TensorSpec("low_res_masks", "FP32", (1, info.mask_size, info.mask_size)),
                 TensorSpec("iou_scores", "FP32", (1,))),
    )
    return encoder, decoder


def build_tiny_sam(seed: int = 0):
    """(SamModel, SamProcessor): a tiny randomly initialised SAM (~100k weights) at 256 px, from a seeded
    config: the default, so that the segmentation path runs everywhere without a download."""
    import torch
    from transformers import SamConfig, SamModel
    from transformers.models.sam.configuration_sam import (
        SamMaskDecoderConfig, SamPromptEncoderConfig, SamVisionConfig,
    )

    side, patch = 256, 16
    vision = SamVisionConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_dim=64, image_size=side,
                             patch_size=patch, output_channels=32, global_attn_indexes=[1], window_size=4,
                             num_pos_feats=16)
    prompt = SamPromptEncoderConfig(hidden_size=32, image_size=side, patch_size=patch, mask_input_channels=4)
    decoder = SamMaskDecoderConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, mlp_dim=64,
                                   iou_head_hidden_dim=32)
    config = SamConfig(vision_config=vision.to_dict(), prompt_encoder_config=prompt.to_dict(),
                       mask_decoder_config=decoder.to_dict())
    torch.manual_seed(seed)
    model = SamModel(config).eval()
    # SAM's own initialisation (std 0.02 through a dozen layers) leaves logits ~1e-11, where a mask would
    # be decided by rounding error; PyTorch's default initialisation of each layer gives logits ~0.05.
    with torch.no_grad():
        for module in model.modules():
            if module is not model and hasattr(module, "reset_parameters"):
                module.reset_parameters()
    return model, sam_processor(side)


def sam_processor(side: int):
    from transformers import SamProcessor

    try:  # the PIL implementation: the default one needs torchvision, which has no CPU build here
        from transformers import SamImageProcessorPil as ImageProcessor
    except ImportError:  # transformers before the split
        from transformers import SamImageProcessor as ImageProcessor
    return SamProcessor(ImageProcessor(size={"longest_edge": side}, pad_size={"height": side, "width": side}))


def load_sam(source: str | None):
    """(SamModel, SamProcessor, name) of a folder or hub id; the tiny default when None."""
    if not source:
        model, processor = build_tiny_sam()
        return model, processor, TINY_SAM_NAME
    from transformers import SamModel, SamProcessor

    model = SamModel.from_pretrained(source).eval()
    return model, SamProcessor.from_pretrained(source), Path(source).name if Path(source).exists() else source


def decoder_module(model):
    """The mask decoder with its prompt embedding, as one module: (embeddings, point coords in the
    processor's resized frame [B, N, 2], labels [B, N]) -> (low-res mask logits [B, 1, m, m], IoU [B, 1])."""
    import torch

    class SamDecoderGraph(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, image_embeddings, point_coords, point_labels):
            prompt = self.model.prompt_encoder
            side = prompt.input_image_size
            points = (point_coords + 0.5)[:, None]  # [B, 1, N, 2], centre of the pixel as SAM does
            labels = point_labels[:, None]
            embedding = prompt.shared_embedding(points, (side, side))
            embedding = torch.where(labels[..., None] == PADDING, prompt.not_a_point_embed.weight, embedding)
            for label in (NEGATIVE, POSITIVE, BOX_TOP_LEFT, BOX_BOTTOM_RIGHT):
                embedding = torch.where((labels == label)[..., None],
                                        embedding + prompt.point_embed[label].weight[None, None], embedding)
            batch = image_embeddings.shape[0]
            dense = prompt.no_mask_embed.weight.reshape(1, -1, 1, 1).expand(
                batch, -1, prompt.image_embedding_size[0], prompt.image_embedding_size[1])
            positional = self.model.get_image_wide_positional_embeddings().repeat(batch, 1, 1, 1)
            masks, iou = self.model.mask_decoder(image_embeddings=image_embeddings,
                                                 image_positional_embeddings=positional,
                                                 sparse_prompt_embeddings=embedding, dense_prompt_embeddings=dense,
                                                 multimask_output=False)[:2]
            return masks[:, 0], iou[:, 0]

    return SamDecoderGraph().eval()


def export_sam(model, processor, name: str, out: Path, onnx_filename: str = "model.onnx") -> SamInfo:
    """Write both components' ONNX graphs under ``out/<component>/1/`` and return the served shapes."""
    import torch

    info = SamInfo.from_model(model, name)
    encoder_spec, decoder_spec = sam_specs(info)

    class Encoder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model  # a submodule: its weights are the graph's, not traced constants

        def forward(self, pixel_values):
            return self.model.get_image_embeddings(pixel_values)

    pixels = torch.zeros(2, 3, info.image_size, info.image_size)
    embeddings = torch.zeros(2, info.embedding_channels, info.embedding_size, info.embedding_size)
    points = torch.zeros(2, 3, 2)
    labels = torch.tensor([[POSITIVE, BOX_TOP_LEFT, BOX_BOTTOM_RIGHT]] * 2, dtype=torch.int64)
    for spec, module, inputs in ((encoder_spec, Encoder().eval(), (pixels,)),
                                 (decoder_spec, decoder_module(model), (embeddings, points, labels))):
        folder = out / spec.name / "1"
        folder.mkdir(parents=True, exist_ok=True)
        axes = {t.name: {0: "batch", **{i + 1: d for i, d in enumerate(t.dims) if d == "num_points"}}
                for t in spec.inputs + spec.outputs}
        with torch.inference_mode():
            torch.onnx.export(module, inputs, str(folder / onnx_filename), input_names=spec.input_names,
                              output_names=spec.output_names, dynamic_axes=axes, opset_version=17,
                              do_constant_folding=True, dynamo=False)
        log.info("exported %s", spec.name)
    return info


def prompt_arrays(points: np.ndarray | None, labels: np.ndarray | None, box: np.ndarray | None,
                  original_size: tuple[int, int], reshaped_size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The decoder's (coords [N, 2] float32, labels [N] int64) for clicks (``points`` [n, 2] in the
    photo's pixels, ``labels`` 1 = object, 0 = background) and/or a ``box`` (x0, y0, x1, y1), in the
    processor's resized frame (``SamProcessor._normalize_coordinates``): points, then the box's corners,
    or a padding point when there is no box -- the order ``SamPromptEncoder`` embeds them in."""
    (old_h, old_w), (new_h, new_w) = original_size, reshaped_size
    scale = np.array([new_w / old_w, new_h / old_h])
    coords, kinds = [], []
    if points is not None and len(points):
        coords.append(np.asarray(points, dtype=np.float64).reshape(-1, 2) * scale)
        kinds.append(np.asarray(labels, dtype=np.int64).reshape(-1))
    if box is not None:
        coords.append(np.asarray(box, dtype=np.float64).reshape(2, 2) * scale)
        kinds.append(np.array([BOX_TOP_LEFT, BOX_BOTTOM_RIGHT], dtype=np.int64))
    else:
        coords.append(np.zeros((1, 2)))
        kinds.append(np.array([PADDING], dtype=np.int64))
    return np.concatenate(coords).astype(np.float32), np.concatenate(kinds)
