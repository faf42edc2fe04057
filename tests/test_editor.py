"""The browser editor, in a real headless Chromium (the distribution's, driven by Playwright), against
the gateway and the real tritonserver, as a person uses it: open a photo (file, drop, paste), click an
object for its SAM mask or paint one (undo, redo), run an edit, watch its progress, compare before and
after on the canvas, download it, continue from it, cancel one, reload one from the history and get
the same PNG byte for byte; files that are not photos, or too large, are refused before any painting;
a 390 px wide phone scrolls only up and down. Every page here has the network to anything but the
gateway cut off, and a request that tries it fails the test. Also writes the README's screenshots
(out/editor.png, out/editor-mobile.png). Run with `pytest -m browser` (Chromium: scripts/install-browser.sh)."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import re
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from playwright.sync_api import expect

from test_gateway import gateway

pytestmark = [pytest.mark.functional, pytest.mark.browser]
ROOT = Path(__file__).resolve().parent.parent
BIG_SEED = "7899758643369034638"  # > 2^53: a JavaScript number would make it 7899758643369035000
DESKTOP = {"width": 1280, "height": 860}
PHONE = {"width": 390, "height": 844}


def _photo(width: int = 256, height: int = 192) -> Image.Image:
    rows = np.linspace(0.0, 1.0, height)[:, None, None]
    sky = (1 - rows) * np.array([110, 160, 230]) + rows * np.array([200, 220, 245])
    image = Image.fromarray(np.broadcast_to(sky, (height, width, 3)).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, height * 125 // 192, width, height], fill=(90, 140, 70))
    draw.rectangle([width // 4, height * 77 // 192, width * 141 // 256, height * 154 // 192], fill=(150, 90, 60))
    return image


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """The photos the tests open, as files."""
    folder = tmp_path_factory.mktemp("photos")
    _photo().save(folder / "photo.png")
    _photo(200, 150).save(folder / "other.png")
    (folder / "notes.txt").write_text("shopping list: bread, milk\n")
    return folder


@pytest.fixture(scope="module")
def editor_url(server, tmp_path_factory):
    with gateway(server.address.grpc, tmp_path_factory.mktemp("gateway") / "gateway.log") as url:
        yield url


@contextlib.contextmanager
def offline_page(browser, url: str, viewport: dict = DESKTOP):
    """A page whose requests to anything but ``url``'s server are refused and recorded; on leaving,
    fails on any such request and on any script error."""
    page = browser.new_page(viewport=viewport, accept_downloads=True)
    outside, errors = [], []
    page.on("pageerror", lambda error: errors.append(str(error)))

    def only_the_gateway(route):
        if route.request.url.startswith(url + "/"):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", only_the_gateway)
    try:
        yield page
    finally:
        page.close()
    assert not errors, errors
    assert not outside, f"the page tried to load from outside the gateway: {outside}"


def _open(page, url: str, photo: Path):
    page.goto(url + "/")
    expect(page.locator("#server")).not_to_have_text("")  # /info answered
    page.set_input_files("#photo", str(photo))
    page.wait_for_selector("#stage[data-ready='1'][data-view='mask']")


def _at(page, fx: float, fy: float) -> tuple[float, float]:
    """The screen point at fractions (fx, fy) of the shown photo."""
    box = page.locator("#stage").bounding_box()
    return box["x"] + fx * box["width"], box["y"] + fy * box["height"]


def _paint(page, start: tuple[float, float], end: tuple[float, float]) -> int:
    """A brush stroke from ``start`` to ``end`` (fractions of the photo); the mask's painted pixels then."""
    page.click("button[data-tool='paint']")
    page.mouse.move(*_at(page, *start))
    page.mouse.down()
    page.mouse.move(*_at(page, *end), steps=6)
    page.mouse.up()
    return _mask_pixels(page)


def _mask_pixels(page) -> int:
    return int(page.get_attribute("#stage", "data-mask-pixels"))


def _run(page, **fields):
    for name, value in fields.items():
        page.fill(f"#{name}", str(value))
    page.click("#run")


def _run_to_result(page, **fields):
    """Run an edit and wait for its result (a new entry in the history: a reloaded result may be on show)."""
    edits = page.locator("#history li").count()
    _run(page, **fields)
    expect(page.locator("#history li")).to_have_count(edits + 1, timeout=120_000)
    assert page.get_attribute("#stage", "data-view") == "result"


