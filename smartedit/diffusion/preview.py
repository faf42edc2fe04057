"""Cheap previews of an edit in progress: latents to RGB by a linear map, no VAE decoder.

Each latent pixel of an SD VAE stands for an 8x8 patch whose mean colour is close to a linear
function of the latent channels; that is what the well-known "latent RGB factors" of SD previews
are. Rather than hard-code one model family's factors, the export fits them for the model being
exported: least squares from the VAE's latents of synthetic images (smooth random colour fields)
to those images' pixels averaged down to latent resolution. A preview then costs one small matrix
product per step, at latent resolution (64x64 for SD at 512 px).

The loop previews the scheduler's predicted clean latents where the sampler gives them (DDIM,
Euler, Heun), else the current latents (DPM-Solver, PNDM, UniPC), which show some noise early on.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

PREVIEW_FILENAME = "preview.json"


@dataclass(frozen=True)
class LatentPreview:
    """``rgb = latents · weights + bias``, in [-1, 1], per latent pixel.

    Attributes:
        weights: one row of three (R, G, B) per latent channel.
        bias: (R, G, B).
    """

    weights: tuple[tuple[float, float, float], ...]
    bias: tuple[float, float, float]

    @classmethod
    def neutral(cls, latent_channels: int) -> "LatentPreview":
        """Mid-grey whatever the latents: for models whose VAE is not at hand (the simulated device)."""
        return cls(weights=tuple((0.0, 0.0, 0.0) for _ in range(latent_channels)), bias=(0.0, 0.0, 0.0))

    def render(self, latents: torch.Tensor) -> np.ndarray:
        """``[1, C, h, w]`` latents (as the loop holds them) to ``[h, w, 3]`` uint8 RGB."""
        weights = torch.tensor(self.weights, dtype=torch.float32)
        bias = torch.tensor(self.bias, dtype=torch.float32)
        rgb = torch.einsum("chw,ck->hwk", latents[0].to(torch.float32), weights) + bias
        return ((rgb.clamp(-1.0, 1.0) + 1.0) * 127.5).round().to(torch.uint8).numpy()

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)

    @classmethod
    def load(cls, path: Path) -> "LatentPreview":
        data = json.loads(Path(path).read_text())
        return cls(weights=tuple(tuple(row) for row in data["weights"]), bias=tuple(data["bias"]))


def synthetic_images(count: int, size: int, seed: int = 0) -> torch.Tensor:
    """``[count, 3, size, size]`` in [-1, 1]: smooth random colour fields with some flat patches."""
    generator = torch.Generator().manual_seed(seed)
    coarse = torch.rand(count, 3, 4, 4, generator=generator) * 2 - 1
    images = torch.nn.functional.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)
    patch = size // 4
    for index in range(count):
        y, x = (int(v) for v in torch.randint(0, size - patch, (2,), generator=generator))
        images[index, :, y:y + patch, x:x + patch] = torch.rand(3, 1, 1, generator=generator) * 2 - 1
    return images


def fit_latent_preview(vae, scaling_factor: float, vae_scale_factor: int, size: int = 64, count: int = 24,
                       seed: int = 0) -> LatentPreview:
    """Fit the preview map of ``vae`` (a diffusers ``AutoencoderKL``) by least squares."""
    size = max(size - size % vae_scale_factor, vae_scale_factor)
    images = synthetic_images(count, size, seed)
    with torch.inference_mode():
        latents = vae.encode(images.to(vae.dtype)).latent_dist.mean.float() * scaling_factor
    targets = torch.nn.functional.adaptive_avg_pool2d(images, latents.shape[-2:])
    x = latents.permute(0, 2, 3, 1).reshape(-1, latents.shape[1])
    x = torch.cat([x, torch.ones(x.shape[0], 1)], dim=1)
    y = targets.permute(0, 2, 3, 1).reshape(-1, 3)
    solution = torch.linalg.lstsq(x.double(), y.double()).solution.float()
    weights = tuple(tuple(float(v) for v in row) for row in solution[:-1])
    return LatentPreview(weights=weights, bias=tuple(float(v) for v in solution[-1]))
