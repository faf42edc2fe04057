"""The simulated device (benchmarks): its latency table, its repository, and one edit through it."""

from __future__ import annotations

import json
import time

import pytest

from smartedit.engine.latency_table import SHIPPED_LATENCY_TABLE, LatencyTable
from smartedit.serving.triton_config import parse_pbtxt

TABLE = SHIPPED_LATENCY_TABLE


def test_the_shipped_table_is_sd15_at_512_and_its_limits_follow_the_formula():
    table = LatencyTable.load(TABLE)
    assert (table.pipeline.vae_scale_factor, table.pipeline.text_hidden_size, table.reference_image_size) \
        == (8, 768, (512, 512))
    assert table.unet_step_s(2) == pytest.approx(0.0096)  # a + 2b: one guided step of one edit
    # c / (steps · (a + b · 2c)): 16 edits share a 32-row call of 5.6 + 64 ms
    assert table.device_limit(16, 30) == pytest.approx(16 / (30 * 0.0696))
    assert table.unet_step_s(130) == pytest.approx(2 * table.unet.seconds(64) + table.unet.seconds(2))  # chunked


def test_a_table_without_a_component_is_refused_naming_it(tmp_path):
    data = json.loads(TABLE.read_text())
    del data["components"]["vae_decoder"]
    (tmp_path / "table.json").write_text(json.dumps(data))
    with pytest.raises(ValueError, match="no figures for vae_decoder"):
        LatencyTable.load(tmp_path / "table.json")


@pytest.fixture(scope="module")
def simulated_repository(tmp_path_factory):
    from smartedit.export.simulated import build_simulated_repository

    return build_simulated_repository(TABLE, tmp_path_factory.mktemp("sim") / "model_repository")


def test_the_repository_serves_sleeping_components_with_the_tables_batches(simulated_repository):
    unet = parse_pbtxt((simulated_repository / "unet" / "config.pbtxt").read_text())
    assert unet.backend == "python" and unet.max_batch_size == 64
    assert unet.parameters["latency_a_ms"].string_value == "5.6"
    # A batcher (the delay reads 0 without one) that sends each call at once: the batched engine batches itself.
    assert unet.HasField("dynamic_batching") and unet.dynamic_batching.max_queue_delay_microseconds == 0
    engine = parse_pbtxt((simulated_repository / "denoise_engine" / "config.pbtxt").read_text())
    assert engine.parameters["max_active_edits"].string_value == "32"
    assert engine.parameters["max_unet_rows"].string_value == "64"


@pytest.mark.functional
def test_an_edit_through_the_simulated_device_takes_the_tables_time(simulated_repository, tmp_path):
    from conftest import png_bytes, scene, serving
    from smartedit_client import InpaintClient

    image, mask = scene(512, 512)
    with serving(simulated_repository, tmp_path / "tritonserver.log") as server, \
            InpaintClient(server.address.grpc, timeout_s=60) as client:
        client.inpaint(image=png_bytes(image), mask_image=png_bytes(mask), prompt="x", num_inference_steps=2)
        started = time.perf_counter()
        result = client.inpaint(image=png_bytes(image), mask_image=png_bytes(mask), prompt="x",
                                num_inference_steps=20, seed=1)
        elapsed = time.perf_counter() - started
    assert result.image.size == (512, 512)
    # The device's share alone (20 guided steps, encoders, decoder) is a floor no serving can beat.
    assert elapsed >= LatencyTable.load(TABLE).edit_device_s(20)


SDXL_TABLE = SHIPPED_LATENCY_TABLE.with_name("sdxl-1024-h100.json")


def test_the_sdxl_table_is_sdxl_at_1024_and_a_guided_step_is_the_published_rate():
    table = LatencyTable.load(SDXL_TABLE)
    info = table.pipeline
    assert (info.family, info.text_hidden_size, info.pooled_text_width, info.time_ids) == (
        "sdxl-inpaint", 2048, 1280, 6)
    assert table.reference_image_size == (1024, 1024) and info.working_resolution == 1024
    assert 1 / table.unet_step_s(2) == pytest.approx(21.6, abs=0.05)  # it/s of one guided edit


@pytest.fixture(scope="module")
def sd_and_sdxl_repository(tmp_path_factory):
    from smartedit.export.simulated import build_simulated_pipelines

    return build_simulated_pipelines([("sd15", TABLE), ("sdxl", SDXL_TABLE)],
                                     tmp_path_factory.mktemp("sim-two") / "model_repository")


def test_several_tables_make_several_pipelines_each_of_its_family_and_batches(sd_and_sdxl_repository):
    unet = parse_pbtxt((sd_and_sdxl_repository / "unet" / "config.pbtxt").read_text())
    unet_sdxl = parse_pbtxt((sd_and_sdxl_repository / "unet_sdxl" / "config.pbtxt").read_text())
    assert [t.name for t in unet.input] == ["sample", "timestep", "encoder_hidden_states"]
    assert [t.name for t in unet_sdxl.input] == ["sample", "timestep", "encoder_hidden_states", "text_embeds",
                                                 "time_ids"]
    assert (unet.max_batch_size, unet_sdxl.max_batch_size) == (64, 32)
    assert unet_sdxl.parameters["component"].string_value == "unet"
    engine = parse_pbtxt((sd_and_sdxl_repository / "denoise_engine_sdxl" / "config.pbtxt").read_text())
    assert engine.parameters["max_active_edits"].string_value == "16"
    assert (sd_and_sdxl_repository / "preprocess_sdxl" / "1" / "tokenizer_2").is_dir()


@pytest.mark.functional
def test_sd_and_sdxl_edits_run_through_one_simulated_server(sd_and_sdxl_repository, tmp_path):
    from conftest import png_bytes, scene, serving
    from smartedit_client import InpaintClient

    with serving(sd_and_sdxl_repository, tmp_path / "tritonserver.log") as server, \
            InpaintClient(server.address.grpc, timeout_s=120) as client:
        for pipeline, side, table in (("sd15", 512, TABLE), ("sdxl", 1024, SDXL_TABLE)):
            image, mask = scene(side, side)
            result = client.inpaint(image=png_bytes(image), mask_image=png_bytes(mask), prompt="x",
                                    num_inference_steps=3, pipeline=pipeline)
            assert result.image.size == (side, side)
            assert result.parameters["model"] == f"simulated device ({table.name})"
        assert client.server_info(pipeline="sdxl").parameters["strength"].default == 0.9999