def _download(page, path: Path) -> tuple[str, bytes]:
    with page.expect_download() as download:
        page.click("#download")
    download.value.save_as(path)
    return download.value.suggested_filename, path.read_bytes()


def _sent_mask(page) -> np.ndarray:
    """The mask as the editor sends it (photo-sized), True = repaint (as the server reads it: >= 128)."""
    url = page.evaluate("window.smartedit.maskPng()")
    return np.asarray(Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1]))).convert("L")) >= 128


def _rgb(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert("RGB")).astype(int)


def _screenshot(page, name: str):
    """The whole page, to out/ (the README's pictures are copied from there)."""
    (ROOT / "out").mkdir(exist_ok=True)
    page.screenshot(path=str(ROOT / "out" / name), full_page=True)


def _no_sideways_scroll(page) -> bool:
    return page.evaluate("document.documentElement.scrollWidth <= document.documentElement.clientWidth")


def _record_progress(page):
    """From now on, every text the progress line shows is kept in window.progressSeen."""
    page.evaluate("""() => {
        window.progressSeen = [];
        new MutationObserver(() => window.progressSeen.push(document.getElementById('step').textContent))
            .observe(document.getElementById('step'), {childList: true, characterData: true, subtree: true});
    }""")


def test_click_a_mask_run_an_edit_see_previews_and_download_it(editor_url, browser, files, tmp_path):
    with offline_page(browser, editor_url) as page:
        _open(page, editor_url, files / "photo.png")
        page.click("button[data-tool='object']")
        # The middle of the brown box, in the displayed canvas.
        page.mouse.click(*_at(page, 100 / 256, 115 / 192))
        expect(page.locator("#stage")).not_to_have_attribute("data-mask-pixels", "0")
        status = page.inner_text("#status")
        assert status.startswith("Mask ready") and "score" not in status  # words, not "score -0.023"
        _record_progress(page)
        _run_to_result(page, prompt="a wooden bench", num_inference_steps=8, strength=0.5, seed=7, preview_every=1)
        # strength 0.5 of 8 steps: 4 run, and the progress says so.
        assert "step 4 of 4 — strength 0.5 of 8 steps" in page.evaluate("window.progressSeen")
        assert int(page.get_attribute("#preview", "data-previews")) >= 1
        assert "Done in" in page.inner_text("#status") and "seed 7" in page.inner_text("#status")
        assert page.locator("#history li").count() == 1
        mask = _sent_mask(page)
        name, edited = _download(page, tmp_path / "edited.png")
    assert name == "edited-7.png"
    photo = np.asarray(_photo()).astype(int)
    assert _rgb(edited).shape == photo.shape and mask.any() and (~mask).any()
    assert np.array_equal(_rgb(edited)[~mask], photo[~mask])


def test_a_seed_past_2_53_round_trips_and_a_reloaded_edit_reproduces_its_png(editor_url, browser, files, tmp_path):
    with offline_page(browser, editor_url) as page:
        _open(page, editor_url, files / "photo.png")
        _paint(page, (0.2, 0.3), (0.6, 0.5))
        _run_to_result(page, prompt="a red kite", num_inference_steps=4, seed=BIG_SEED)
        assert f"seed {BIG_SEED}" in page.inner_text("#status")
        assert BIG_SEED in page.inner_text("#history li")
        name, first = _download(page, tmp_path / "first.png")
        _screenshot(page, "editor.png")  # the README's: the stroke's edit on both sides of the divider
        # Another photo (which clears the result), mask and settings; then the history brings the edit back.
        page.set_input_files("#photo", str(files / "other.png"))
        page.wait_for_selector("#stage[data-photo-size='200x150'][data-view='mask']")
        assert page.is_hidden("#result-bar") and page.is_hidden("#progress") and page.is_hidden("#preview")
        _paint(page, (0.1, 0.1), (0.3, 0.3))
        page.fill("#seed", "1")
        page.select_option("#task", "remove")
        page.click("#history li button")
        page.wait_for_selector("#stage[data-photo-size='256x192'][data-view='result']")
        assert page.input_value("#seed") == BIG_SEED and page.input_value("#task") == "inpaint"
        _run_to_result(page)
        _, again = _download(page, tmp_path / "again.png")
    assert name == f"edited-{BIG_SEED}.png"
    assert json.loads(Image.open(io.BytesIO(first)).text["smartedit"])["parameters"]["seed"] == int(BIG_SEED)
    assert again == first


