"""``smartedit``: build the default model, export, serve, and run the end-to-end demo.

    smartedit tiny-model  [--out build/tiny-model] [--text-to-image | --instruct] [--sdxl]
    smartedit export      [--model [NAME=]<folder|hub id> ...] [--out build/model_repository] [--profile onnx-cpu]
    smartedit serve       [--model-repository build/model_repository] [--host 127.0.0.1] [--grpc-port 8001]
    smartedit demo        [--model <folder|hub id>] [--out out/demo.png]
    smartedit loadtest    [--run-time 30] [--users 4] [--out out/loadtest]
    smartedit eval        FOLDER [--url 127.0.0.1:8001] [--pipeline NAME] [--clip FOLDER] [--out report.md]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys
import warnings
from pathlib import Path
from typing import NoReturn

from smartedit.cli.exporting import (DEFAULT_LATENCY_TABLE, DEFAULT_REPOSITORY, DEFAULT_TINY_INSTRUCT,
                                     DEFAULT_TINY_MODEL, DEFAULT_TINY_SDXL, DEFAULT_TINY_TEXT_TO_IMAGE, TINY_FAMILIES,
                                     export_repository, server_address)
from smartedit.ops.server import (ADMIN_KEY_GRPC_HEADER, ADMIN_KEY_HEADER, LOOPBACK, ServerFailed, TlsFiles,
                                  TritonServer, default_work_dir, is_remote, restriction_args, server_dir)

log = logging.getLogger("smartedit")

def cmd_tiny_model(args) -> int:
    from smartedit.export.tiny_model import write_tiny_pipeline

    if args.instruct and (args.sdxl or args.text_to_image):
        raise SystemExit("smartedit tiny-model: --instruct is an SD 1.x-shaped InstructPix2Pix model; drop --sdxl and "
                         "--text-to-image")
    if args.instruct:
        out = args.out or DEFAULT_TINY_INSTRUCT
        print(write_tiny_pipeline(Path(out), seed=args.seed, instruct=True))
        return 0
    if args.sdxl:
        from smartedit.export.tiny_sdxl import write_tiny_sdxl

        out = args.out or (DEFAULT_TINY_SDXL.with_name("tiny-sdxl-base") if args.text_to_image else DEFAULT_TINY_SDXL)
        print(write_tiny_sdxl(Path(out), seed=args.seed, text_to_image=args.text_to_image))
        return 0
    out = args.out or (DEFAULT_TINY_TEXT_TO_IMAGE if args.text_to_image else DEFAULT_TINY_MODEL)
    print(write_tiny_pipeline(Path(out), seed=args.seed, text_to_image=args.text_to_image))
    return 0


def cmd_export(args) -> int:
    print(export_repository(args, Path(args.out)))
    return 0


ADMIN_KEY_ENV = "SMARTEDIT_ADMIN_KEY"


def _admin_key(args, server_dir: Path) -> str | None:
    """The key that opens Triton's admin APIs: from --admin-key-file, from $SMARTEDIT_ADMIN_KEY, or a new
    random one written (owner-only) in this server's own folder; None with --no-restrict."""
    import os

    if args.no_restrict:
        log.warning("--no-restrict: shared-memory, model-repository, model-config, statistics, trace and "
                    "logging APIs are open to anyone who reaches the ports")
        return None
    if args.admin_key_file:
        try:
            key = Path(args.admin_key_file).read_text().strip()
        except OSError as error:
            raise ServerFailed(f"--admin-key-file {args.admin_key_file}: {error.strerror}") from None
        source = f"--admin-key-file {args.admin_key_file}"
    elif os.environ.get(ADMIN_KEY_ENV):
        key, source = os.environ[ADMIN_KEY_ENV].strip(), f"${ADMIN_KEY_ENV}"
    else:
        import secrets

        key = secrets.token_urlsafe(24)
        path = server_dir / "admin-key"  # one per server: two servers on one repository keep their own
        path.parent.mkdir(parents=True, exist_ok=True)
        path.touch(mode=0o600)
        path.chmod(0o600)
        path.write_text(key + "\n")
        log.info("admin APIs (statistics, model config, repository, shared memory, trace, logging) need the key in "
                 "%s, sent as the HTTP header %s or the gRPC header %s", path, ADMIN_KEY_HEADER, ADMIN_KEY_GRPC_HEADER)
        return key
    try:
        restriction_args(key)
    except ValueError as error:
        raise ServerFailed(f"{source}: {error}") from None
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
    import faulthandler

    from smartedit.ops.supervisor import TRITON_EXIT_TIMEOUT_S, Supervisor

    faulthandler.enable(all_threads=True)  # should this long-lived process crash, its stacks go to stderr

    repository = args.model_repository if is_remote(args.model_repository) else Path(args.model_repository)
    if not is_remote(repository):
        from smartedit.export.repository import outdated_models

        outdated = outdated_models(repository)
        if outdated:
            raise ServerFailed(f"{repository} was exported by another SmartEdit version: the code of "
                               f"{', '.join(outdated)} is not this version's. Export it again (smartedit export "
                               f"--out {repository}, with the --model it was exported from)")
    tls = _tls(args)
    address = server_address(args)
    if tls is not None and address.host != LOOPBACK:
        # Triton 2.51 has no HTTPS: its HTTP endpoint (health, and inference too) stays on this machine.
        log.info("gRPC over TLS on %s; Triton's HTTP endpoint has no TLS, so it listens on %s only",
                 address.host, LOOPBACK)
        address = dataclasses.replace(address, http_host=LOOPBACK)
    work_dir = Path(args.work_dir) if args.work_dir else default_work_dir(repository)
    server = TritonServer(repository, address, work_dir=work_dir, log_file=args.log_file, log_verbose=args.log_verbose,
                          tls=tls, model_control=True, exit_timeout_s=TRITON_EXIT_TIMEOUT_S,
                          admin_key=_admin_key(args, server_dir(work_dir, address)))
    server.extra_args += connection_age_args(args.max_connection_age, args.drain_timeout) + args.triton_arg
    supervisor = Supervisor(server, tls=tls, ready_timeout_s=args.ready_timeout, drain_timeout_s=args.drain_timeout)
    supervisor.install_signal_handlers()

    def serving():
        grpc = f"gRPC {address.grpc}" + (" (TLS)" if tls else "")
        print(f"SmartEdit is serving {args.model_repository}: {grpc}, HTTP {address.http}, "
              f"metrics http://{address.host}:{address.metrics_port}/metrics. Ctrl-C stops it (after the edits in "
              f"flight; twice: now).", flush=True)

    exit_now(supervisor.run(on_serving=serving))


