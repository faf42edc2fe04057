"""``smartedit-edit``: send one edit to a running server and write the PNG."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from smartedit_client import _contract as wire
from smartedit_client._client import DEFAULT_TIMEOUT_S, DEFAULT_URL, InpaintClient
from smartedit_client._errors import SmartEditError
from smartedit_client._events import CheckpointEvent, PreviewEvent, ProgressEvent
from smartedit_client._result import SAVE_FORMATS, InpaintResult, check_output_path, png_parameters, replayable


_TYPES = {"BYTES": str, "INT32": int, "INT64": int, "FP32": float}


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="smartedit-edit", description="Inpaint the white part of --mask in --image (or, "
                                                                   "with --task instruct, edit it as --prompt says).")
    p.add_argument("--url", default=DEFAULT_URL, help=f"server gRPC address (default {DEFAULT_URL})")
    p.add_argument("--ssl", action="store_true", help="TLS (e.g. through an Ingress on port 443)")
    p.add_argument("--ca-bundle", default=None,
                   help="PEM file of the CA(s) to trust, e.g. a self-signed server's certificate (implies --ssl)")
    p.add_argument("--info", action="store_true",
                   help="print what the server offers (model, samplers, tasks, each parameter's range and default) "
                        "and exit")
    p.add_argument("--pipeline", default=None,
                   help="which of the server's pipelines edits, by name (--info lists them; default: the first)")
    p.add_argument("--image", help="image to edit (PNG, JPEG or WebP)")
    p.add_argument("--mask", help="mask, same size: white = repaint, black = keep (optional with --task instruct or "
                                  "text_edit: without one the whole photo is edited)")
    p.add_argument("--control-image", default=None,
                   help="ControlNet pipelines: the conditioning image, the size of --image (or --control canny / "
                        "inpaint to have the server make one); with --resume, the one the edit was sent with")
    p.add_argument("--prompt", default=None, help="what to paint in the masked region (required unless --replay)")
    p.add_argument("--replay", metavar="PNG", default=None,
                   help="send again the edit whose parameters this result PNG carries (on --image and --mask); "
                        "other options given override them")
    p.add_argument("--steps", dest="num_inference_steps", type=int, default=None, help="denoising steps")
    # The other parameters, as the wire contract declares them (name, type, meaning).
    for spec in wire.PARAMETERS:
        if spec in (wire.PROMPT, wire.NUM_INFERENCE_STEPS):
            continue
        flag = "--" + spec.name.replace("_", "-")
        if spec.datatype == "BOOL":
            # --no-<flag> too: it overrides a value a --replay PNG carries.
            p.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=spec.meaning)
        else:
            p.add_argument(flag, type=_TYPES[spec.datatype], default=None, choices=spec.choices or None,
                           help=spec.meaning)
    p.add_argument("--timeout", dest="timeout_s", type=float, default=DEFAULT_TIMEOUT_S, help="seconds")
    p.add_argument("--request-id", default=None, help="id the server's logs carry for this edit (default: random)")
    p.add_argument("--out",
                   help=f"where to write the edited image; its extension picks the format ({', '.join(SAVE_FORMATS)}); "
                        f"with --num-images N > 1, OUT-1 ... OUT-N")
    p.add_argument("--previews", metavar="DIR", default=None,
                   help="stream the edit: print progress and write previews to DIR as they come "
                        "(preview-STEP.png); Ctrl-C cancels the edit on the server")
    p.add_argument("--preview-every", type=int, default=None,
                   help="with --previews: steps between previews (server default 5; 0: progress only)")
    p.add_argument("--checkpoints", metavar="DIR", default=None,
                   help="stream the edit and write a checkpoint every --checkpoint-every steps to DIR: "
                        "checkpoint-STEP.png (the image so far, to paint on) and checkpoint-STEP.state (for --resume)")
    p.add_argument("--checkpoint-every", type=int, default=None,
                   help=f"with --checkpoints: steps between checkpoints (default {DEFAULT_CHECKPOINT_EVERY})")
    p.add_argument("--resume", metavar="STATE", default=None,
                   help="continue the edit a checkpoint's .state file holds (give the same --image, --mask and "
                        "--control-image, no parameter: they come from the state)")
    p.add_argument("--resume-image", metavar="PNG", default=None,
                   help="with --resume: the checkpoint's PNG, painted on; the edit continues from the change")
    return p


DEFAULT_CHECKPOINT_EVERY = 5


def _streamed(stream, previews: Path | None, checkpoints: Path | None) -> InpaintResult:
    with stream:
        for event in stream:
            if isinstance(event, ProgressEvent):
                print(f"step {event.step}/{event.total_steps}", file=sys.stderr, flush=True)
            elif isinstance(event, PreviewEvent) and previews is not None:
                path = previews / f"preview-{event.step:04d}.png"
                path.write_bytes(event.png)
                print(f"preview {path}", file=sys.stderr, flush=True)
            elif isinstance(event, CheckpointEvent) and checkpoints is not None:
                image_path, state_path = event.save(checkpoints)
                print(f"checkpoint {image_path} {state_path}", file=sys.stderr, flush=True)
    return stream.result


def _folder(cli: argparse.ArgumentParser, flag: str, folder: str | None) -> Path | None:
    if folder is None:
        return None
    try:
        Path(folder).mkdir(parents=True, exist_ok=True)
    except OSError as error:
        cli.error(f"{flag} {folder!r}: cannot create it: {error.strerror}")
    return Path(folder)


def output_paths(out: str, count: int) -> list[Path]:
    """Where each image goes: ``out`` for one image, ``<stem>-1<suffix>`` ... for several."""
    path = Path(out)
    if count == 1:
        return [path]
    return [path.with_name(f"{path.stem}-{index}{path.suffix}") for index in range(1, count + 1)]


def _replayed(cli: argparse.ArgumentParser, path: str) -> dict:
    """The parameters a result PNG carries, as ``inpaint`` arguments."""
    try:
        carried = png_parameters(Path(path).read_bytes())
    except OSError as error:
        cli.error(f"--replay {path!r}: cannot read it: {error.strerror}")
    except ValueError as error:
        cli.error(f"--replay {path!r}: {error}")
    if carried is None:
        cli.error(f"--replay {path!r}: carries no {wire.PNG_PARAMETERS_KEY!r} parameters; only SmartEdit's result "
                  f"PNGs do, as written (a re-encoded copy loses them)")
    return replayable(carried)


def _connect(cli: argparse.ArgumentParser, args) -> InpaintClient:
    if args.pipeline is not None and not wire.PIPELINE_NAME.fullmatch(args.pipeline):
        cli.error(f"--pipeline {args.pipeline!r}: not a pipeline's name (letters, digits, '_', '-'; --info lists "
                  f"the server's)")
    try:
        return InpaintClient(args.url, timeout_s=args.timeout_s, ssl=args.ssl, root_certificates=args.ca_bundle,
                             pipeline=args.pipeline)
    except ValueError as error:
        cli.error(str(error))


def _print_info(cli: argparse.ArgumentParser, args) -> int:
    client = _connect(cli, args)
    try:
        with client:
            print(client.server_info().describe())
    except SmartEditError as error:
        print(f"smartedit-edit: {type(error).__name__}: {error}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    cli = parser()
    args = cli.parse_args(argv)
    if args.info:
        return _print_info(cli, args)
    # --mask is checked by the server, which knows the task's default (an InstructPix2Pix pipeline's is
    # instruct, which needs none) and names the field when one is needed.
    missing = [flag for flag, value in (("--image", args.image), ("--out", args.out)) if value is None]
    if missing:
        cli.error(f"{', '.join(missing)} required (or --info)")
    if args.preview_every is not None and not args.previews:
        cli.error("--preview-every needs --previews DIR (previews come only with a streamed edit)")
    if args.checkpoint_every is not None and not args.checkpoints:
        cli.error("--checkpoint-every needs --checkpoints DIR")
    if args.resume_image is not None and not args.resume:
        cli.error("--resume-image needs --resume STATE (the checkpoint it paints on)")
    given = {spec.name: getattr(args, spec.name) for spec in wire.PARAMETERS if getattr(args, spec.name) is not None}
    if args.resume and (given or args.replay):
        cli.error(f"--resume takes no parameter (the state holds them), got "
                  f"{', '.join('--' + name.replace('_', '-') for name in given) or '--replay'}")
    parameters = {**_replayed(cli, args.replay), **given} if args.replay else given
    if args.control_image is not None:
        parameters[wire.CONTROL_IMAGE.name] = args.control_image
    if wire.PROMPT.name not in parameters and not args.resume:
        cli.error("--prompt is required (or --replay PNG, or --resume STATE)")
    count = parameters.get(wire.NUM_IMAGES.name) or 1
    paths = output_paths(args.out, count)
    try:  # before the edit: a bad --out must not cost the edit
        for path in paths:
            check_output_path(path)
    except ValueError as error:
        cli.error(f"--out {error}")
    previews = _folder(cli, "--previews", args.previews)
    checkpoints = _folder(cli, "--checkpoints", args.checkpoints)
    stream_options = dict(preview_every=args.preview_every if previews else 0,
                          checkpoint_every=(args.checkpoint_every or DEFAULT_CHECKPOINT_EVERY) if checkpoints else None)
    edit = dict(image=args.image, mask_image=args.mask, request_id=args.request_id)
    client = _connect(cli, args)
    try:
        with client:
            if args.resume:
                result = _streamed(client.resume_stream(args.resume, resume_image=args.resume_image,
                                                        control_image=args.control_image, **edit, **stream_options),
                                   previews, checkpoints)
            elif previews or checkpoints:
                result = _streamed(client.inpaint_stream(**edit, **parameters, **stream_options), previews,
                                   checkpoints)
            else:
                result = client.inpaint(**edit, **parameters)
    except SmartEditError as error:
        print(f"smartedit-edit: {type(error).__name__}: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # leaving the stream's with-block has cancelled the edit on the server
        print("smartedit-edit: interrupted; the edit was cancelled", file=sys.stderr)
        return 130
    for path, edited in zip(paths, result.images):
        try:
            edited.save(path)
        except OSError as error:
            print(f"smartedit-edit: could not write {path}: {error.strerror}", file=sys.stderr)
            return 1
        print(f"wrote {path} ({edited.image.size[0]}x{edited.image.size[1]}, seed {edited.seed_used}, "
              f"request {result.request_id}, {result.elapsed_s:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
