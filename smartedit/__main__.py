"""``smartedit``: build the default model, export, serve, and run the end-to-end demo.

    smartedit tiny-model  [--out build/tiny-model]
    smartedit export      [--model <folder|hub id>] [--out build/model_repository] [--profile onnx-cpu]
    smartedit serve       [--model-repository build/model_repository] [--host 127.0.0.1] [--grpc-port 8001]
    smartedit demo        [--model <folder|hub id>] [--out out/demo.png]
    smartedit loadtest    [--run-time 30] [--users 4] [--out out/loadtest]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import signal
import sys
import threading
import time
import warnings
from pathlib import Path

from smartedit.server import (ADMIN_KEY_GRPC_HEADER, ADMIN_KEY_HEADER, LOOPBACK, ServerAddress, ServerFailed,
                              StartInterrupted, TlsFiles, TritonServer, default_work_dir, restriction_args)

log = logging.getLogger("smartedit")

BUILD = Path("build")
DEFAULT_TINY_MODEL = BUILD / "tiny-model"
DEFAULT_REPOSITORY = BUILD / "model_repository"
DEFAULT_LATENCY_TABLE = Path(__file__).resolve().parent.parent / "benchmarks" / "latency" / "sd15-512-h100.json"


def _model_source(model: str | None) -> str:
    """The model to export: the one given, or the embedded tiny model (built on first use)."""
    if model:
        return model
    from smartedit.tiny_model import is_current_tiny_pipeline, write_tiny_pipeline

    if not is_current_tiny_pipeline(DEFAULT_TINY_MODEL):
        log.info("no --model given: building the embedded tiny model at %s", DEFAULT_TINY_MODEL)
        write_tiny_pipeline(DEFAULT_TINY_MODEL)
    return str(DEFAULT_TINY_MODEL)


def cmd_tiny_model(args) -> int:
    from smartedit.tiny_model import write_tiny_pipeline

    print(write_tiny_pipeline(Path(args.out), seed=args.seed))
    return 0


def export_repository(args, out: Path) -> Path:
    """Export ``args.model`` (or the embedded default) into a model repository at ``out``."""
    from smartedit.export.pipeline_loader import load_pipeline
    from smartedit.export.repository import build_repository

    from smartedit.triton_config import SIMULATED

    try:
        options = repository_options(args)
        if args.profile == SIMULATED:
            from smartedit.export.simulated import build_simulated_repository

            if args.model:
                raise ValueError("--profile simulated takes no --model: its shapes and timings come from "
                                 "--latency-table")
            return build_simulated_repository(Path(args.latency_table), out, options)
    except ValueError as error:
        raise SystemExit(f"smartedit: {error}") from None
    from smartedit.export.pipeline_loader import UnsupportedModel

    source = _model_source(args.model)
    log.info("loading %s", source)
    try:
        pipeline = load_pipeline(source)
    except UnsupportedModel as error:
        raise SystemExit(f"smartedit: --model {error}") from None
    return build_repository(pipeline, out, options, onnx_dir=Path(args.onnx_dir) if args.onnx_dir else None,
                            model_name=_model_name(args.model))


def _model_name(model: str | None) -> str:
    """How results name the model: a hub id as given, a local folder by its name."""
    if not model:
        return "smartedit-tiny (embedded default)"
    return Path(model).name if Path(model).exists() else model


def repository_options(args):
    from smartedit.export.repository import RepositoryOptions
    from smartedit.settings import PreprocessSettings

    return RepositoryOptions(
        profile=args.profile,
        precision=args.precision,
        engine=args.engine.replace("-", "_"),
        max_active_edits=args.max_active_edits,
        max_queued_edits=args.max_queued_edits,
        scheduler_instances=args.scheduler_instances,
        preprocess=PreprocessSettings(default_num_inference_steps=args.default_steps),
        tensorrt_accelerator=args.onnx_tensorrt_ep,
        verify=not args.no_verify,
        segmentation=not args.no_segmentation,
        sam_model=args.sam_model,
    )


def cmd_export(args) -> int:
    print(export_repository(args, Path(args.out)))
    return 0


def server_address(args) -> ServerAddress:
    return ServerAddress(host=args.host, grpc_port=args.grpc_port, http_port=args.http_port,
                         metrics_port=args.metrics_port)


def _admin_key(args, work_dir: Path) -> str | None:
    """The key that opens Triton's admin APIs: from --admin-key-file, or a new random one written
    (owner-only) under the work folder; None with --no-restrict."""
    if args.no_restrict:
        log.warning("--no-restrict: shared-memory, model-repository, model-config, statistics, trace and "
                    "logging APIs are open to anyone who reaches the ports")
        return None
    if args.admin_key_file:
        try:
            key = Path(args.admin_key_file).read_text().strip()
        except OSError as error:
            raise ServerFailed(f"--admin-key-file {args.admin_key_file}: {error.strerror}") from None
        try:
            restriction_args(key)
        except ValueError as error:
            raise ServerFailed(f"--admin-key-file {args.admin_key_file}: {error}") from None
        return key
    import secrets

    key = secrets.token_urlsafe(24)
    path = work_dir / "admin-key"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch(mode=0o600)
    path.chmod(0o600)
    path.write_text(key + "\n")
    log.info("admin APIs (statistics, model config, repository, shared memory, trace, logging) need the key in %s, "
             "sent as the HTTP header %s or the gRPC header %s", path, ADMIN_KEY_HEADER, ADMIN_KEY_GRPC_HEADER)
    return key


def _tls(args) -> TlsFiles | None:
    if bool(args.tls_cert) != bool(args.tls_key):
        raise ServerFailed("--tls-cert and --tls-key go together")
    if not args.tls_cert:
        return None
    for option, path in (("--tls-cert", args.tls_cert), ("--tls-key", args.tls_key)):
        if not Path(path).is_file():
            raise ServerFailed(f"{option} {path}: no such file")
    return TlsFiles(Path(args.tls_cert), Path(args.tls_key))


def cmd_serve(args) -> int:
    repository = Path(args.model_repository)
    tls = _tls(args)
    address = server_address(args)
    if tls is not None and address.host != LOOPBACK:
        # Triton 2.51 has no HTTPS: its HTTP endpoint (health, and inference too) stays on this machine.
        log.info("gRPC over TLS on %s; Triton's HTTP endpoint has no TLS, so it listens on %s only",
                 address.host, LOOPBACK)
        address = dataclasses.replace(address, http_host=LOOPBACK)
    server = TritonServer(repository, address, log_file=args.log_file, log_verbose=args.log_verbose, tls=tls,
                          admin_key=_admin_key(args, default_work_dir(repository)))
    stop = threading.Event()

    def request_stop(signum, _frame):
        log.info("%s received: stopping tritonserver (in-flight requests finish first)",
                 signal.Signals(signum).name)
        stop.set()

    # Before the launch, so that a signal at any moment, model loading included, stops the server.
    signal.signal(signal.SIGINT, request_stop)
    signal.signal(signal.SIGTERM, request_stop)
    server.start()
    try:
        server.wait_until_ready(args.ready_timeout, stop=stop)
        _warm_up(server, tls)
        address = server.address
        grpc = f"gRPC {address.grpc}" + (" (TLS)" if tls else "")
        print(f"SmartEdit is serving {args.model_repository}: {grpc}, HTTP {address.http}, "
              f"metrics http://{address.host}:{address.metrics_port}/metrics. Ctrl-C stops it.", flush=True)
        _watch(server, stop, args.ready_timeout, tls)
    except StartInterrupted as interrupted:
        log.info("tritonserver %s", interrupted)
    finally:
        code = server.stop()
    log.info("tritonserver stopped (exit code %s)", code)
    return 0


# Long enough for a real model's first-call set-up; short enough that a server which hangs on its first
# edit (seen, rarely, after a restart on Triton 2.51) is restarted again within the minute.
WARM_UP_TIMEOUT_S = 20.0


def _warm_up(server: TritonServer, tls: TlsFiles | None) -> bool:
    """One small edit before saying "serving": the first edit pays for first-call set-up in every
    model (ONNX Runtime's allocations, torch's first ops), so a client's first edit need not.
    Whether it succeeded."""
    from PIL import Image

    from smartedit_client import InpaintClient, SmartEditError

    image = Image.new("RGB", (64, 64), (128, 128, 128))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (16, 16, 48, 48))
    started = time.perf_counter()
    try:
        with InpaintClient(server.address.local_grpc, timeout_s=WARM_UP_TIMEOUT_S,
                           root_certificates=tls.cert if tls else None) as client:
            client.inpaint(image=image, mask_image=mask, prompt="warm-up", num_inference_steps=2, seed=0,
                           request_id="smartedit-warm-up")
    except (SmartEditError, ValueError) as error:  # a server that cannot edit will say so to its clients too
        log.warning("warm-up edit failed: %s", error)
        return False
    log.info("warmed up with one edit in %.2f s", time.perf_counter() - started)
    return True


# A tritonserver that keeps dying is not restarted for ever: past this many restarts within the window
# `smartedit serve` exits non-zero, so that what supervises it (Kubernetes, systemd) sees the failure.
MAX_RESTARTS, RESTART_WINDOW_S = 5, 600.0


def _watch(server: TritonServer, stop: threading.Event, ready_timeout: float, tls: TlsFiles | None) -> None:
    """Until ``stop``: restart tritonserver when one of its model processes dies, which Triton 2.51
    neither repairs nor reports (smartedit.health), or when tritonserver itself crashes (Triton 2.51
    can crash when a gRPC call is cancelled as it completes: server issue #7368, fixed in 24.12).
    While it restarts, readiness is not 200."""
    from smartedit.health import StubCensus

    census = StubCensus(server.process.pid)
    restarts: list[float] = []
    reason = None  # why tritonserver must be restarted now
    while reason is not None or not stop.wait(1.0):
        if reason is None and server.process.poll() is not None:
            reason = f"tritonserver exited with code {server.process.returncode}"
        elif reason is None:
            dead = census.dead()
            if not dead:
                continue
            reason = f"model process died: {', '.join(dead)}"
        now = time.monotonic()
        restarts = [t for t in restarts if now - t < RESTART_WINDOW_S] + [now]
        if len(restarts) > MAX_RESTARTS:
            raise ServerFailed(f"{reason}; {MAX_RESTARTS} restarts in the last {RESTART_WINDOW_S:.0f} s already: "
                               f"giving up")
        log.error("%s; restarting tritonserver (Triton does not recover by itself)", reason)
        server.stop(timeout_s=5.0)  # edits in flight fail now rather than against a dead model
        server.start()
        server.wait_until_ready(ready_timeout, stop=stop)
        census = StubCensus(server.process.pid)
        reason = None if _warm_up(server, tls) else "the warm-up edit after the restart failed"
        if reason is None:
            log.info("tritonserver restarted and ready")


def cmd_demo(args) -> int:
    from smartedit.demo import run_demo

    path = run_demo(args)
    print(path)
    return 0


def cmd_loadtest(args) -> int:
    from smartedit.local_loadtest import run_local_loadtest

    return run_local_loadtest(args)


def _add_server_arguments(p: argparse.ArgumentParser, grpc: int, http: int, metrics: int) -> None:
    p.add_argument("--host", default=LOOPBACK, help="address to bind (default loopback only; 0.0.0.0 for all)")
    p.add_argument("--grpc-port", type=int, default=grpc)
    p.add_argument("--http-port", type=int, default=http)
    p.add_argument("--metrics-port", type=int, default=metrics)
    p.add_argument("--log-file", type=Path, default=None, help="write tritonserver's log here (default: stdout)")
    p.add_argument("--log-verbose", type=int, default=0)
    p.add_argument("--ready-timeout", type=float, default=600.0, help="seconds to wait for the models to load")


def _add_export_arguments(p: argparse.ArgumentParser) -> None:
    from smartedit.triton_config import RUNTIME_PROFILES, SIMULATED

    p.add_argument("--model", default=None,
                   help="diffusers inpainting folder or hub id (default: the embedded tiny model)")
    p.add_argument("--sam-model", default=None,
                   help="Segment Anything checkpoint for click-to-mask, a folder or hub id such as "
                        "facebook/sam-vit-base (default: an embedded tiny SAM)")
    p.add_argument("--no-segmentation", action="store_true", help="serve no segment model (no SAM)")
    p.add_argument("--profile", choices=RUNTIME_PROFILES + (SIMULATED,), default="onnx-cpu",
                   help="runtime profile (simulated: benchmarks, a device that sleeps per --latency-table)")
    p.add_argument("--latency-table", default=str(DEFAULT_LATENCY_TABLE),
                   help="simulated profile: the device's latency table (default: SD 1.5 at 512 px, H100-class, "
                        "assumed figures)")
    p.add_argument("--precision", choices=("fp32", "fp16"), default="fp32",
                   help="ONNX graph precision; fp16 is for the onnx-gpu profile (tensorrt is always FP16)")
    p.add_argument("--default-steps", type=int, default=50, help="num_inference_steps when a request sends none")
    p.add_argument("--engine", choices=("batched", "per-request"), default="batched",
                   help="the inpaint ensemble's loop: batched (every active edit in one UNet call per step) or "
                        "per-request (one edit per scheduler instance, the engine before)")
    p.add_argument("--max-active-edits", type=int, default=None,
                   help="batched engine: edits denoising at once (default: by profile, 8 on onnx-cpu, 16 on GPU)")
    p.add_argument("--max-queued-edits", type=int, default=None,
                   help="batched engine: admitted edits waiting for a slot; more are refused at once "
                        "(default: by profile, 16 on onnx-cpu, 64 on GPU)")
    p.add_argument("--scheduler-instances", type=int, default=2,
                   help="per-request engine: denoising loops that run at once")
    p.add_argument("--onnx-tensorrt-ep", action="store_true", help="onnx-gpu: enable ONNX Runtime's TensorRT EP")
    p.add_argument("--onnx-dir", default=None, help="tensorrt: where the intermediate ONNX graphs go")
    p.add_argument("--no-verify", action="store_true", help="skip checking each graph against PyTorch")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="smartedit", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)

    tiny = sub.add_parser("tiny-model", help="write the embedded tiny inpainting pipeline (diffusers folder)")
    tiny.add_argument("--out", default=str(DEFAULT_TINY_MODEL))
    tiny.add_argument("--seed", type=int, default=0)
    tiny.set_defaults(func=cmd_tiny_model)

    export = sub.add_parser("export", help="export a pipeline into a Triton model repository")
    _add_export_arguments(export)
    export.add_argument("--out", default=str(DEFAULT_REPOSITORY))
    export.set_defaults(func=cmd_export)

    serve = sub.add_parser("serve", help="run tritonserver on a model repository until Ctrl-C / SIGTERM")
    serve.add_argument("--model-repository", default=str(DEFAULT_REPOSITORY))
    serve.add_argument("--admin-key-file", default=None,
                       help=f"file holding the key that opens the admin APIs (header {ADMIN_KEY_HEADER}); "
                            "default: a new random key, written under the repository's .triton folder")
    serve.add_argument("--no-restrict", action="store_true",
                       help="leave the admin APIs (shared memory, model repository/config, statistics, trace, "
                            "logging) open to anyone who reaches the ports")
    serve.add_argument("--tls-cert", default=None, help="PEM certificate: serve gRPC over TLS (with --tls-key)")
    serve.add_argument("--tls-key", default=None, help="PEM private key of --tls-cert")
    _add_server_arguments(serve, 8001, 8000, 8002)
    serve.set_defaults(func=cmd_serve)

    demo = sub.add_parser("demo", help="export, serve, send one edit through the SDK, write the PNG")
    _add_export_arguments(demo)
    demo.add_argument("--repository", default=str(DEFAULT_REPOSITORY))
    demo.add_argument("--out", default="out/demo.png")
    demo.add_argument("--steps", type=int, default=20)
    _add_server_arguments(demo, 8001, 8000, 8002)
    demo.set_defaults(func=cmd_demo)

    loadtest = sub.add_parser("loadtest", help="start a local server and run the Locust load test against it")
    _add_export_arguments(loadtest)
    loadtest.add_argument("--repository", default=str(DEFAULT_REPOSITORY), help="exported here if missing")
    loadtest.add_argument("--run-time", type=int, default=30, help="seconds of load")
    loadtest.add_argument("--users", type=int, default=4, help="most simultaneous users")
    loadtest.add_argument("--step-users", type=int, default=1, help="users added at each load step")
    loadtest.add_argument("--step-seconds", type=float, default=5.0, help="seconds between load steps")
    loadtest.add_argument("--workload", choices=("tiny", "sd15"), default="tiny", help="request mix")
    loadtest.add_argument("--out", default="out/loadtest", help="folder for the CSV and HTML reports")
    _add_server_arguments(loadtest, 8001, 8000, 8002)
    loadtest.set_defaults(func=cmd_loadtest)
    return p


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    warnings.filterwarnings("ignore", category=FutureWarning)
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except ServerFailed as error:
        print(f"smartedit: {error}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