def test_the_result_is_on_the_canvas_and_editing_continues_from_it(editor_url, browser, files, tmp_path):
    with offline_page(browser, editor_url) as page:
        _open(page, editor_url, files / "photo.png")
        _paint(page, (0.2, 0.45), (0.8, 0.55))
        mask = _sent_mask(page)
        _run_to_result(page, prompt="a bench", num_inference_steps=4, seed=3)
        _, first = _download(page, tmp_path / "first.png")
        # Drag the divider to the middle: the photo on its left, the result on its right.
        page.mouse.move(*_at(page, 0.9, 0.5))
        page.mouse.down()
        page.mouse.move(*_at(page, 0.5, 0.5), steps=4)
        page.mouse.up()
        photo, result = np.asarray(_photo()).astype(int), _rgb(first)
        change = np.abs(result - photo).sum(axis=2) * mask
        left, right = change[:, :120], change[:, 136:]
        (ly, lx), (ry, rx) = np.unravel_index(left.argmax(), left.shape), np.unravel_index(right.argmax(), right.shape)
        rx += 136
        shown = page.evaluate("""([points]) => points.map(([x, y]) =>
            Array.from(document.getElementById('stage').getContext('2d').getImageData(x, y, 1, 1).data.slice(0, 3)))""",
                              [[[int(lx), int(ly)], [int(rx), int(ry)]]])
        assert left.max() > 30 and right.max() > 30  # the edit changed pixels on both sides
        assert np.abs(np.array(shown[0]) - photo[ly, lx]).max() <= 3  # before, left of the divider
        assert np.abs(np.array(shown[1]) - result[ry, rx]).max() <= 3  # after, right of it
        # Continue: the result is the photo now; a second edit starts from its pixels.
        page.click("#continue")
        page.wait_for_selector("#stage[data-view='mask'][data-mask-pixels='0']")
        _paint(page, (0.1, 0.1), (0.3, 0.2))
        second_mask = _sent_mask(page)
        _run_to_result(page, prompt="a cloud", num_inference_steps=4, seed=4)
        _, second = _download(page, tmp_path / "second.png")
        # A failure clears the result, its preview and the progress, and names the field as the form does.
        page.click("#toggle-view")
        _run(page, num_inference_steps=5000)
        page.wait_for_selector("#status.error")
        assert page.inner_text("#status").startswith("Edit failed: Steps:")
        assert page.get_attribute("#num_inference_steps", "aria-invalid") == "true"
        assert page.is_hidden("#result-bar") and page.is_hidden("#progress")
        assert page.get_attribute("#stage", "data-view") == "mask"
    assert not np.array_equal(_rgb(second), result)
    assert np.array_equal(_rgb(second)[~second_mask], result[~second_mask])


def test_cancel_closes_the_stream_and_the_server_cancels_the_edit(editor_url, browser, files, server):
    with offline_page(browser, editor_url) as page:
        _open(page, editor_url, files / "photo.png")
        _paint(page, (0.3, 0.3), (0.6, 0.6))
        _run(page, prompt="a slow edit", num_inference_steps=300, preview_every=0)
        page.wait_for_selector("#cancel:visible")
        expect(page.locator("#step")).to_have_text(re.compile(r"^step \d+ of "), timeout=60_000)
        request_id = page.get_attribute("#stage", "data-request-id")
        page.click("#cancel")
        expect(page.locator("#status")).to_have_text(re.compile("^Edit cancelled"))
        assert page.is_hidden("#progress") and page.is_hidden("#cancel") and page.is_enabled("#run")
    deadline = time.monotonic() + 60
    while not _logged_outcome(Path(server.log_file), request_id):
        assert time.monotonic() < deadline, f"the server logged no end of edit {request_id}"
        time.sleep(0.5)
    assert _logged_outcome(Path(server.log_file), request_id) == "cancelled"


def _logged_outcome(log: Path, request_id: str) -> str | None:
    """The outcome the server's stream logged for the edit ``request_id``, once it has."""
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("{") and request_id in line:
            record = json.loads(line)
            if record.get("request_id") == request_id and record.get("stage") == "stream":
                return record.get("outcome")
    return None


