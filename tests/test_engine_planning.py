"""The engine's planner and batch builder on their own, without a UNet or threads: which calls a step
makes, which lane a joining edit takes, and how the calls' rows are laid out and kept between steps."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch

from smartedit.engine.batch_builder import UNetBatchBuilder
from smartedit.engine.planner import choose_lane, plan_unet_calls


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


def test_a_second_lane_opens_only_when_each_lane_would_hold_lane_min_rows():
    assert choose_lane([0, 0], edit_rows=2, lane_min_rows=16) == 0
    assert choose_lane([14, 0], edit_rows=2, lane_min_rows=16) == 0  # 16 rows: one lane's worth
    assert choose_lane([30, 0], edit_rows=2, lane_min_rows=16) == 1  # 32: two lanes open, the lighter
    assert choose_lane([16, 18], edit_rows=2, lane_min_rows=16) == 0
    assert choose_lane([18, 18], edit_rows=2, lane_min_rows=16) == 0  # equals: the first
    assert choose_lane([40, 0], edit_rows=2, lane_min_rows=4) == 1  # never past the lanes there are
    assert choose_lane([40], edit_rows=2, lane_min_rows=1) == 0
    with pytest.raises(ValueError, match="at least one lane"):
        choose_lane([], edit_rows=2, lane_min_rows=16)


def test_lanes_fill_evenly_as_edits_join():
    rows = [0, 0]
    for _ in range(32):
        rows[choose_lane(rows, 2, lane_min_rows=16)] += 2
    assert rows == [32, 32]


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
                        "time_ids": torch.randn((rows, 6), generator=generator)})

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
