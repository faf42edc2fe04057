"""The figures an edit is judged by: how exactly it keeps what it must keep, how closely an inversion gives the
photo back, and how well the result matches its prompt.

PSNR and SSIM are scikit-image's (``peak_signal_noise_ratio``, ``structural_similarity``: 7x7 windows, data range
255, per colour channel). "Outside the mask" means the pixels the server promises to return as sent: SSIM is taken
with the other pixels set equal in both images, so that no window straddling the mask's edge counts the edit
itself; a result byte-exact there scores PSNR inf and SSIM exactly 1. The CLIP score is Hessel et al.'s (2021), as
torchmetrics defines it: 100 x max(cosine(image embedding, text embedding), 0), with a CLIP model given as a
folder (torchmetrics 1.9's own ``CLIPScore`` takes only a few hub names, and fails with the transformers
installed here, whose ``get_image_features`` answers an output object rather than a tensor).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity


def psnr(reference: np.ndarray, edited: np.ndarray, where: np.ndarray | None = None) -> float:
    """PSNR in dB of ``edited`` against ``reference`` ([H, W, 3] uint8) over the pixels ``where`` ([H, W] bool;
    None: all); inf where they are equal, nan where there is no pixel."""
    if where is not None:
        reference, edited = reference[where], edited[where]
    if reference.size == 0:
        return math.nan
    if np.array_equal(reference, edited):
        return math.inf
    return float(peak_signal_noise_ratio(reference, edited, data_range=255))


def ssim(reference: np.ndarray, edited: np.ndarray, where: np.ndarray | None = None) -> float:
    """Mean SSIM of ``edited`` against ``reference`` ([H, W, 3] uint8) over the pixels ``where`` ([H, W] bool;
    None: all), the other pixels of ``edited`` first set to ``reference``'s (so that only differences inside
    ``where`` count); nan where there is no pixel or the image is smaller than SSIM's 7-pixel window."""
    if min(reference.shape[:2]) < 7 or (where is not None and not where.any()):
        return math.nan
    if where is not None:
        edited = np.where(where[..., None], edited, reference)
    _, local = structural_similarity(reference, edited, channel_axis=-1, data_range=255, full=True)
    local = local.mean(axis=-1)
    return float(local.mean() if where is None else local[where].mean())


class ClipScorer:
    """CLIP score of an image against a text, with the CLIP model saved in ``folder`` (``CLIPModel`` and its
    ``CLIPProcessor``, as ``save_pretrained`` writes them; e.g. a download of openai/clip-vit-large-patch14)."""

    def __init__(self, folder: str | Path):
        from transformers import CLIPModel, CLIPProcessor

        self.model = CLIPModel.from_pretrained(str(folder)).eval()
        self.processor = CLIPProcessor.from_pretrained(str(folder))

    def __call__(self, image: Image.Image, text: str) -> float:
        import torch

        inputs = self.processor(text=[text], images=[image.convert("RGB")], return_tensors="pt", padding=True,
                                truncation=True)
        with torch.inference_mode():
            output = self.model(**inputs)
        # the projections, normalized by the model: their dot product is the cosine
        cosine = float((output.image_embeds * output.text_embeds).sum())
        return 100.0 * max(cosine, 0.0)
