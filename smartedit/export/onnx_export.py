"""Export the served components of a diffusers pipeline (its family's ``COMPONENTS``) to ONNX.

Each component is wrapped in a small ``nn.Module`` whose positional inputs and outputs are exactly
those of its ``ComponentSpec``, then exported with the TorchScript-based exporter
(``dynamo=False``), dynamic in batch, height and width.
"""

from __future__ import annotations

import contextlib
import gc
import logging
from pathlib import Path

import torch

from smartedit.diffusion.families import CONTROLNET_MODULE, components_of
from smartedit.diffusion.recognize import (
    INSTRUCT_PIX2PIX, SD_INPAINT, SD_LATENT_BLEND, SDXL_INPAINT, SDXL_LATENT_BLEND,
)
from smartedit.diffusion.spec import (
    ADDED_CONDITIONING, CONTROL_GUESS, CONTROL_SCALE, SDXL_UNET, UNET, ComponentSpec, PipelineInfo,
)

log = logging.getLogger(__name__)

ONNX_OPSET = 17  # the first opset with LayerNormalization, which the CLIP and attention blocks use
ONNX_FILENAME = "model.onnx"
FP16_PRECISION, FP32_PRECISION = "fp16", "fp32"


class TextEncoderGraph(torch.nn.Module):
    def __init__(self, text_encoder):
        super().__init__()
        self.text_encoder = text_encoder

    def forward(self, input_ids):
        return self.text_encoder(input_ids, return_dict=False)[0]


class SdxlTextEncodersGraph(torch.nn.Module):
    """Both of SDXL's CLIP models in one graph, as ``StableDiffusionXLPipeline.encode_prompt`` uses them: each
    one's penultimate hidden state, concatenated on the last axis, and the second's pooled projection."""

    def __init__(self, text_encoder, text_encoder_2):
        super().__init__()
        self.text_encoder = text_encoder
        self.text_encoder_2 = text_encoder_2

    def forward(self, input_ids, input_ids_2):
        first = self.text_encoder(input_ids, output_hidden_states=True)
        second = self.text_encoder_2(input_ids_2, output_hidden_states=True)
        hidden_states = torch.cat([first.hidden_states[-2], second.hidden_states[-2]], dim=-1)
        return hidden_states, second.text_embeds


class VaeEncoderGraph(torch.nn.Module):
    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, image):
        latent_dist = self.vae.encode(image).latent_dist
        return latent_dist.mean, latent_dist.std


class UNetGraph(torch.nn.Module):
    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, encoder_hidden_states):
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]


class SdxlUNetGraph(torch.nn.Module):
    def __init__(self, unet):
        super().__init__()
        self.unet = unet

    def forward(self, sample, timestep, encoder_hidden_states, text_embeds, time_ids):
        return self.unet(sample, timestep, encoder_hidden_states=encoder_hidden_states,
                         added_cond_kwargs={"text_embeds": text_embeds, "time_ids": time_ids}, return_dict=False)[0]


class ControlledUNetGraph(torch.nn.Module):
    """A UNet taking, after its own inputs (``input_names``: SD's three, SDXL's five), a ControlNet's residuals."""

    def __init__(self, unet, input_names: list[str]):
        super().__init__()
        self.unet = unet
        self.input_names = list(input_names)

    def forward(self, *tensors):
        named = dict(zip(self.input_names, tensors))
        residuals = list(tensors[len(self.input_names):])
        return self.unet(named["sample"], named["timestep"], encoder_hidden_states=named["encoder_hidden_states"],
                         added_cond_kwargs=added_conditioning(named), down_block_additional_residuals=residuals[:-1],
                         mid_block_additional_residual=residuals[-1], return_dict=False)[0]


