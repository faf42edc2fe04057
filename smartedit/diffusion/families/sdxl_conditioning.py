"""What an SDXL UNet sees besides the latents, as ``StableDiffusionXLInpaintPipeline.__call__`` makes it:
both encoders' states, the pooled prompt (``text_embeds``) and the size-and-crop ids (``time_ids``), one row
per UNet row (negative, then positive prompt). Shared by the two SDXL families, which differ only in how
their latents start and are kept (those they take from the SD families)."""

from __future__ import annotations

from typing import Sequence

import torch

from smartedit.diffusion.denoise import EditInputs
from smartedit.diffusion.prompts import NEGATIVE_ROW, PROMPT_ROW
from smartedit.diffusion.spec import PipelineInfo
from smartedit.edit.parameters import EditParameters

# diffusers' defaults for a model that requires an aesthetic score (the refiner's way): what the positive
# and the negative row are told.
AESTHETIC_SCORE, NEGATIVE_AESTHETIC_SCORE = 6.0, 2.5


def time_ids(info: PipelineInfo, height: int, width: int) -> torch.Tensor:
    """``[2, n]`` size-and-crop ids (negative row, positive row) of an edit at ``height`` x ``width``.

    The edit is what diffusers is given: its area (the whole photo, or the crop around the mask, at the size
    the model works at), so original size = target size = that size, crop corner (0, 0) -- the ids diffusers
    makes when called on the same pixels, and the ones SDXL was trained to see for an uncropped picture.
    """
    size = (float(height), float(width))
    corner = (0.0, 0.0)
    if info.requires_aesthetics_score:
        rows = [size + corner + (NEGATIVE_AESTHETIC_SCORE,), size + corner + (AESTHETIC_SCORE,)]
    else:
        rows = [size + corner + size] * 2
    return torch.tensor(rows, dtype=torch.float32)


def row_inputs(info: PipelineInfo, params: EditParameters, inputs: EditInputs, rows: int) -> dict[str, torch.Tensor]:
    """The UNet's inputs besides the sample and timestep, by name, for an edit of ``rows`` rows a step (the
    negative and positive prompt under guidance, else the positive alone)."""
    return prompt_row_inputs(info, params, inputs, [NEGATIVE_ROW, PROMPT_ROW][2 - rows:])


def prompt_row_inputs(info: PipelineInfo, params: EditParameters, inputs: EditInputs,
                      prompt_rows: Sequence[int]) -> dict[str, torch.Tensor]:
    """The UNet's inputs besides the sample and timestep, by name, one row per prompt row asked for
    (``prompts.NEGATIVE_ROW``, ``PROMPT_ROW``, a text edit's ``SOURCE_ROW``).

    With no negative prompt and a model whose config says ``force_zeros_for_empty_prompt`` (SDXL's do), the
    negative row's embeddings are zeros, as diffusers makes them when ``negative_prompt`` is None: an empty
    negative prompt here is "none" (diffusers encodes an explicit "" instead; there is no way to send None).
    Every row but the negative one is told the positive row's size ids (and aesthetic score).
    """
    prompt_embeds = inputs.prompt["prompt_embeds"]
    pooled = inputs.prompt["pooled_prompt_embeds"]
    if info.force_zeros_for_empty_prompt and not params.negative_prompt:
        prompt_embeds = torch.cat([torch.zeros_like(prompt_embeds[:1]), prompt_embeds[1:]])
        pooled = torch.cat([torch.zeros_like(pooled[:1]), pooled[1:]])
    latent_height, latent_width = inputs.latent_mask.shape[-2:]
    ids = time_ids(info, latent_height * info.vae_scale_factor, latent_width * info.vae_scale_factor)
    rows = list(prompt_rows)
    ids_rows = [0 if row == NEGATIVE_ROW else 1 for row in rows]
    return {"encoder_hidden_states": prompt_embeds[rows], "text_embeds": pooled[rows], "time_ids": ids[ids_rows]}
