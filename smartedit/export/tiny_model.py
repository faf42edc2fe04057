"""The embedded default model: a tiny, seeded, randomly initialised SD inpainting pipeline.

It is an ordinary diffusers folder (``StableDiffusionInpaintPipeline.from_pretrained`` loads it)
built entirely from configs, so nothing is downloaded. It edits nothing meaningfully, but it runs
every byte of the real path: export, Triton, the ensemble, the loop and the client. The shapes
follow diffusers' own fast inpainting tests (9-channel UNet, two-level VAE, 5-layer CLIP).
"""

from __future__ import annotations

import json

from pathlib import Path

# Tokens of a byte-level CLIP BPE with no merges: every one of the 256 byte symbols, alone and as
# a word ending ("</w>"), plus the two specials. CLIPTokenizer then splits text into characters,
# which is all a random text encoder needs.
_BOS, _EOS = "<|startoftext|>", "<|endoftext|>"
TEXT_MAX_LENGTH = 77


def _byte_symbols() -> list[str]:
    """The 256 printable stand-ins for bytes that CLIP's byte-level BPE uses (as in GPT-2)."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    symbols, extra = {}, 0
    for byte in range(256):
        if byte in printable:
            symbols[byte] = chr(byte)
        else:
            symbols[byte] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in range(256)]


def write_tokenizer(folder: Path, pad_token: str = _EOS) -> None:
    """Write a CLIPTokenizer (vocab.json, merges.txt, configs) to ``folder``; ``pad_token``: CLIP's pads
    with its end token, SDXL's second (OpenCLIP) tokenizer with "!"."""
    from transformers import CLIPTokenizer

    symbols = _byte_symbols()
    vocab_list = symbols + [s + "</w>" for s in symbols] + [_BOS, _EOS]
    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = CLIPTokenizer(
        vocab={token: index for index, token in enumerate(vocab_list)},
        merges=[],
        model_max_length=TEXT_MAX_LENGTH,
        pad_token=pad_token,
    )
    tokenizer.save_pretrained(folder)


def build_tiny_pipeline(seed: int = 0, text_to_image: bool = False, instruct: bool = False):
    """Build the tiny pipeline in memory; the same seed gives identical weights. ``text_to_image``: its UNet
    takes the 4 latent channels alone, as a text-to-image SD checkpoint's does (the sd-latent-blend family);
    ``instruct``: the latents and the photo's latents, 8 channels, as InstructPix2Pix's (instruct-pix2pix)."""
    import torch
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        block_out_channels=(32, 64),
        layers_per_block=2,
        sample_size=32,
        # latents 4 + mask 1 + masked-image latents 4: the SD inpainting layout; the latents alone; or the
        # latents + the photo's latents (InstructPix2Pix)
        in_channels=4 if text_to_image else 8 if instruct else 9,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
    )
    torch.manual_seed(seed)
    vae = tiny_vae()
    torch.manual_seed(seed)
    text_encoder = CLIPTextModel(tiny_text_config(hidden_size=32))
    return unet, vae, text_encoder, stable_diffusion_scheduler()


def tiny_vae(**config):
    """The tiny VAE (``config``: what a family's differs in, e.g. SDXL's ``scaling_factor``). Four levels:
    it downsamples 8x like every real SD VAE, so the default model sees the latent shapes (and costs) a
    real one does: a 512 px photo is 64x64 latents, not 256x256."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=[32, 32, 64, 64],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 4,
        up_block_types=["UpDecoderBlock2D"] * 4,
        latent_channels=4,
        sample_size=256,
        **config,
    )


def tiny_text_config(hidden_size: int, **config):
    """A 5-layer CLIP text encoder's config over ``write_tokenizer``'s byte-level vocabulary (``config``:
    what differs, e.g. SDXL's second encoder's ``projection_dim``)."""
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        bos_token_id=512,
        eos_token_id=513,
        pad_token_id=513,
        hidden_size=hidden_size,
        intermediate_size=37,
        layer_norm_eps=1e-05,
        num_attention_heads=4,
        num_hidden_layers=5,
        vocab_size=514,
        max_position_embeddings=TEXT_MAX_LENGTH,
        **config,
    )


def stable_diffusion_scheduler():
    """Stable Diffusion's own noise schedule, so the samplers behave as they do on real weights."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(
        beta_start=0.00085,
        beta_end=0.012,
        beta_schedule="scaled_linear",
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
    )


# Raised whenever build_tiny_pipeline changes what it builds, so that a folder built by an older
# version is rebuilt rather than served (version 2: the VAE downsamples 8x, as real SD VAEs do).
TINY_MODEL_VERSION = 2
_STAMP = "smartedit-tiny-model.json"


def is_current_tiny_pipeline(folder: Path) -> bool:
    """Whether ``folder`` holds the tiny pipeline this version of SmartEdit builds."""
    try:
        stamp = json.loads((Path(folder) / _STAMP).read_text())
        return (stamp.get("version") == TINY_MODEL_VERSION and not stamp.get("text_to_image", False)
                and not stamp.get("instruct", False) and stamp.get("family", "sd") == "sd")
    except (OSError, ValueError):
        return False


def write_tiny_pipeline(folder: Path, seed: int = 0, text_to_image: bool = False, instruct: bool = False) -> Path:
    """Write the tiny pipeline as a diffusers folder and return the folder; ``text_to_image``: a 4-channel
    UNet in a ``StableDiffusionPipeline`` folder, as text-to-image checkpoints are published; ``instruct``: an
    8-channel UNet in a ``StableDiffusionInstructPix2PixPipeline`` folder."""
    from diffusers import (
        StableDiffusionInpaintPipeline, StableDiffusionInstructPix2PixPipeline, StableDiffusionPipeline,
    )
    from transformers import CLIPTokenizer

    if text_to_image and instruct:
        raise ValueError("a tiny pipeline is text-to-image or instruct, not both")
    folder = Path(folder)
    tokenizer_dir = folder / "tokenizer"
    write_tokenizer(tokenizer_dir)
    unet, vae, text_encoder, scheduler = build_tiny_pipeline(seed, text_to_image, instruct)
    pipeline_class = (StableDiffusionPipeline if text_to_image else StableDiffusionInstructPix2PixPipeline if instruct
                      else StableDiffusionInpaintPipeline)
    pipeline = pipeline_class(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=CLIPTokenizer.from_pretrained(tokenizer_dir),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipeline.save_pretrained(folder)
    (folder / _STAMP).write_text(json.dumps({"version": TINY_MODEL_VERSION, "seed": seed,
                                             "text_to_image": text_to_image, "instruct": instruct}))
    return folder
