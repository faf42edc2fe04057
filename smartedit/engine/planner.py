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


def predicted_rounds(rows_by_size: dict[tuple[int, ...], int], edits: int, fits: dict, host_s_per_edit: float,
                     max_lanes: int, max_rows: int) -> dict[int, float]:
    """The cost model's seconds for a round of steps of the active edits, for each number of lanes they
    may step in (1 to ``min(max_lanes, edits)``: a lane holds whole edits).

    Args:
        rows_by_size: the active edits' rows per latent size (counting any about to join).
        edits: how many edits they are.
        fits: ``CostFit`` per latent size (``CostEstimates.fits``); a size without one counts as free.
        host_s_per_edit: the host's seconds per edit per step (``HostCost.per_edit_step``).
        max_lanes, max_rows: the configured bounds (``unet_lanes``, ``max_unet_rows``).
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
    candidates = range(1, max(1, min(max_lanes, edits)) + 1)
    return {lanes: round_seconds(lanes, device_s(lanes), host_s) for lanes in candidates}


def choose_lane_count(predicted: dict[int, float]) -> int:
    """The cost model's choice among ``predicted_rounds``: more lanes only where hiding the host's work
    saves more than the fixed cost of the calls they add, by ``LANE_MARGIN``."""
    best = 1
    for lanes in sorted(predicted)[1:]:
        if predicted[lanes] < predicted[best] * (1.0 - LANE_MARGIN):
            best = lanes
    return best


def check_against_record(predicted: dict[int, float], model_lanes: int, correction) -> int:
    """The lanes to open: the cost model's choice, unless what the plans delivered lately says otherwise.

    ``correction(lanes)``: how far that plan's steps lately took longer than the model predicted for them
    (measured / predicted, a moving average), or None when it has not run enough lately. Each plan's
    prediction is scaled by its own correction, which keeps the choice right where the model misses
    what a lane hides or costs (the BLS copies of the next call, the stub's handling). A plan without a
    recent record is tried once the model's choice has one, so that the corrections follow the device
    and the load; the model's choice stands unless another plan beats it by ``LANE_MARGIN``.
    """
    candidates = sorted(predicted)
    if len(candidates) == 1:
        return candidates[0]
    model_lanes = min(max(1, model_lanes), candidates[-1])
    corrections = {lanes: correction(lanes) for lanes in candidates}
    if corrections[model_lanes] is None:
        return model_lanes
    untried = [lanes for lanes in candidates if corrections[lanes] is None]
    if untried:
        return untried[0]
    scores = {lanes: predicted[lanes] * corrections[lanes] for lanes in candidates}
    best = min(candidates, key=scores.get)
    return model_lanes if scores[model_lanes] <= scores[best] * (1.0 + LANE_MARGIN) else best
