"""LoRA adapters fused at export (smartedit.export.lora) and the few-step samplers on a served pipeline.

A random adapter made offline with PEFT on the tiny model (rank 4, alpha 8, non-zero up weights, UNet and text
encoder: smartedit.export.tiny_lora), saved in diffusers/PEFT and kohya format, is fused by ``smartedit export
--lora`` into pipelines served side by side with their base; each served edit is compared with diffusers' own
pipeline given the same file through ``load_lora_weights`` + ``fuse_lora`` at the same scale.
"""

from __future__ import annotations

import subprocess

import numpy as np
import pytest
import torch

from conftest import export_by_cli, png_bytes, scene, serving_export
from reference import diffusers_inpaint, psnr
from smartedit.export.lora import AdapterMismatch, LoraAdapter, check_adapter, file_sha256


@pytest.fixture(scope="module")
def adapter_files(tiny_model_dir, tmp_path_factory):
    from smartedit.export.tiny_lora import write_tiny_lora

    return write_tiny_lora(tiny_model_dir, tmp_path_factory.mktemp("tiny-lora"))


@pytest.fixture(scope="module")
def wrong_base_adapter(tiny_sdxl_dir, tmp_path_factory):
    """An adapter made the same way for another base model (the tiny SDXL)."""
    from smartedit.export.tiny_lora import write_tiny_lora

    return write_tiny_lora(tiny_sdxl_dir, tmp_path_factory.mktemp("sdxl-lora"))[0]


def _export(*arguments, out) -> subprocess.CompletedProcess:
    # --no-verify: the graphs' check against PyTorch is tests/test_onnx_export.py's; these compare served results
    return export_by_cli(*arguments, out=out, verify=False)


# --- the adapter file, before any export -------------------------------------------------------------------

def test_both_formats_name_layers_of_the_pipeline_and_a_file_for_another_base_does_not(
        tiny_pipeline, tiny_sdxl_pipeline, adapter_files, wrong_base_adapter):
    from safetensors.torch import load_file

    for file in adapter_files:
        check_adapter(tiny_pipeline, load_file(str(file)), str(file))
    check_adapter(tiny_sdxl_pipeline, load_file(str(wrong_base_adapter)), "sdxl.safetensors")  # its own base
    with pytest.raises(AdapterMismatch, match=r"do not fit their layer|name no layer") as refused:
        check_adapter(tiny_pipeline, load_file(str(wrong_base_adapter)), "sdxl.safetensors")
    assert "unet." in str(refused.value) and "sdxl.safetensors" in str(refused.value)


def test_an_unknown_key_is_refused_by_name(tiny_pipeline, adapter_files):
    from safetensors.torch import load_file

    tensors = load_file(str(adapter_files[1]))
    tensors["lora_unet_no_such_block_to_q.lora_down.weight"] = torch.zeros(4, 32)
    tensors["lycoris_something.hada_w1_a"] = torch.zeros(4, 4)
    tensors["lora_unet_conv_norm_out.lora_down.weight"] = torch.zeros(4, 32)  # a norm layer: no LoRA adapts it
    with pytest.raises(AdapterMismatch, match="3 key.s. name no layer") as refused:
        check_adapter(tiny_pipeline, tensors, "extra.safetensors")
    for key in ("lora_unet_no_such_block_to_q.lora_down.weight", "lycoris_something.hada_w1_a",
                "lora_unet_conv_norm_out.lora_down.weight"):
        assert key in str(refused.value)


def test_a_layer_without_its_pair_and_a_file_of_two_formats_are_refused(tiny_pipeline, adapter_files):
    from safetensors.torch import load_file

    kohya = load_file(str(adapter_files[1]))
    up = next(key for key in kohya if key.endswith("lora_up.weight"))
    with pytest.raises(AdapterMismatch, match=r"1 layer.s. lack a down/up pair.*\(down only\)"):
        check_adapter(tiny_pipeline, {key: value for key, value in kohya.items() if key != up}, "half.safetensors")
    down = up.replace("lora_up", "lora_down")
    with pytest.raises(AdapterMismatch, match=r"down rank 2, up rank 4"):
        check_adapter(tiny_pipeline, {**kohya, down: kohya[down][:2]}, "ranks.safetensors")
    mixed = {**kohya, **load_file(str(adapter_files[0]))}
    with pytest.raises(AdapterMismatch, match="mixes kohya keys"):
        check_adapter(tiny_pipeline, mixed, "mixed.safetensors")


