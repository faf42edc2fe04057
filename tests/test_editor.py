"""The browser editor, in a real headless Chromium (the distribution's, driven by Playwright), against
the gateway and the real tritonserver: open a photo, click an object to get its SAM mask, run an edit,
see a preview, download the PNG -- whose unmasked pixels are the photo's. Also writes the README's
screenshot (out/editor.png). Run with `pytest -m browser` (Chromium: scripts/install-browser.sh)."""

from __future__ import annotations

import base64
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from test_gateway import gateway

pytestmark = [pytest.mark.functional, pytest.mark.browser]
ROOT = Path(__file__).resolve().parent.parent


def _photo() -> Image.Image:
    rows = np.linspace(0.0, 1.0, 192)[:, None, None]
    sky = (1 - rows) * np.array([110, 160, 230]) + rows * np.array([200, 220, 245])
    image = Image.fromarray(np.broadcast_to(sky, (192, 256, 3)).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, 125, 256, 192], fill=(90, 140, 70))
    draw.rectangle([64, 77, 141, 154], fill=(150, 90, 60))
    return image


def test_click_a_mask_run_an_edit_see_previews_and_download_it(server, tmp_path):
    from playwright.sync_api import sync_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    assert chromium, "no Chromium: run scripts/install-browser.sh"
    photo = _photo()
    photo.save(tmp_path / "photo.png")
    with gateway(server.address.grpc, tmp_path / "gateway.log") as url, sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1280, "height": 860}, accept_downloads=True)
        errors = []
        page.on("pageerror", lambda error: errors.append(str(error)))
        page.goto(url + "/")
        page.set_input_files("#photo", str(tmp_path / "photo.png"))
        page.wait_for_selector("#stage[data-ready='1']")
        page.click("button[data-tool='object']")
        box = page.locator("#stage").bounding_box()
        # The middle of the brown box, in the displayed canvas (the photo is shown at its own size).
        page.mouse.click(box["x"] + 100 * box["width"] / 256, box["y"] + 115 * box["height"] / 192)
        page.wait_for_function("Number(document.getElementById('stage').dataset.maskPixels || 0) > 0")
        page.fill("#prompt", "a wooden bench")
        page.fill("#num_inference_steps", "4")
        page.fill("#seed", "7")
        page.fill("#preview_every", "1")
        page.click("#run")
        page.wait_for_selector("#download[href^='data:image/png']", timeout=120_000)
        assert int(page.get_attribute("#preview", "data-previews")) >= 1
        assert "Done in" in page.inner_text("#status")
        assert page.locator("#history li").count() == 1
        mask_url = page.evaluate("window.smartedit.maskPng()")
        with page.expect_download() as download:
            page.click("#download")
        download.value.save_as(tmp_path / "edited.png")
        page.screenshot(path=str(tmp_path / "editor.png"), full_page=True)
        browser.close()
    assert not errors, errors
    mask = np.asarray(Image.open(io.BytesIO(base64.b64decode(mask_url.split(",", 1)[1]))).convert("L"))
    edited = np.asarray(Image.open(tmp_path / "edited.png").convert("RGB"))
    keep = mask < 128
    assert edited.shape == np.asarray(photo).shape and keep.any() and (~keep).any()
    assert np.array_equal(edited[keep], np.asarray(photo)[keep])
    (ROOT / "out").mkdir(exist_ok=True)
    shutil.copy(tmp_path / "editor.png", ROOT / "out" / "editor.png")
