"""Typed settings of the Python models, parsed from their config ``parameters {}``.

Every value is parsed explicitly and range-checked at model load, so a typo in a config fails the
load with a message naming the parameter, instead of surprising a request later. (The counter-
example is ``bool("false") == True``.)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any, Mapping

_TRUE, _FALSE = {"true", "1", "yes", "on"}, {"false", "0", "no", "off"}


def parameters_of(model_config: Mapping[str, Any] | str) -> dict[str, str]:
    """``{key: string_value}`` from a Triton model config (the dict or JSON the backend passes)."""
    if isinstance(model_config, str):
        model_config = json.loads(model_config)
    raw = model_config.get("parameters", {}) or {}
    return {key: value["string_value"] for key, value in raw.items()}


def parse_bool(name: str, text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in _TRUE:
        return True
    if lowered in _FALSE:
        return False
    raise ValueError(f"parameter {name!r} must be true or false, got {text!r}")


def parse_int(name: str, text: str, minimum: int | None = None, maximum: int | None = None) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise ValueError(f"parameter {name!r} must be an integer, got {text!r}") from None
    _check_range(name, value, minimum, maximum)
    return value


def parse_float(name: str, text: str, minimum: float | None = None, maximum: float | None = None) -> float:
    try:
        value = float(text.strip())
    except ValueError:
        raise ValueError(f"parameter {name!r} must be a number, got {text!r}") from None
    if value != value:
        raise ValueError(f"parameter {name!r} must be a number, got NaN")
    _check_range(name, value, minimum, maximum)
    return value


def _check_range(name, value, minimum, maximum) -> None:
    if minimum is not None and value < minimum:
        raise ValueError(f"parameter {name!r} must be >= {minimum}, got {value}")
    if maximum is not None and value > maximum:
        raise ValueError(f"parameter {name!r} must be <= {maximum}, got {value}")


def _reject_unknown(cls, params: Mapping[str, str]) -> None:
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(params) - known)
    if unknown:
        raise ValueError(f"unknown parameter(s) {unknown} for {cls.__name__}; known: {sorted(known)}")


@dataclass(frozen=True)
class PreprocessSettings:
    """Request defaults and limits, applied before any work is done."""

    default_num_inference_steps: int = 50
    max_num_inference_steps: int = 1000
    default_guidance_scale: float = 7.5
    default_scheduler: str = "ddim"
    # Largest accepted image, in pixels: bounds the memory one request can take.
    max_image_pixels: int = 2048 * 2048
    # Smallest side, in pixels; below one latent pixel per UNet level nothing useful comes out.
    min_image_side: int = 8

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> "PreprocessSettings":
        _reject_unknown(cls, params)
        d = cls()
        get = params.get
        return cls(
            default_num_inference_steps=parse_int(
                "default_num_inference_steps", get("default_num_inference_steps", str(d.default_num_inference_steps)), 1),
            max_num_inference_steps=parse_int(
                "max_num_inference_steps", get("max_num_inference_steps", str(d.max_num_inference_steps)), 1),
            default_guidance_scale=parse_float(
                "default_guidance_scale", get("default_guidance_scale", str(d.default_guidance_scale)), 0.0),
            default_scheduler=get("default_scheduler", d.default_scheduler).strip(),
            max_image_pixels=parse_int("max_image_pixels", get("max_image_pixels", str(d.max_image_pixels)), 64),
            min_image_side=parse_int("min_image_side", get("min_image_side", str(d.min_image_side)), 1),
        )


@dataclass(frozen=True)
class SchedulerSettings:
    """Where the loop sends its BLS calls."""

    unet_model: str = "unet"
    vae_encoder_model: str = "vae_encoder"

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> "SchedulerSettings":
        _reject_unknown(cls, params)
        d = cls()
        return cls(
            unet_model=params.get("unet_model", d.unet_model).strip(),
            vae_encoder_model=params.get("vae_encoder_model", d.vae_encoder_model).strip(),
        )


@dataclass(frozen=True)
class OnnxHostSettings:
    """ONNX Runtime session options of a Python-hosted component (the onnx-cpu profile)."""

    intra_op_num_threads: int = 0  # 0: ONNX Runtime picks (one per core)
    model_filename: str = "model.onnx"

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> "OnnxHostSettings":
        _reject_unknown(cls, params)
        d = cls()
        return cls(
            intra_op_num_threads=parse_int(
                "intra_op_num_threads", params.get("intra_op_num_threads", str(d.intra_op_num_threads)), 0, 256),
            model_filename=params.get("model_filename", d.model_filename).strip(),
        )