def test_diffusers_older_attention_processor_names_are_read(tiny_pipeline, adapter_files):
    """diffusers <= 0.20 saved ``attn1.processor.to_q_lora.down.weight`` (UNet) and ``self_attn.to_q_lora.down.weight``
    (text encoder), which it still loads."""
    from safetensors.torch import load_file

    renames = [(".to_out.0.lora_A.weight", ".processor.to_out_lora.down.weight"),
               (".to_out.0.lora_B.weight", ".processor.to_out_lora.up.weight")]
    renames += [(f".to_{x}.lora_{side}.weight", f".processor.to_{x}_lora.{name}.weight")
                for x in "qkv" for side, name in (("A", "down"), ("B", "up"))]
    renames += [(f".self_attn.{x}_proj.lora_{side}.weight", f".self_attn.to_{x}_lora.{name}.weight")
                for x in ("q", "k", "v", "out") for side, name in (("A", "down"), ("B", "up"))]
    old = {}
    for key, value in load_file(str(adapter_files[0])).items():
        for new, previous in renames:
            key = key.replace(new, previous)
        old[key] = value
    assert any(".processor.to_q_lora.down.weight" in key for key in old)
    assert any(".self_attn.to_q_lora.down.weight" in key for key in old)
    check_adapter(tiny_pipeline, old, "old.safetensors")


@pytest.mark.parametrize("file_index,scale", [(0, 1.0), (1, 0.5)])
def test_a_fused_layer_is_its_weight_plus_scale_alpha_over_rank_up_down(tiny_model_dir, adapter_files, file_index,
                                                                       scale):
    """By hand from the file, for a UNet layer and a text encoder layer: W + scale * alpha / rank * up @ down (the
    alpha from the PEFT file's metadata, or the kohya file's alpha tensor)."""
    from diffusers import StableDiffusionInpaintPipeline
    from safetensors.torch import load_file
    from smartedit.export.lora import fuse_adapters
    from smartedit.export.tiny_lora import ALPHA, RANK

    base = StableDiffusionInpaintPipeline.from_pretrained(str(tiny_model_dir))
    fused = StableDiffusionInpaintPipeline.from_pretrained(str(tiny_model_dir))
    fuse_adapters(fused, [LoraAdapter(adapter_files[file_index], scale)])
    peft = load_file(str(adapter_files[0]))  # the same numbers in both files
    for component, layer in (("unet", "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"),
                             ("text_encoder", "encoder.layers.1.self_attn.q_proj")):
        down, up = peft[f"{component}.{layer}.lora_A.weight"], peft[f"{component}.{layer}.lora_B.weight"]
        weight = dict(getattr(base, component).named_modules())[layer].weight
        expected = weight + scale * ALPHA / RANK * up @ down
        assert torch.allclose(dict(getattr(fused, component).named_modules())[layer].weight, expected, atol=1e-6)
        assert not torch.allclose(weight, expected, atol=1e-3)


def test_a_lora_argument_takes_a_scale_and_refuses_what_is_not_an_adapter_file(adapter_files, tmp_path):
    peft_file = adapter_files[0]
    assert LoraAdapter.parse(str(peft_file)) == LoraAdapter(peft_file, 1.0)
    assert LoraAdapter.parse(f"{peft_file}:0.5") == LoraAdapter(peft_file, 0.5)
    assert LoraAdapter.parse(f"{peft_file}:-1e-1").scale == -0.1
    with pytest.raises(ValueError, match="no such file"):
        LoraAdapter.parse(str(tmp_path / "missing.safetensors"))
    with pytest.raises(ValueError, match="its scale 'half' is not a finite number"):
        LoraAdapter.parse(f"{peft_file}:half")
    with pytest.raises(ValueError, match="its scale '1e400' is not a finite number"):
        LoraAdapter.parse(f"{peft_file}:1e400")
    with pytest.raises(ValueError, match="expected a .safetensors file"):
        LoraAdapter.parse(str(tmp_path / "adapter.ckpt"))


