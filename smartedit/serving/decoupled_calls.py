"""Calling a decoupled model over BLS without corrupting the calling model process.

Triton 2.51's Python backend (python_backend r24.10) can free the responses of a finished decoupled
BLS call on one of its own C++ threads, without holding the GIL: when the call's last response is
read, the stub queues a cleanup, and its stub-to-parent thread erases the call's response iterator
from a map (``Stub::SendCleanupId``). Should Python have dropped its own reference to the iterator
first, that erase destroys the iterator and every tensor of every response it kept, and each
tensor's numpy array is freed off the GIL (``PbTensor``'s destructor takes the GIL only from r25.01,
python_backend #390). That corrupts the interpreter's heap, and the stub segfaults later at some
unrelated line (a ``json.dumps``, a PNG encode), after which Triton answers "Stub process is not
healthy" for that model until it is replaced. Seen here about once a minute with a few clients
streaming edits on 2 cores (benchmarks/soak.py).

So Python keeps each finished iterator for ``KEEP_S`` more seconds, by then long after the stub's
cleanup (a message handled in order, in milliseconds), and drops it itself, holding the GIL: the
last reference then always dies in Python (at the latest, in the model's ``finalize``). What that keeps is small (an edit's progress responses,
previews at latent resolution and its latents) and for seconds.
"""

from __future__ import annotations

import collections
import threading
import time
from typing import Iterator

KEEP_S = 30.0  # far beyond the stub's cleanup of a finished call (milliseconds; seconds under load)


class _FinishedCalls:
    """Response iterators of finished calls, dropped in Python once ``KEEP_S`` has passed."""

    def __init__(self, keep_s: float = KEEP_S):
        self._keep_s = keep_s
        self._lock = threading.Lock()
        self._kept: collections.deque = collections.deque()

    def keep(self, iterator) -> None:
        now = time.monotonic()
        with self._lock:
            self._kept.append((now, iterator))
            expired = []
            while self._kept and now - self._kept[0][0] > self._keep_s:
                expired.append(self._kept.popleft())
        del expired  # the last references, dropped here by Python (holding the GIL)

    def release_all(self) -> None:
        with self._lock:
            kept, self._kept = self._kept, collections.deque()
        del kept

    def __len__(self) -> int:
        return len(self._kept)


FINISHED_CALLS = _FinishedCalls()


def release_finished_calls() -> None:
    """At a model's ``finalize``, while its process can still reach Triton: left to the interpreter's exit,
    the responses are freed after the stub has let go of its shared memory, and the exit segfaults."""
    FINISHED_CALLS.release_all()


def decoupled_responses(request) -> Iterator:
    """The responses of ``request.exec(decoupled=True)``, in order (a BLS ``InferenceRequest``).

    Read to its end even when the caller stops early: an iterator left unfinished would be finished
    by its destructor anyway, in whichever thread dropped it last.
    """
    responses = request.exec(decoupled=True)
    try:
        yield from responses
    finally:
        _read_to_the_end(responses)
        FINISHED_CALLS.keep(responses)


def _read_to_the_end(responses) -> None:
    # next(), not a for loop: iterating a finished iterator again (its __iter__) starts it over.
    while True:
        try:
            next(responses)
        except StopIteration:
            return