def test_strokes_undo_and_redo_with_buttons_and_keys(editor_url, browser, files):
    with offline_page(browser, editor_url) as page:
        _open(page, editor_url, files / "photo.png")
        assert page.is_disabled("#undo") and page.is_disabled("#run")
        one = _paint(page, (0.1, 0.2), (0.4, 0.2))
        two = _paint(page, (0.1, 0.7), (0.8, 0.7))
        assert 0 < one < two
        page.keyboard.press("Control+z")
        assert _mask_pixels(page) == one
        page.keyboard.press("Control+Shift+z")
        assert _mask_pixels(page) == two
        page.click("#undo")
        page.click("#undo")
        assert _mask_pixels(page) == 0 and page.is_disabled("#run") and page.is_disabled("#undo")
        page.click("#redo")
        assert _mask_pixels(page) == one and page.is_enabled("#run")
        page.click("#clear")
        assert _mask_pixels(page) == 0
        page.keyboard.press("Control+z")
        assert _mask_pixels(page) == one


def test_a_photo_is_opened_by_dropping_or_pasting_it(editor_url, browser, files):
    payload = base64.b64encode((files / "photo.png").read_bytes()).decode()
    other = base64.b64encode((files / "other.png").read_bytes()).decode()
    with offline_page(browser, editor_url) as page:
        page.goto(editor_url + "/")
        page.evaluate("""() => { window.transferOf = ([data, name]) => {  // what a drop or a paste carries
            const bytes = Uint8Array.from(atob(data), (c) => c.charCodeAt(0));
            const transfer = new DataTransfer();
            transfer.items.add(new File([bytes], name, {type: 'image/png'}));
            return transfer;
        }; }""")
        transfer = page.evaluate_handle("(file) => window.transferOf(file)", [payload, "dropped.png"])
        page.dispatch_event("#stage-frame", "dragenter", {"dataTransfer": transfer})
        page.dispatch_event("#stage-frame", "drop", {"dataTransfer": transfer})
        page.wait_for_selector("#stage[data-ready='1'][data-photo-size='256x192']")
        assert page.inner_text("#status").startswith("dropped.png: 256×192")
        page.evaluate("""(file) => document.dispatchEvent(
            new ClipboardEvent('paste', {clipboardData: window.transferOf(file), bubbles: true}))""",
                      [other, "pasted.png"])
        page.wait_for_selector("#stage[data-photo-size='200x150']")
        assert page.inner_text("#status").startswith("pasted.png: 200×150")


def test_a_file_that_is_not_a_photo_or_is_past_the_servers_limit_is_refused_before_painting(
        editor_url, browser, files, tmp_path):
    info = json.loads(urllib.request.urlopen(editor_url + "/info", timeout=30).read())
    limit = info["limits"]["max_image_pixels"]
    width = 6200
    height = limit // width + 8  # just past the limit: a few MB of PNG, one colour
    Image.new("RGB", (width, height), (120, 160, 200)).save(tmp_path / "huge.png", compress_level=1)
    with offline_page(browser, editor_url) as page:
        page.goto(editor_url + "/")
        expect(page.locator("#server")).not_to_have_text("")
        page.set_input_files("#photo", str(files / "notes.txt"))
        page.wait_for_selector("#status.error")
        assert "“notes.txt” is not a PNG, JPEG or WebP image" in page.inner_text("#status")
        assert page.get_attribute("#stage", "data-ready") == "0" and page.is_visible("#drop-here")
        page.set_input_files("#photo", str(tmp_path / "huge.png"))
        expect(page.locator("#status")).to_contain_text("huge.png")
        status = page.inner_text("#status")
        assert f"is {width}×{height}" in status and f"up to {limit / 1e6:.1f} MP ({limit} pixels)" in status, status
        assert page.get_attribute("#stage", "data-ready") == "0" and page.is_disabled("#run")
        # With a photo open, a bad file leaves it open.
        page.set_input_files("#photo", str(files / "photo.png"))
        page.wait_for_selector("#stage[data-ready='1']")
        page.set_input_files("#photo", str(files / "notes.txt"))
        page.wait_for_selector("#status.error")
        assert page.get_attribute("#stage", "data-photo-size") == "256x192"


