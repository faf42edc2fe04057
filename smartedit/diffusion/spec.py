"""The one typed spec of every served component: tensor names, dtypes, dynamic axes, TRT profiles.

Export (graph input/output names and dynamic axes), verification (random inputs), the TensorRT
builder (optimization profiles) and the Triton config generator all read these declarations, so a
tensor name is written here and nowhere else.

Each dimension of a tensor (after the batch axis, which every component tensor has) is either a
fixed integer or the name of a quantity: a property of the exported pipeline (``PipelineInfo``) or
one of the dynamic spatial axes ``image_height``/``image_width``/``latent_height``/``latent_width``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Union

import numpy as np
from tritonclient.utils import triton_to_np_dtype

from smartedit.diffusion.recognize import KNOWN, SD_INPAINT, SD_LATENT_BLEND, identify, read_found

# The lengths of SDXL's size-and-crop conditioning (``time_ids``): original size, crop corner and target size
# (h, w each); or, for a model that ``requires_aesthetics_score`` (the refiner's way), original size, crop
# corner and an aesthetic score.
SIZE_TIME_IDS, AESTHETIC_TIME_IDS = 6, 5

Dim = Union[int, str]

# Axes that change with the request's resolution; everything else is fixed once a model is chosen.
SPATIAL_AXES = ("image_height", "image_width", "latent_height", "latent_width")
# Every axis that varies per call: the spatial ones, and the number of prompt points of a SAM call.
DYNAMIC_AXES = SPATIAL_AXES + ("num_points",)


@dataclass(frozen=True)
class PipelineInfo:
    """Facts about one diffusers inpainting pipeline that shapes and the loop depend on.

    Written into the model repository as ``pipeline.json`` by the export, read by the Python
    models, so that nothing at serving time needs diffusers' model classes or the weights.
    """

    vae_scale_factor: int
    latent_channels: int
    unet_in_channels: int
    text_length: int
    text_hidden_size: int
    vae_scaling_factor: float
    unet_sample_size: int
    # The side, in pixels, of the area the model edits at (smartedit.edit.regions): 512 for SD 1.x.
    working_resolution: int
    # Its family (smartedit.diffusion.families): how its loop starts and keeps its latents.
    family: str = SD_INPAINT.name
    # SDXL's added conditioning (0 / False for SD): the width of the pooled prompt embedding its UNet takes
    # (``text_embeds``), how many size-and-crop ids (``time_ids``), whether those end in an aesthetic score,
    # and whether an empty negative prompt is zeros rather than the encoded "" (the model's config says).
    pooled_text_width: int = 0
    time_ids: int = 0
    requires_aesthetics_score: bool = False
    force_zeros_for_empty_prompt: bool = False
    # The scheduler class the weights were exported with (diffusers' name): "LCMScheduler" / "TCDScheduler" for
    # consistency-distilled weights, which only the few-step samplers suit (smartedit.diffusion.samplers).
    scheduler_class: str = ""
    # The name of the ControlNet served with its UNet (``smartedit export --controlnet``), "" for none: its ``unet``
    # is then the fused graph (``fused_control_unet_spec``) and its edits take the contract's control inputs.
    controlnet: str = ""

    @classmethod
    def from_pipeline(cls, pipeline) -> "PipelineInfo":
        vae_config = pipeline.vae.config
        # Derived, never hard-coded: 8 for real SD models.
        vae_scale_factor = 2 ** (len(vae_config.block_out_channels) - 1)
        encoders = [encoder for encoder in (pipeline.text_encoder, getattr(pipeline, "text_encoder_2", None))
                    if encoder is not None]
        return cls(
            vae_scale_factor=vae_scale_factor,
            latent_channels=int(vae_config.latent_channels),
            unet_in_channels=int(pipeline.unet.config.in_channels),
            text_length=int(pipeline.tokenizer.model_max_length),
            # SDXL's UNet attends to both encoders' states, concatenated (768 + 1280 for the real model).
            text_hidden_size=sum(int(encoder.config.hidden_size) for encoder in encoders),
            vae_scaling_factor=float(vae_config.scaling_factor),
            unet_sample_size=int(pipeline.unet.config.sample_size),
            # The resolution the UNet was trained at: its sample size in latent pixels.
            working_resolution=int(pipeline.unet.config.sample_size) * vae_scale_factor,
            family=identify(read_found(dict(pipeline.config), dict(pipeline.unet.config), dict(vae_config))).name,
            scheduler_class=type(pipeline.scheduler).__name__,
            **_added_conditioning(pipeline),
        )

    def to_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True)

    @classmethod
    def load(cls, path: Path) -> "PipelineInfo":
        return cls.from_dict(json.loads(Path(path).read_text()))

    @classmethod
    def from_dict(cls, fields: dict) -> "PipelineInfo":
        # Written before the working resolution was declared: derive it as the export does.
        fields = {"working_resolution": fields["unet_sample_size"] * fields["vae_scale_factor"], **fields}
        # Written before families were named: only SD inpainting pipelines were exported then (a latency
        # table may describe either layout: its channels say which).
        latent_blend = fields["unet_in_channels"] == fields["latent_channels"]
        fields.setdefault("family", SD_LATENT_BLEND.name if latent_blend else SD_INPAINT.name)
        known = [family.name for family in KNOWN]
        if fields["family"] not in known:
            raise ValueError(f"pipeline.json names the family {fields['family']!r}; this SmartEdit knows "
                             f"{', '.join(known)}: export the model again with this version")
        return cls(**fields)

    def resolve(self, dim: Dim, height: int, width: int) -> int:
        """The concrete size of ``dim`` for an image of ``height`` x ``width`` pixels."""
        if isinstance(dim, int):
            return dim
        spatial = {
            "image_height": height,
            "image_width": width,
            "latent_height": height // self.vae_scale_factor,
            "latent_width": width // self.vae_scale_factor,
        }
        if dim in spatial:
            return spatial[dim]
        return int(getattr(self, dim))


def _added_conditioning(pipeline) -> dict:
    """The ``PipelineInfo`` fields of a UNet with SDXL's ``text_time`` conditioning (none for other UNets).

    Raises:
        ValueError: the UNet's added embedding does not fit the ids the pipeline's config makes (diffusers
            refuses such a pipeline when it runs; the export refuses it before writing anything).
    """
    unet = pipeline.unet.config
    if unet.get("addition_embed_type") != "text_time":
        return {}
    pooled = int(pipeline.text_encoder_2.config.projection_dim)
    time_ids, rest = divmod(int(unet.projection_class_embeddings_input_dim) - pooled, int(unet.addition_time_embed_dim))
    aesthetic = bool(pipeline.config.get("requires_aesthetics_score", False))
    expected = AESTHETIC_TIME_IDS if aesthetic else SIZE_TIME_IDS
    if rest or time_ids != expected:
        raise ValueError(f"the UNet's added embedding takes {unet.projection_class_embeddings_input_dim} values: "
                         f"{pooled} pooled and {time_ids * int(unet.addition_time_embed_dim) + rest} of time ids, but "
                         f"requires_aesthetics_score={aesthetic} makes {expected} ids of "
                         f"{unet.addition_time_embed_dim}: set requires_aesthetics_score in model_index.json to match")
    return dict(pooled_text_width=pooled, time_ids=time_ids, requires_aesthetics_score=aesthetic,
                force_zeros_for_empty_prompt=bool(pipeline.config.get("force_zeros_for_empty_prompt", False)))


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of a served model: a component's, without its batch axis (dims may name sizes of the
    pipeline and spatial axes); a Python step's (``smartedit.serving.steps``: no batching, so its full
    shape, -1 where it varies per request)."""

    name: str
    datatype: str  # the Triton datatype name, as the wire contract has it: "FP32", "INT64", "BYTES"
    dims: tuple[Dim, ...]
    optional: bool = False  # an input a request may leave out (steps only)

    @property
    def numpy_dtype(self) -> np.dtype:
        return np.dtype(triton_to_np_dtype(self.datatype))

    def shape(self, info: PipelineInfo, batch: int, height: int, width: int) -> tuple[int, ...]:
        """The full shape, batch axis included, for ``batch`` items of ``height`` x ``width``."""
        return (batch,) + tuple(info.resolve(d, height, width) for d in self.dims)

    def dynamic_axes(self) -> dict[int, str]:
        """ONNX dynamic axes: the batch axis and every spatial axis, by their names."""
        axes = {0: "batch"}
        axes.update({i + 1: d for i, d in enumerate(self.dims) if d in DYNAMIC_AXES})
        return axes


