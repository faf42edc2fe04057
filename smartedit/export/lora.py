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
import re
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("smartedit")

# Where each format's keys point: the pipeline component a prefix names.
_DIFFUSERS_PREFIXES = ("unet.", "text_encoder.", "text_encoder_2.")
_KOHYA_PREFIXES = {"lora_unet_": "unet", "lora_te_": "text_encoder", "lora_te1_": "text_encoder",
                   "lora_te2_": "text_encoder_2"}
# Key endings: which side of the low-rank product a tensor is (down: rank x inputs, up: outputs x rank),
# or its alpha. PEFT's, diffusers' older ones, kohya's.
_ENDINGS = {".lora_A.weight": "down", ".lora_B.weight": "up", ".lora.down.weight": "down", ".lora.up.weight": "up",
            ".lora_linear_layer.down.weight": "down", ".lora_linear_layer.up.weight": "up",
            ".lora_down.weight": "down", ".lora_up.weight": "up", ".alpha": "alpha"}
# diffusers' attention-processor LoRA (before PEFT): ``attn1.processor.to_q_lora`` adapts ``attn1.to_q``.
_PROCESSOR_LORA = re.compile(r"\.processor\.(to_q|to_k|to_v|to_out)_lora$")
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
        if separator and re.fullmatch(r"[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?", scale_text):
            scale = float(scale_text)
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
    stem = _PROCESSOR_LORA.sub(lambda found: f".{found.group(1)}" + (".0" if found.group(1) == "to_out" else ""),
                               key[:-len(ending)])
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
        layers = {name: layer for name, layer in module.named_modules() if hasattr(layer, "weight")}
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
    unknown, misfit = [], []
    for key, tensor in sorted(tensors.items()):
        named = _layer_name(key)
        if named is None:
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
    problems = []
    if unknown:
        problems.append(f"{len(unknown)} key(s) name no layer of this pipeline's UNet or text encoders: "
                        f"{_some(unknown)}")
    if misfit:
        problems.append(f"{len(misfit)} key(s) do not fit their layer (an adapter for another base model?): "
                        f"{_some(misfit)}")
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
        pipeline.load_lora_weights(str(adapter.path), adapter_name=name)
        pipeline.fuse_lora(lora_scale=adapter.scale, adapter_names=[name])
        pipeline.unload_lora_weights()  # the merged weights stay; the adapter layers go
        records.append({"file": adapter.path.name, "sha256": file_sha256(adapter.path), "scale": adapter.scale})
    return records
