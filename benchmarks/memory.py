"""Server memory under large edits: peak and settled RSS of tritonserver and its model processes.

    .venv/bin/python benchmarks/memory.py [--repository build/model_repository] [--sizes 451x300 1024x1024]
                                          [--burst 1] [--steps 20]

For each size, ``--burst`` concurrent edits of a random photo of that size with a centred mask
(a third of each side); it prints the edit time, whether the unmasked pixels came back byte-exact,
and the RSS of the server's whole process tree before, at its peak (sampled every 50 ms) and
5 s after the burst ("settled": what the server keeps). Run on demand; nothing is asserted.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from smartedit.server import ServerAddress, TritonServer, free_port
from smartedit_client import InpaintClient


def _children(pid: int) -> list[int]:
    children = []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2:].split()[1]) == pid:
            children.append(int(entry))
    return children


def tree_rss_mb(pid: int) -> float:
    """RSS of ``pid`` and its children (tritonserver and its Python-backend stubs), in MB."""
    total_kb = 0
    for process in [pid, *_children(pid)]:
        try:
            for line in Path(f"/proc/{process}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    total_kb += int(line.split()[1])
        except OSError:
            continue
    return total_kb / 1024


def photo(width: int, height: int, seed: int) -> tuple[Image.Image, Image.Image]:
    rng = np.random.default_rng(seed)
    image = Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[height // 3: 2 * height // 3, width // 3: 2 * width // 3] = 255
    return image, Image.fromarray(mask)


def burst(client: InpaintClient, pid: int, width: int, height: int, count: int, steps: int) -> str:
    photos = [photo(width, height, seed) for seed in range(count)]
    before = tree_rss_mb(pid)
    peak, done = [before], threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], tree_rss_mb(pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()

    def edit(item):
        image, mask = item
        result = client.inpaint(image=image, mask_image=mask, prompt="a wooden bench", num_inference_steps=steps,
                                seed=1)
        keep = np.asarray(mask) < 128
        return np.array_equal(np.asarray(result.image)[keep], np.asarray(image)[keep])

    with ThreadPoolExecutor(count) as pool:
        exact = all(pool.map(edit, photos))
    took = time.perf_counter() - started
    done.set()
    sampler.join()
    time.sleep(5.0)
    return (f"{width}x{height} x{count}: {took:.1f} s, unmasked pixels byte-exact: {exact}; server RSS before "
            f"{before:.0f} MB, peak {peak[0]:.0f} MB, settled {tree_rss_mb(pid):.0f} MB")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=Path("build/model_repository"))
    parser.add_argument("--sizes", nargs="+", default=["451x300", "1024x1024"], help="WIDTHxHEIGHT")
    parser.add_argument("--burst", type=int, default=1, help="concurrent edits per size")
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    sizes = [tuple(int(side) for side in size.lower().split("x")) for size in args.sizes]
    address = ServerAddress(grpc_port=free_port(), http_port=free_port(), metrics_port=free_port())
    with TritonServer(args.repository, address, log_file=Path("out/benchmark-memory/tritonserver.log")) as server:
        with InpaintClient(address.grpc, timeout_s=1800) as client:
            for width, height in sizes:
                print(burst(client, server.process.pid, width, height, args.burst, args.steps), flush=True)


if __name__ == "__main__":
    main()