@dataclass(frozen=True)
class ComponentSpec:
    """One model that Triton serves whatever the runtime profile: its name and its tensors."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]

    @property
    def input_names(self) -> list[str]:
        return [t.name for t in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [t.name for t in self.outputs]

    def image_size(self, info: PipelineInfo, input_shapes: dict[str, tuple[int, ...]]) -> tuple[int, int]:
        """(height, width) in image pixels of a call whose inputs have these shapes (batch axis first);
        (0, 0) for a component with no spatial axis."""
        for tensor in self.inputs:
            shape = input_shapes[tensor.name][1:]
            for axis, dim in enumerate(tensor.dims):
                if dim == "image_height":
                    return shape[axis], shape[axis + 1]
                if dim == "latent_height":
                    return shape[axis] * info.vae_scale_factor, shape[axis + 1] * info.vae_scale_factor
        return 0, 0


TEXT_ENCODER = ComponentSpec(
    name="text_encoder",
    inputs=(TensorSpec("input_ids", "INT64", ("text_length",)),),
    outputs=(TensorSpec("last_hidden_state", "FP32", ("text_length", "text_hidden_size")),),
)

# The encoder returns the latent distribution's mean and std rather than a sample, so that the loop
# can draw the sample from the request's own generator exactly as diffusers does.
VAE_ENCODER = ComponentSpec(
    name="vae_encoder",
    inputs=(TensorSpec("image", "FP32", (3, "image_height", "image_width")),),
    outputs=(
        TensorSpec("latent_mean", "FP32", ("latent_channels", "latent_height", "latent_width")),
        TensorSpec("latent_std", "FP32", ("latent_channels", "latent_height", "latent_width")),
    ),
)

UNET = ComponentSpec(
    name="unet",
    inputs=(
        TensorSpec("sample", "FP32", ("unet_in_channels", "latent_height", "latent_width")),
        # One timestep per batch row (a scalar per item), so rows of different requests at
        # different steps can share one UNet call.
        TensorSpec("timestep", "FP32", ()),
        TensorSpec("encoder_hidden_states", "FP32", ("text_length", "text_hidden_size")),
    ),
    outputs=(TensorSpec("noise_pred", "FP32", ("latent_channels", "latent_height", "latent_width")),),
)

VAE_DECODER = ComponentSpec(
    name="vae_decoder",
    inputs=(TensorSpec("latents", "FP32", ("latent_channels", "latent_height", "latent_width")),),
    outputs=(TensorSpec("image", "FP32", (3, "image_height", "image_width")),),
)

# SDXL's: one encoder graph runs both CLIP models (two tokenizers' ids in) and answers their penultimate hidden
# states concatenated and the second's pooled projection; the UNet takes those two and the size ids besides.
SDXL_TEXT_ENCODER = ComponentSpec(
    name="text_encoder",
    inputs=(TensorSpec("input_ids", "INT64", ("text_length",)), TensorSpec("input_ids_2", "INT64", ("text_length",))),
    outputs=(TensorSpec("hidden_states", "FP32", ("text_length", "text_hidden_size")),
             TensorSpec("pooled", "FP32", ("pooled_text_width",))),
)

# SDXL's added conditioning among its UNet's inputs (and its ControlNet's): the pooled prompt and the size ids.
ADDED_CONDITIONING = ("text_embeds", "time_ids")

SDXL_UNET = ComponentSpec(
    name="unet",
    inputs=UNET.inputs + (TensorSpec("text_embeds", "FP32", ("pooled_text_width",)),
                          TensorSpec("time_ids", "FP32", ("time_ids",))),
    outputs=UNET.outputs,
)

# A controlled edit's row inputs (smartedit.diffusion.control): its conditioning image, and per step each row's
# conditioning scale (0: no control on that row) and whether it is in guess mode (1.0) or not (0.0).
CONTROL_IMAGE, CONTROL_SCALE, CONTROL_GUESS = "controlnet_cond", "control_scale", "control_guess"


def fused_control_unet_spec(unet: ComponentSpec) -> ComponentSpec:
    """``unet`` and a ControlNet as one model: the UNet's inputs and each row's conditioning image, scale and
    guess flag; the residuals are made, scaled and added inside (they never leave the device)."""
    return ComponentSpec(name=unet.name, outputs=unet.outputs, inputs=unet.inputs + (
        TensorSpec(CONTROL_IMAGE, "FP32", (3, "image_height", "image_width")),
        TensorSpec(CONTROL_SCALE, "FP32", ()), TensorSpec(CONTROL_GUESS, "FP32", ())))


# Stable Diffusion's components (both SD families serve them), and the pipeline's modules whose weights
# they hold. A family declares its own (smartedit.diffusion.families); these are the ones every tool that
# predates families (the latency table, the simulated device) knows.
SD_COMPONENTS: tuple[ComponentSpec, ...] = (TEXT_ENCODER, VAE_ENCODER, UNET, VAE_DECODER)
SD_WEIGHTS: tuple[str, ...] = ("text_encoder", "unet", "vae")
COMPONENTS = SD_COMPONENTS
SDXL_COMPONENTS: tuple[ComponentSpec, ...] = (SDXL_TEXT_ENCODER, VAE_ENCODER, SDXL_UNET, VAE_DECODER)
SDXL_WEIGHTS: tuple[str, ...] = ("text_encoder", "text_encoder_2", "unet", "vae")

