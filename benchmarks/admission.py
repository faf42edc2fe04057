"""Admission control under a burst: many clients at once against one server's bounded engine.

    .venv/bin/python benchmarks/admission.py [--repository build/model_repository] [--clients 64] [--steps 30]

Starts tritonserver on the repository (run the demo or `smartedit export` first), sends ``--clients``
edits at once, and prints how many were admitted and refused, how fast the refusals came back, and
whether every admitted edit equals the same edit sent alone afterwards. With the tiny model on
onnx-cpu the engine admits max_active_edits + max_queued_edits = 8 + 16 edits by default.
"""

from __future__ import annotations

import argparse
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

from smartedit.ops.server import ServerAddress, TritonServer, free_port
from smartedit_client import InpaintClient, ServerOverloadedError


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=Path("build/model_repository"))
    parser.add_argument("--clients", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--size", type=int, default=256, help="image side in pixels (256: 32x32 latents on the tiny model)")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (args.size, args.size, 3), dtype=np.uint8))
    mask = np.zeros((args.size, args.size), dtype=np.uint8)
    mask[args.size // 4: 3 * args.size // 4, args.size // 4: 3 * args.size // 4] = 255
    address = ServerAddress(grpc_port=free_port(), http_port=free_port(), metrics_port=free_port())

    def edit(client: InpaintClient, seed: int):
        started = time.perf_counter()
        try:
            result = client.inpaint(image=image, mask_image=Image.fromarray(mask), prompt="a chair",
                                    num_inference_steps=args.steps, seed=seed)
            return result, time.perf_counter() - started
        except ServerOverloadedError as error:
            return error, time.perf_counter() - started

    with TritonServer(args.repository, address, log_file=args.repository.parent / "admission-tritonserver.log"):
        clients = [InpaintClient(address.grpc, timeout_s=600) for _ in range(args.clients)]
        edit(clients[0], 0)  # warm-up
        with ThreadPoolExecutor(args.clients) as pool:
            outcomes = list(pool.map(lambda i: edit(clients[i], i), range(args.clients)))
        admitted = [(i, r) for i, (r, _) in enumerate(outcomes) if not isinstance(r, ServerOverloadedError)]
        refused = [elapsed for r, elapsed in outcomes if isinstance(r, ServerOverloadedError)]
        correct = sum(result.png == edit(clients[0], i)[0].png for i, result in admitted)
        for client in clients:
            client.close()

    print(f"{args.clients} clients at once, {args.steps} steps, {args.size}x{args.size}")
    print(f"admitted {len(admitted)}, of which {correct} equal the same edit sent alone afterwards")
    if refused:
        print(f"refused {len(refused)} with ServerOverloadedError: median {statistics.median(refused) * 1000:.0f} ms, "
              f"slowest {max(refused) * 1000:.0f} ms")
    admitted_times = [elapsed for r, elapsed in outcomes if not isinstance(r, ServerOverloadedError)]
    if admitted_times:
        print(f"admitted edits took median {statistics.median(admitted_times):.2f} s, slowest {max(admitted_times):.2f} s")


if __name__ == "__main__":
    main()