class FusedControlGraph(torch.nn.Module):
    """A ControlNet and a UNet in one graph: after the UNet's own inputs (``input_names``), each row's conditioning
    image, scale and guess flag (smartedit.diffusion.control's row inputs). The ControlNet runs on every row (the
    4 latent channels, before any mask channels, with the UNet's prompt states and, SDXL's, its pooled prompt and size
    ids); each row's residuals are multiplied by its scale (times diffusers' guess-mode level factors,
    ``logspace(-1, 0)``, on a guess-mode row) as diffusers' ControlNet multiplies them, and the UNet adds them.
    A row of scale 0 gets zeros: its UNet sums are unchanged."""

    def __init__(self, unet, controlnet, input_names: list[str], latent_channels: int):
        super().__init__()
        self.unet = ControlledUNetGraph(unet, input_names)
        self.controlnet = controlnet
        self.input_names = list(input_names)
        self.latent_channels = latent_channels

    def forward(self, *tensors):
        unet_inputs = tensors[:len(self.input_names)]
        named = dict(zip(self.input_names, unet_inputs))
        image, scale, guess = tensors[len(self.input_names):]
        down, mid = self.controlnet(named["sample"][:, :self.latent_channels], named["timestep"],
                                    encoder_hidden_states=named["encoder_hidden_states"], controlnet_cond=image,
                                    added_cond_kwargs=added_conditioning(named), conditioning_scale=1.0,
                                    return_dict=False)
        levels = torch.logspace(-1, 0, len(down) + 1)
        factors = torch.where(guess[:, None] > 0.5, levels[None, :], torch.ones_like(levels)[None, :]) * scale[:, None]
        # Rows of scale 0 get zeros, not residual x 0: a NaN or an FP16 overflow in the ControlNet on such a row
        # (an uncontrolled edit, a step outside the window) must not reach an edit that has no control then.
        on = (scale != 0)[:, None, None, None]
        residuals = [torch.where(on, residual * factors[:, level, None, None, None], torch.zeros_like(residual))
                     for level, residual in enumerate([*down, mid])]
        return self.unet(*unet_inputs, *residuals)


def added_conditioning(named: dict) -> dict | None:
    """SDXL's added conditioning (``text_embeds``, ``time_ids``) among a UNet's inputs by name; None for SD's."""
    added = {name: named[name] for name in ADDED_CONDITIONING if name in named}
    return added or None


class VaeDecoderGraph(torch.nn.Module):
    def __init__(self, vae):
        super().__init__()
        self.vae = vae

    def forward(self, latents):
        return self.vae.decode(latents, return_dict=False)[0]


def _unet_graph(plain_graph, unet_spec: ComponentSpec):
    """The UNet's graph maker: ``plain_graph`` of the UNet or, with the ControlNet the pipeline is exported with
    (``export --controlnet``), both in one graph taking ``unet_spec``'s inputs and the control's."""
    def graph(pipeline) -> torch.nn.Module:
        controlnet = getattr(pipeline, CONTROLNET_MODULE, None)
        if controlnet is None:
            return plain_graph(pipeline.unet)
        return FusedControlGraph(pipeline.unet, controlnet, unet_spec.input_names,
                                 int(pipeline.vae.config.latent_channels))
    return graph


_SD_GRAPHS = {
    "text_encoder": lambda pipeline: TextEncoderGraph(pipeline.text_encoder),
    "vae_encoder": lambda pipeline: VaeEncoderGraph(pipeline.vae),
    "unet": _unet_graph(UNetGraph, UNET),
    "vae_decoder": lambda pipeline: VaeDecoderGraph(pipeline.vae),
}
_SDXL_GRAPHS = dict(
    _SD_GRAPHS,
    text_encoder=lambda pipeline: SdxlTextEncodersGraph(pipeline.text_encoder, pipeline.text_encoder_2),
    unet=_unet_graph(SdxlUNetGraph, SDXL_UNET),
)
# Per family (smartedit.diffusion.families), the graph each of its COMPONENTS is exported from. Here and
# not in the family modules: the serving processes import those, and must not import the exporter.
GRAPHS: dict[str, dict] = {SD_INPAINT.name: _SD_GRAPHS, SD_LATENT_BLEND.name: _SD_GRAPHS,
                           SDXL_INPAINT.name: _SDXL_GRAPHS, SDXL_LATENT_BLEND.name: _SDXL_GRAPHS,
                           INSTRUCT_PIX2PIX.name: _SD_GRAPHS}


