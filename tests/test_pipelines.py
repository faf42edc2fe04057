"""Several pipelines in one server: the tiny 9-channel model (pipeline ``tiny``, the first) and the tiny
4-channel text-to-image model (``blend``, served by latent blending) exported into one repository.

Edits to both, interleaved 8 at a time, must give the PNG, byte for byte, that the same edit gives on a
server holding that pipeline alone; the old ``inpaint`` name answers as the first pipeline; the SDK,
the CLI, the gateway and the editor choose by name; metrics and logs say which pipeline served."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import png_bytes, scene, serving
from test_observability import metric_value, scrape

pytestmark = pytest.mark.functional

# (pipeline, seed, task, steps): None is the plain ``inpaint`` (the first pipeline).
EDITS = [(pipeline, 100 + index, task, 3 + index % 3)
         for index, (pipeline, task) in enumerate(
             [(p, t) for t in ("inpaint", "remove", "replace_background", "inpaint") for p in ("tiny", "blend", None,
                                                                                           "blend")])]


def _edit(client, pipeline: str | None, seed: int, task: str, steps: int) -> bytes:
    image, mask = scene(64, 48, seed=seed % 7)
    options = {} if pipeline is None else {"pipeline": pipeline}
    return client.inpaint(image=png_bytes(image), mask_image=png_bytes(mask), prompt=f"edit {seed}", seed=seed,
                          task=task, num_inference_steps=steps, **options).png


@pytest.fixture(scope="module")
def blend_alone(tiny_text_to_image_pipeline, tmp_path_factory):
    """What each blend edit gives on a server holding that pipeline alone (stopped before the two-pipeline
    server starts: three servers at once are too many for a 2-core machine)."""
    from smartedit.export.repository import build_repository
    from smartedit_client import InpaintClient

    out = tmp_path_factory.mktemp("blend-alone") / "model_repository"
    build_repository(tiny_text_to_image_pipeline, out, model_name="tiny text-to-image", name="blend")
    with serving(out, out.parent / "tritonserver.log") as running:
        with InpaintClient(running.address.grpc, timeout_s=120) as client:
            return {edit: _edit(client, None, *edit[1:]) for edit in EDITS if edit[0] == "blend"}


@pytest.fixture(scope="module")
def two_pipelines(blend_alone, two_pipelines_server):
    """The tiny pipeline and the blend one in one server, started once the blend-alone one has stopped."""
    return two_pipelines_server


@pytest.fixture
def two_client(two_pipelines):
    from smartedit_client import InpaintClient

    with InpaintClient(two_pipelines.address.grpc, timeout_s=120) as client:
        yield client


def test_interleaved_edits_match_each_pipeline_served_alone(two_client, client, blend_alone):
    """The shared ``server`` holds the tiny pipeline alone (the same weights)."""
    with ThreadPoolExecutor(8) as pool:
        together = dict(zip(EDITS, pool.map(lambda edit: _edit(two_client, *edit), EDITS)))
    for edit, png in together.items():
        pipeline = edit[0]
        alone = blend_alone[edit] if pipeline == "blend" else _edit(client, None, *edit[1:])
        assert png == alone, f"{edit}: differs from the same edit on a server holding {pipeline or 'tiny'} alone"
    # and the pipelines differ (else the check above could not tell them apart)
    assert together[("tiny", *EDITS[0][1:])] != _edit(two_client, "blend", *EDITS[0][1:])


def test_server_info_lists_every_pipeline_and_describes_the_chosen_one(two_client):
    info = two_client.server_info()
    assert info.pipeline == "tiny" and list(info.pipelines) == ["tiny", "blend"]
    assert {name: p.family for name, p in info.pipelines.items()} == {"tiny": "sd-inpaint", "blend": "sd-latent-blend"}
    assert info.family == "sd-inpaint" and info.model == "smartedit-tiny (embedded default)"
    blend = two_client.server_info(pipeline="blend")
    assert blend.pipeline == "blend" and blend.family == "sd-latent-blend" and blend.model == "tiny text-to-image"
    for described in info.pipelines.values():
        assert described.working_resolution == 256 and "ddim" in described.samplers
        assert "remove" in described.tasks and described.parameters["strength"].maximum == 1.0


def test_the_sdk_chooses_per_client_and_per_call_and_names_an_unknown_pipeline(two_pipelines, two_client):
    from smartedit_client import InpaintClient, InvalidRequestError

    edit = ("blend", 7, "inpaint", 4)
    per_call = _edit(two_client, *edit)
    with InpaintClient(two_pipelines.address.grpc, timeout_s=120, pipeline="blend") as blend_client:
        assert blend_client.server_info().pipeline == "blend"
        assert _edit(blend_client, None, *edit[1:]) == per_call
        assert _edit(blend_client, "tiny", *edit[1:]) == _edit(two_client, None, *edit[1:])  # a call overrides
    for bad in ("sdxl", "two words"):
        with pytest.raises(InvalidRequestError, match=f"pipeline '{bad}'|got '{bad}'") as raised:
            _edit(two_client, bad, *edit[1:])
        assert raised.value.field == "pipeline"
    with pytest.raises(InvalidRequestError, match="it serves 'tiny', 'blend'"):
        two_client.server_info(pipeline="sdxl")


def test_a_stream_edits_with_the_chosen_pipeline(two_client):
    image, mask = scene(64, 48, seed=2)
    unary = two_client.inpaint(image=png_bytes(image), mask_image=png_bytes(mask), prompt="s", seed=9,
                               num_inference_steps=4, pipeline="blend").png
    for pipeline in ("blend", "tiny"):
        with two_client.inpaint_stream(image=png_bytes(image), mask_image=png_bytes(mask), prompt="s", seed=9,
                                       num_inference_steps=4, pipeline=pipeline) as stream:
            events = list(stream)
        assert (events[-1].png == unary) == (pipeline == "blend")


def test_the_cli_chooses_by_name(two_pipelines, two_client, tmp_path):
    image, mask = scene(64, 48, seed=5)
    (tmp_path / "image.png").write_bytes(png_bytes(image))
    (tmp_path / "mask.png").write_bytes(png_bytes(mask))
    command = [sys.executable, "-m", "smartedit_client.cli", "--url", two_pipelines.address.grpc, "--image",
               str(tmp_path / "image.png"), "--mask", str(tmp_path / "mask.png"), "--prompt", "c", "--seed", "4",
               "--steps", "4"]
    done = subprocess.run(command + ["--pipeline", "blend", "--out", str(tmp_path / "out.png")], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    expected = two_client.inpaint(image=png_bytes(image), mask_image=png_bytes(mask), prompt="c", seed=4,
                                  num_inference_steps=4, pipeline="blend").png
    assert (tmp_path / "out.png").read_bytes() == expected
    info = subprocess.run(command[:5] + ["--info", "--pipeline", "blend"], capture_output=True, text=True, timeout=60)
    assert info.returncode == 0 and info.stdout.startswith("pipeline: blend (of tiny, blend)\n"), info
    unknown = subprocess.run(command + ["--pipeline", "sdxl", "--out", str(tmp_path / "x.png")], capture_output=True,
                             text=True, timeout=60)
    assert unknown.returncode == 2 and "pipeline 'sdxl'" in unknown.stderr, unknown.stderr


def test_the_gateway_takes_a_pipeline_field(two_pipelines, two_client, tmp_path):
    import base64

    from test_gateway import _post_json, gateway

    image, mask = scene(64, 48, seed=6)
    body = {"image": base64.b64encode(png_bytes(image)).decode(), "mask_image": base64.b64encode(png_bytes(mask)).decode(),
            "prompt": "g", "seed": 8, "num_inference_steps": 4}
    expected = two_client.inpaint(image=png_bytes(image), mask_image=png_bytes(mask), prompt="g", seed=8,
                                  num_inference_steps=4, pipeline="blend").png
    with gateway(two_pipelines.address.grpc, tmp_path / "gateway.log") as url:
        status, _, png = _post_json(url + "/edit/inpaint", dict(body, pipeline="blend"))
        assert status == 200 and png == expected
        with urllib.request.urlopen(url + "/info?pipeline=blend", timeout=30) as response:
            info = json.load(response)
        assert info["pipeline"] == "blend" and info["family"] == "sd-latent-blend"
        assert list(info["pipelines"]) == ["tiny", "blend"]
        status, _, answer = _post_json(url + "/edit/inpaint", dict(body, pipeline="sdxl"))
        assert status == 400 and json.loads(answer)["field"] == "pipeline", answer


def test_metrics_and_logs_say_which_pipeline_served(two_pipelines, two_client):
    before = scrape(two_pipelines)
    # An edit on each pipeline here: in a shuffled order this test may be the module's first.
    _edit(two_client, "tiny", 12, "inpaint", 3)
    _edit(two_client, "blend", 11, "inpaint", 3)
    ok = dict(entry="inpaint", outcome="ok", pipeline="blend")
    try:
        earlier = metric_value(before, "smartedit_requests_total", **ok)
    except AssertionError:
        earlier = 0.0
    assert metric_value(scrape(two_pipelines), "smartedit_requests_total", **ok) == earlier + 1
    lines = [json.loads(line) for line in re.findall(r"^\{.*\}$", two_pipelines.log_file.read_text(), re.M)]
    assert {line.get("pipeline") for line in lines if line.get("stage") == "denoise"} >= {"tiny", "blend"}


def test_an_export_refuses_a_name_given_twice_or_unfit(tiny_model_dir, tmp_path):
    def export(*models: str) -> subprocess.CompletedProcess:
        arguments = [a for model in models for a in ("--model", model)]
        return subprocess.run([sys.executable, "-m", "smartedit", "export", *arguments, "--out", str(tmp_path / "r")],
                              capture_output=True, text=True, timeout=120)

    twice = export(f"a={tiny_model_dir}", f"a={tiny_model_dir}")
    assert twice.returncode != 0 and "pipeline name 'a' is given twice" in twice.stderr, twice.stderr
    clash = export(f"x={tiny_model_dir}", f"stream_x={tiny_model_dir}")
    assert clash.returncode != 0 and "would both serve a model named 'inpaint_stream_x'" in clash.stderr, clash.stderr
    odd = tmp_path / "my model"
    odd.symlink_to(tiny_model_dir)
    unfit = export(str(odd))
    assert unfit.returncode != 0 and "give one, --model NAME=" in unfit.stderr, unfit.stderr
    assert not (tmp_path / "r").exists()


@pytest.mark.browser
def test_the_editor_chooses_the_pipeline_and_a_reload_keeps_it(two_pipelines, browser, tmp_path):
    from PIL import Image
    from playwright.sync_api import expect

    from test_editor import _download, _open, _paint, _run_to_result, _screenshot, offline_page
    from test_gateway import gateway

    photo = tmp_path / "photo.png"
    scene(256, 192, seed=3)[0].save(photo)
    with gateway(two_pipelines.address.grpc, tmp_path / "gateway.log") as url, offline_page(browser, url) as page:
        _open(page, url, photo)
        assert page.is_visible("#pipeline-choice")
        assert page.locator("#pipeline option").all_inner_texts() == ["tiny (sd-inpaint)", "blend (sd-latent-blend)"]
        page.select_option("#pipeline", "blend")
        assert "tiny text-to-image" in page.inner_text("#server")
        _paint(page, (0.2, 0.3), (0.6, 0.5))
        _run_to_result(page, prompt="a kite", num_inference_steps=4, seed=12)
        assert page.inner_text("#history li").startswith("blend: inpaint")
        _screenshot(page, "editor-pipelines.png")
        request_id = page.get_attribute("#stage", "data-request-id")
        _, first = _download(page, tmp_path / "first.png")
        page.select_option("#pipeline", "tiny")
        page.click("#history li button")  # the reload brings the pipeline back with the rest
        expect(page.locator("#status")).to_contain_text("Reloaded")
        assert page.input_value("#pipeline") == "blend"
        _run_to_result(page)
        _, again = _download(page, tmp_path / "again.png")
    assert again == first and Image.open(tmp_path / "first.png").size == (256, 192)
    lines = [json.loads(line) for line in re.findall(r"^\{.*\}$", two_pipelines.log_file.read_text(), re.M)]
    assert {line.get("pipeline") for line in lines if line.get("request_id") == request_id} == {"blend"}
