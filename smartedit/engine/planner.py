"""The engine's planner: which UNet calls one step of the active edits makes, and which lane (cohort of
edits stepping together) a joining edit takes. Pure functions of the edits' rows and latent sizes, so
that they can be tested without a UNet (tests/test_engine_planning.py).
"""

from __future__ import annotations


def plan_unet_calls(edits: list, max_rows: int) -> list[list]:
    """The UNet calls of one iteration: edits grouped by latent size, each group cut into chunks of at
    most ``max_rows`` rows (an edit's rows are never split), keeping the edits' order."""
    groups: dict[tuple[int, ...], list] = {}
    for edit in edits:
        groups.setdefault(edit.latent_size, []).append(edit)
    calls = []
    for members in groups.values():
        chunk, rows = [], 0
        for edit in members:
            if chunk and rows + edit.rows > max_rows:
                calls.append(chunk)
                chunk, rows = [], 0
            chunk.append(edit)
            rows += edit.rows
        calls.append(chunk)
    return calls


def choose_lane(lane_rows: list[int], edit_rows: int, lane_min_rows: int) -> int:
    """The lane a joining edit of ``edit_rows`` rows takes, given the rows each lane holds now.

    As many lanes are open as have ``lane_min_rows`` rows each, counting the joining edit (at least one,
    at most ``len(lane_rows)``); the edit goes into the open lane with the fewest rows (the first of
    equals), so that the lanes' calls stay about the same size. Lanes are not emptied when the load
    falls: their edits finish where they are.
    """
    if not lane_rows:
        raise ValueError("an engine has at least one lane")
    open_lanes = max(1, min(len(lane_rows), (sum(lane_rows) + edit_rows) // lane_min_rows))
    return min(range(open_lanes), key=lambda lane: lane_rows[lane])