def test_hints_and_overlay_follow_the_task(editor_url, browser, files):
    with offline_page(browser, editor_url) as page:
        _open(page, editor_url, files / "photo.png")
        assert page.inner_text("#hint").startswith("Paint the area to repaint")
        assert page.get_attribute("#stage", "data-overlay") == "repaint"
        page.select_option("#task", "replace_background")
        assert page.inner_text("#hint").startswith("Paint the subject to keep")
        assert page.get_attribute("#stage", "data-overlay") == "keep"
        assert "background" in page.get_attribute("#prompt", "placeholder")
        page.select_option("#task", "remove")
        assert page.inner_text("#hint").startswith("Paint over the object to remove")


def test_the_brush_cursor_has_the_brushes_size(editor_url, browser, files):
    with offline_page(browser, editor_url) as page:
        _open(page, editor_url, files / "photo.png")
        page.evaluate("""() => {  // a range input cannot be filled: moved as a person's drag would
            const brush = document.getElementById('brush');
            brush.value = '60';
            brush.dispatchEvent(new Event('input', {bubbles: true}));
        }""")
        page.mouse.move(*_at(page, 0.5, 0.5))
        cursor = page.locator("#cursor").bounding_box()
        assert round(cursor["width"]) == 60 and round(cursor["height"]) == 60
        # The photo is shown enlarged here: 60 screen px are fewer of its pixels, and the readout says how many.
        shown = page.locator("#stage").bounding_box()["width"]
        assert page.inner_text("#brush-size") == f"60 px ({round(60 * 256 / shown)} px of the photo)"


def test_a_24_megapixel_photo_is_painted_at_the_displayed_size_and_sent_at_its_own(editor_url, browser, tmp_path):
    Image.new("RGB", (6000, 4000), (90, 140, 70)).save(tmp_path / "24mp.png", compress_level=1)
    with offline_page(browser, editor_url) as page:
        _open(page, editor_url, tmp_path / "24mp.png")
        assert max(page.evaluate("window.smartedit.paintingSize()")) <= 1024
        _paint(page, (0.25, 0.5), (0.75, 0.5))
        mask = _sent_mask(page)
    assert mask.shape == (4000, 6000)
    assert mask[2000, 3000] and mask[2000, 1600] and not mask[2000, 500] and not mask[500, 3000]


def test_a_390px_wide_phone_has_no_sideways_scroll(editor_url, browser, files):
    with offline_page(browser, editor_url, viewport=PHONE) as page:
        page.goto(editor_url + "/")
        assert _no_sideways_scroll(page)
        _open(page, editor_url, files / "photo.png")
        assert _no_sideways_scroll(page)
        assert page.locator("#stage").bounding_box()["width"] <= PHONE["width"]
        _paint(page, (0.3, 0.4), (0.6, 0.6))
        _run_to_result(page, prompt="a bench", num_inference_steps=4, seed=BIG_SEED)
        assert _no_sideways_scroll(page)
        _screenshot(page, "editor-mobile.png")


def test_parameters_the_form_does_not_lay_out_get_inputs_from_info_and_are_sent(editor_url, browser, files, tmp_path):
    with urllib.request.urlopen(editor_url + "/info", timeout=30) as response:
        declared = json.load(response)["parameters"]
    with offline_page(browser, editor_url) as page:
        _open(page, editor_url, files / "photo.png")
        expect(page.locator("#more-settings")).to_be_visible()
        expect(page.locator("#control-image-choice")).to_be_hidden()  # this pipeline serves no ControlNet
        generated = page.eval_on_selector_all("#more-fields [name]", "nodes => nodes.map(n => n.name)")
        laid_out = page.eval_on_selector_all("#edit [name]:not(#more-fields [name])", "nodes => nodes.map(n => n.name)")
        assert set(generated) == {name for name, p in declared.items() if not p["required"]} - set(laid_out)
        assert {"eta", "invert_mask", "num_images", "crop_padding"} <= set(generated)
        assert page.get_attribute("#param-eta", "max") == "1" and page.get_attribute("#param-eta", "title") == (
            declared["eta"]["meaning"])
        page.click("#more-settings summary")
        page.fill("#param-eta", "0.5")
        page.check("#param-invert_mask")
        _screenshot(page, "editor-more-settings.png")
        _paint(page, (0.2, 0.3), (0.6, 0.5))
        _run_to_result(page, prompt="more", num_inference_steps=3, seed=5)
        _, png = _download(page, tmp_path / "more.png")
    recorded = json.loads(Image.open(io.BytesIO(png)).text["smartedit"])["parameters"]
    assert recorded["eta"] == 0.5 and recorded["invert_mask"] is True and recorded["num_images"] == 1


