"""A family's prompt encoding and defaults: what they declare is what preprocess makes, the edit graph
carries, the step configs declare and the loop reads, with no other code knowing a family's encoders."""

from __future__ import annotations

import dataclasses

import pytest

from smartedit.diffusion import families
from smartedit.diffusion.prompts import SD_PROMPTS, PromptEncoding
from smartedit.diffusion.spec import ComponentSpec, PipelineInfo, TensorSpec
from smartedit.edit.parameters import resolve_parameters
from smartedit.errors import RequestError
from smartedit.export.tiny_model import write_tokenizer
from smartedit.serving import steps
from smartedit.serving.ensembles import ONLY_PIPELINE, component_steps, edit_graph, inpaint_ensemble_config
from smartedit.serving.pipelines import PipelineNames
from smartedit.serving.server_info import describe_pipeline
from smartedit.serving.settings import PreprocessSettings
from smartedit.serving.triton_config import step_config
from smartedit.edit.provenance import Provenance
from smartedit_client import _contract as wire

# SDXL's shape of it: two tokenizers into one encoder graph, which answers the two CLIP models' penultimate
# states concatenated and the second's pooled projection.
TWO_ENCODERS = ComponentSpec(
    name="text_encoder",
    inputs=(TensorSpec("input_ids", "INT64", ("text_length",)), TensorSpec("input_ids_2", "INT64", ("text_length",))),
    outputs=(TensorSpec("hidden_states", "FP32", ("text_length", "text_hidden_size")),
             TensorSpec("pooled", "FP32", ("text_hidden_size",))),
)
TWO_PROMPTS = PromptEncoding(tokenizers=("tokenizer", "tokenizer_2"), encoder=TWO_ENCODERS,
                             embeddings={"hidden_states": "prompt_embeds", "pooled": "pooled_prompt_embeds"})


def test_every_family_encodes_prompts_with_a_component_it_serves():
    for name, module in families.FAMILIES.items():
        assert module.PROMPTS.encoder in module.COMPONENTS, name
        assert set(module.DEFAULTS) | set(module.OWN_PARAMETERS) <= {spec.name for spec in wire.PARAMETERS}, name


def test_a_declaration_must_give_each_encoder_input_a_tokenizer_and_name_real_outputs():
    with pytest.raises(ValueError, match="1 tokenizers for the 2 inputs of text_encoder"):
        PromptEncoding(tokenizers=("tokenizer",), encoder=TWO_ENCODERS, embeddings={"pooled": "pooled"})
    with pytest.raises(ValueError, match=r"\['last_hidden_state'\] are not outputs of text_encoder"):
        dataclasses.replace(TWO_PROMPTS, embeddings={"last_hidden_state": "prompt_embeds"})


def test_each_tokenizer_gives_its_ids_padded_to_its_own_length(tmp_path):
    from transformers import CLIPTokenizer

    write_tokenizer(tmp_path / "tok")
    first = CLIPTokenizer.from_pretrained(tmp_path / "tok")
    second = CLIPTokenizer.from_pretrained(tmp_path / "tok", model_max_length=20)
    ids = TWO_PROMPTS.tokenize([first, second], "", "a red chair " * 20)
    assert {name: array.shape for name, array in ids.items()} == {"input_ids": (2, 77), "input_ids_2": (2, 20)}
    # Truncated as encode_prompt truncates: the prompt's row ends with the end token, the empty negative is padding.
    assert ids["input_ids_2"][1, -1] == second.eos_token_id and ids["input_ids_2"][0, 0] == second.bos_token_id
    # The first tokenizer's ids are what SD's one-tokenizer encoding makes of the same prompts.
    assert (SD_PROMPTS.tokenize([first], "", "a red chair " * 20)["input_ids"] == ids["input_ids"]).all()