def component_module(pipeline, name: str, family: str = SD_INPAINT.name) -> torch.nn.Module:
    """The PyTorch module whose signature is the component's spec, in eval mode, FP32."""
    return GRAPHS[family][name](pipeline).eval().float()


@contextlib.contextmanager
def in_fp32(pipeline, name: str, family: str):
    """The component's modules in FP32 while the block runs, then in the dtype they had (a pipeline loaded in
    FP16 to fit in memory: smartedit.export.memory), so that one component at a time is FP32."""
    module = GRAPHS[family][name](pipeline)
    dtype = next(module.parameters()).dtype
    module.float()
    try:
        yield
    finally:
        if dtype != torch.float32:
            module.to(dtype)
            gc.collect()


def unet_up_factor(pipeline) -> int:
    """How much the UNet downsamples: latent sizes it handles without its upsample-size path."""
    return 2 ** (len(pipeline.unet.config.block_out_channels) - 1)


def trace_resolution(pipeline, info: PipelineInfo) -> tuple[int, int]:
    """The image size to trace at.

    The UNet takes a different code path when the latent size is not a multiple of its
    downsampling factor (it passes explicit upsample sizes). Tracing takes one path for good, so
    trace on a size that is *not* a multiple: the general path is then in the graph, and it gives
    identical results on sizes that are multiples. Height and width differ so that no axis is
    swapped unnoticed.
    """
    factor = unet_up_factor(pipeline)
    latent_h, latent_w = 2 * factor + 1, 3 * factor + 1
    return latent_h * info.vae_scale_factor, latent_w * info.vae_scale_factor


