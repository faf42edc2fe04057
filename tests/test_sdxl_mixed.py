"""SD and SDXL in one server: the tiny SD inpainting model (pipeline ``tiny``, the first) and the tiny SDXL
inpainting model (``sdxl``) exported into one repository. Mixed traffic, 8 edits at a time, must give each
edit the PNG, byte for byte, that it gives on a server holding its pipeline alone."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import pytest

from conftest import png_bytes, scene, serving

pytestmark = pytest.mark.functional

# (pipeline, seed, task, steps): None is the plain ``inpaint`` (the first pipeline, SD).
EDITS = [(pipeline, 200 + index, task, 3 + index % 3)
         for index, (pipeline, task) in enumerate(
             [(p, t) for t in ("inpaint", "remove", "replace_background", "inpaint") for p in ("sdxl", "tiny", None,
                                                                                           "sdxl")])]


def _edit(client, pipeline: str | None, seed: int, task: str, steps: int) -> bytes:
    image, mask = scene(64, 48, seed=seed % 7)
    options = {} if pipeline is None else {"pipeline": pipeline}
    return client.inpaint(image=png_bytes(image), mask_image=png_bytes(mask), prompt=f"edit {seed}", seed=seed,
                          task=task, num_inference_steps=steps, **options).png


@pytest.fixture(scope="module")
def sdxl_alone(tiny_sdxl_pipeline, tmp_path_factory):
    """What each SDXL edit gives on a server holding that pipeline alone (stopped before the mixed server
    starts: three servers at once are too many for a 2-core machine)."""
    from smartedit.export.repository import build_repository
    from smartedit_client import InpaintClient

    out = tmp_path_factory.mktemp("sdxl-alone") / "model_repository"
    build_repository(tiny_sdxl_pipeline, out, model_name="tiny SDXL inpainting", name="sdxl")
    with serving(out, out.parent / "tritonserver.log") as running:
        with InpaintClient(running.address.grpc, timeout_s=120) as client:
            return {edit: _edit(client, None, *edit[1:]) for edit in EDITS if edit[0] == "sdxl"}


@pytest.fixture(scope="module")
def mixed_server(sdxl_alone, tiny_pipeline, tiny_sdxl_pipeline, tmp_path_factory):
    from smartedit.export.repository import PipelineSource, build_pipelines_repository

    out = tmp_path_factory.mktemp("sd-and-sdxl") / "model_repository"
    build_pipelines_repository([PipelineSource("tiny", tiny_pipeline, "smartedit-tiny (embedded default)"),
                                PipelineSource("sdxl", tiny_sdxl_pipeline, "tiny SDXL inpainting")], out)
    with serving(out, out.parent / "tritonserver.log") as running:
        yield running


@pytest.fixture
def mixed_client(mixed_server):
    from smartedit_client import InpaintClient

    with InpaintClient(mixed_server.address.grpc, timeout_s=120) as client:
        yield client


def test_mixed_sd_and_sdxl_edits_match_each_pipeline_served_alone(mixed_client, client, sdxl_alone):
    """The shared ``server`` holds the tiny SD pipeline alone (the same weights)."""
    with ThreadPoolExecutor(8) as pool:
        together = dict(zip(EDITS, pool.map(lambda edit: _edit(mixed_client, *edit), EDITS)))
    for edit, png in together.items():
        alone = sdxl_alone[edit] if edit[0] == "sdxl" else _edit(client, None, *edit[1:])
        assert png == alone, f"{edit}: differs from the same edit on a server holding {edit[0] or 'tiny'} alone"
    # and the two pipelines differ (else the check above could not tell them apart)
    assert together[EDITS[0]] != _edit(mixed_client, "tiny", *EDITS[0][1:])


def test_server_info_describes_both_families(mixed_client):
    info = mixed_client.server_info()
    assert {name: p.family for name, p in info.pipelines.items()} == {"tiny": "sd-inpaint", "sdxl": "sdxl-inpaint"}
    assert info.pipelines["tiny"].parameters["strength"].default == 1.0
    assert info.pipelines["sdxl"].parameters["strength"].default == 0.9999
