"""The README's Python snippets run as written, against a real server.

Each ```python block is run on its own, as a user pastes it into a file, in a folder holding the
photo.png, mask.png and object.png it names; only the server's address is the test server's.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import png_bytes, scene

pytestmark = pytest.mark.functional
README = Path(__file__).resolve().parent.parent / "README.md"
SNIPPETS = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
DOCUMENTED_ADDRESS = "127.0.0.1:8001"


def test_the_readme_has_its_python_snippets():
    assert len(SNIPPETS) >= 3
    assert all(DOCUMENTED_ADDRESS in snippet for snippet in SNIPPETS)


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("readme")
    image, mask = scene(128, 96, seed=11)
    _, object_mask = scene(128, 96, seed=12)
    (folder / "photo.png").write_bytes(png_bytes(image))
    (folder / "mask.png").write_bytes(png_bytes(mask))
    (folder / "object.png").write_bytes(png_bytes(object_mask))
    return folder


@pytest.mark.parametrize("index", range(len(SNIPPETS)), ids=lambda index: f"snippet-{index + 1}")
def test_a_readme_snippet_runs_as_written(request, photo_folder, index):
    # The snippet of "Instruction edits" edits with its InstructPix2Pix pipeline; that of "Several pipelines in
    # one server" with the README's two pipelines, tiny and blend.
    if 'pipeline="instruct"' in SNIPPETS[index]:
        fixture = "instruct_server"
    else:
        fixture = "two_pipelines_server" if "pipeline=" in SNIPPETS[index] else "server"
    server = request.getfixturevalue(fixture)
    code = SNIPPETS[index].replace(DOCUMENTED_ADDRESS, server.address.grpc)
    completed = subprocess.run([sys.executable, "-c", code], cwd=photo_folder, capture_output=True, text=True,
                               timeout=600)
    assert completed.returncode == 0, f"snippet {index + 1}:\n{SNIPPETS[index]}\n{completed.stderr[-3000:]}"
