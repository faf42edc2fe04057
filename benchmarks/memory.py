"""Server memory under large edits: peak and settled RSS of tritonserver and its model processes.

    .venv/bin/python benchmarks/memory.py [--repository build/model_repository]
        [--cases 451x300 6000x4000/400x300 4096x4096@80 tiny-1bit tiny-2048] [--burst 1] [--steps 20]

A case is ``WxH`` (a photo with a centred mask a third of each side), ``WxH/MWxMH`` (a centred mask
of that size), ``WxH@P`` (a centred mask covering P% of the photo), or one of the small files that
once cost gigabytes: ``tiny-1bit`` (a ~100-byte 256x256 1-bit PNG) and ``tiny-2048`` (a ~2.4 KB
2048x2048 1-bit PNG). Photos are JPEGs of a textured gradient, as a camera's would be. For each
case, ``--burst`` concurrent edits; it prints the edit time (or the refusal), whether the unmasked
pixels came back byte-exact, and the RSS of the server's whole process tree before, at its peak
(sampled every 50 ms) and 5 s after the burst ("settled": what the server keeps). RSS counts shared
memory once per process that maps it, so the PSS total (each shared page split between its users)
is printed too. Run on demand; nothing is asserted.

``--control image`` / ``canny`` runs each case's edits under a ControlNet (the repository's pipeline must serve
one): ``image`` sends a conditioning image of the photo's size (a PNG edge map of it), ``canny`` has the server
make one. ``--control none image canny`` runs each case once per control, side by side. A ControlNet repository
on the tiny model:

    .venv/bin/python -c "from pathlib import Path; from smartedit.export.tiny_model import write_tiny_pipeline; \
        from smartedit.export.tiny_controlnet import write_tiny_controlnet; \
        write_tiny_controlnet(write_tiny_pipeline(Path('build/tiny')), Path('build/tiny-controlnet'))"
    .venv/bin/smartedit export --model tiny=build/tiny --controlnet build/tiny-controlnet --no-segmentation \
        --out build/control_repository
"""

from __future__ import annotations

import argparse
import io
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, ImageFilter

from smartedit.ops.health import stubs_of
from smartedit.ops.server import ServerAddress, TritonServer, free_port
from smartedit_client import InpaintClient, SmartEditError


def tree_memory_mb(pid: int) -> tuple[float, float]:
    """(RSS, PSS) of ``pid`` and its children (tritonserver and its Python-backend stubs), in MB."""
    rss_kb = pss_kb = 0
    for process in [pid, *stubs_of(pid)]:
        try:
            for line in Path(f"/proc/{process}/smaps_rollup").read_text().splitlines():
                if line.startswith("Rss:"):
                    rss_kb += int(line.split()[1])
                elif line.startswith("Pss:"):
                    pss_kb += int(line.split()[1])
        except OSError:
            continue
    return rss_kb / 1024, pss_kb / 1024


def _encoded(image: Image.Image, fmt: str) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return buffer.getvalue()


