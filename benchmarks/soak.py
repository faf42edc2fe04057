"""Soak: clients streaming, cancelling and sending unary edits for minutes against one tritonserver.

    .venv/bin/python benchmarks/soak.py [--repository build/model_repository] [--minutes 5] [--clients 6]

Starts tritonserver on the repository (run the demo or `smartedit export` first) without
`smartedit serve`'s recovery, so that a model process that dies stays dead and shows. Each client
loops over four kinds of edit: a streamed edit with previews read to the end, one left after two
steps (the client cancels), a heavy one (4 images, 60 steps, 256 px) left after two steps, and a
unary edit. Prints each kind's outcomes, and the model processes that crashed (faulthandler's
"Fatal Python error" in the server's log, and "Stub process ... is not healthy" answers). Exits 1
if any did. What found the Python backend's off-GIL free of decoupled BLS responses
(smartedit.serving.decoupled_calls): before that fix, 3 crashes in 6.5 minutes with 6 clients.
"""

from __future__ import annotations

import argparse
import collections
import io
import random
import sys
import threading
import time
from pathlib import Path

import numpy as np
from PIL import Image

from smartedit.ops.server import ServerAddress, TritonServer, free_port
from smartedit_client import InpaintClient, ServerOverloadedError

CRASH_LINE = "Fatal Python error"


def _png(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, format="PNG")
    return buffer.getvalue()


def _scene(size: int) -> tuple[bytes, bytes]:
    rng = np.random.default_rng(size)
    mask = np.zeros((size, size), dtype=np.uint8)
    mask[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = 255
    return _png(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)), _png(mask)


SMALL, LARGE = _scene(64), _scene(256)


def _stream(client, scene, leave_at_step, **edit) -> None:
    image, mask = scene
    with client.inpaint_stream(image=image, mask_image=mask, prompt="a lamp", seed=2, **edit) as stream:
        for event in stream:
            if leave_at_step is not None and event.step == leave_at_step:
                return


KINDS = {
    "stream": lambda c: _stream(c, SMALL, None, num_inference_steps=5, preview_every=2),
    "stream, left at step 2": lambda c: _stream(c, SMALL, 2, num_inference_steps=8, preview_every=1),
    "heavy stream, left at step 2": lambda c: _stream(c, LARGE, 2, num_inference_steps=60, num_images=4,
                                                      preview_every=0),
    "unary": lambda c: c.inpaint(image=SMALL[0], mask_image=SMALL[1], prompt="a lamp", num_inference_steps=4,
                                 seed=1),
}


def _client_loop(url: str, seed: int, until: float, outcomes: collections.Counter, lock: threading.Lock) -> None:
    chooser = random.Random(seed)
    with InpaintClient(url, timeout_s=120) as client:
        while time.monotonic() < until:
            kind = chooser.choice(sorted(KINDS))
            try:
                KINDS[kind](client)
                outcome = "ok"
            except ServerOverloadedError:
                outcome = "refused: at capacity"
            except Exception as error:  # every other failure is what a soak looks for
                outcome = f"{type(error).__name__}: {str(error)[:90]}"
            with lock:
                outcomes[(kind, outcome)] += 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repository", type=Path, default=Path("build/model_repository"))
    parser.add_argument("--minutes", type=float, default=5.0)
    parser.add_argument("--clients", type=int, default=6)
    args = parser.parse_args()

    address = ServerAddress(grpc_port=free_port(), http_port=free_port(), metrics_port=free_port())
    log_file = args.repository.parent / "soak-tritonserver.log"
    log_file.unlink(missing_ok=True)
    outcomes, lock = collections.Counter(), threading.Lock()
    with TritonServer(args.repository, address, log_file=log_file):
        until = time.monotonic() + args.minutes * 60
        clients = [threading.Thread(target=_client_loop, args=(address.grpc, i, until, outcomes, lock))
                   for i in range(args.clients)]
        for thread in clients:
            thread.start()
        for thread in clients:
            thread.join()

    print(f"{args.clients} clients for {args.minutes:g} min")
    for (kind, outcome), count in sorted(outcomes.items()):
        print(f"  {count:6d}  {kind}: {outcome}")
    crashes = log_file.read_text(errors="replace").count(CRASH_LINE)
    unhealthy = sum(count for (_, outcome), count in outcomes.items() if "is not healthy" in outcome)
    print(f"model processes crashed: {crashes} (log {log_file}); answers from a dead one: {unhealthy}")
    return 1 if crashes or unhealthy else 0


if __name__ == "__main__":
    sys.exit(main())