def exit_now(code: int) -> NoReturn:
    """End ``smartedit serve`` once tritonserver is stopped and every line is written, without the
    interpreter's teardown. Native threads still alive at that point (gRPC's, the HTTP client's event
    loop in a model-control thread that waited on the readiness gate) have crashed the exiting process
    with SIGSEGV after a clean drain, in loaded test runs: a clean stop reported as exit code -11, which
    an orchestrator reads as a crash. Nothing is left to do by then: no handler is skipped that matters."""
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def connection_age_args(max_age_s: float, drain_timeout_s: float) -> list[str]:
    """tritonserver flags that close each gRPC connection after ``max_age_s`` (GOAWAY), so that clients
    balancing over a name's addresses resolve it again and find servers added since; a call in flight
    on a closing connection has until the drain timeout (and 15 s) to finish. [] for 0: never."""
    if max_age_s <= 0:
        return []
    return [f"--grpc-max-connection-age={int(max_age_s * 1000)}",
            f"--grpc-max-connection-age-grace={int((drain_timeout_s + 15) * 1000)}"]


def cmd_drain(args) -> int:
    from smartedit.ops.health import find_server
    from smartedit.ops.drain import request_drain

    server_pid = args.pid or find_server()
    if server_pid is None:
        print("smartedit drain: no tritonserver runs here; nothing to drain", file=sys.stderr)
        return 0
    return request_drain(server_pid, args.wait)


def cmd_demo(args) -> int:
    from smartedit.cli.demo import run_demo

    path = run_demo(args)
    print(path)
    return 0


def cmd_loadtest(args) -> int:
    from smartedit.cli.local_loadtest import run_local_loadtest

    return run_local_loadtest(args)


def cmd_eval(args) -> int:
    try:
        from smartedit.evaluation.metrics import ClipScorer
    except ModuleNotFoundError as error:  # the [eval] extra: scikit-image
        print(f"smartedit eval: {error}; install it with pip install 'smartedit[eval]' (scripts/setup.sh does)",
              file=sys.stderr)
        return 2
    from smartedit.evaluation.suite import markdown_table, measure, read_edits
    from smartedit_client import InpaintClient, SmartEditError

    try:
        edits = read_edits(args.edits)
    except ValueError as error:
        print(f"smartedit eval: {error}", file=sys.stderr)
        return 2
    clip = ClipScorer(args.clip) if args.clip else None
    rows = []
    with InpaintClient(args.url, pipeline=args.pipeline, timeout_s=args.timeout) as client:
        for edit in edits:
            try:
                rows.append(measure(client, edit, clip))
            except SmartEditError as error:
                print(f"smartedit eval: {edit.name}: {error}", file=sys.stderr)
                return 1
            log.info("%s: done (%d of %d)", edit.name, len(rows), len(edits))
    table = markdown_table(rows)
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(table)
    print(table, end="")
    return 0


