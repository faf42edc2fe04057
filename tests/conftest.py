"""Shared fixtures: the tiny model, its model repository, and a real tritonserver serving it.

Built once per session; the functional tests under ``tests/functional`` share one server.
"""

from __future__ import annotations

import io
import warnings
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from smartedit.ops.server import free_port  # noqa: F401  (re-exported for the tests)

warnings.filterwarnings("ignore", category=FutureWarning)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    from smartedit.export.tiny_model import write_tiny_pipeline

    return write_tiny_pipeline(tmp_path_factory.mktemp("tiny-model"), seed=0)


def _tiny_sd_variant(tmp_path_factory, name: str, **shape) -> Path:
    """The tiny model's weights in another UNet layout (``write_tiny_pipeline``'s ``text_to_image`` / ``instruct``)."""
    from smartedit.export.tiny_model import write_tiny_pipeline

    return write_tiny_pipeline(tmp_path_factory.mktemp(name), seed=0, **shape)


def _loaded(folder: Path):
    from smartedit.export.pipeline_loader import load_pipeline

    return load_pipeline(folder)


@pytest.fixture(scope="session")
def tiny_controlnet_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """A tiny ControlNet for the tiny model, its zero convolutions drawn at random
    (smartedit.export.tiny_controlnet)."""
    from smartedit.export.tiny_controlnet import write_tiny_controlnet

    return write_tiny_controlnet(tiny_model_dir, tmp_path_factory.mktemp("tiny-controlnet"))


@pytest.fixture(scope="session")
def tiny_controlnet(tiny_controlnet_dir):
    from diffusers import ControlNetModel

    return ControlNetModel.from_pretrained(str(tiny_controlnet_dir)).eval()


@pytest.fixture(scope="session")
def tiny_sdxl_controlnet_dir(tiny_sdxl_dir, tmp_path_factory) -> Path:
    """A tiny SDXL ControlNet (it takes the pooled prompt and size ids) for the tiny SDXL models, built as SD's."""
    from smartedit.export.tiny_controlnet import write_tiny_controlnet

    return write_tiny_controlnet(tiny_sdxl_dir, tmp_path_factory.mktemp("tiny-sdxl-controlnet"))


@pytest.fixture(scope="session")
def tiny_sdxl_controlnet(tiny_sdxl_controlnet_dir):
    from diffusers import ControlNetModel

    return ControlNetModel.from_pretrained(str(tiny_sdxl_controlnet_dir)).eval()


@pytest.fixture(scope="session")
def tiny_text_to_image_dir(tmp_path_factory) -> Path:
    """The tiny model's weights with a 4-channel UNet, as a text-to-image SD folder (sd-latent-blend)."""
    return _tiny_sd_variant(tmp_path_factory, "tiny-text-to-image", text_to_image=True)


@pytest.fixture(scope="session")
def tiny_text_to_image_pipeline(tiny_text_to_image_dir):
    return _loaded(tiny_text_to_image_dir)


@pytest.fixture(scope="session")
def tiny_pipeline(tiny_model_dir):
    from smartedit.export.pipeline_loader import load_pipeline

    return load_pipeline(tiny_model_dir)


@pytest.fixture(scope="session")
def tiny_instruct_dir(tmp_path_factory) -> Path:
    """The tiny model's weights with an 8-channel UNet, as an InstructPix2Pix folder (instruct-pix2pix)."""
    return _tiny_sd_variant(tmp_path_factory, "tiny-instruct", instruct=True)


@pytest.fixture(scope="session")
def tiny_instruct_pipeline(tiny_instruct_dir):
    return _loaded(tiny_instruct_dir)


@pytest.fixture(scope="session")
def tiny_sdxl_dir(tmp_path_factory) -> Path:
    """The SDXL family's tiny model: a 9-channel SDXL inpainting folder (smartedit.export.tiny_sdxl)."""
    from smartedit.export.tiny_sdxl import write_tiny_sdxl

    return write_tiny_sdxl(tmp_path_factory.mktemp("tiny-sdxl"), seed=0)


@pytest.fixture(scope="session")
def tiny_sdxl_base_dir(tmp_path_factory) -> Path:
    """A tiny SDXL base (text-to-image, 4-channel UNet) folder, as SDXL base checkpoints are published."""
    from smartedit.export.tiny_sdxl import write_tiny_sdxl

    return write_tiny_sdxl(tmp_path_factory.mktemp("tiny-sdxl-base"), seed=0, text_to_image=True)


@pytest.fixture(scope="session")
def tiny_sdxl_pipeline(tiny_sdxl_dir):
    from smartedit.export.pipeline_loader import load_pipeline

    return load_pipeline(tiny_sdxl_dir)


