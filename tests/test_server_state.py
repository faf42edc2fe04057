"""The state one tritonserver's processes share (smartedit.ops.server_state): drain, recovery, ledger."""

from __future__ import annotations

import time

from smartedit.ops.server_state import SHUTTING_DOWN, ServerState


def test_requests_are_refused_only_while_draining_and_cancelled_only_past_the_timeout(tmp_path):
    state = ServerState(tmp_path / "state")
    assert state.refusal() is None and state.cancel_reason() is None
    now = time.time()
    state.start_drain(30.0, now=now)
    assert SHUTTING_DOWN in state.refusal()
    assert state.cancel_reason(now + 29.0) is None
    assert "shut down before the edit finished (it waited 30 s" in state.cancel_reason(now + 30.0)
    # Again during the drain (a second signal): the earlier start, and stop now.
    again = state.start_drain(0.0, now=now + 5.0)
    assert again.since == now and again.cancel_at == now + 5.0
    assert state.cancel_reason(now + 5.0) == "the server was told to stop now, before the edit finished"
    # A later timeout never postpones an earlier stop.
    assert state.start_drain(100.0, now=now + 6.0).cancel_at == now + 5.0


def test_the_ledger_counts_requests_until_they_end_or_their_deadline_passes(tmp_path):
    state = ServerState(tmp_path / "state")
    now = time.time()
    state.begin("a1", deadline=now + 60)
    state.begin("b2", deadline=now + 1)
    state.begin("c3")  # no deadline of its own: bounded all the same
    assert state.in_flight(now) == 3
    state.end("a1")
    state.end("")  # a request that never had a token: nothing to end
    assert state.in_flight(now) == 2
    assert state.in_flight(now + 2) == 1  # b2 is past its deadline: it cannot be running any more
    assert state.in_flight(now + 2 * 3600) == 0


def test_a_model_being_replaced_and_events_are_shared_between_processes(tmp_path):
    writer, reader = ServerState(tmp_path / "s"), ServerState(tmp_path / "s")
    writer.mark_recovering("unet")
    assert reader.recovering() == "unet"
    writer.clear_recovering()
    assert reader.recovering() is None
    writer.count_event("model_process_replaced", "unet")
    writer.count_event("model_process_replaced", "unet")
    writer.count_event("drain")
    assert reader.events() == {"model_process_replaced unet": 2, "drain": 1}


def test_a_token_cannot_name_a_file_outside_the_ledger(tmp_path):
    import pytest

    state = ServerState(tmp_path / "state")
    with pytest.raises(ValueError, match="alphanumeric"):
        state.begin("../escape")


def test_a_folder_is_its_servers_only_while_that_very_process_runs(tmp_path, monkeypatch):
    """Named by pid and start time: a container restarted in its pod gets /dev/shm back and, in a new pid
    namespace, likely the same pid, but not the same start time -- it inherits no drain or repair."""
    import os

    from smartedit.ops.health import start_time
    from smartedit.ops import server_state

    monkeypatch.setattr(server_state, "shared_root", lambda: tmp_path)
    mine = ServerState.of_server(os.getpid())
    assert mine.folder.name == f"smartedit-state-{os.getpid()}-{start_time(os.getpid())}"
    mine.start_drain(10.0)
    reused_pid = tmp_path / f"smartedit-state-{os.getpid()}-1"  # the same pid, another start
    reused_pid.mkdir()
    server_state.remove_folders_of_dead_servers(tmp_path)
    assert not reused_pid.exists() and mine.folder.exists() and mine.refusal() is not None
