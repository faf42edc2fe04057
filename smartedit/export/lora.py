"""LoRA adapters fused into a pipeline's weights before its export (``smartedit export --lora FILE[:SCALE]``).

Served weights are plain weights: the adapter is merged as ``W + scale · (alpha / rank) · up · down`` in every
layer it adapts, as TensorRT's diffusion demo merges one before an engine build, so nothing at serving time
knows LoRA and an adapted pipeline costs what its base costs. Loading and merging are diffusers' own
(``load_lora_weights`` + ``fuse_lora``, PEFT underneath): they read diffusers/PEFT files and kohya
(``lora_unet_`` / ``lora_te_``) files and honour the alpha stored in either. Diffusers drops keys it does not
recognise and PEFT only warns about keys no layer takes, so a file for another model would export silently
as the base model: ``check_adapter`` first matches every key to a layer of this pipeline, shapes included,
and refuses the file naming the keys that do not fit.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
from dataclasses import dataclass
from pathlib import Path

import torch

log = logging.getLogger("smartedit")

# Where each format's keys point: the pipeline component a prefix names.
_DIFFUSERS_PREFIXES = ("unet.", "text_encoder.", "text_encoder_2.")
_KOHYA_PREFIXES = {"lora_unet_": "unet", "lora_te_": "text_encoder", "lora_te1_": "text_encoder",
                   "lora_te2_": "text_encoder_2"}
# Key endings: which side of the low-rank product a tensor is (down: rank x inputs, up: outputs x rank),
# or its alpha. PEFT's, diffusers' older ones, kohya's.
_ENDINGS = {".lora_A.weight": "down", ".lora_B.weight": "up", ".lora.down.weight": "down", ".lora.up.weight": "up",
            ".lora_linear_layer.down.weight": "down", ".lora_linear_layer.up.weight": "up",
            ".lora_down.weight": "down", ".lora_up.weight": "up", "_lora.down.weight": "down",
            "_lora.up.weight": "up", ".alpha": "alpha"}
# diffusers' attention-processor LoRA (before PEFT, up to 0.20): ``attn1.processor.to_q_lora`` adapts the UNet's
# ``attn1.to_q``, ``self_attn.to_q_lora`` the text encoder's ``self_attn.q_proj``.
_UNET_PROCESSOR_LORA = re.compile(r"\.processor\.(to_q|to_k|to_v|to_out)$")
_TEXT_PROCESSOR_LORA = re.compile(r"\.self_attn\.to_(q|k|v|out)$")
# kohya files for SDXL name the UNet's blocks as Stability's code does (input_blocks, middle_block,
# output_blocks); diffusers maps those to its own names with the UNet's config, and so does the check.
_SGM_BLOCKS = ("input_blocks", "middle_block", "output_blocks")
# A CLIP text encoder's layers were ``text_model.encoder...`` before transformers 5 flattened the model;
# files made then still name them so, and diffusers maps them.
_TEXT_MODEL = "text_model."
_MAX_NAMED = 8  # keys named in a refusal, of how many


class AdapterMismatch(ValueError):
    """An adapter file that does not fit the pipeline; the message names the file and the keys."""


@dataclass(frozen=True)
class LoraAdapter:
    """One ``--lora FILE[:SCALE]``: a ``.safetensors`` file and the scale it is fused at."""

    path: Path
    scale: float = 1.0

    @classmethod
    def parse(cls, argument: str) -> "LoraAdapter":
        """``FILE`` or ``FILE:SCALE`` (a path may itself hold a ':', so only a trailing number is a scale).

        Raises:
            ValueError: the file is missing or not ``.safetensors``; the scale is not a finite number.
        """
        path, separator, scale_text = argument.rpartition(":")
        scale = 1.0
        if separator and path.endswith(".safetensors"):
            try:
                scale = float(scale_text)
            except ValueError:
                scale = math.nan
            if not math.isfinite(scale):
                raise ValueError(f"--lora {argument!r}: its scale {scale_text!r} is not a finite number")
        else:
            path = argument
        path = Path(path)
        if path.suffix != ".safetensors":
            raise ValueError(f"--lora {argument!r}: expected a .safetensors file (FILE[:SCALE])")
        if not path.is_file():
            raise ValueError(f"--lora {argument!r}: no such file {str(path)!r}")
        return cls(path, scale)


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as file:
        for block in iter(lambda: file.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _layer_name(key: str) -> tuple[str, str, str] | None:
    """(component, layer path or kohya's flattened name, side) of an adapter key; None when it is not a LoRA key."""
    ending = next((end for end in _ENDINGS if key.endswith(end)), None)
    if ending is None:
        return None
    stem = key[:-len(ending)]
    if ending.startswith("_lora."):
        stem = _UNET_PROCESSOR_LORA.sub(lambda found: f".{found.group(1)}" + (".0" if found.group(1) == "to_out"
                                                                              else ""), stem)
        stem = _TEXT_PROCESSOR_LORA.sub(lambda found: f".self_attn.{found.group(1)}_proj", stem)
    for prefix, component in _KOHYA_PREFIXES.items():
        if stem.startswith(prefix):
            return component, "_" + stem[len(prefix):], _ENDINGS[ending]  # "_" marks a flattened name
    for prefix in _DIFFUSERS_PREFIXES:
        if stem.startswith(prefix):
            return prefix[:-1], stem[len(prefix):], _ENDINGS[ending]
    return None


def _layers(pipeline) -> dict[str, dict[str, object]]:
    """Per component the LoRA can adapt: its layers with a weight, by path and by kohya's flattened name."""
    found = {}
    for component in ("unet", "text_encoder", "text_encoder_2"):
        module = getattr(pipeline, component, None)
        if module is None:
            continue
        # the layers a LoRA adapts: linear and convolution weights (a norm's 1-D weight is none of them)
        layers = {name: layer for name, layer in module.named_modules()
                  if isinstance(getattr(layer, "weight", None), torch.Tensor) and layer.weight.dim() >= 2}
        found[component] = {**layers, **{"_" + name.replace(".", "_"): layer for name, layer in layers.items()}}
    return found


def _fits(layer, side: str, shape: tuple[int, ...]) -> str | None:
    """Why a down/up tensor of ``shape`` cannot adapt ``layer`` (None: it can)."""
    weight_shape = tuple(layer.weight.shape)  # Linear [out, in], Conv2d [out, in, kh, kw]
    if side == "down" and (len(shape) < 2 or shape[1] != weight_shape[1]):
        return f"shape {shape}, the layer takes {weight_shape[1]} inputs"
    if side == "up" and (len(shape) < 2 or shape[0] != weight_shape[0]):
        return f"shape {shape}, the layer gives {weight_shape[0]} outputs"
    return None


def check_adapter(pipeline, tensors: dict, source: str) -> None:
    """Refuse an adapter with keys this pipeline has no layer for, or whose shapes its layers do not take.

    Raises:
        AdapterMismatch: naming the file and the keys (the first few, with how many).
    """
    layers = _layers(pipeline)
    if any(block in key for key in tensors for block in _SGM_BLOCKS):
        from diffusers.loaders.lora_conversion_utils import _maybe_map_sgm_blocks_to_diffusers

        try:  # diffusers' own mapping (private, as lora_state_dict calls it): the check sees the names it loads
            tensors = _maybe_map_sgm_blocks_to_diffusers(dict(tensors), pipeline.unet.config)
        except (ValueError, KeyError, IndexError) as error:
            raise AdapterMismatch(f"--lora {source}: its UNet keys name blocks this UNet does not have: "
                                  f"{error}") from None
    kohya = any(key.startswith(tuple(_KOHYA_PREFIXES)) for key in tensors)
    if kohya and any(key.startswith(_DIFFUSERS_PREFIXES) for key in tensors):  # diffusers would drop the kohya half
        raise AdapterMismatch(f"--lora {source}: it mixes kohya keys (lora_unet_..., lora_te_...) with diffusers "
                              f"keys (unet..., text_encoder...); one file holds one format")
    unknown, misfit = [], []
    ranks: dict[tuple[str, str], dict[str, int]] = {}
    for key, tensor in sorted(tensors.items()):
        named = _layer_name(key)
        if named is None or (named[2] == "alpha" and not kohya):  # diffusers-format files keep alpha in metadata
            unknown.append(key)
            continue
        component, path, side = named
        candidates = layers.get(component, {})
        layer = candidates.get(path)
        if layer is None:  # a text encoder's layers named as before transformers 5 (text_model.)
            flattened = "_" + _TEXT_MODEL.replace(".", "_")
            path = path.replace(flattened, "_", 1) if path.startswith(flattened) else path.removeprefix(_TEXT_MODEL)
            layer = candidates.get(path)
        if layer is None:
            unknown.append(key)
        elif side != "alpha" and (why := _fits(layer, side, tuple(tensor.shape))):
            misfit.append(f"{key} ({why})")
        elif side != "alpha":
            rank = tensor.shape[0] if side == "down" else tensor.shape[1]
            ranks.setdefault((component, path), {})[side] = int(rank)
    unpaired = [f"{component} {path.lstrip('_')}" + (f" (down rank {sides.get('down')}, up rank {sides.get('up')})"
                                                     if len(sides) == 2 else f" ({', '.join(sides)} only)")
                for (component, path), sides in sorted(ranks.items())
                if len(sides) != 2 or sides["down"] != sides["up"]]
    problems = []
    if unknown:
        problems.append(f"{len(unknown)} key(s) name no layer of this pipeline's UNet or text encoders: "
                        f"{_some(unknown)}")
    if misfit:
        problems.append(f"{len(misfit)} key(s) do not fit their layer (an adapter for another base model?): "
                        f"{_some(misfit)}")
    if unpaired:
        problems.append(f"{len(unpaired)} layer(s) lack a down/up pair of one rank: {_some(unpaired)}")
    if not unknown and not misfit and not tensors:
        problems.append("it holds no tensors")
    if problems:
        raise AdapterMismatch(f"--lora {source}: " + "; ".join(problems))


def _some(keys: list[str]) -> str:
    shown = ", ".join(keys[:_MAX_NAMED])
    return shown + (f", ... ({len(keys) - _MAX_NAMED} more)" if len(keys) > _MAX_NAMED else "")


def fuse_adapters(pipeline, adapters: list[LoraAdapter]) -> list[dict]:
    """Fuse every adapter into ``pipeline``'s weights at its scale, in order; returns what provenance records
    of each (file name, SHA-256, scale).

    Raises:
        AdapterMismatch: an adapter that does not fit (nothing is fused then: checked before the first).
    """
    from safetensors.torch import load_file

    for adapter in adapters:
        try:
            tensors = load_file(str(adapter.path))
        except Exception as error:  # safetensors raises its own error type for a file that is not one
            raise AdapterMismatch(f"--lora {adapter.path}: not a readable .safetensors file: {error}") from None
        check_adapter(pipeline, tensors, str(adapter.path))
    records = []
    for index, adapter in enumerate(adapters):
        name = f"adapter_{index}"
        log.info("fusing LoRA %s at scale %g", adapter.path, adapter.scale)
        try:
            pipeline.load_lora_weights(str(adapter.path), adapter_name=name)
            pipeline.fuse_lora(lora_scale=adapter.scale, adapter_names=[name])
        except (ValueError, KeyError, RuntimeError) as error:  # what diffusers and PEFT raise for a file they refuse
            raise AdapterMismatch(f"--lora {adapter.path}: diffusers could not load it: {error}") from None
        pipeline.unload_lora_weights()  # the merged weights stay; the adapter layers go
        records.append({"file": adapter.path.name, "sha256": file_sha256(adapter.path), "scale": adapter.scale})
    return records
