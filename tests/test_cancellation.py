"""The cancel board (smartedit.engine.cancellation): marks shared by one server's model processes."""

import subprocess

from smartedit.engine import cancellation
from smartedit.engine.cancellation import CancelBoard


def test_a_mark_is_seen_and_forgotten(tmp_path):
    board = CancelBoard(tmp_path / "board")
    token = board.new_token()
    assert not board.is_cancelled(token)
    board.cancel(token)
    assert board.is_cancelled(token)
    board.forget(token)
    assert not board.is_cancelled(token)


def test_the_boards_of_killed_servers_are_removed_and_a_live_ones_kept(tmp_path, monkeypatch):
    monkeypatch.setattr(cancellation, "_board_root", lambda: tmp_path)
    gone = subprocess.Popen(["true"])
    gone.wait()  # its pid now names no process, as a SIGKILLed server's would
    dead_board = CancelBoard(tmp_path / f"smartedit-cancelled-{gone.pid}")
    dead_board.cancel(dead_board.new_token())
    live = CancelBoard.of_this_server()
    assert live.folder.exists() and not dead_board.folder.exists()