def test_a_checkpoint_whose_unet_takes_a_guidance_embedding_is_refused_naming_it(tiny_pipeline):
    """A fully LCM-distilled UNet (``time_cond_proj_dim``) takes an input the served UNet does not have."""
    from types import SimpleNamespace

    from diffusers import UNet2DConditionModel
    from smartedit.export.pipeline_loader import UnsupportedModel, check_servable

    unet = UNet2DConditionModel.from_config(dict(tiny_pipeline.unet.config, time_cond_proj_dim=32))
    with pytest.raises(UnsupportedModel, match="unet time_cond_proj_dim 32"):
        check_servable(SimpleNamespace(unet=unet, vae=tiny_pipeline.vae), "lcm-dreamshaper")


def test_export_refuses_an_adapter_for_another_base_naming_its_keys_and_writes_nothing(
        tiny_model_dir, wrong_base_adapter, tmp_path):
    out = tmp_path / "model_repository"
    result = _export("--model", f"tiny={tiny_model_dir}", "--lora", wrong_base_adapter, out=out)
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"smartedit: --lora {wrong_base_adapter}") and "unet." in last, last
    assert not out.exists()


# --- served: the adapters fused at export, side by side with their base ---------------------------------------

KOHYA_SCALE = 0.5


@pytest.fixture(scope="module")
def adapted_server(tiny_model_dir, adapter_files, tmp_path_factory):
    """Pipelines ``peft`` (the diffusers-format file at scale 1), ``kohya`` (the kohya file at 0.5) and ``lcm`` (the
    base exported for the LCM sampler), exported by the command line. The base itself is the shared ``server``'s
    (the same tiny weights): one pipeline less to start here."""
    peft_file, kohya_file = adapter_files
    out = tmp_path_factory.mktemp("lora") / "model_repository"
    with serving_export(*[argument for name in ("peft", "kohya", "lcm")
                          for argument in ("--model", f"{name}={tiny_model_dir}")],
                        "--lora", f"peft={peft_file}", "--lora", f"kohya={kohya_file}:{KOHYA_SCALE}",
                        "--scheduler", "lcm=lcm", out=out, verify=False) as running:
        yield running


@pytest.fixture(scope="module")
def adapted_client(adapted_server):
    from smartedit_client import InpaintClient

    with InpaintClient(adapted_server.address.grpc, timeout_s=120) as client:
        yield client


def _fused_reference(tiny_model_dir, file, scale):
    """diffusers' pipeline on the tiny weights with the adapter loaded and fused at ``scale``, as its docs do."""
    from diffusers import StableDiffusionInpaintPipeline

    pipeline = StableDiffusionInpaintPipeline.from_pretrained(str(tiny_model_dir))
    pipeline.load_lora_weights(str(file))
    pipeline.fuse_lora(lora_scale=scale)
    return pipeline


EDIT = dict(prompt="a red chair", negative_prompt="ugly", num_inference_steps=4, guidance_scale=7.5, seed=7,
            scheduler="ddim")


@pytest.mark.functional
@pytest.mark.parametrize("pipeline,file_index,scale", [("peft", 0, 1.0), ("kohya", 1, KOHYA_SCALE)])
def test_an_adapted_pipeline_matches_diffusers_with_the_adapter_fused(adapted_client, client, tiny_model_dir,
                                                                      adapter_files, pipeline, file_index, scale):
    image, mask = scene(40, 24)
    served = adapted_client.inpaint(image=png_bytes(image), mask_image=png_bytes(mask), pipeline=pipeline, **EDIT)
    base = client.inpaint(image=png_bytes(image), mask_image=png_bytes(mask), **EDIT)  # the base, served
    ours, base_pixels = np.asarray(served.image), np.asarray(base.image)
    reference = diffusers_inpaint(_fused_reference(tiny_model_dir, adapter_files[file_index], scale), image, mask,
                                  **EDIT)
    inside = np.asarray(mask) >= 128
    assert psnr(ours[inside], reference[inside]) >= 40
    assert np.array_equal(ours[~inside], np.asarray(image)[~inside])
    assert psnr(base_pixels[inside], reference[inside]) < 40  # the adapter matters: the base alone does not match