def _multipart(body: bytes) -> dict[str, bytes]:
    """A multipart/form-data body's parts by field name."""
    boundary = body.split(b"\r\n", 1)[0]
    return {part.split(b'name="', 1)[1].split(b'"', 1)[0].decode(): part.split(b"\r\n\r\n", 1)[1][:-2]
            for part in body.split(boundary) if b'name="' in part}


def test_checkpoints_show_as_they_come_and_one_painted_on_continues_the_edit(editor_url, browser, files, tmp_path):
    with offline_page(browser, editor_url) as page:
        _open(page, editor_url, files / "photo.png")
        # Not offered where the server takes none: text_edit (this pipeline has it off: chosen as a script
        # would), or more than one image.
        page.eval_on_selector("#task", "s => { s.value = 'text_edit'; s.dispatchEvent(new Event('change')); }")
        expect(page.locator("#checkpoint-choice")).to_be_hidden()
        page.select_option("#task", "inpaint")
        expect(page.locator("#checkpoint-choice")).to_be_visible()
        page.click("#more-settings summary")
        page.fill("#param-num_images", "2")
        expect(page.locator("#checkpoint-choice")).to_be_hidden()
        page.fill("#param-num_images", "")
        expect(page.locator("#checkpoint-choice")).to_be_visible()
        _paint(page, (0.2, 0.3), (0.6, 0.6))
        sent = []
        page.on("request", lambda request: sent.append((request.url, request.post_data_buffer))
                if request.method == "POST" and "/edit/" in request.url else None)
        _run_to_result(page, prompt="a wooden bench", num_inference_steps=6, seed=7, preview_every=0,
                       checkpoint_every=2)
        expect(page.locator("#checkpoint-list li")).to_have_count(2)  # steps 2 and 4 (6 is the result)
        assert page.locator("#checkpoint-list li").first.inner_text().startswith("step 2 of 6")
        first_edit = sent[-1][1]
        assert sent[-1][0].endswith("/edit/inpaint/stream") and b'name="checkpoint_every"\r\n\r\n2' in first_edit
        page.locator("#checkpoint-list li").first.locator("button.continue-checkpoint").click()
        expect(page.locator("#touch-up")).to_be_visible()
        size = page.evaluate("[0, 1].map(i => [document.getElementById('touch-canvas').width,"
                             " document.getElementById('touch-canvas').height][i])")
        page.fill("#touch-colour", "#20c040")
        box = page.locator("#touch-canvas").bounding_box()
        page.mouse.move(box["x"] + box["width"] * 0.3, box["y"] + box["height"] * 0.3)
        page.mouse.down()
        page.mouse.move(box["x"] + box["width"] * 0.7, box["y"] + box["height"] * 0.6, steps=6)
        page.mouse.up()
        expect(page.locator("#touch-canvas")).to_have_attribute("data-strokes", "1")
        _screenshot(page, "editor-checkpoints.png")
        edits = page.locator("#history li").count()
        page.click("#resume")
        expect(page.locator("#history li")).to_have_count(edits + 1, timeout=120_000)
        assert "Done in" in page.inner_text("#status")
        mask = _sent_mask(page)
        _, resumed = _download(page, tmp_path / "resumed.png")
    url, body = sent[-1]
    assert url.endswith("/edit/resume/stream")
    assert b'name="resume_state"' in body and b'name="resume_image"' in body and b'name="prompt"' not in body
    # The painted canvas went as a PNG of the checkpoint's own size, and the photo and mask as the first edit sent them.
    parts, first_parts = _multipart(body), _multipart(first_edit)
    assert Image.open(io.BytesIO(parts["resume_image"])).size == tuple(size)
    assert parts["image"] == first_parts["image"] and parts["mask_image"] == first_parts["mask_image"]
    photo = np.asarray(_photo()).astype(int)
    assert np.array_equal(_rgb(resumed)[~mask], photo[~mask])