@pytest.fixture(scope="session")
def tiny_sdxl_base_pipeline(tiny_sdxl_base_dir):
    from smartedit.export.pipeline_loader import load_pipeline

    return load_pipeline(tiny_sdxl_base_dir)


@pytest.fixture(scope="session")
def model_repository(tiny_pipeline, tmp_path_factory) -> Path:
    from smartedit.export.repository import build_repository

    # Named as `smartedit export` names the embedded model (what /info and the editor show).
    return build_repository(tiny_pipeline, tmp_path_factory.mktemp("repo") / "model_repository",
                            model_name="smartedit-tiny (embedded default)")


@pytest.fixture(scope="session")
def server(model_repository, tmp_path_factory):
    with serving(model_repository, tmp_path_factory.mktemp("triton") / "tritonserver.log") as running:
        yield running


@pytest.fixture(autouse=True)
def _shared_server_survives(request):
    """Fail the test after which the shared server is found dead, or one of its model processes crashed
    (faulthandler's "Fatal Python error" in its log: smartedit.serving.models), with the end of its log,
    and start it again: otherwise the cause shows only as "connection refused" or "Stub process is not
    healthy" in every later test."""
    yield
    if "server" not in request.fixturenames:
        return
    running = request.getfixturevalue("server")
    code = running.process.poll()
    crash = _new_model_process_crash(running)
    if code is not None or crash:
        tail = crash or log_tail(running)
        # Replaced on the same ports, so that one crash fails the test it happened in, not every later one.
        running.stop()
        running.start()
        running.wait_until_ready()
        _new_model_process_crash(running)  # what the restart logged is not this test's
        what = f"the shared tritonserver exited with code {code}" if code is not None else "a model process crashed"
        pytest.fail(f"{what} during this test (restarted for the next tests); its log:\n{tail}", pytrace=False)


MODEL_PROCESS_CRASH = "Fatal Python error"


def _new_model_process_crash(running) -> str:
    """The log from the first model process crash since the last look ("" for none)."""
    if not running.log_file:
        return ""
    text = Path(running.log_file).read_text(errors="replace")
    start, running.checked_log_chars = getattr(running, "checked_log_chars", 0), len(text)
    found = text.find(MODEL_PROCESS_CRASH, start)
    return "" if found < 0 else text[found: found + 6000]


def log_tail(running, chars: int = 6000) -> str:
    """The end of a ``TritonServer``'s log, to say why it stopped."""
    return Path(running.log_file).read_text(errors="replace")[-chars:] if running.log_file else ""


WHEELHOUSE = Path(__file__).resolve().parent.parent / ".tools" / "wheels"


def pip_install_offline(python: Path, *requirements: str) -> None:
    """``pip install`` into the virtual environment of ``python`` from the wheelhouse the test set-up
    fetched (scripts/install-test-tools.sh), never from an index: the tests run offline."""
    import subprocess

    if not WHEELHOUSE.is_dir():
        pytest.fail(f"no wheelhouse at {WHEELHOUSE}: run `bash scripts/install-test-tools.sh`", pytrace=False)
    installed = subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-index", "--find-links",
                                str(WHEELHOUSE), *requirements], capture_output=True, text=True)
    assert installed.returncode == 0, installed.stdout + installed.stderr


def configure_copy(model_repository: Path, destination: Path, parameters: dict[str, dict[str, str]]) -> Path:
    """A copy of ``model_repository`` whose models' config ``parameters`` are changed as given
    (``{model: {key: value}}``): a server with other settings, without exporting again."""
    import shutil

    from smartedit.serving.triton_config import parse_pbtxt, to_pbtxt

    shutil.copytree(model_repository, destination)
    for model, changes in parameters.items():
        path = destination / model / "config.pbtxt"
        config = parse_pbtxt(path.read_text())
        for key, value in changes.items():
            config.parameters[key].string_value = str(value)
        path.write_text(to_pbtxt(config))
    return destination


@contextmanager
def serving(repository: Path, log_file: Path):
    from smartedit.ops.server import ServerAddress, TritonServer

    address = ServerAddress(grpc_port=free_port(), http_port=free_port(), metrics_port=free_port())
    with TritonServer(repository, address, log_file=log_file) as running:
        yield running


