"""The engine's planner: which UNet calls one step of the active edits makes, how many lanes (cohorts of
edits stepping together, whose calls take turns on the device) they step in, and which lane a joining
edit takes. Pure functions of the edits' rows, latent sizes and the measured costs
(``smartedit.engine.costs``), so that they can be tested without a UNet (tests/test_engine_planning.py).
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


def choose_lane(lane_rows: list[int], open_lanes: int) -> int:
    """The lane a joining (or moving) edit takes, given the rows each lane holds now: the open lane (the
    first ``open_lanes``, ``choose_lane_count``) with the fewest rows, the first of equals, so that the
    lanes' calls stay about the same size."""
    if not lane_rows:
        raise ValueError("an engine has at least one lane")
    open_lanes = max(1, min(len(lane_rows), open_lanes))
    return min(range(open_lanes), key=lambda lane: lane_rows[lane])


# A plan with more lanes must be this much faster per round to be chosen: a lane costs latency (an edit
# waits for the other lane's call) and the estimates are noisy.
LANE_MARGIN = 0.05


def round_seconds(lanes: int, device_s: float, host_s: float) -> float:
    """Seconds for every active edit to take one step in ``lanes`` lanes, whose UNet calls take
    ``device_s`` in all and the host's work for the edits ``host_s``. One lane: host and device take
    turns. More: each lane's host work runs while another lane's call is on the device, so a round
    takes the longer of the two."""
    return device_s + host_s if lanes == 1 else max(device_s, host_s)


def choose_lane_count(rows_by_size: dict[tuple[int, ...], int], edits: int, fits: dict, host_s_per_edit: float,
                      max_lanes: int, max_rows: int) -> int:
    """How many lanes the active edits should step in, from the measured costs.

    Args:
        rows_by_size: the active edits' rows per latent size (counting any about to join).
        edits: how many edits they are (a lane holds whole edits).
        fits: ``CostFit`` per latent size (``CostEstimates.fits``); a size without one counts as free.
        host_s_per_edit: the host's seconds per edit per step (``HostCost.per_edit_step``).
        max_lanes, max_rows: the configured bounds (``unet_lanes``, ``max_unet_rows``).

    Returns:
        The lanes, between 1 and ``min(max_lanes, edits)``: more only where hiding the host's work
        saves more than the fixed cost of the calls they add (by ``LANE_MARGIN``).
    """
    def device_s(lanes: int) -> float:
        total = 0.0
        for size, rows in rows_by_size.items():
            fit = fits.get(size)
            if fit is not None:
                calls = max(lanes, -(-rows // max_rows))  # each lane's call, or the chunks max_rows makes
                total += calls * fit.a + fit.b * rows
        return total

    host_s = host_s_per_edit * edits
    best, best_s = 1, round_seconds(1, device_s(1), host_s)
    for lanes in range(2, min(max_lanes, edits) + 1):
        seconds = round_seconds(lanes, device_s(lanes), host_s)
        if seconds < best_s * (1.0 - LANE_MARGIN):
            best, best_s = lanes, seconds
    return best


def check_against_record(model_lanes: int, max_lanes: int, edits: int, delivered) -> int:
    """The lanes to open: the cost model's choice (``choose_lane_count``), unless another plan delivered
    faster steps at this load lately (``delivered(lanes)``: its seconds per edit-step, or None when it
    has not run enough lately at this load). A plan without a recent record is tried once the model's
    choice has one, so that the record follows the device and the load; the model's choice stands
    unless another plan beat it by ``LANE_MARGIN``."""
    candidates = list(range(1, min(max_lanes, edits) + 1))
    model_lanes = min(max(1, model_lanes), candidates[-1])
    if len(candidates) == 1:
        return 1
    measured = {lanes: delivered(lanes) for lanes in candidates}
    if measured[model_lanes] is None:
        return model_lanes
    untried = [lanes for lanes in candidates if measured[lanes] is None]
    if untried:
        return untried[0]
    best = min(candidates, key=lambda lanes: measured[lanes])
    return model_lanes if measured[model_lanes] <= measured[best] * (1.0 + LANE_MARGIN) else best
