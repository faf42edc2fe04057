"""SmartEdit installed as a user installs it (wheels, not editable), used from a folder of its own.

Nothing may be read from the checkout: the Python models' sources and the latency table are package
data. The three distributions are built as wheels from a copy of their sources and installed into a
fresh virtual environment; their dependencies (torch, diffusers, tritonserver, ...) come from this
environment through a path entry, since installing them again would take minutes and the index.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

from conftest import read_until_serving, scene
from smartedit.ops.server import free_port

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.functional


def _run(command: list, cwd: Path, env: dict, timeout: float = 600) -> subprocess.CompletedProcess:
    done = subprocess.run([str(part) for part in command], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)
    assert done.returncode == 0, f"{command}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return done


def test_a_plain_install_exports_serves_and_edits_from_another_folder(tmp_path):
    # The sources alone (as a fresh clone has them), built into wheels.
    sources = tmp_path / "sources"
    ignore = shutil.ignore_patterns("__pycache__", "*.egg-info", "build", "node_modules")
    for part in ("smartedit", "client", "gateway"):
        shutil.copytree(ROOT / part, sources / part, ignore=ignore)
    for part in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / part, sources / part)
    wheels = tmp_path / "wheels"
    env = {key: value for key, value in os.environ.items() if key != "PYTHONPATH"}  # nothing but the install
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "--no-index", "-w", wheels,
          sources, sources / "client", sources / "gateway"], tmp_path, env)

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", venv], tmp_path, env)
    python, bin_dir = venv / "bin" / "python", venv / "bin"
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], tmp_path,
                     env).stdout.strip())
    # The dependencies, from this environment: a path entry sees its packages, not its editable installs.
    (site / "dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    _run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-index", *sorted(wheels.glob("*.whl"))],
         tmp_path, env)
    env["PATH"] = f"{bin_dir}{os.pathsep}{env['PATH']}"
    where = _run([python, "-c", "import smartedit, smartedit_client; print(smartedit.__file__, "
                                "smartedit_client.__file__)"], tmp_path, env).stdout
    assert all(str(site) in path for path in where.split()), where
    shipped = _run([python, "-c", "from smartedit.engine.latency_table import SHIPPED_LATENCY_TABLE as t; "
                                  "print(t.is_file(), t)"], tmp_path, env).stdout  # --profile simulated reads it
    assert shipped.startswith(f"True {site}"), shipped

    # From a folder that is not the checkout: export the embedded default, serve it, edit once.
    work = tmp_path / "elsewhere"
    work.mkdir()
    _run([bin_dir / "smartedit", "export", "--out", "repository"], work, env)
    exported = work / "repository" / "scheduler" / "1" / "model.py"
    assert exported.read_text() == (site / "smartedit" / "serving" / "model_repository" / "scheduler" / "1" /
                                    "model.py").read_text()
    grpc_port = free_port()
    serve = subprocess.Popen([str(bin_dir / "smartedit"), "serve", "--model-repository", "repository",
                              "--grpc-port", str(grpc_port), "--http-port", str(free_port()),
                              "--metrics-port", str(free_port()), "--log-file", "triton.log"],
                             cwd=work, env=dict(env, PYTHONUNBUFFERED="1"), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        lines = read_until_serving(serve)
        assert "SmartEdit is serving" in lines[-1], "".join(lines)
        image, mask = scene(64, 64)
        image.save(work / "photo.png")
        mask.save(work / "mask.png")
        edited = _run([bin_dir / "smartedit-edit", "--url", f"127.0.0.1:{grpc_port}", "--image", "photo.png",
                       "--mask", "mask.png", "--prompt", "a cat", "--steps", "3", "--seed", "7", "--out", "out.png"],
                      work, env, timeout=120)
        assert "seed 7" in edited.stdout and (work / "out.png").read_bytes().startswith(b"\x89PNG")
    finally:
        serve.send_signal(signal.SIGTERM)
        try:
            rest = serve.communicate(timeout=60)[0]  # and the lines since "serving": a crash's stacks
        except subprocess.TimeoutExpired:
            serve.kill()
            rest = serve.communicate()[0]
    assert serve.returncode == 0, rest[-6000:]
