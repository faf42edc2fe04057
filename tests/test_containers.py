"""The Dockerfiles and docker-compose.yml, checked without a Docker engine (none runs here).

What can be checked is: they parse; everything they copy exists and is not dockerignored; the
scripts they start exist, are executable and are copied into the image; and every command line
they (and the chart) hand to tritonserver, ``smartedit export`` or ``loadtests/run.py`` is
accepted by that very program.
"""

from __future__ import annotations

import fnmatch
import json
import importlib.util
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
import yaml
from dockerfile_parse import DockerfileParser

from test_helm_chart import pod_spec, render, server_container

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILES = {"server": ROOT / "docker" / "server.Dockerfile", "client": ROOT / "docker" / "client.Dockerfile",
               "gateway": ROOT / "docker" / "gateway.Dockerfile"}
COMPOSE = ROOT / "docker-compose.yml"
ENTRYPOINT = ROOT / "docker" / "server-entrypoint.sh"
IMAGE_ROOT = "/opt/smartedit"  # WORKDIR of both images
NGC_RELEASE_OF_TRITON = {"2.51": "24.10"}  # the NGC image that carries the Triton the tests run


def instructions(dockerfile: Path, name: str) -> list[str]:
    return [i["value"] for i in DockerfileParser(str(dockerfile)).structure if i["instruction"] == name]


def copied_paths(dockerfile: Path) -> dict[str, str]:
    """source (relative to the build context) -> destination in the image, for each COPY."""
    paths = {}
    for value in instructions(dockerfile, "COPY"):
        *sources, destination = shlex.split(value)
        assert not any(s.startswith("--from") for s in sources), "multi-stage COPY is not expected here"
        for source in sources:
            target = destination if not destination.endswith("/") and len(sources) == 1 else \
                f"{destination.rstrip('/')}/{Path(source).name}"
            paths[source] = os.path.normpath(os.path.join(IMAGE_ROOT, target))
    return paths


def dockerignored(path: str) -> bool:
    patterns = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.startswith("#")]
    parts = Path(path).parts
    return any(fnmatch.fnmatch(path, p) or any(fnmatch.fnmatch(part, p.replace("**/", "")) for part in parts)
               for p in patterns)


def tritonserver_help() -> str:
    from smartedit.ops.server import pytriton_dir, server_environment

    completed = subprocess.run([str(pytriton_dir() / "bin" / "tritonserver"), "--help"], capture_output=True,
                               text=True, env=server_environment(), timeout=60)
    return completed.stdout + completed.stderr


def assert_tritonserver_accepts(args: list[str]) -> None:
    options = set(re.findall(r"(--[a-z][a-z0-9-]*)", tritonserver_help()))
    for arg in args:
        flag = arg.split("=", 1)[0]
        assert flag in options, f"tritonserver 2.51 has no option {flag}"


