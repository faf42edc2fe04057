"""The engine's planner, cost estimates and batch builder on their own, without a UNet or threads: which
calls a step makes, how many lanes the measured costs call for, which lane a joining edit takes, how the
costs are fitted, and how the calls' rows are laid out and kept between steps."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from smartedit.engine.batch_builder import UNetBatchBuilder
from smartedit.engine.costs import (
    PRIOR_A_S, PRIOR_B_S, CostFit, HostCost, Load, PlanRecord, ServiceClock, UNetCost,
)
from smartedit.engine.planner import (
    check_against_record, choose_lane, choose_lane_count, plan_unet_calls, predicted_rounds, round_seconds,
)


def _sized(rows: int, size=(8, 8)):
    return SimpleNamespace(rows=rows, latent_size=size)


def test_calls_group_by_latent_size_in_order_and_never_split_an_edit():
    a, b, c, d = _sized(2), _sized(2, (8, 12)), _sized(2), _sized(4)
    e = _sized(2, (8, 12))
    assert plan_unet_calls([a, b, c, d, e], max_rows=4) == [[a, c], [d], [b, e]]
    assert plan_unet_calls([a, b, c, d, e], max_rows=64) == [[a, c, d], [b, e]]
    big = _sized(6)  # more rows than a call takes: alone (the engine's limits refuse such an edit earlier)
    assert plan_unet_calls([a, big, c], max_rows=4) == [[a], [big], [c]]
    assert plan_unet_calls([], max_rows=4) == []
    f, g = _sized(1), _sized(2)  # a one-row edit (no guidance) fills a call's last row
    assert plan_unet_calls([a, f, g, c], max_rows=4) == [[a, f], [g, c]]


@pytest.mark.parametrize("max_rows", [2, 3, 5, 16])
def test_every_edit_is_in_exactly_one_call_and_no_call_is_over_the_limit_unless_alone(max_rows):
    rng = np.random.default_rng(max_rows)
    edits = [_sized(int(rng.choice([2, 3])), (8, int(rng.choice([8, 12])))) for _ in range(40)]
    calls = plan_unet_calls(edits, max_rows)
    assert sorted(map(id, (edit for call in calls for edit in call))) == sorted(map(id, edits))
    for call in calls:
        assert len({edit.latent_size for edit in call}) == 1
        assert sum(edit.rows for edit in call) <= max_rows or len(call) == 1


def test_a_joining_edit_takes_the_lightest_open_lane():
    assert choose_lane([0, 0], open_lanes=1) == 0
    assert choose_lane([30, 0], open_lanes=1) == 0  # one lane open: there, however full
    assert choose_lane([30, 0], open_lanes=2) == 1
    assert choose_lane([18, 18], open_lanes=2) == 0  # equals: the first
    assert choose_lane([40, 0], open_lanes=4) == 1  # never past the lanes there are
    assert choose_lane([40], open_lanes=0) == 0
    with pytest.raises(ValueError, match="at least one lane"):
        choose_lane([], open_lanes=1)


def test_lanes_fill_evenly_as_edits_join():
    rows = [0, 0]
    for _ in range(32):
        rows[choose_lane(rows, open_lanes=2)] += 2
    assert rows == [32, 32]


SIZE = (64, 64)


def _lanes(a_ms: float, b_ms: float, host_ms_per_edit: float, edits: int = 16, max_lanes: int = 2,
           max_rows: int = 64) -> int:
    fits = {SIZE: CostFit(a=a_ms / 1000, b=b_ms / 1000, calls=100)}
    return choose_lane_count(predicted_rounds({SIZE: 2 * edits}, edits, fits, host_ms_per_edit / 1000, max_lanes,
                                              max_rows))


def test_one_lane_when_the_call_s_fixed_cost_outweighs_the_host_work_a_lane_would_hide():
    # 16 edits, 0.3 ms of host work each: 4.8 ms a step, less than a 12 ms call's fixed cost.
    assert _lanes(a_ms=12, b_ms=1.5, host_ms_per_edit=0.3) == 1
    assert _lanes(a_ms=25, b_ms=3, host_ms_per_edit=1.0) == 1


def test_two_lanes_when_the_host_work_outweighs_the_fixed_cost():
    assert _lanes(a_ms=2, b_ms=0.5, host_ms_per_edit=0.3) == 2  # 4.8 ms hidden for 2 ms more
    assert _lanes(a_ms=6, b_ms=1.5, host_ms_per_edit=1.0) == 2


def test_the_plan_never_exceeds_the_configured_lanes_nor_one_lane_per_edit():
    assert _lanes(a_ms=0.1, b_ms=0.5, host_ms_per_edit=5, max_lanes=1) == 1
    assert _lanes(a_ms=0.1, b_ms=0.5, host_ms_per_edit=5, max_lanes=4) <= 4
    assert _lanes(a_ms=0.1, b_ms=0.5, host_ms_per_edit=5, edits=1, max_lanes=4) == 1  # one edit: one lane
    assert _lanes(a_ms=0.1, b_ms=0.5, host_ms_per_edit=5, edits=3, max_lanes=4) <= 3
    # Rows past max_rows make several calls in one lane anyway: a second lane then costs no more calls.
    assert _lanes(a_ms=12, b_ms=1.5, host_ms_per_edit=0.5, edits=32, max_rows=32) == 2


def test_round_time_is_turns_with_one_lane_and_the_longer_of_host_and_device_with_more():
    assert round_seconds(1, device_s=0.05, host_s=0.01) == pytest.approx(0.06)
    assert round_seconds(2, device_s=0.05, host_s=0.01) == 0.05
    assert round_seconds(2, device_s=0.01, host_s=0.05) == 0.05


def test_the_cost_fit_converges_on_a_simulated_unet_within_a_few_dozen_calls():
    rng = np.random.default_rng(0)
    for a, b in ((0.012, 0.0015), (0.002, 0.003), (0.025, 0.0005)):
        cost = UNetCost(max_rows=64)
        for _ in range(36):  # calls of the sizes a ramping load makes, with 3% noise
            rows = int(rng.choice([2, 4, 8, 16, 32, 64]))
            cost.observe(rows, (a + b * rows) * rng.normal(1.0, 0.03))
        fit = cost.fit()
        assert fit.calls == 36
        assert fit.a == pytest.approx(a, rel=0.15, abs=0.0005) and fit.b == pytest.approx(b, rel=0.1), (a, b, fit)


def test_the_fit_follows_a_device_that_changes_and_holds_its_split_under_a_steady_load():
    cost = UNetCost(max_rows=64)
    for rows in [2, 8, 16, 32, 64] * 8:
        cost.observe(rows, 0.010 + 0.001 * rows)
    for _ in range(300):  # the device gets twice as slow per row; the load is steady at 64 rows
        cost.observe(64, 0.010 + 0.002 * 64)
    fit = cost.fit()
    assert fit.seconds(64) == pytest.approx(0.010 + 0.002 * 64, rel=0.02)
    assert 0 <= fit.a < 0.03 and fit.b > 0.0015
    # Before any call: the prior.
    assert UNetCost(max_rows=64).fit().seconds(1) == pytest.approx(PRIOR_A_S + PRIOR_B_S)


def test_a_call_that_queued_behind_another_counts_only_its_own_device_time():
    clock = ServiceClock()
    assert clock.service_time(started=0.0, ended=0.05) == pytest.approx(0.05)
    # Left at 0.01 while the first was on the device; came back at 0.09: its own time is 0.04.
    assert clock.service_time(started=0.01, ended=0.09) == pytest.approx(0.04)
    assert clock.service_time(started=0.5, ended=0.52) == pytest.approx(0.02)  # the device was idle


def test_the_host_s_cost_is_a_moving_average_per_edit_step():
    host = HostCost(smoothing=0.5)
    assert host.per_edit_step == 0.0
    host.observe(edits=4, seconds=0.004)
    assert host.per_edit_step == pytest.approx(0.001)
    host.observe(edits=2, seconds=0.006)
    assert host.per_edit_step == pytest.approx(0.002)
    host.observe(edits=0, seconds=1.0)  # a step that advanced nothing says nothing
    assert host.per_edit_step == pytest.approx(0.002)


def test_the_model_s_choice_stands_until_another_plan_did_better_against_its_prediction():
    predicted = {1: 0.100, 2: 0.104}  # the model: one lane, two are 4% slower

    def record(**ratios):
        return lambda lanes: ratios.get(f"l{lanes}")

    assert check_against_record(predicted, 1, record()) == 1  # no record: the model's choice
    assert check_against_record(predicted, 1, record(l1=1.2)) == 2  # its record exists: try the other plan
    # One lane ran 20% slower than predicted, two lanes 2%: two lanes are faster in fact.
    assert check_against_record(predicted, 1, record(l1=1.2, l2=1.02)) == 2
    assert check_against_record(predicted, 1, record(l1=1.05, l2=1.02)) == 1  # within the margin
    assert check_against_record(predicted, 2, record(l2=1.0)) == 1  # the model's record exists: try one lane
    assert check_against_record({1: 0.1}, 1, record(l1=5.0)) == 1  # nothing else to choose
    assert check_against_record({1: 0.1, 2: 0.2}, 3, record()) == 2  # never past the candidates


def test_the_record_keeps_each_plan_s_recent_shortfall_against_the_model():
    plans = PlanRecord(keep=4, fresh_s=30.0, min_samples=3)
    load = Load(rows_by_size=(((64, 64), 8),), edits=4)
    model = {load: 0.010}  # seconds per edit-step
    for turn in range(3):
        plans.observe(lanes=2, seconds=0.024, steps=2, load=load, now=turn)
    assert plans.correction(2, now=3, predict=model.get) == pytest.approx(1.2)
    assert plans.correction(1, now=3, predict=model.get) is None  # another plan
    assert plans.correction(2, now=40, predict=model.get) is None  # not lately
    # Lanes of 1 and 3 edits: turns of 15 and 30 ms are 1.5x and 1.0x the model apart, 1.125x together.
    for turn in range(4, 6):
        plans.observe(lanes=2, seconds=0.015, steps=1, load=load, now=turn)
        plans.observe(lanes=2, seconds=0.030, steps=3, load=load, now=turn)
    assert plans.correction(2, now=6, predict=model.get) == pytest.approx(0.090 / 0.080)  # the last 4 turns
    plans.observe(lanes=2, seconds=0.030, steps=3, load=load, now=100)  # the others are stale now
    assert plans.correction(2, now=100, predict=model.get) is None  # one turn is not enough
    plans.observe(lanes=2, seconds=0.0, steps=3, load=load, now=101)  # says nothing
    assert PlanRecord(min_samples=1).correction(2, now=0, predict=model.get) is None


def test_the_record_is_read_against_the_model_as_it_is_now_not_as_it_was():
    # One lane ran at 2 edits while the fit, from calls of one size, had no per-row cost: its turns took
    # 1.75x what that model said. The load then grew and the fit learned the per-row cost; against it
    # those same turns were on time, and they must not hold the engine in two lanes.
    small = Load(rows_by_size=(((32, 32), 4),), edits=2)
    plans = PlanRecord(min_samples=5)
    for turn in range(5):
        plans.observe(lanes=1, seconds=0.105, steps=2, load=small, now=turn)
    then = {small: 0.030}  # a = 60 ms, b = 0: a round of 2 edits in 60 ms
    now = {small: 0.050}  # a = 40 ms, b = 15 ms a row
    assert plans.correction(1, now=6, predict=then.get) == pytest.approx(1.75)
    assert plans.correction(1, now=6, predict=now.get) == pytest.approx(1.05)
    # Two lanes ran 1.5x their prediction, one about as fast as the model says: one lane, by the record now.
    predicted = {1: 0.400, 2: 0.410}
    assert check_against_record(predicted, 1, {1: plans.correction(1, 6, then.get), 2: 1.5}.get) == 2
    assert check_against_record(predicted, 1, {1: plans.correction(1, 6, now.get), 2: 1.5}.get) == 1


class _Edit:
    """What the builder reads of an engine's edit: its rows and its state's tensors (named row inputs as
    an SDXL-like family has them: prompt embeddings, pooled embeddings, time ids)."""

    def __init__(self, rows: int, seed: int, channels=(4, 5), hidden=(7, 6), size=(3, 2)):
        generator = torch.Generator().manual_seed(seed)
        self.rows = rows
        self.state = SimpleNamespace(
            latents=torch.randn((rows, channels[0]) + size, generator=generator),
            conditioning=torch.randn((rows, channels[1]) + size, generator=generator),
            row_inputs={"encoder_hidden_states": torch.randn((rows,) + hidden, generator=generator),
                        "text_embeds": torch.randn((rows, 3), generator=generator),
                        "time_ids": torch.randn((rows, 6), generator=generator)},
            step_inputs=None)

    @property
    def hidden(self) -> torch.Tensor:
        return self.state.row_inputs["encoder_hidden_states"]

    def step_input(self, t: float):
        return self, (self.state.latents * 0.5, torch.tensor(t))


def _expected(chunk):
    expected = {
        "sample": np.concatenate([np.concatenate([scaled.numpy(), edit.state.conditioning.numpy()], axis=1)
                                  for edit, (scaled, _) in chunk]),
        "timestep": np.concatenate([np.full(edit.rows, float(t), dtype=np.float32) for edit, (_, t) in chunk])}
    for name in chunk[0][0].state.row_inputs:
        expected[name] = np.concatenate([edit.state.row_inputs[name].numpy() for edit, _ in chunk])
    return expected


def test_rows_are_the_edits_rows_in_order_with_conditioning_after_the_latents_and_every_named_input():
    a, b, c = _Edit(2, 1), _Edit(3, 2), _Edit(2, 3)
    chunk = [a.step_input(981.0), b.step_input(500.0), c.step_input(1.0)]
    built = UNetBatchBuilder().inputs(("lane", 0), chunk)
    expected = _expected(chunk)
    assert list(built) == ["sample", "timestep", "encoder_hidden_states", "text_embeds", "time_ids"]
    for name, want in expected.items():
        assert built[name].dtype == np.float32 and np.array_equal(built[name], want), name


def test_an_edit_that_stays_in_place_is_not_copied_again_and_one_that_moves_is():
    builder = UNetBatchBuilder()
    a, b, c = _Edit(2, 1), _Edit(2, 2), _Edit(2, 3)
    builder.inputs("key", [a.step_input(10.0), b.step_input(10.0), c.step_input(10.0)])
    marker = 12345.0
    for edit in (a, c):  # constants changed behind the builder's back: visible only where it copies them
        edit.state.conditioning.fill_(marker)
        for value in edit.state.row_inputs.values():
            value.fill_(marker)
    # b leaves, c takes its place (as the engine's groups do), a stays where it was
    built = builder.inputs("key", [a.step_input(9.0), c.step_input(9.0)])
    sample, timestep = built["sample"], built["timestep"]
    assert all(value.shape[0] == 4 for value in built.values()) and set(timestep) == {9.0}
    assert not (sample[:2, 4:] == marker).any()  # a: kept, not copied
    assert (sample[2:, 4:] == marker).all()  # c moved: copied
    for name in ("encoder_hidden_states", "text_embeds", "time_ids"):
        assert not (built[name][:2] == marker).any() and (built[name][2:] == marker).all(), name
    assert np.array_equal(sample[:, :4], np.concatenate([a.state.latents * 0.5, c.state.latents * 0.5]))
    # b comes back at the end: copied, as every newcomer is
    built = builder.inputs("key", [a.step_input(8.0), c.step_input(8.0), b.step_input(8.0)])
    assert np.array_equal(built["encoder_hidden_states"][4:], b.hidden.numpy())


def test_per_step_inputs_are_written_at_every_step_even_for_an_edit_that_stays_in_place():
    """A controlled edit's conditioning scale changes as its guidance window opens and closes: each call has the
    value its state gives for that step, though the edit never moved."""
    builder = UNetBatchBuilder()
    a, b = _Edit(2, 1), _Edit(1, 2)
    for edit, base in ((a, 1.0), (b, 100.0)):
        edit.state.step_inputs = lambda state, base=base: {"control_scale": torch.full((state.latents.shape[0],),
                                                                                       base + state.step)}
    for step in range(3):
        a.state.step = b.state.step = step
        built = builder.inputs("key", [a.step_input(10.0 - step), b.step_input(10.0 - step)])
        assert built["control_scale"].tolist() == [1.0 + step] * 2 + [100.0 + step]


def test_an_edit_that_swaps_its_constants_mid_loop_has_the_new_ones_copied_in_place():
    """A text edit turns from inverting to denoising: same place, same rows (no guidance), but new row inputs and
    conditioning objects, which must reach the call even though the edit did not move."""
    builder = UNetBatchBuilder()
    a, b = _Edit(1, 1), _Edit(1, 2)
    builder.inputs("key", [a.step_input(10.0), b.step_input(10.0)])
    a.state.row_inputs = {name: torch.full_like(value, 7.0) for name, value in a.state.row_inputs.items()}
    a.state.conditioning = torch.full_like(a.state.conditioning, 7.0)
    built = builder.inputs("key", [a.step_input(9.0), b.step_input(9.0)])
    for name, value in a.state.row_inputs.items():
        assert (built[name][:1] == 7.0).all() and np.array_equal(built[name][1:], b.state.row_inputs[name].numpy())
    assert (built["sample"][:1, 4:] == 7.0).all()
    grown = _Edit(2, 1)  # ... and when it takes another row (guidance starts), both are copied
    grown.state.row_inputs["encoder_hidden_states"].fill_(3.0)
    a.rows, a.state = 2, grown.state
    built = builder.inputs("key", [a.step_input(8.0), b.step_input(8.0)])
    assert (built["encoder_hidden_states"][:2] == 3.0).all()
    assert np.array_equal(built["encoder_hidden_states"][2:], b.hidden.numpy())


def test_arrays_are_reused_while_they_fit_and_remade_when_they_do_not():
    builder = UNetBatchBuilder()
    edits = [_Edit(2, seed) for seed in range(6)]
    first = builder.inputs("key", [e.step_input(1.0) for e in edits[:2]])["sample"]
    again = builder.inputs("key", [e.step_input(1.0) for e in edits[:4]])["sample"]  # 8 rows: room for 2 x 4
    assert np.shares_memory(first, again)
    grown = builder.inputs("key", [e.step_input(1.0) for e in edits])["sample"]  # 12 rows: past it
    assert not np.shares_memory(first, grown)
    wider = _Edit(2, 9, hidden=(9, 6))  # another text length: other arrays
    built = builder.inputs("key", [wider.step_input(3.0)])
    assert built["encoder_hidden_states"].shape == (2, 9, 6) and not np.shares_memory(built["sample"], grown)


def test_keep_only_frees_a_lanes_calls_that_its_last_step_did_not_make():
    builder = UNetBatchBuilder()
    edit = _Edit(2, 1)
    for key in [(0, (8, 8), 0), (0, (8, 12), 0), (1, (8, 8), 0)]:
        builder.inputs(key, [edit.step_input(1.0)])
    builder.keep_only(0, [(0, (8, 8), 0)])
    assert set(builder._calls) == {(0, (8, 8), 0), (1, (8, 8), 0)}  # lane 1's untouched
