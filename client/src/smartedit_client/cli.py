"""``smartedit-edit``: send one edit to a running server and write the PNG."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from smartedit_client._client import DEFAULT_TIMEOUT_S, DEFAULT_URL, InpaintClient
from smartedit_client._errors import SmartEditError
from smartedit_client._events import PreviewEvent, ProgressEvent
from smartedit_client._result import SAVE_FORMATS, InpaintResult, check_output_path


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="smartedit-edit", description="Inpaint the white part of --mask in --image.")
    p.add_argument("--url", default=DEFAULT_URL, help=f"server gRPC address (default {DEFAULT_URL})")
    p.add_argument("--ssl", action="store_true", help="TLS (e.g. through an Ingress on port 443)")
    p.add_argument("--ca-bundle", default=None,
                   help="PEM file of the CA(s) to trust, e.g. a self-signed server's certificate (implies --ssl)")
    p.add_argument("--image", required=True, help="image to edit (PNG, JPEG or WebP)")
    p.add_argument("--mask", required=True, help="mask, same size: white = repaint, black = keep")
    p.add_argument("--prompt", required=True, help="what to paint in the masked region")
    p.add_argument("--negative-prompt", default=None)
    p.add_argument("--steps", dest="num_inference_steps", type=int, default=None, help="denoising steps")
    p.add_argument("--guidance-scale", type=float, default=None)
    p.add_argument("--strength", type=float, default=None)
    p.add_argument("--seed", type=int, default=None, help="for a reproducible result")
    p.add_argument("--scheduler", default=None, help="sampler: ddim (default), euler, ...")
    p.add_argument("--crop-padding", type=int, default=None,
                   help="pixels of context around the mask when a large photo is edited as a crop (server default 32)")
    p.add_argument("--timeout", dest="timeout_s", type=float, default=DEFAULT_TIMEOUT_S, help="seconds")
    p.add_argument("--request-id", default=None, help="id the server's logs carry for this edit (default: random)")
    p.add_argument("--out", required=True,
                   help=f"where to write the edited image; its extension picks the format ({', '.join(SAVE_FORMATS)})")
    p.add_argument("--previews", metavar="DIR", default=None,
                   help="stream the edit: print progress and write previews to DIR as they come "
                        "(preview-STEP.png); Ctrl-C cancels the edit on the server")
    p.add_argument("--preview-every", type=int, default=None,
                   help="with --previews: steps between previews (server default 5; 0: progress only)")
    return p


def _streamed(client: InpaintClient, edit: dict, previews: Path, preview_every: int | None) -> InpaintResult:
    with client.inpaint_stream(**edit, preview_every=preview_every) as stream:
        for event in stream:
            if isinstance(event, ProgressEvent):
                print(f"step {event.step}/{event.total_steps}", file=sys.stderr, flush=True)
            elif isinstance(event, PreviewEvent):
                path = previews / f"preview-{event.step:04d}.png"
                path.write_bytes(event.png)
                print(f"preview {path}", file=sys.stderr, flush=True)
    return stream.result


def main(argv: list[str] | None = None) -> int:
    cli = parser()
    args = cli.parse_args(argv)
    if args.preview_every is not None and not args.previews:
        cli.error("--preview-every needs --previews DIR (previews come only with a streamed edit)")
    try:  # before the edit: a bad --out must not cost the edit
        check_output_path(args.out)
    except ValueError as error:
        cli.error(f"--out {error}")
    if args.previews:
        try:
            Path(args.previews).mkdir(parents=True, exist_ok=True)
        except OSError as error:
            cli.error(f"--previews {args.previews!r}: cannot create it: {error.strerror}")
    edit = dict(image=args.image, mask_image=args.mask, prompt=args.prompt, negative_prompt=args.negative_prompt,
                num_inference_steps=args.num_inference_steps, guidance_scale=args.guidance_scale,
                strength=args.strength, seed=args.seed, scheduler=args.scheduler, crop_padding=args.crop_padding,
                request_id=args.request_id)
    try:
        client = InpaintClient(args.url, timeout_s=args.timeout_s, ssl=args.ssl, root_certificates=args.ca_bundle)
    except ValueError as error:
        cli.error(str(error))
    try:
        with client:
            if args.previews:
                result = _streamed(client, edit, Path(args.previews), args.preview_every)
            else:
                result = client.inpaint(**edit)
    except SmartEditError as error:
        print(f"smartedit-edit: {type(error).__name__}: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # leaving the stream's with-block has cancelled the edit on the server
        print("smartedit-edit: interrupted; the edit was cancelled", file=sys.stderr)
        return 130
    try:
        result.save(args.out)
    except OSError as error:
        print(f"smartedit-edit: could not write {args.out}: {error.strerror}", file=sys.stderr)
        return 1
    print(f"wrote {args.out} ({result.image.size[0]}x{result.image.size[1]}, seed {result.seed_used}, "
          f"request {result.request_id}, {result.elapsed_s:.2f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
