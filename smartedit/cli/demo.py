"""The end-to-end demo: export → tritonserver → one edit through the client SDK → PNG on disk."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from smartedit.ops.server import TritonServer
from smartedit.diffusion.spec import PipelineInfo

log = logging.getLogger(__name__)


def demo_inputs(width: int, height: int) -> tuple[Image.Image, Image.Image]:
    """A simple scene (sky, ground, a sun, a box) and a mask over the box, to be repainted."""
    rows = np.linspace(0.0, 1.0, height)[:, None, None]
    sky = (1 - rows) * np.array([110, 160, 230]) + rows * np.array([200, 220, 245])
    image = Image.fromarray(np.broadcast_to(sky, (height, width, 3)).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    draw.rectangle([0, int(height * 0.65), width, height], fill=(90, 140, 70))
    draw.ellipse([int(width * 0.72), int(height * 0.08), int(width * 0.9), int(height * 0.32)], fill=(250, 220, 90))
    box = [int(width * 0.25), int(height * 0.4), int(width * 0.55), int(height * 0.8)]
    draw.rectangle(box, fill=(150, 90, 60))
    mask = Image.new("L", (width, height), 0)
    ImageDraw.Draw(mask).rectangle(box, fill=255)
    return image, mask


def run_demo(args) -> Path:
    from smartedit.cli.exporting import export_repository, server_address
    from smartedit_client import InpaintClient

    out = Path(args.out)
    repository = export_repository(args, Path(args.repository))
    info = PipelineInfo.load(repository / "scheduler" / "1" / "pipeline.json")
    native = info.unet_sample_size * info.vae_scale_factor  # the resolution the model was trained at
    side = 4 * info.vae_scale_factor
    image, mask = demo_inputs(native, (native * 3 // 4) // side * side)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out.with_name(out.stem + "-input.png"))
    mask.save(out.with_name(out.stem + "-mask.png"))
    address = server_address(args)
    log_file = args.log_file or repository.parent / "tritonserver.log"
    log.info("starting tritonserver on %s (log: %s)", address.grpc, log_file)
    with TritonServer(repository, address, log_file=log_file):
        with InpaintClient(address.grpc) as client:
            result = client.inpaint(image=image, mask_image=mask, prompt="a wooden park bench",
                                    negative_prompt="blurry", num_inference_steps=args.steps, seed=42)
            # The same box erased, and kept while the rest is repainted.
            removed = client.inpaint(image=image, mask_image=mask, prompt="", task="remove",
                                     num_inference_steps=args.steps, seed=42)
            background = client.inpaint(image=image, mask_image=mask, prompt="a sandy beach at sunset",
                                        task="replace_background", num_inference_steps=args.steps, seed=42)
    result.save(out)
    removed.save(out.with_name(out.stem + "-remove.png"))
    background.save(out.with_name(out.stem + "-replace-background.png"))
    strip = side_by_side([image, mask.convert("RGB"), result.image, removed.image, background.image])
    strip.save(out.with_name(out.stem + "-tasks.png"))
    log.info("edited %dx%d image over gRPC in %.2f s (seed %d); remove and replace_background: %s",
             *result.image.size, result.elapsed_s, result.seed_used, out.with_name(out.stem + "-tasks.png"))
    return out.resolve()


def side_by_side(images: list[Image.Image], gap: int = 4) -> Image.Image:
    """The images in a row, on white: input, mask, then each task's result."""
    width = sum(image.width for image in images) + gap * (len(images) - 1)
    strip = Image.new("RGB", (width, max(image.height for image in images)), (255, 255, 255))
    left = 0
    for image in images:
        strip.paste(image.convert("RGB"), (left, 0))
        left += image.width + gap
    return strip
