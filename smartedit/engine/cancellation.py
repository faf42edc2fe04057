"""Telling the engine that a streamed edit's caller has gone, across model processes.

The streaming entry (``inpaint_stream``) sees its client close the stream (``is_cancelled()``), but
the edit runs in another model, ``denoise_engine``, reached through BLS, and Triton 2.51 cannot
cancel a BLS request: the response iterator has no ``cancel()``, and the callee's
``is_cancelled()`` stays false. So the entry marks the edit on this board and the engine, which
checks its active edits' marks between steps, stops it.

The board is a folder of empty files, one per cancelled edit token, in memory (``/dev/shm``)
where there is one. It belongs to one tritonserver: every Python model of a server is a child
process of it, so the server's pid (our parent's) names the folder, and two servers on one host
never see each other's marks. Checking a mark is one ``stat``: cheap enough for every active edit
at every step.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import uuid
from pathlib import Path

_SHARED_MEMORY = Path("/dev/shm")
_PREFIX = "smartedit-cancelled-"


def _board_root() -> Path:
    if _SHARED_MEMORY.is_dir() and os.access(_SHARED_MEMORY, os.W_OK):
        return _SHARED_MEMORY
    return Path(tempfile.gettempdir())


def _remove_boards_of_dead_servers() -> None:
    """A server that was killed (SIGKILL, the OOM killer) left its board behind: remove those."""
    for board in _board_root().glob(f"{_PREFIX}*"):
        pid = board.name[len(_PREFIX):]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            shutil.rmtree(board, ignore_errors=True)


class CancelBoard:
    """Marks for cancelled edits, shared by the Python models of one tritonserver."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)

    @classmethod
    def of_this_server(cls) -> "CancelBoard":
        """The board of the tritonserver that started this Python-backend process."""
        _remove_boards_of_dead_servers()
        return cls(_board_root() / f"{_PREFIX}{os.getppid()}")

    @staticmethod
    def new_token() -> str:
        return uuid.uuid4().hex

    def _path(self, token: str) -> Path:
        if not token or not token.isalnum():  # a token names a file: nothing that could leave the folder
            raise ValueError(f"cancel token must be alphanumeric, got {token!r}")
        return self.folder / token

    def cancel(self, token: str) -> None:
        self._path(token).touch()

    def is_cancelled(self, token: str) -> bool:
        return self._path(token).exists()

    def forget(self, token: str) -> None:
        """Remove the mark once the edit has ended (whether or not it was ever marked)."""
        self._path(token).unlink(missing_ok=True)

    def remove_if_empty(self) -> None:
        """At unload: leave no folder behind once no edit has a mark (the other model may still)."""
        try:
            self.folder.rmdir()
        except OSError:
            pass
