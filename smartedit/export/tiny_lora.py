"""A random LoRA adapter for a (tiny) SD pipeline, made offline with PEFT and saved in both file formats that
``smartedit export --lora`` reads: what the tests and the README's walk-through fuse, since no real adapter can be
downloaded here.

Rank 4 with alpha 8 (so the file's alpha matters: a loader that ignored it would fuse half the change), on the
UNet's attention projections and the text encoder's; the up weights are drawn non-zero (PEFT's default zero
init would make an adapter that changes nothing).
"""

from __future__ import annotations

from pathlib import Path

RANK, ALPHA = 4, 8
UNET_TARGETS = ["to_q", "to_k", "to_v", "to_out.0"]
TEXT_ENCODER_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
DIFFUSERS_FILE = "pytorch_lora_weights.safetensors"  # the name diffusers' save_lora_weights gives


def write_tiny_lora(pipeline_dir: Path, out: Path, seed: int = 0) -> tuple[Path, Path]:
    """Make the adapter for the pipeline at ``pipeline_dir``; returns (diffusers/PEFT file, kohya file) in ``out``."""
    import diffusers
    import torch
    from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
    from safetensors.torch import save_file

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    pipeline = diffusers.DiffusionPipeline.from_pretrained(str(pipeline_dir))
    torch.manual_seed(seed)
    unet_config = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=UNET_TARGETS, init_lora_weights=False)
    text_config = LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=TEXT_ENCODER_TARGETS, init_lora_weights=False)
    inject_adapter_in_model(unet_config, pipeline.unet)
    inject_adapter_in_model(text_config, pipeline.text_encoder)
    unet_layers = get_peft_model_state_dict(pipeline.unet)
    text_layers = get_peft_model_state_dict(pipeline.text_encoder)
    # diffusers/PEFT format; the alpha travels in the file's metadata
    type(pipeline).save_lora_weights(out, unet_lora_layers=unet_layers, text_encoder_lora_layers=text_layers,
                                     unet_lora_adapter_metadata=unet_config.to_dict(),
                                     text_encoder_lora_adapter_metadata=text_config.to_dict())
    # kohya format: a layer's path with '_' for '.', lora_down/lora_up, and its alpha as a tensor. Text encoder
    # layers named as kohya's scripts name them (text_model_ first, CLIP's layout before transformers 5).
    kohya = {}
    for prefix, layers in (("lora_unet_", unet_layers), ("lora_te_text_model_", text_layers)):
        for key, tensor in layers.items():
            layer, _, side = key.rpartition(".lora_")
            name = prefix + layer.replace(".", "_")
            kohya[f"{name}.lora_{'down' if side.startswith('A') else 'up'}.weight"] = tensor.contiguous()
            kohya[f"{name}.alpha"] = torch.tensor(float(ALPHA))
    kohya_file = out / "kohya_lora.safetensors"
    save_file(kohya, str(kohya_file))
    return out / DIFFUSERS_FILE, kohya_file