def case_files(case: str, seed: int) -> tuple[bytes, bytes]:
    """(image, mask) encoded, for a case as the module's docstring describes."""
    if case.startswith("tiny-"):
        side = {"tiny-1bit": 256, "tiny-2048": 2048}[case]
        mask = Image.new("1", (side, side))
        mask.paste(1, (side // 4, side // 4, 3 * side // 4, 3 * side // 4))
        return _encoded(Image.new("1", (side, side)), "PNG"), _encoded(mask, "PNG")
    size, _, mask_spec = case.replace("@", "/@").partition("/")
    width, height = (int(side) for side in size.lower().split("x"))
    if mask_spec.startswith("@"):
        scale = (float(mask_spec[1:]) / 100) ** 0.5
        mask_w, mask_h = round(width * scale), round(height * scale)
    elif mask_spec:
        mask_w, mask_h = (int(side) for side in mask_spec.lower().split("x"))
    else:
        mask_w, mask_h = width // 3, height // 3
    rng = np.random.default_rng(seed)
    red = np.broadcast_to((np.arange(width) * 200 // width).astype(np.uint8), (height, width))
    green = np.broadcast_to((np.arange(height) * 200 // height).astype(np.uint8)[:, None], (height, width))
    texture = rng.integers(0, 24, (height, width), dtype=np.uint8)
    image = Image.fromarray(np.dstack([red + texture, green + texture, red // 2 + green // 2 + texture]))
    mask = np.zeros((height, width), dtype=np.uint8)
    top, left = (height - mask_h) // 2, (width - mask_w) // 2
    mask[top:top + mask_h, left:left + mask_w] = 255
    return _encoded(image, "JPEG"), _encoded(Image.fromarray(mask), "PNG")


def control_options(control: str, image: bytes) -> dict:
    """The request's control inputs: ``image``, an edge map of the photo sent as PNG; ``canny``, made by the server."""
    if control == "image":
        edges = Image.open(io.BytesIO(image)).convert("L").filter(ImageFilter.FIND_EDGES).convert("RGB")
        return {"control_image": _encoded(edges, "PNG")}
    return {} if control == "none" else {"control": control}


def burst(client: InpaintClient, pid: int, case: str, count: int, steps: int, control: str = "none") -> str:
    files = [case_files(case, seed) for seed in range(count)]
    controls = [control_options(control, image) for image, _ in files]
    before = tree_memory_mb(pid)
    peak, done = [before], threading.Event()

    def sample():
        while not done.is_set():
            now = tree_memory_mb(pid)
            peak[0] = (max(peak[0][0], now[0]), max(peak[0][1], now[1]))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()

    def edit(item) -> str:
        (image, mask), options = item
        try:
            result = client.inpaint(image=image, mask_image=mask, prompt="a wooden bench", num_inference_steps=steps,
                                    seed=1, **options)
        except SmartEditError as error:
            return f"refused: {error}"
        sent = np.asarray(Image.open(io.BytesIO(image)).convert(result.image.mode))
        keep = np.asarray(Image.open(io.BytesIO(mask)).convert("L")) < 128
        exact = result.image.size == Image.open(io.BytesIO(image)).size and np.array_equal(
            np.asarray(result.image)[keep], sent[keep])
        return f"{result.image.size[0]}x{result.image.size[1]} PNG, unmasked pixels byte-exact: {exact}"

    with ThreadPoolExecutor(count) as pool:
        outcomes = sorted(set(pool.map(edit, zip(files, controls))))
    took = time.perf_counter() - started
    done.set()
    sampler.join()
    time.sleep(5.0)
    settled = tree_memory_mb(pid)
    sent_mb = len(files[0][0]) / 1e6
    label = case if control == "none" else f"{case} control {control}"
    return (f"{label} x{count} ({sent_mb:.3f} MB sent): {took:.1f} s, {'; '.join(outcomes)}\n"
            f"    server RSS before {before[0]:.0f} MB, peak {peak[0][0]:.0f} MB, settled {settled[0]:.0f} MB "
            f"(PSS {before[1]:.0f} / {peak[0][1]:.0f} / {settled[1]:.0f} MB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=Path("build/model_repository"))
    parser.add_argument("--cases", nargs="+", default=["451x300", "6000x4000/400x300", "4096x4096@80", "tiny-1bit",
                                                        "tiny-2048"], help="see above")
    parser.add_argument("--burst", type=int, default=1, help="concurrent edits per size")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--control", nargs="+", default=["none"], choices=["none", "image", "canny"],
                        help="each case under each of these controls (a ControlNet pipeline's; see above)")
    args = parser.parse_args()
    address = ServerAddress(grpc_port=free_port(), http_port=free_port(), metrics_port=free_port())
    with TritonServer(args.repository, address, log_file=Path("out/benchmark-memory/tritonserver.log")) as server:
        with InpaintClient(address.grpc, timeout_s=1800) as client:
            for case in args.cases:
                for control in args.control:
                    print(burst(client, server.process.pid, case, args.burst, args.steps, control), flush=True)


if __name__ == "__main__":
    main()