def example_inputs(spec: ComponentSpec, info: PipelineInfo, batch: int, height: int, width: int,
                   generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """Random inputs for ``spec`` in the value ranges the loop sends."""
    tensors = []
    for tensor in spec.inputs:
        shape = tensor.shape(info, batch, height, width)
        if tensor.datatype == "INT64":
            # Token ids: any id below the smallest real vocabulary is valid.
            tensors.append(torch.randint(0, 256, shape, generator=generator, dtype=torch.int64))
        elif tensor.name == CONTROL_SCALE:  # a conditioning scale per row, one row off
            tensors.append(torch.rand(shape, generator=generator) * (torch.arange(shape[0]) > 0))
        elif tensor.name == CONTROL_GUESS:  # guess mode on every other row
            tensors.append((torch.arange(shape[0]) % 2).float())
        elif not tensor.dims:  # the UNet's timestep: one scalar per row
            tensors.append(torch.randint(0, 1000, shape, generator=generator).float())
        else:
            tensors.append(torch.randn(shape, generator=generator, dtype=torch.float32))
    return tuple(tensors)


def export_component(pipeline, spec: ComponentSpec, info: PipelineInfo, folder: Path) -> Path:
    """Export one component to ``folder/model.onnx`` (FP32) and return its path."""
    return export_module(component_module(pipeline, spec.name, info.family), spec, info, folder,
                         trace_resolution(pipeline, info))


def export_module(module: torch.nn.Module, spec: ComponentSpec, info: PipelineInfo, folder: Path,
                  trace_size: tuple[int, int]) -> Path:
    """Export ``module`` (whose positional inputs and outputs are ``spec``'s) to ``folder/model.onnx``, traced at
    ``trace_size`` (image pixels: ``trace_resolution``)."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / ONNX_FILENAME
    height, width = trace_size
    inputs = example_inputs(spec, info, 2, height, width, torch.Generator().manual_seed(0))
    dynamic_axes = {t.name: t.dynamic_axes() for t in spec.inputs + spec.outputs}
    with torch.inference_mode():
        torch.onnx.export(
            module,
            inputs,
            str(path),
            input_names=spec.input_names,
            output_names=spec.output_names,
            dynamic_axes=dynamic_axes,
            opset_version=ONNX_OPSET,
            do_constant_folding=True,
            dynamo=False,
        )
    consolidate_external_data(path)
    log.info("exported %s to %s", spec.name, path)
    return path


def export_fused_control(pipeline, controlnet, info: PipelineInfo, folder: Path) -> Path:
    """Export ``pipeline``'s UNet and ``controlnet`` as one graph (``FusedControlGraph``) to ``folder/model.onnx``."""
    from smartedit.diffusion.spec import fused_control_unet_spec

    unet_spec = next(spec for spec in components_of(info) if spec.name == "unet")
    module = FusedControlGraph(pipeline.unet, controlnet, unet_spec.input_names, info.latent_channels)
    return export_module(module.eval().float(), fused_control_unet_spec(unet_spec), info, folder,
                         trace_resolution(pipeline, info))


# Where each weight starts in a graph's external data file: ONNX Runtime maps a weight whose offset is a
# multiple of the page size straight from the file (read-only, shared, reclaimable) and copies any other
# into its own memory; an SDXL UNet is 9.6 GiB of weights.
EXTERNAL_DATA_ALIGNMENT = 4096


def consolidate_external_data(path: Path) -> None:
    """Move the weights the exporter wrote beside a graph over 2 GiB, one file per tensor (thousands for a
    UNet), into one file, ``model.onnx.data``, each at an offset ONNX Runtime can map from the file
    (``EXTERNAL_DATA_ALIGNMENT``), a tensor at a time (never all of them in memory)."""
    import onnx
    from onnx.external_data_helper import ExternalDataInfo, _get_all_tensors, uses_external_data

    model = onnx.load(str(path), load_external_data=False)
    tensors = [tensor for tensor in _get_all_tensors(model) if uses_external_data(tensor)]
    if not tensors:
        return
    folder, data_name = path.parent, path.name + ".data"
    written = set()
    with open(folder / (data_name + ".partial"), "wb") as data:
        for tensor in tensors:
            info = ExternalDataInfo(tensor)
            with open(folder / info.location, "rb") as source:
                source.seek(info.offset or 0)
                raw = source.read(info.length) if info.length else source.read()
            written.add(info.location)
            offset = -(-data.tell() // EXTERNAL_DATA_ALIGNMENT) * EXTERNAL_DATA_ALIGNMENT
            data.write(b"\0" * (offset - data.tell()))
            data.write(raw)
            del tensor.external_data[:]
            for key, value in (("location", data_name), ("offset", str(offset)), ("length", str(len(raw)))):
                entry = tensor.external_data.add()
                entry.key, entry.value = key, value
    onnx.save_model(model, str(path))
    for name in written - {data_name}:
        (folder / name).unlink()
    (folder / (data_name + ".partial")).rename(folder / data_name)


def convert_to_fp16(path: Path) -> None:
    """Rewrite the graph at ``path`` with FP16 weights and compute, keeping FP32 inputs/outputs.

    Keeping the I/O in FP32 keeps one wire format for every runtime profile; the casts at the
    edges cost nothing next to the UNet. Graphs over 2 GiB are saved with external data.
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    model = onnx.load(str(path))
    model = convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=True)
    try:
        too_big_for_protobuf = model.ByteSize() > 2**31 - 1
    except ValueError:  # protobuf refuses to even measure past 2 GiB
        too_big_for_protobuf = True
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=too_big_for_protobuf,
        all_tensors_to_one_file=True,
        location=path.name + ".data",
    )


def export_pipeline(pipeline, out_dir: Path, precision: str = FP32_PRECISION,
                    names: tuple[str, ...] | None = None) -> dict[str, Path]:
    """Export every component (or the named ones) under ``out_dir/<component>/model.onnx``."""
    if precision not in (FP32_PRECISION, FP16_PRECISION):
        raise ValueError(f"precision must be {FP32_PRECISION!r} or {FP16_PRECISION!r}, got {precision!r}")
    info = PipelineInfo.from_pipeline(pipeline)
    paths = {}
    for spec in components_of(info):
        if names and spec.name not in names:
            continue
        paths[spec.name] = export_component(pipeline, spec, info, out_dir / spec.name)
        if precision == FP16_PRECISION:
            convert_to_fp16(paths[spec.name])
    return paths