def export_by_cli(*arguments, out: Path, verify: bool = True):
    """``smartedit export ARGUMENTS --no-segmentation --out OUT`` as a user runs it (``--no-verify`` unless
    ``verify``); its CompletedProcess."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "smartedit", "export", *map(str, arguments), "--no-segmentation",
                           *([] if verify else ["--no-verify"]), "--out", str(out)], capture_output=True, text=True,
                          timeout=900)


@contextmanager
def serving_export(*arguments, out: Path, verify: bool = True):
    """A tritonserver on the repository ``export_by_cli(*arguments)`` writes to ``out``."""
    result = export_by_cli(*arguments, out=out, verify=verify)
    assert result.returncode == 0, result.stderr[-3000:]
    with serving(out, out.parent / "tritonserver.log") as running:
        yield running


def export_two_pipelines(tiny_pipeline, tiny_text_to_image_pipeline, out: Path) -> Path:
    """One repository serving the tiny model as pipeline ``tiny`` (the first) and the tiny 4-channel one
    as ``blend`` (README "Several pipelines in one server")."""
    from smartedit.export.repository import PipelineSource, build_pipelines_repository

    return build_pipelines_repository([PipelineSource("tiny", tiny_pipeline, "smartedit-tiny (embedded default)"),
                                       PipelineSource("blend", tiny_text_to_image_pipeline, "tiny text-to-image")],
                                      out)


@pytest.fixture(scope="module")
def two_pipelines_server(tiny_pipeline, tiny_text_to_image_pipeline, tmp_path_factory):
    out = tmp_path_factory.mktemp("two-pipelines") / "model_repository"
    with serving(export_two_pipelines(tiny_pipeline, tiny_text_to_image_pipeline, out),
                 out.parent / "tritonserver.log") as running:
        yield running


@pytest.fixture(scope="module")
def instruct_server(tiny_instruct_pipeline, tiny_pipeline, tmp_path_factory):
    """The tiny InstructPix2Pix as pipeline ``instruct`` (the first) beside the tiny SD model as ``tiny`` (README
    "Instruction edits")."""
    from smartedit.export.repository import PipelineSource, build_pipelines_repository

    out = tmp_path_factory.mktemp("instruct") / "model_repository"
    build_pipelines_repository([PipelineSource("instruct", tiny_instruct_pipeline, "tiny InstructPix2Pix"),
                                PipelineSource("tiny", tiny_pipeline, "smartedit-tiny")], out)
    with serving(out, out.parent / "tritonserver.log") as running:
        yield running


@pytest.fixture
def client(server):
    from smartedit_client import InpaintClient

    with InpaintClient(server.address.grpc, timeout_s=120) as c:
        yield c


def assert_together_equals_alone(edits: list, send) -> None:
    """``send(*edit)`` for every edit at once (the engine batches them), then each alone: the same bytes."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(len(edits)) as pool:
        together = list(pool.map(lambda edit: send(*edit), edits))
    for edit, result in zip(edits, together):
        assert result == send(*edit), f"{edit}: differs from the same edit sent alone"


def png_bytes(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def scene(width: int, height: int, seed: int = 0) -> tuple[Image.Image, Image.Image]:
    """A random image and a mask with a rectangle to repaint."""
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[height // 4: 3 * height // 4, width // 5: 4 * width // 5] = 255
    return image, Image.fromarray(mask)


def exif_sideways(image: Image.Image) -> bytes:
    """``image`` as a camera held sideways stores it: JPEG pixels as shot, plus EXIF orientation 6
    (turn 90° clockwise to display)."""
    stored = image.transpose(Image.Transpose.ROTATE_90)  # what exif_transpose with tag 6 turns back
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", exif=exif, quality=100)
    return buffer.getvalue()


def read_until_serving(process, timeout_s: float = 300) -> list[str]:
    """The lines ``smartedit serve`` (started with stdout piped, text) prints up to "SmartEdit is serving".

    A server that never says so would block the read forever: past ``timeout_s`` it is killed, which
    ends the read, and the test fails with what it printed."""
    import threading

    watchdog = threading.Timer(timeout_s, process.kill)
    watchdog.daemon = True
    watchdog.start()
    lines = []
    try:
        for line in process.stdout:
            lines.append(line)
            if "SmartEdit is serving" in line:
                return lines
    finally:
        watchdog.cancel()
    raise AssertionError(f"smartedit serve stopped (code {process.wait()}) without serving, within {timeout_s:.0f} s; "
                         f"it printed:\n{''.join(lines)[-4000:]}")


def stop_serve(process) -> None:
    """SIGTERM a ``smartedit serve`` process, as Ctrl-C would; kill it if it does not stop in a minute."""
    import signal
    import subprocess

    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()


@pytest.fixture(scope="module")
def browser():
    """Headless Chromium (the distribution's, driven by Playwright), for the editor's tests."""
    import shutil

    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "no Chromium: run scripts/install-browser.sh"
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        yield launched
        launched.close()
