"""ControlNet in the loop (smartedit.diffusion.control) against diffusers' ``StableDiffusionControlNetInpaintPipeline``,
with the PyTorch modules: no server involved.

The tiny ControlNet is built from the tiny UNet's config with every weight drawn at random
(smartedit.export.tiny_controlnet), so its residuals change the edit and a loop that dropped or misplaced them fails.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import png_bytes, scene
from reference import diffusers_controlnet_inpaint, psnr
from test_engine import assert_batched_equal_alone, torch_unet_of
from smartedit.diffusion.control import (
    DOWN_RESIDUAL, MID_RESIDUAL, ControlledUNet, ControlSettings, attach, residual_layout, uncontrolled,
)
from smartedit.diffusion.denoise import EditInputs, decoder_input, run_to_end
from smartedit.diffusion.families import family_of, start_denoising
from smartedit.diffusion.spec import PipelineInfo
from smartedit.edit.control_images import canny_condition, image_condition, inpaint_condition
from smartedit.edit.parameters import EditParameters
from smartedit.edit.postprocessing import compose, to_pixels
from smartedit.edit.preprocessing import prepare_images
from smartedit.export.onnx_export import added_conditioning, component_module
from smartedit.serving.settings import PreprocessSettings


def _torch_controlled_unet(pipe, controlnet) -> ControlledUNet:
    """The controlled UNet function on the PyTorch modules (numpy in and out, as the engine's BLS calls)."""
    layout = residual_layout(pipe.unet.config)
    down_names = [DOWN_RESIDUAL.format(index) for index in range(len(layout) - 1)]

    def unet(inputs):
        tensors = {name: torch.from_numpy(value) for name, value in inputs.items()}
        with torch.inference_mode():
            return pipe.unet(tensors["sample"], tensors["timestep"],
                             encoder_hidden_states=tensors["encoder_hidden_states"],
                             added_cond_kwargs=added_conditioning(tensors),
                             down_block_additional_residuals=[tensors[name] for name in down_names],
                             mid_block_additional_residual=tensors[MID_RESIDUAL]).sample.numpy()

    def control(inputs):
        tensors = {name: torch.from_numpy(value) for name, value in inputs.items()}
        with torch.inference_mode():
            down, mid = controlnet(tensors["sample"], tensors["timestep"],
                                   encoder_hidden_states=tensors["encoder_hidden_states"],
                                   controlnet_cond=tensors["controlnet_cond"], conditioning_scale=1.0,
                                   added_cond_kwargs=added_conditioning(tensors), return_dict=False)
        return {name: residual.numpy() for name, residual in zip(down_names + [MID_RESIDUAL], [*down, mid])}

    return ControlledUNet(unet, control, pipe.vae.config.latent_channels, layout)


def _preparer(pipe, image, mask, control_image, settings: dict, params: EditParameters):
    """(a function starting the edit's controlled DenoiseState, as the engine's prepare does; what the result is
    composed with)."""
    info = PipelineInfo.from_pipeline(pipe)
    prepared = prepare_images(png_bytes(image), png_bytes(mask), info, PreprocessSettings())
    prompts = family_of(info).PROMPTS
    ids = prompts.tokenize([getattr(pipe, name) for name in prompts.tokenizers], params.negative_prompt, params.prompt)
    with torch.inference_mode():
        encoded = component_module(pipe, "text_encoder", info.family)(*map(torch.from_numpy, ids.values()))
        encoded = encoded if isinstance(encoded, tuple) else (encoded,)
        embeddings = dict(zip(prompts.embeddings.values(), encoded))
        masked = pipe.vae.encode(torch.from_numpy(prepared.masked_image)).latent_dist
        init = pipe.vae.encode(torch.from_numpy(prepared.init_image)).latent_dist
    inputs = EditInputs(embeddings, masked.mean, masked.std, torch.from_numpy(prepared.latent_mask))

    def prepare():
        state = start_denoising(info, pipe.scheduler.config, params, inputs, lambda: (init.mean, init.std))
        if control_image is None:
            return uncontrolled(state, (image.size[1], image.size[0]))
        return attach(state, ControlSettings(image=torch.from_numpy(control_image), **settings))

    return prepare, prepared


def _controlled_loop(pipe, controlnet, image, mask, control_image, settings: dict, params: EditParameters,
                     unet=None):
    """(the edit's composed pixels, where it repaints), stepped on ``unet`` (numpy in and out; default: the two
    PyTorch modules, ``_torch_controlled_unet``)."""
    info = PipelineInfo.from_pipeline(pipe)
    prepare, prepared = _preparer(pipe, image, mask, control_image, settings, params)
    with torch.inference_mode():
        state = prepare()
        assert run_to_end(state, torch_unet_of(unet or _torch_controlled_unet(pipe, controlnet)))
        decoded = pipe.vae.decode(decoder_input(state, info)).sample.numpy()
    return (compose(to_pixels(decoded), prepared.original_image, prepared.repaint_mask, prepared.region.box),
            prepared.repaint_mask)


def _reference(pipe, controlnet, image, mask, control_image, settings: dict, params: EditParameters) -> np.ndarray:
    names = {"conditioning_scale": "controlnet_conditioning_scale", "guidance_start": "control_guidance_start",
             "guidance_end": "control_guidance_end", "guess_mode": "guess_mode"}
    return diffusers_controlnet_inpaint(
        pipe, controlnet, image, mask, control_image, prompt=params.prompt, negative_prompt=params.negative_prompt,
        num_inference_steps=params.num_inference_steps, guidance_scale=params.guidance_scale, seed=params.seed,
        scheduler=params.scheduler, strength=params.strength, eta=params.eta,
        **{names[key]: value for key, value in settings.items()})


def _control_image(kind: str, image, mask) -> np.ndarray:
    photo = np.asarray(image)
    if kind == "image":
        return image_condition(np.asarray(scene(image.size[0], image.size[1], seed=5)[0]))
    if kind == "canny":
        return image_condition(canny_condition(photo, 50, 150))
    return inpaint_condition(photo, np.asarray(mask) >= 128)


@pytest.mark.parametrize("kind,settings,sampler,strength,guidance", [
    ("image", {}, "ddim", 1.0, 7.5),  # the reference's defaults: scale 0.5, the whole schedule
    ("image", {"conditioning_scale": 1.0, "guidance_start": 0.2, "guidance_end": 0.8}, "euler", 1.0, 7.5),
    ("canny", {"conditioning_scale": 0.8}, "ddim", 0.6, 5.0),
    ("inpaint", {"conditioning_scale": 1.0, "guidance_end": 0.5}, "dpmpp_2m", 1.0, 7.5),
    ("image", {"guess_mode": True, "conditioning_scale": 0.9}, "ddim", 1.0, 7.5),
    ("image", {"guess_mode": True, "conditioning_scale": 1.0}, "ddim", 1.0, 1.0),  # no guidance: its one row
])
def test_controlled_loop_matches_diffusers_controlnet_inpaint(tiny_pipeline, tiny_controlnet, kind, settings, sampler,
                                                              strength, guidance):
    image, mask = scene(40, 24)
    control_image = _control_image(kind, image, mask)
    params = EditParameters(prompt="a red chair", negative_prompt="ugly", scheduler=sampler, num_inference_steps=5,
                            strength=strength, guidance_scale=guidance, seed=7)
    ours, inside = _controlled_loop(tiny_pipeline, tiny_controlnet, image, mask, control_image, settings, params)
    reference = _reference(tiny_pipeline, tiny_controlnet, image, mask, control_image, settings, params)
    assert psnr(ours[inside], reference[inside]) >= 40
    assert np.array_equal(ours[~inside], np.asarray(image)[~inside])
    # the control matters: the same edit without it is another picture
    plain, _ = _controlled_loop(tiny_pipeline, tiny_controlnet, image, mask, None, {}, params)
    assert psnr(plain[inside], reference[inside]) < 40


def test_canny_condition_is_opencvs_edges_in_three_channels():
    import cv2

    image, _ = scene(40, 24)
    photo = np.asarray(image)
    edges = canny_condition(photo, 50, 150)
    assert edges.shape == (24, 40, 3) and set(np.unique(edges)) <= {0, 255} and edges.any()
    assert np.array_equal(edges[:, :, 1], cv2.Canny(photo, 50, 150))


def test_the_residual_layout_is_the_controlnets(tiny_pipeline, tiny_controlnet):
    """What ControlledUNet makes zeros of for rows without control: the ControlNet's own residual shapes."""
    layout = residual_layout(tiny_pipeline.unet.config)
    for height, width in ((12, 20), (11, 17)):  # latents; odd sizes halve rounding up
        with torch.inference_mode():
            down, mid = tiny_controlnet(torch.zeros(1, 4, height, width), torch.tensor([1.0]),
                                        encoder_hidden_states=torch.zeros(1, 77, 32),
                                        controlnet_cond=torch.zeros(1, 3, height * 8, width * 8), return_dict=False)
        shapes = [tuple(residual.shape[1:]) for residual in [*down, mid]]
        expected = []
        for channels, halved in layout:
            size = (height, width)
            for _ in range(halved):
                size = tuple((side + 1) // 2 for side in size)
            expected.append((channels, *size))
        assert shapes == expected


def test_an_edit_without_control_on_a_controlled_unet_is_the_plain_edit(tiny_pipeline, tiny_controlnet):
    """Zero residuals leave the UNet's sums as they are: an uncontrolled edit sharing a pipeline with a ControlNet
    (``uncontrolled`` rows, no ControlNet call) gives the plain loop's latents, bit for bit."""
    from test_denoise import _loop_with_torch

    image, mask = scene(40, 24)
    params = EditParameters(prompt="a red chair", negative_prompt="ugly", scheduler="ddim", num_inference_steps=4,
                            strength=1.0, guidance_scale=7.5, seed=7)
    ours, _ = _controlled_loop(tiny_pipeline, tiny_controlnet, image, mask, None, {}, params)
    plain, _ = _loop_with_torch(tiny_pipeline, image, mask, "ddim", 1.0, 7.5)
    assert np.array_equal(ours, plain)


@pytest.mark.parametrize("kind,settings", [("canny", {"conditioning_scale": 1.0}),
                                           ("inpaint", {"guidance_start": 0.4, "guess_mode": True})])
def test_controlled_latent_blending_matches_diffusers_on_a_4_channel_unet(tiny_text_to_image_pipeline, tiny_controlnet,
                                                                          kind, settings):
    pipe = tiny_text_to_image_pipeline
    image, mask = scene(40, 24, seed=2)
    control_image = _control_image(kind, image, mask)
    params = EditParameters(prompt="a red chair", negative_prompt="ugly", scheduler="ddim", num_inference_steps=5,
                            strength=1.0, guidance_scale=7.5, seed=3)
    ours, inside = _controlled_loop(pipe, tiny_controlnet, image, mask, control_image, settings, params)
    reference = _reference(pipe, tiny_controlnet, image, mask, control_image, settings, params)
    assert psnr(ours[inside], reference[inside]) >= 40
    assert np.array_equal(ours[~inside], np.asarray(image)[~inside])


# --- one graph: the ControlNet and the UNet fused, as the served pipeline will run them --------------------------

@pytest.fixture(scope="module")
def fused_graph(tiny_pipeline, tiny_controlnet, tmp_path_factory):
    import onnxruntime as ort
    from smartedit.export.onnx_export import export_fused_control

    path = export_fused_control(tiny_pipeline, tiny_controlnet, PipelineInfo.from_pipeline(tiny_pipeline),
                                tmp_path_factory.mktemp("fused-control"))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    calls = []

    def unet(inputs):  # numpy in and out, as the engine's BLS call
        calls.append(inputs["sample"].shape[0])
        return session.run(None, {name: np.ascontiguousarray(value) for name, value in inputs.items()})[0]

    unet.calls = calls
    return unet


def test_the_fused_graph_is_the_controlnet_then_the_unet(tiny_pipeline, tiny_controlnet, fused_graph):
    """Rows of a sent image, canny with a scale, guess mode and no control, in one call: the fused graph against
    the two PyTorch modules called as ``ControlledUNet`` calls them."""
    image, mask = scene(40, 24)
    states = []
    for kind, settings in (("canny", {"conditioning_scale": 1.0}), (None, {}), ("image", {"guess_mode": True}),
                           ("inpaint", {"conditioning_scale": 0.3})):
        params = EditParameters(prompt="a red chair", negative_prompt="ugly", num_inference_steps=4, seed=1)
        control_image = None if kind is None else _control_image(kind, image, mask)
        states.append(_preparer(tiny_pipeline, image, mask, control_image, settings, params)[0]())
    inputs = {name: np.concatenate([state.unet_inputs()[name].numpy() for state in states])
              for name in states[0].unet_inputs()}
    reference = _torch_controlled_unet(tiny_pipeline, tiny_controlnet)(dict(inputs))
    assert np.abs(fused_graph(inputs) - reference).max() < 1e-4


@pytest.mark.parametrize("kind,settings", [("canny", {"conditioning_scale": 1.0, "guidance_end": 0.6}),
                                           ("image", {"guess_mode": True, "conditioning_scale": 0.8})])
def test_the_loop_on_the_fused_graph_matches_diffusers(tiny_pipeline, tiny_controlnet, fused_graph, kind, settings):
    image, mask = scene(40, 24, seed=6)
    control_image = _control_image(kind, image, mask)
    params = EditParameters(prompt="a red chair", negative_prompt="ugly", scheduler="ddim", num_inference_steps=5,
                            guidance_scale=7.5, seed=9)
    ours, inside = _controlled_loop(tiny_pipeline, tiny_controlnet, image, mask, control_image, settings, params,
                                    unet=fused_graph)
    reference = _reference(tiny_pipeline, tiny_controlnet, image, mask, control_image, settings, params)
    assert psnr(ours[inside], reference[inside]) >= 40
    assert np.array_equal(ours[~inside], np.asarray(image)[~inside])


def test_edits_with_and_without_control_batched_on_the_fused_graph_equal_each_alone(tiny_pipeline, fused_graph):
    image, mask = scene(40, 24)
    cases = [("image", {}), (None, {}), ("canny", {"conditioning_scale": 1.0, "guidance_start": 0.25}),
             ("inpaint", {"guess_mode": True}), (None, {}), ("image", {"guidance_end": 0.5})]
    prepares = []
    for index, (kind, settings) in enumerate(cases):
        params = EditParameters(prompt=f"edit {index}", negative_prompt="ugly", scheduler="ddim", num_inference_steps=4,
                                guidance_scale=7.5, seed=index)
        control_image = None if kind is None else _control_image(kind, image, mask)
        prepares.append(_preparer(tiny_pipeline, image, mask, control_image, settings, params)[0])
    assert_batched_equal_alone(cases, prepares, fused_graph, max_unet_rows=12)


# --- SDXL: its ControlNet takes the pooled prompt and size ids besides, as its UNet does -----------------------------

@pytest.mark.parametrize("base,kind,settings,sampler,strength,guidance", [
    (False, "image", {"conditioning_scale": 0.5}, "euler", 0.9999, 5.0),
    (False, "canny", {"conditioning_scale": 1.0, "guidance_start": 0.2, "guidance_end": 0.8}, "ddim", 1.0, 7.5),
    (False, "inpaint", {"guess_mode": True, "conditioning_scale": 0.9}, "dpmpp_2m", 1.0, 5.0),
    (True, "image", {"conditioning_scale": 1.0, "guidance_end": 0.5}, "euler", 0.9999, 5.0),  # 4-channel SDXL
    (True, "canny", {"guess_mode": True, "conditioning_scale": 0.8}, "ddim", 0.7, 1.0),  # no guidance: one row
])
def test_the_sdxl_controlled_loop_matches_diffusers_sdxl_controlnet_inpaint(
        tiny_sdxl_pipeline, tiny_sdxl_base_pipeline, tiny_sdxl_controlnet, base, kind, settings, sampler, strength,
        guidance):
    pipe = tiny_sdxl_base_pipeline if base else tiny_sdxl_pipeline
    image, mask = scene(64, 48, seed=4)
    control_image = _control_image(kind, image, mask)
    params = EditParameters(prompt="a red chair", negative_prompt="ugly", scheduler=sampler, num_inference_steps=5,
                            strength=strength, guidance_scale=guidance, seed=7)
    ours, inside = _controlled_loop(pipe, tiny_sdxl_controlnet, image, mask, control_image, settings, params)
    reference = _reference(pipe, tiny_sdxl_controlnet, image, mask, control_image, settings, params)
    assert psnr(ours[inside], reference[inside]) >= 40
    assert np.array_equal(ours[~inside], np.asarray(image)[~inside])
    plain, _ = _controlled_loop(pipe, tiny_sdxl_controlnet, image, mask, None, {}, params)
    assert psnr(plain[inside], reference[inside]) < 40  # the control matters


@pytest.fixture(scope="module")
def sdxl_fused_graph(tiny_sdxl_pipeline, tiny_sdxl_controlnet, tmp_path_factory):
    """The tiny SDXL UNet and its ControlNet as the export fuses them (``export --controlnet``), on ONNX Runtime."""
    import onnxruntime as ort
    from smartedit.export.onnx_export import export_fused_control

    path = export_fused_control(tiny_sdxl_pipeline, tiny_sdxl_controlnet,
                                PipelineInfo.from_pipeline(tiny_sdxl_pipeline), tmp_path_factory.mktemp("sdxl-fused"))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    calls = []

    def unet(inputs):
        calls.append(inputs["sample"].shape[0])
        return session.run(None, {name: np.ascontiguousarray(value) for name, value in inputs.items()})[0]

    unet.calls = calls
    return unet


def test_the_sdxl_fused_graph_is_the_controlnet_then_the_unet_and_batches_as_alone(tiny_sdxl_pipeline,
                                                                                    tiny_sdxl_controlnet,
                                                                                    sdxl_fused_graph):
    """Rows of four control settings in one call (the fused graph against the two PyTorch modules); then six edits
    with and without control stepped together, each equal to the edit alone bit for bit."""
    pipe = tiny_sdxl_pipeline
    image, mask = scene(64, 48, seed=4)
    cases = [("canny", {"conditioning_scale": 1.0}), (None, {}), ("image", {"guess_mode": True}),
             ("inpaint", {"conditioning_scale": 0.3, "guidance_start": 0.25}), (None, {}),
             ("image", {"guidance_end": 0.5})]
    prepares = []
    for index, (kind, settings) in enumerate(cases):
        params = EditParameters(prompt=f"edit {index}", negative_prompt="ugly" if index % 2 else "",
                                scheduler="euler", num_inference_steps=4, guidance_scale=5.0, seed=index)
        control_image = None if kind is None else _control_image(kind, image, mask)
        prepares.append(_preparer(pipe, image, mask, control_image, settings, params)[0])
    states = [prepare() for prepare in prepares[:4]]
    inputs = {name: np.concatenate([state.unet_inputs()[name].numpy() for state in states])
              for name in states[0].unet_inputs()}
    assert {"text_embeds", "time_ids"} <= set(inputs)
    reference = _torch_controlled_unet(pipe, tiny_sdxl_controlnet)(dict(inputs))
    assert np.abs(sdxl_fused_graph(inputs) - reference).max() < 1e-4
    assert_batched_equal_alone(cases, prepares, sdxl_fused_graph, max_unet_rows=12)


def test_the_sdxl_loop_on_the_fused_graph_matches_diffusers(tiny_sdxl_pipeline, tiny_sdxl_controlnet,
                                                            sdxl_fused_graph):
    pipe = tiny_sdxl_pipeline
    image, mask = scene(64, 48, seed=6)
    settings = {"conditioning_scale": 1.0, "guidance_end": 0.6}
    control_image = _control_image("canny", image, mask)
    params = EditParameters(prompt="a red chair", negative_prompt="ugly", scheduler="euler", num_inference_steps=5,
                            guidance_scale=5.0, strength=0.9999, seed=9)
    ours, inside = _controlled_loop(pipe, tiny_sdxl_controlnet, image, mask, control_image, settings, params,
                                    unet=sdxl_fused_graph)
    reference = _reference(pipe, tiny_sdxl_controlnet, image, mask, control_image, settings, params)
    assert psnr(ours[inside], reference[inside]) >= 40
    assert np.array_equal(ours[~inside], np.asarray(image)[~inside])


@pytest.mark.parametrize("size,box", [((40, 24), None), ((600, 400), (300, 220, 360, 280))])
def test_the_conditioning_image_is_cropped_and_scaled_as_the_photo(tiny_pipeline, size, box):
    """A control_image identical to the photo becomes the photo's region at the working size, pixel for pixel as
    the photo does (the region cropped and scaled up); canny and inpaint are made from those pixels."""
    from PIL import Image

    image, mask = scene(*size)
    if box is not None:
        mask = Image.new("L", size, 0)
        mask.paste(255, box)
    info = PipelineInfo.from_pipeline(tiny_pipeline)
    record = dict(prompt="", crop_padding=32)
    sent = prepare_images(png_bytes(image), png_bytes(mask), info, PreprocessSettings(),
                          EditParameters(control="image", **record), control_bytes=png_bytes(image))
    if box is not None:  # a crop, scaled
        assert sent.region.box_size != size and (sent.region.width, sent.region.height) != sent.region.box_size
    region_pixels = np.round((sent.init_image[0].transpose(1, 2, 0) + 1) * 127.5).astype(np.uint8)
    assert np.array_equal(sent.control_condition, image_condition(region_pixels))
    canny = prepare_images(png_bytes(image), png_bytes(mask), info, PreprocessSettings(),
                           EditParameters(control="canny", control_low_threshold=40, control_high_threshold=90,
                                          **record))
    assert np.array_equal(canny.control_condition, image_condition(canny_condition(region_pixels, 40, 90)))
    inpaint = prepare_images(png_bytes(image), png_bytes(mask), info, PreprocessSettings(),
                             EditParameters(control="inpaint", **record))
    repainted = (inpaint.masked_image[0] == 0).all(axis=0)  # the masked image is 0 exactly where repainted
    assert repainted.any() and not repainted.all()
    assert np.array_equal(inpaint.control_condition, inpaint_condition(region_pixels, repainted))
    plain = prepare_images(png_bytes(image), png_bytes(mask), info, PreprocessSettings(), EditParameters(**record))
    assert plain.control_condition.shape == (1, 3, 1, 1) and not plain.control_condition.any()


def test_controlnet_arguments_name_the_pipeline_and_the_controlnet(tmp_path):
    from smartedit.cli.exporting import controlnet_arguments

    folder = tmp_path / "canny-sd15"
    folder.mkdir()
    assert controlnet_arguments([str(folder)], ["sd"]) == {"sd": ("canny-sd15", str(folder))}
    assert controlnet_arguments([f"edges={folder}"], ["sd"]) == {"sd": ("edges", str(folder))}
    assert controlnet_arguments([f"b=edges={folder}"], ["a", "b"]) == {"b": ("edges", str(folder))}
    assert controlnet_arguments([f"b={folder}"], ["a", "b"]) == {"b": ("canny-sd15", str(folder))}
    with pytest.raises(ValueError, match="which pipeline's"):
        controlnet_arguments([str(folder)], ["a", "b"])
    with pytest.raises(ValueError, match="is given two ControlNets"):
        controlnet_arguments([f"x={folder}", f"y={folder}"], ["sd"])


def test_a_controlnet_for_another_base_is_refused_at_export_naming_what_differs(
        tiny_pipeline, tiny_sdxl_pipeline, tiny_instruct_pipeline, tiny_controlnet_dir, tiny_sdxl_controlnet_dir,
        tmp_path):
    from smartedit.export.pipeline_loader import UnsupportedModel, attach_controlnet
    from smartedit.export.tiny_controlnet import build_tiny_controlnet

    other = tiny_pipeline.unet.config
    wider = build_tiny_controlnet(type("UNet", (), {"config": {**other, "cross_attention_dim": 48}})(), 2)
    wider.save_pretrained(tmp_path / "wider")
    with pytest.raises(UnsupportedModel, match=r"another base model: cross_attention_dim 48 \(the UNet's: 32\)"):
        attach_controlnet(tiny_pipeline, tmp_path / "wider")
    # SD's ControlNet on an SDXL UNet, and SDXL's on an SD one: their prompt widths and added conditioning differ
    with pytest.raises(UnsupportedModel, match=r"addition_embed_type None \(the UNet's: text_time\)"):
        attach_controlnet(tiny_sdxl_pipeline, tiny_controlnet_dir)
    with pytest.raises(UnsupportedModel, match=r"addition_embed_type text_time \(the UNet's: None\)"):
        attach_controlnet(tiny_pipeline, tiny_sdxl_controlnet_dir)
    with pytest.raises(UnsupportedModel, match="this pipeline's family is instruct-pix2pix"):
        attach_controlnet(tiny_instruct_pipeline, tiny_controlnet_dir)
    with pytest.raises(UnsupportedModel, match="could not load it as a diffusers ControlNet"):
        attach_controlnet(tiny_pipeline, tmp_path)
    for pipeline in (tiny_pipeline, tiny_sdxl_pipeline, tiny_instruct_pipeline):
        assert getattr(pipeline, "controlnet", None) is None  # nothing attached


def test_a_conditioning_image_on_a_transparent_layer_is_read_over_black_and_a_16_bit_one_is_refused():
    from PIL import Image

    from smartedit.edit.photos import conditioning_rgb
    from smartedit.errors import RequestError

    layer = Image.new("RGBA", (4, 2), (255, 255, 255, 0))
    layer.putpixel((1, 1), (255, 255, 255, 255))  # one drawn pixel
    read = np.asarray(conditioning_rgb("control_image", layer))
    assert read[1, 1].tolist() == [255, 255, 255] and read.sum() == 3 * 255
    with pytest.raises(RequestError, match="^control_image: is a 16/32-bit integer image .mode I;16."):
        conditioning_rgb("control_image", Image.fromarray(np.zeros((2, 4), dtype=np.uint16)))


def test_a_4_channel_controlnet_pipeline_refuses_text_edit_saying_why(tiny_text_to_image_pipeline):
    import dataclasses

    from smartedit.diffusion.families import family_parameters
    from smartedit.edit.parameters import resolve_parameters
    from smartedit.errors import RequestError

    info = dataclasses.replace(PipelineInfo.from_pipeline(tiny_text_to_image_pipeline), controlnet="edges")
    for sent, field in (({"task": b"text_edit"}, "task"), ({"source_prompt": b"a cat"}, "source_prompt")):
        read = {"prompt": b"a dog", **sent}.get
        with pytest.raises(RequestError, match=f"^{field}: .*it serves a ControlNet"):
            resolve_parameters(read, PreprocessSettings(), family_parameters(info))
    plain = resolve_parameters({"prompt": b"a dog", "task": b"text_edit"}.get, PreprocessSettings(),
                               family_parameters(PipelineInfo.from_pipeline(tiny_text_to_image_pipeline)))
    assert plain.task == "text_edit" and plain.control is None


def test_a_controlnet_named_without_one_attached_is_refused_before_anything_is_written(tiny_pipeline, tmp_path):
    from smartedit.export.repository import PipelineSource, build_pipelines_repository

    with pytest.raises(ValueError, match="a ControlNet is named .'edges'. without one attached"):
        build_pipelines_repository([PipelineSource("tiny", tiny_pipeline, controlnet="edges")], tmp_path / "repo")
    assert not list(tmp_path.iterdir())