@pytest.mark.functional
def test_results_name_the_adapters_fused_into_their_model(adapted_client, client, adapter_files):
    image, mask = scene(40, 24)
    carried = {name: adapted_client.inpaint(image=png_bytes(image), mask_image=png_bytes(mask), pipeline=name,
                                            **EDIT).parameters
               for name in ("peft", "kohya")}
    carried["tiny"] = client.inpaint(image=png_bytes(image), mask_image=png_bytes(mask), **EDIT).parameters
    assert "adapters" not in carried["tiny"]
    for name, file, scale in (("peft", adapter_files[0], 1.0), ("kohya", adapter_files[1], KOHYA_SCALE)):
        assert carried[name]["adapters"] == [{"file": file.name, "sha256": file_sha256(file), "scale": scale}]
    digests = {values["weights_sha256"] for values in carried.values()}
    assert len(digests) == 3  # the served weights are the fused ones


@pytest.mark.functional
def test_server_info_says_which_samplers_suit_each_pipeline(adapted_client, client):
    info = adapted_client.server_info()
    base = client.server_info()  # the base model, exported without --scheduler
    pipelines = {**info.pipelines, "tiny": base}
    suited = {name: pipeline.suited_samplers for name, pipeline in pipelines.items()}
    assert suited["lcm"] == ("lcm", "tcd")
    assert "lcm" not in suited["tiny"] and "ddim" in suited["tiny"] and suited["peft"] == suited["tiny"]
    assert {"lcm", "tcd"} <= set(info.samplers)
    # the few-step pipeline's defaults are its sampler's; the others keep the server's
    defaults = {name: {key: pipeline.parameters[key].default
                       for key in ("scheduler", "num_inference_steps", "guidance_scale")}
                for name, pipeline in pipelines.items()}
    assert defaults["lcm"] == {"scheduler": "lcm", "num_inference_steps": 4, "guidance_scale": 1.0}
    assert defaults["tiny"] == {"scheduler": "ddim", "num_inference_steps": 50, "guidance_scale": 7.5}


@pytest.mark.functional
def test_an_edit_that_names_no_sampler_gets_the_few_step_pipelines_defaults(adapted_client, tiny_pipeline):
    image, mask = scene(40, 24, seed=4)
    result = adapted_client.inpaint(image=png_bytes(image), mask_image=png_bytes(mask), pipeline="lcm",
                                    prompt="a red chair", seed=5)
    record = result.parameters["parameters"]
    assert (record["scheduler"], record["num_inference_steps"], record["guidance_scale"]) == ("lcm", 4, 1.0)
    reference = diffusers_inpaint(tiny_pipeline, image, mask, prompt="a red chair", negative_prompt="",
                                  num_inference_steps=4, guidance_scale=1.0, seed=5, scheduler="lcm")
    inside = np.asarray(mask) >= 128
    assert psnr(np.asarray(result.image)[inside], reference[inside]) >= 40


@pytest.mark.functional
@pytest.mark.parametrize("sampler,steps,guidance,eta", [("lcm", 4, 1.0, 0.0), ("lcm", 8, 2.0, 0.0),
                                                         ("tcd", 4, 1.0, 0.3), ("tcd", 8, 1.5, 0.0)])
def test_few_step_samplers_served_match_diffusers(adapted_client, tiny_pipeline, sampler, steps, guidance, eta):
    image, mask = scene(40, 24, seed=3)
    edit = dict(prompt="a red chair", negative_prompt="ugly", num_inference_steps=steps, guidance_scale=guidance,
                seed=11, scheduler=sampler, eta=eta)
    served = np.asarray(adapted_client.inpaint(image=png_bytes(image), mask_image=png_bytes(mask), pipeline="lcm",
                                               **edit).image)
    reference = diffusers_inpaint(tiny_pipeline, image, mask, **edit)
    inside = np.asarray(mask) >= 128
    assert psnr(served[inside], reference[inside]) >= 40
    assert np.array_equal(served[~inside], np.asarray(image)[~inside])


@pytest.mark.functional
def test_more_steps_than_a_consistency_sampler_takes_are_refused_by_name(adapted_client):
    from smartedit_client import InvalidRequestError

    image, mask = scene(40, 24)
    with pytest.raises(InvalidRequestError, match="51 is more than scheduler lcm takes") as refused:
        adapted_client.inpaint(image=png_bytes(image), mask_image=png_bytes(mask), pipeline="lcm", prompt="x",
                               scheduler="lcm", num_inference_steps=51)
    assert refused.value.field == "num_inference_steps"