def _add_server_arguments(p: argparse.ArgumentParser, grpc: int, http: int, metrics: int) -> None:
    p.add_argument("--host", default=LOOPBACK,
                   help=f"address the server listens on (default {LOOPBACK}: this machine only; 0.0.0.0 for all)")
    p.add_argument("--grpc-port", type=int, default=grpc, help=f"gRPC port: the SDK, CLI and gateway (default {grpc})")
    p.add_argument("--http-port", type=int, default=http,
                   help=f"HTTP port: health (/v2/health/ready) and Triton's HTTP API (default {http})")
    p.add_argument("--metrics-port", type=int, default=metrics,
                   help=f"Prometheus metrics port, /metrics (default {metrics})")
    p.add_argument("--log-file", type=Path, default=None, help="write tritonserver's log here (default: stdout)")
    p.add_argument("--log-verbose", type=int, default=0, help="tritonserver's log verbosity, 0-2 (default 0)")
    p.add_argument("--ready-timeout", type=float, default=600.0,
                   help="seconds the models may take to load before giving up (default 600)")


def _add_export_arguments(p: argparse.ArgumentParser) -> None:
    from smartedit.serving.triton_config import RUNTIME_PROFILES, SIMULATED

    p.add_argument("--model", action="append", default=None, metavar="[NAME=]PATH",
                   help="diffusers SD folder or hub id, inpainting or text-to-image, served as pipeline NAME (a bare "
                        "PATH: named after its folder); repeat it to serve several pipelines, the first also as the "
                        "plain `inpaint` (default: the embedded tiny model, pipeline `tiny`)")
    p.add_argument("--tiny", choices=TINY_FAMILIES, default=None,
                   help="with no --model, the embedded tiny model to serve: sd (SD-shaped, 9-channel, pipeline `tiny`; "
                        "the default) or sdxl (SDXL-shaped: two text encoders, pooled and size conditioning, pipeline "
                        "`tiny-sdxl`)")
    p.add_argument("--vae", action="append", default=None, metavar="[NAME=]PATH",
                   help="serve pipeline NAME with this VAE instead of its own (a diffusers VAE folder, a pipeline "
                        "folder's vae/, or a hub id), e.g. an FP16-safe SDXL VAE (madebyollin/sdxl-vae-fp16-fix), "
                        "which the FP16 profiles then run in FP16; a bare PATH with one pipeline is its (default: "
                        "the pipeline's own; SDXL's stays FP32 on the FP16 profiles)")
    p.add_argument("--lora", action="append", default=None, metavar="[NAME=]FILE[:SCALE]",
                   help="fuse this LoRA adapter (.safetensors, diffusers/PEFT or kohya format, UNet and text "
                        "encoders, its alpha honoured) into pipeline NAME's weights at SCALE (default 1.0) before "
                        "export; repeat it to fuse several, in order. Results record each file's name, SHA-256 and "
                        "scale. A bare FILE with one pipeline is its")
    p.add_argument("--scheduler", action="append", default=None, metavar="[NAME=]SAMPLER",
                   help="the sampler pipeline NAME's weights are made for, exported as its scheduler: lcm or tcd "
                        "for an LCM-/TCD-LoRA or a distilled checkpoint whose config names another; server_info then "
                        "lists the few-step samplers as the ones that suit it")
    p.add_argument("--controlnet", action="append", default=None, metavar="[NAME=][CNAME=]PATH",
                   help="serve pipeline NAME (an SD 1.x/2.x or SDXL one) with the ControlNet at PATH (a diffusers "
                        "ControlNetModel folder), named CNAME (default: its folder's name): its UNet and the "
                        "ControlNet are exported as one graph, and edits take control_image / control. One per "
                        "pipeline: export the base again under another name for another ControlNet. With one "
                        "pipeline NAME= may be left out")
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
    tiny.add_argument("--out", help=f"default {DEFAULT_TINY_MODEL}; with --text-to-image {DEFAULT_TINY_TEXT_TO_IMAGE} "
                                    "(the embedded default's folder is rebuilt when it holds anything else)")
    tiny.add_argument("--seed", type=int, default=0)
    tiny.add_argument("--text-to-image", action="store_true",
                      help="a text-to-image folder (4-channel UNet) instead: the sd-latent-blend family (with --sdxl, "
                           "sdxl-latent-blend)")
    tiny.add_argument("--sdxl", action="store_true",
                      help=f"the tiny SDXL model instead (default --out {DEFAULT_TINY_SDXL}): the sdxl-inpaint family")
    tiny.add_argument("--instruct", action="store_true",
                      help=f"a tiny InstructPix2Pix model instead (8-channel UNet; default --out "
                           f"{DEFAULT_TINY_INSTRUCT}): the instruct-pix2pix family, which serves task instruct")
    tiny.set_defaults(func=cmd_tiny_model)

    export = sub.add_parser("export", help="export a pipeline into a Triton model repository")
    _add_export_arguments(export)
    export.add_argument("--out", default=str(DEFAULT_REPOSITORY))
    export.set_defaults(func=cmd_export)

    serve = sub.add_parser("serve", help="run tritonserver on a model repository until Ctrl-C / SIGTERM")
    serve.add_argument("--model-repository", default=str(DEFAULT_REPOSITORY),
                       help=f"the model repository `smartedit export` wrote, a folder or an s3:// / gs:// URI "
                            f"(default {DEFAULT_REPOSITORY})")
    serve.add_argument("--admin-key-file", default=None,
                       help=f"file holding the key that opens the admin APIs (header {ADMIN_KEY_HEADER}); default: "
                            f"${ADMIN_KEY_ENV} if set, else a new random key written in this server's folder under "
                            f"--work-dir")
    serve.add_argument("--no-restrict", action="store_true",
                       help="leave the admin APIs (shared memory, model repository/config, statistics, trace, "
                            "logging) open to anyone who reaches the ports (default: closed without the key)")
    serve.add_argument("--tls-cert", default=None,
                       help="PEM certificate: serve gRPC over TLS, with --tls-key (default: plain gRPC)")
    serve.add_argument("--tls-key", default=None, help="PEM private key of --tls-cert (default: none)")
    serve.add_argument("--drain-timeout", type=float, default=300.0,
                       help="on Ctrl-C / SIGTERM, seconds the edits in flight may take to finish before they are "
                            "stopped (default 300; new edits are refused at once)")
    serve.add_argument("--work-dir", default=None,
                       help="where the server's own files go (backend folder, readiness gate, admin key); default: "
                            "a .triton folder beside the model repository (for s3:// or gs://, the temp folder)")
    serve.add_argument("--max-connection-age", type=float, default=0.0, metavar="SECONDS",
                       help="close each client's gRPC connection after this long, so that clients balancing over "
                            "several servers (a headless Service) find servers added since; calls in flight finish "
                            "first (default 0: never)")
    serve.add_argument("--triton-arg", action="append", default=[], metavar="ARG",
                       help="one more tritonserver argument, e.g. --triton-arg=--log-info=false (repeatable; default: "
                            "none)")
    _add_server_arguments(serve, 8001, 8000, 8002)
    serve.set_defaults(func=cmd_serve)

    drain = sub.add_parser("drain", help="make a running `smartedit serve` finish its edits in flight and take no new "
                                         "ones (the chart's preStop); waits until it has")
    drain.add_argument("--pid", type=int, default=None,
                       help="its tritonserver's pid (default: the one tritonserver running on this machine)")
    drain.add_argument("--wait", type=float, default=600.0, help="seconds to wait for the drain (default 600)")
    drain.set_defaults(func=cmd_drain)

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

    evaluate = sub.add_parser("eval", help="send a folder's edits (its edits.json) to a running server and print "
                                           "how each kept the photo, reconstructed it and met its prompt")
    evaluate.add_argument("edits", help="a folder holding edits.json and its photos (or that file)")
    evaluate.add_argument("--url", default="127.0.0.1:8001", help="the server's gRPC address (default 127.0.0.1:8001)")
    evaluate.add_argument("--pipeline", default=None, help="the pipeline to edit with (default: the server's first; "
                                                          "an edit's own \"pipeline\" wins)")
    evaluate.add_argument("--clip", default=None, metavar="FOLDER",
                          help="a CLIP model's folder (CLIPModel + CLIPProcessor): adds each result's CLIP score "
                               "against its prompt (default: none)")
    evaluate.add_argument("--timeout", type=float, default=600.0, help="seconds each edit may take (default 600)")
    evaluate.add_argument("--out", default=None, help="also write the markdown table here (default: stdout only)")
    evaluate.set_defaults(func=cmd_eval)
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