def run_py_parser():
    spec = importlib.util.spec_from_file_location("loadtest_run", ROOT / "loadtests" / "run.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.parser()


def smartedit_parser():
    from smartedit.cli.main import parser

    return parser()


# --- Dockerfiles ----------------------------------------------------------------------------------

@pytest.mark.parametrize("image", sorted(DOCKERFILES))
def test_dockerfile_parses_and_everything_it_copies_exists_in_the_context(image):
    dockerfile = DOCKERFILES[image]
    parser = DockerfileParser(str(dockerfile))
    assert parser.baseimage, f"{dockerfile.name} has no FROM"
    assert instructions(dockerfile, "USER") == ["1000"]  # non-root, the uid the chart runs as
    for source in copied_paths(dockerfile):
        assert (ROOT / source).exists(), f"{dockerfile.name} copies {source}, which is not in the repository"
        assert not dockerignored(source), f"{dockerfile.name} copies {source}, which .dockerignore leaves out"


@pytest.mark.functional
def test_server_image_is_the_ngc_triton_release_the_tests_run(server):
    import urllib.request

    base = DockerfileParser(str(DOCKERFILES["server"])).baseimage
    assert base.startswith("nvcr.io/nvidia/tritonserver:") and base.endswith("-py3")
    # The version the tests' tritonserver itself reports. (The wheel has no TRITON_VERSION file; a version
    # assumed when it is missing compared the Dockerfile with the test's own guess, never with the server.)
    with urllib.request.urlopen(f"http://{server.address.local_http_host}:{server.address.http_port}/v2",
                                timeout=30) as response:
        triton = json.loads(response.read())["version"]
    release = NGC_RELEASE_OF_TRITON.get(".".join(triton.split(".")[:2]))
    assert release, f"the tests run tritonserver {triton}; add its NGC release to NGC_RELEASE_OF_TRITON"
    assert base.split(":")[1].startswith(release), (base, triton)


@pytest.mark.parametrize("image", ["client", "server"])  # the gateway's is an installed command (tested below)
def test_entrypoint_is_copied_into_the_image_and_executable(image):
    dockerfile = DOCKERFILES[image]
    (entrypoint,) = instructions(dockerfile, "ENTRYPOINT")
    program = next(part for part in yaml.safe_load(entrypoint) if part.startswith(IMAGE_ROOT))
    # The repository file that ends up at `program`: the COPY whose destination holds it.
    in_repo = next((ROOT / source / os.path.relpath(program, destination)
                    for source, destination in copied_paths(dockerfile).items()
                    if program == destination or program.startswith(destination + "/")), None)
    assert in_repo is not None, f"{program} is not copied into the {image} image"
    assert in_repo.is_file(), in_repo
    if in_repo.suffix == ".sh":
        assert os.access(in_repo, os.X_OK), f"{in_repo} is not executable"


def test_server_build_checks_what_the_chart_and_compose_run():
    checks = " ".join(instructions(DOCKERFILES["server"], "RUN"))
    for needed in ("command -v tritonserver", "command -v smartedit",
                   "test -x /opt/smartedit/docker/server-entrypoint.sh"):
        assert needed in checks


# --- the commands they run ------------------------------------------------------------------------

def test_server_entrypoint_is_valid_sh_and_its_commands_are_accepted():
    subprocess.run(["sh", "-n", str(ENTRYPOINT)], check=True)
    text = ENTRYPOINT.read_text()
    smartedit_parser().parse_args(["export", "--profile", "onnx-gpu", "--model", "some/model", "--out", "/models/r"])
    # It runs smartedit serve (which drains on docker stop), on all interfaces, with the admin APIs restricted
    # unless asked not to: the key comes from $SMARTEDIT_ADMIN_KEY, which serve reads.
    exec_line = text[text.index("exec smartedit serve"):]
    names = [word.split("=", 1)[0] for word in exec_line.split() if word.startswith("--")]
    # The values are shell expansions: each flag is parsed with the value it takes by default.
    samples = {"--model-repository": "/models/model_repository", "--host": "0.0.0.0", "--drain-timeout": "300",
               "--work-dir": "/models/.triton"}
    assert sorted(names) == sorted(samples), names
    serve = smartedit_parser().parse_args(["serve", *(f"{name}={samples[name]}" for name in names), "--no-restrict"])
    assert serve.func.__name__ == "cmd_serve"
    assert "--host=0.0.0.0" in exec_line and '--drain-timeout="${SMARTEDIT_EXIT_TIMEOUT_SECONDS:-300}"' in exec_line
    from smartedit.cli.main import ADMIN_KEY_ENV

    assert f"export {ADMIN_KEY_ENV}" in text and 'RESTRICT="--no-restrict"' in text


def test_server_entrypoint_exports_each_model_of_smartedit_model_as_a_pipeline(tmp_path):
    """compose's SMARTEDIT_MODEL="NAME=PATH NAME=PATH": one --model each (a stand-in `smartedit` records them)."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "smartedit").write_text('#!/bin/sh\necho "$@" >> "$CALLS"\n')
    (bin_dir / "smartedit").chmod(0o755)
    calls = tmp_path / "calls"
    (tmp_path / "models").mkdir()  # the volume the repository lives in
    env = dict(os.environ, PATH=f"{bin_dir}:{os.environ['PATH']}", CALLS=str(calls),
               SMARTEDIT_MODEL_REPOSITORY=str(tmp_path / "models" / "model_repository"),
               SMARTEDIT_MODEL="sd15=runwayml/stable-diffusion-inpainting blend=/models/dreamshaper")
    subprocess.run(["sh", str(ENTRYPOINT)], env=env, check=True, timeout=30, cwd=tmp_path)
    export = calls.read_text().splitlines()[0].split()
    assert export[0] == "export" and [a for a in export if a.startswith("--model")] == [
        "--model=sd15=runwayml/stable-diffusion-inpainting", "--model=blend=/models/dreamshaper"]
    assert smartedit_parser().parse_args(export).model == ["sd15=runwayml/stable-diffusion-inpainting",
                                                            "blend=/models/dreamshaper"]


@pytest.mark.parametrize("value_set", ["defaults", "cpu", "s3"])
def test_chart_commands_are_accepted_by_the_programs_they_run(value_set):
    objects = render(value_set)
    container = server_container(objects)
    serve = smartedit_parser().parse_args(container["command"][1:] + container["args"])
    assert serve.func.__name__ == "cmd_serve"
    assert_tritonserver_accepts([arg.split("=", 1)[0] for arg in serve.triton_arg])
    smartedit_parser().parse_args(container["lifecycle"]["preStop"]["exec"]["command"][1:])
    for init in pod_spec(objects).get("initContainers", []):
        assert init["command"][0] == "smartedit"
        smartedit_parser().parse_args(init["command"][1:] + init["args"])


def test_every_tritonserver_option_smartedit_serve_passes_is_accepted():
    from smartedit.ops.server import ServerAddress, restriction_args, server_command

    command = server_command(["/models/model_repository", "s3://bucket/repository"], ServerAddress(),
                             Path("/tmp/backends"), extra_args=restriction_args("key") + [
                                 "--model-control-mode=explicit", "--load-model=*", "--exit-timeout-secs=5"],
                             binary=Path("tritonserver"))
    assert "--model-repository=s3://bucket/repository" in command  # a URI is kept as it is
    assert_tritonserver_accepts([arg.split("=", 1)[0] for arg in command[1:]])


# --- docker-compose.yml ---------------------------------------------------------------------------

def test_compose_brings_up_a_gpu_server_and_a_smoke_client_that_waits_for_it():
    compose = yaml.safe_load(COMPOSE.read_text())
    server, smoke = compose["services"]["server"], compose["services"]["smoke"]
    for service in (server, smoke):
        assert (ROOT / service["build"]["context"] / service["build"]["dockerfile"]).is_file()
    (device,) = server["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
    assert smoke["depends_on"]["server"]["condition"] == "service_healthy"
    assert "/v2/health/ready" in " ".join(server["healthcheck"]["test"])
    assert {p.split(":")[1].split()[0] for p in server["ports"]} == {"8000", "8001", "8002"}
    # Compose kills after stop_grace_period: it must outlast the server's drain (300 s by default, then up to
    # 15 s for the answers of edits it stopped) and tritonserver's stop.
    assert int(server["stop_grace_period"].rstrip("s")) > 300 + 45


def test_compose_smoke_command_is_accepted_by_the_load_test_runner():
    smoke = yaml.safe_load(COMPOSE.read_text())["services"]["smoke"]
    command = [part.replace("${LOADTEST_WORKLOAD:-tiny}", "tiny") for part in smoke["command"]]
    args = run_py_parser().parse_args(command)
    assert args.host == "server:8001" and args.run_time > 0


# --- helm/export-job.yaml: fills the PVC that values/gpu-cluster.yaml serves ----------------------

def test_export_job_is_valid_and_writes_the_repository_the_gpu_cluster_values_serve():
    import kubernetes_validate

    job = yaml.safe_load((ROOT / "helm" / "export-job.yaml").read_text())
    kubernetes_validate.validate(job, "1.29.0", strict=True)
    (container,) = job["spec"]["template"]["spec"]["containers"]
    args = smartedit_parser().parse_args(container["command"][1:] + container["args"])
    served = yaml.safe_load((ROOT / "helm" / "values" / "gpu-cluster.yaml").read_text())["modelRepository"]["pvc"]
    mount = next(m["mountPath"] for m in container["volumeMounts"] if m["name"] == "models")
    assert args.out == f"{mount}/{served['subPath']}" and args.profile == "tensorrt"
    claim = next(v for v in job["spec"]["template"]["spec"]["volumes"] if v["name"] == "models")
    assert claim["persistentVolumeClaim"]["claimName"] == served["claimName"]


def test_the_gateway_image_and_chart_start_the_gateway_with_options_it_accepts():
    from smartedit_gateway.__main__ import parser

    entrypoint = json.loads(instructions(DOCKERFILES["gateway"], "ENTRYPOINT")[0])
    command = json.loads(instructions(DOCKERFILES["gateway"], "CMD")[0])
    assert entrypoint[0] == "smartedit-gateway"
    parser().parse_args(entrypoint[1:] + command)
    container = next(o for o in render("gateway") if o["kind"] == "Deployment"
                     and o["metadata"]["name"].endswith("-gateway"))["spec"]["template"]["spec"]["containers"][0]
    args = parser().parse_args(container["args"])
    assert args.host == "0.0.0.0" and args.port == container["ports"][0]["containerPort"]
