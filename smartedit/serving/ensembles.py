"""The ``inpaint`` ensemble: DESIGN §2's wire API, wired through the steps of one edit.

    preprocess ─┬─ input_ids ──────► text_encoder ─ prompt_embeds ──────────┐  (the family's: PromptEncoding)
                ├─ masked_image ───► vae_encoder ── masked_image_latent_* ──┤
                └─ latent_mask, init_image, resolved parameters ────────────┴► scheduler (loop, BLS → unet)
    scheduler ─ latents ─► vae_decoder ─ decoded_image ─► postprocess ─ edited_image
    preprocess ─ seed_used ─────────────────────────────────────────────────► (output)

The denoising loop is not in the graph (ensembles are acyclic): the scheduler model runs it and
calls ``unet`` through BLS. The streaming entry (``inpaint_stream``) walks the same steps.
"""

from __future__ import annotations

from dataclasses import dataclass

from tritonclient.grpc import model_config_pb2 as mc

from smartedit.serving import steps
from smartedit.serving.pipelines import PipelineNames
from smartedit.diffusion.prompts import PromptEncoding
from smartedit.diffusion.spec import VAE_DECODER, VAE_ENCODER
from smartedit.serving.triton_config import data_type
from smartedit_client import _contract as wire


def _identity(tensors) -> dict[str, str]:
    return {t.name: t.name for t in tensors}


# A one-pipeline server's pipeline (smartedit.serving.pipelines): its models have the plain names.
ONLY_PIPELINE = PipelineNames("default", first=True)


@dataclass(frozen=True)
class GraphStep:
    """One step of an edit: a model (by its base name; a pipeline serves it as ``PipelineNames.model``),
    and its tensors, mapped model tensor → edit tensor."""

    model: str
    input_map: dict[str, str]
    output_map: dict[str, str]


def edit_graph(prompts: PromptEncoding) -> tuple[GraphStep, ...]:
    """The edit of a family that encodes prompts as ``prompts`` says, described once: the unary ensemble is
    made of it (``ensemble_steps``), and the stream walks the same steps itself (``component_steps``),
    around its own preprocessing, loop and postprocessing."""
    encoder = prompts.encoder
    return (
        GraphStep(steps.PREPROCESS, _identity(steps.PREPROCESS_INPUTS), _identity(steps.preprocess_outputs(prompts))),
        GraphStep(encoder.name, _identity(encoder.inputs), dict(prompts.embeddings)),
        GraphStep(VAE_ENCODER.name,
                  {VAE_ENCODER.inputs[0].name: steps.MASKED_IMAGE.name},
                  {VAE_ENCODER.outputs[0].name: steps.MASKED_IMAGE_MEAN.name,
                   VAE_ENCODER.outputs[1].name: steps.MASKED_IMAGE_STD.name}),
        GraphStep(steps.SCHEDULER, _identity(steps.scheduler_inputs(prompts)), _identity(steps.SCHEDULER_OUTPUTS)),
        GraphStep(VAE_DECODER.name,
                  {VAE_DECODER.inputs[0].name: steps.LATENTS.name},
                  {VAE_DECODER.outputs[0].name: steps.DECODED_IMAGE.name}),
        GraphStep(steps.POSTPROCESS, _identity(steps.POSTPROCESS_INPUTS), _identity(steps.POSTPROCESS_OUTPUTS)),
    )


def ensemble_steps(names: PipelineNames, prompts: PromptEncoding) -> list[tuple[str, dict[str, str], dict[str, str]]]:
    """(model name, input_map, output_map) per step of pipeline ``names``' ensemble; maps go model
    tensor → ensemble tensor."""
    return [(names.model(step.model), step.input_map, step.output_map) for step in edit_graph(prompts)]


def component_steps(prompts: PromptEncoding, before_loop: bool) -> list[GraphStep]:
    """The steps before or after the denoising loop that are a component's (the encoders, the decoder)."""
    graph = edit_graph(prompts)
    loop = next(index for index, step in enumerate(graph) if step.model == steps.SCHEDULER)
    part = graph[:loop] if before_loop else graph[loop + 1:]
    return [step for step in part if step.model not in (steps.PREPROCESS, steps.POSTPROCESS)]


def inpaint_ensemble_config(name: str, names: PipelineNames, prompts: PromptEncoding) -> mc.ModelConfig:
    """The unary ensemble ``name`` over pipeline ``names``' models, whose family encodes prompts as
    ``prompts`` says."""
    config = mc.ModelConfig(name=name, platform="ensemble", max_batch_size=0)
    for tensor in wire.INPUTS:
        # Every input is optional to Triton: its ensemble scheduler does not reject a request that
        # lacks a required input, it stalls ("unexpected deadlock"). Preprocess rejects it instead,
        # with INVALID_ARG naming the missing field, which is what the contract promises.
        entry = config.input.add(name=tensor.name, data_type=data_type(tensor.datatype), dims=list(wire.TENSOR_SHAPE))
        entry.optional = True
    for tensor in wire.OUTPUTS:
        config.output.add(name=tensor.name, data_type=data_type(tensor.datatype), dims=list(wire.OUTPUT_SHAPE))
    for model_name, input_map, output_map in ensemble_steps(names, prompts):
        step = config.ensemble_scheduling.step.add(model_name=model_name, model_version=-1)
        step.input_map.update(input_map)
        step.output_map.update(output_map)
    return config
