"""Concurrent edits vs sequential ones, and how the UNet's dynamic batcher grouped their rows.

    .venv/bin/python benchmarks/concurrency.py [--repository build/model_repository] [--edits 4] [--steps 20]

Starts tritonserver on the repository (run `smartedit export` or the demo first), sends ``--edits``
edits one after another, then the same number at once, in one run, and prints both times, their
ratio and the UNet's inference vs execution counts for the concurrent part (rows per execution
above 2 means rows of different edits shared UNet calls).
"""

from __future__ import annotations

import argparse
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import tritonclient.grpc as grpcclient
from PIL import Image

from smartedit.ops.server import ServerAddress, TritonServer, free_port
from smartedit_client import InpaintClient


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=Path("build/model_repository"))
    parser.add_argument("--edits", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8))
    mask = np.zeros((args.size, args.size), dtype=np.uint8)
    mask[args.size // 4: 3 * args.size // 4, args.size // 4: 3 * args.size // 4] = 255
    address = ServerAddress(grpc_port=free_port(), http_port=free_port(), metrics_port=free_port())

    with TritonServer(args.repository, address, log_file=args.repository.parent / "benchmark-tritonserver.log"):
        with InpaintClient(address.grpc) as client, grpcclient.InferenceServerClient(address.grpc) as stats:
            def edit(seed: int) -> None:
                client.inpaint(image=image, mask_image=Image.fromarray(mask), prompt="a chair",
                               num_inference_steps=args.steps, seed=seed)

            edit(0)  # warm-up: first calls load sessions and grow shared memory
            started = time.perf_counter()
            for seed in range(args.edits):
                edit(seed)
            sequential = time.perf_counter() - started

            before = stats.get_inference_statistics("unet").model_stats[0]
            started = time.perf_counter()
            with ThreadPoolExecutor(args.edits) as pool:
                list(pool.map(edit, range(args.edits)))
            concurrent = time.perf_counter() - started
            after = stats.get_inference_statistics("unet").model_stats[0]

    rows = after.inference_count - before.inference_count
    executions = after.execution_count - before.execution_count
    print(f"{args.edits} edits, {args.size}x{args.size}, {args.steps} steps")
    print(f"sequential {sequential:.2f} s  concurrent {concurrent:.2f} s  speed-up {sequential / concurrent:.2f}x")
    print(f"unet (concurrent part): {rows} rows in {executions} executions = {rows / max(executions, 1):.2f} rows each")


if __name__ == "__main__":
    main()