def test_the_edit_graph_carries_every_tensor_the_encoding_declares():
    graph = edit_graph(TWO_PROMPTS)
    by_model = {step.model: step for step in graph}
    assert by_model["text_encoder"].input_map == {"input_ids": "input_ids", "input_ids_2": "input_ids_2"}
    assert by_model["text_encoder"].output_map == {"hidden_states": "prompt_embeds", "pooled": "pooled_prompt_embeds"}
    assert set(by_model[steps.PREPROCESS].output_map) >= {"input_ids", "input_ids_2"}
    assert set(by_model[steps.SCHEDULER].input_map) >= {"prompt_embeds", "pooled_prompt_embeds"}
    available = {t.name for t in wire.INPUTS}
    for step in graph:  # each step's inputs made before it
        assert set(step.input_map.values()) <= available, step.model
        available |= set(step.output_map.values())
    # The stream walks the same component steps, the family's encoder first.
    assert [step.model for step in component_steps(TWO_PROMPTS, before_loop=True)] == ["text_encoder", "vae_encoder"]
    engine = {t.name: t for t in steps.engine_inputs(TWO_PROMPTS)}
    assert engine["pooled_prompt_embeds"].dims == (-1, -1) and engine["pooled_prompt_embeds"].optional  # 2 or 3 rows
    for model, inputs, outputs in ((steps.PREPROCESS, steps.PREPROCESS_INPUTS, steps.preprocess_outputs(TWO_PROMPTS)),
                                   (steps.SCHEDULER, steps.scheduler_inputs(TWO_PROMPTS), steps.SCHEDULER_OUTPUTS)):
        config = step_config(model, inputs, outputs)
        declared = {t.name for t in config.input} | {t.name for t in config.output}
        assert set(by_model[model].input_map) | set(by_model[model].output_map) == declared
    ensemble = inpaint_ensemble_config("inpaint_xl", PipelineNames("xl", first=False), TWO_PROMPTS)
    assert {"input_ids_2", "pooled_prompt_embeds"} <= {name for step in ensemble.ensemble_scheduling.step
                                                       for name in step.output_map.values()}


def test_sd_families_keep_the_names_existing_repositories_use():
    assert [t.name for t in SD_PROMPTS.ids_tensors] == ["input_ids"]
    assert [t.name for t in SD_PROMPTS.embedding_tensors] == ["prompt_embeds"]
    text = {s.model: s for s in edit_graph(SD_PROMPTS)}["text_encoder"]
    assert (text.input_map, text.output_map) == ({"input_ids": "input_ids"}, {"last_hidden_state": "prompt_embeds"})
    assert inpaint_ensemble_config("inpaint", ONLY_PIPELINE, SD_PROMPTS).name == "inpaint"


INFO = PipelineInfo(vae_scale_factor=8, latent_channels=4, unet_in_channels=9, text_length=77, text_hidden_size=32,
                    vae_scaling_factor=0.18215, unet_sample_size=32, working_resolution=256)


def test_a_family_s_defaults_apply_below_the_server_s_the_task_s_and_the_request_s(monkeypatch):
    monkeypatch.setattr(families.FAMILIES[INFO.family], "DEFAULTS",
                        {"strength": 0.9999, "mask_blur": 4, "num_inference_steps": 4})
    settings = PreprocessSettings()
    resolve = lambda **sent: resolve_parameters({"prompt": b"x", **sent}.get, settings,  # noqa: E731
                                                families.family_parameters(INFO))
    assert (resolve().strength, resolve().mask_blur) == (0.9999, 4)
    assert resolve(strength=0.5).strength == 0.5  # the request's value wins
    assert resolve(task=b"remove").strength == 0.75  # the task's default wins over the family's
    assert resolve(task=b"replace_background").mask_blur == 8
    # The server's configuration sets the steps, guidance, sampler and crop padding over the family's.
    assert resolve().num_inference_steps == settings.default_num_inference_steps != 4
    # server_info shows the defaults in force for the pipeline.
    described = describe_pipeline(PipelineNames("p", first=True), INFO, settings,
                                  Provenance(model="m", weights_sha256="0"))
    assert described["parameters"]["strength"]["default"] == 0.9999
    # Without the family's defaults (no pipeline at hand), the contract's.
    assert resolve_parameters({"prompt": b"x"}.get, settings).strength == 1.0


def test_a_parameter_another_family_owns_is_refused_by_name_and_not_offered(monkeypatch):
    other = next(name for name in families.FAMILIES if name != INFO.family)
    monkeypatch.setattr(families.FAMILIES[other], "OWN_PARAMETERS", ("eta",))
    family = families.family_parameters(INFO)
    with pytest.raises(RequestError, match=rf"eta: is not taken by this pipeline \(family {INFO.family}\)"):
        resolve_parameters({"prompt": b"x", "eta": 0.5}.get, PreprocessSettings(), family)
    # Left out: fine, and the record holds None for it (a result PNG does not carry another family's parameter).
    assert resolve_parameters({"prompt": b"x"}.get, PreprocessSettings(), family).eta is None
    described = describe_pipeline(PipelineNames("p", first=True), INFO, PreprocessSettings(),
                                  Provenance(model="m", weights_sha256="0"))
    assert "eta" not in described["parameters"] and "strength" in described["parameters"]
    # The family that owns it takes it.
    owner = dataclasses.replace(INFO, family=other)
    assert resolve_parameters({"prompt": b"x", "eta": 0.5}.get, PreprocessSettings(),
                              families.family_parameters(owner)).eta == 0.5
