"""The batched engine (smartedit.engine.core) on the tiny model's exported UNet, run by ONNX Runtime.

No server: these pin the engine's own promises. An edit's result does not depend on what else shares
its UNet calls; new edits join between steps; admission refuses past its bounds; an edit whose
caller left stops within a step; one failing edit fails alone.
"""

from __future__ import annotations

import threading
import time
from types import SimpleNamespace

import numpy as np
import onnxruntime as ort
import pytest
import torch

from conftest import png_bytes, scene
from smartedit.diffusion.denoise import EditInputs, run_to_end
from smartedit.diffusion.families import start_denoising
from smartedit.edit.parameters import EditParameters
from smartedit.engine.costs import CostEstimates, CostFit, PlanRecord
from smartedit.engine.core import (
    AtCapacity, DenoiseEngine, EditRequest, EngineLimits, EngineMetrics, TooManyImages,
)
from smartedit.diffusion.prompts import SD_PROMPTS
from smartedit.edit.preprocessing import prepare_images
from smartedit.serving.settings import PreprocessSettings
from smartedit.diffusion.spec import PipelineInfo


class RecordingSink:
    def __init__(self):
        self.events = []
        self.reasons = []
        self.ended = threading.Event()
        self.state = None

    def progress(self, step, total_steps, preview_latents, checkpoint=None):
        self.events.append(("progress", step, total_steps, preview_latents is not None))

    def finished(self, state):
        self.state = state
        self.events.append(("finished",))
        self.ended.set()

    def failed(self, message, reason=""):
        self.events.append(("failed", message))
        self.reasons.append(reason)
        self.ended.set()

    def cancelled(self, message, reason=""):
        self.events.append(("cancelled", message))
        self.reasons.append(reason)
        self.ended.set()

    def interrupted(self, message, reason=""):
        self.events.append(("interrupted", message))
        self.reasons.append(reason)
        self.ended.set()

    @property
    def outcome(self):
        return self.events[-1][0] if self.ended.is_set() else None


@pytest.fixture(scope="module")
def onnx_unet(model_repository):
    session = ort.InferenceSession(str(model_repository / "unet" / "1" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    calls = []

    def unet(inputs):
        calls.append(inputs["sample"].shape[0])
        return session.run(None, inputs)[0]

    unet.calls = calls
    return unet


def torch_unet_of(onnx_unet):
    return lambda inputs: torch.from_numpy(onnx_unet({name: value.numpy() for name, value in inputs.items()}))


@pytest.fixture(scope="module")
def make_edit(tiny_pipeline):
    """``make_edit(**params)`` -> a function building the edit's DenoiseState, as the served loop does."""
    pipe = tiny_pipeline
    info = PipelineInfo.from_pipeline(pipe)

    def make(size=(40, 24), sampler="ddim", steps=4, strength=1.0, guidance=7.5, seed=7, prompt="a red chair"):
        image, mask = scene(*size, seed=seed)
        prepared = prepare_images(png_bytes(image), png_bytes(mask), info, PreprocessSettings())
        with torch.inference_mode():
            ids = SD_PROMPTS.tokenize([pipe.tokenizer], "ugly", prompt)["input_ids"]
            embeds = pipe.text_encoder(torch.from_numpy(ids))[0]
            masked = pipe.vae.encode(torch.from_numpy(prepared.masked_image)).latent_dist
            init = pipe.vae.encode(torch.from_numpy(prepared.init_image)).latent_dist

        params = EditParameters(prompt=prompt, negative_prompt="ugly", scheduler=sampler, num_inference_steps=steps,
                                strength=strength, guidance_scale=guidance, seed=seed)
        inputs = EditInputs({"prompt_embeds": embeds}, masked.mean, masked.std, torch.from_numpy(prepared.latent_mask))

        def prepare():
            return start_denoising(info, pipe.scheduler.config, params, inputs, lambda: (init.mean, init.std))
        return prepare

    return make


def run_alone(prepare, onnx_unet):
    state = prepare()
    assert run_to_end(state, torch_unet_of(onnx_unet))
    return state.latents


def submit(engine, prepare, **kwargs):
    sink = RecordingSink()
    engine.submit(EditRequest(request_id="test", prepare=prepare, sink=sink, **kwargs))
    return sink


def run_all(engine, prepares, timeout_s: float = 60) -> list:
    """Submit every edit at once, wait for all to end, close the engine; the edits' sinks."""
    try:
        sinks = [submit(engine, prepare) for prepare in prepares]
        for sink in sinks:
            assert sink.ended.wait(timeout_s)
    finally:
        engine.close()
    return sinks


MIXED = [
    dict(size=(40, 24), sampler="ddim", steps=4),
    dict(size=(40, 24), sampler="euler", steps=6, guidance=1.0),  # one row: no guidance
    dict(size=(40, 24), sampler="dpmpp_2m", steps=5, strength=0.6, guidance=5.0),
    dict(size=(32, 32), sampler="heun", steps=3),
    dict(size=(32, 32), sampler="euler_ancestral", steps=7, seed=11),
    dict(size=(48, 32), sampler="unipc", steps=4, prompt="a lamp"),
]


class AllPrepared:
    """Holds every UNet call until each of the edits has been prepared, so that they all join while the
    first is still at its first step, however slowly the prepare threads run: which edits share a step
    then follows from the engine's rules, not from the machine's speed."""

    def __init__(self, prepares):
        self._left, self._lock, self.done = len(prepares), threading.Lock(), threading.Event()
        self.prepares = [self._counted(prepare) for prepare in prepares]

    def _counted(self, prepare):
        def counted():
            state = prepare()
            with self._lock:
                self._left -= 1
                if not self._left:
                    self.done.set()
            return state
        return counted

    def gate(self, unet):
        def gated(inputs):
            assert self.done.wait(60), "the edits were never all prepared"  # a guard against a hang only
            return unet(inputs)
        return gated


def assert_batched_equal_alone(cases: list, prepares: list, unet, max_unet_rows: int) -> None:
    """Each edit (``cases``: what names it in a failure) run alone on ``unet`` (numpy in and out, recording its
    calls' rows in ``unet.calls``), then all of them together in one engine: each ends with the same latents, bit
    for bit, and rows of several edits did share calls."""
    alone = [run_alone(prepare, unet) for prepare in prepares]
    prepared = AllPrepared(prepares)
    engine = DenoiseEngine(prepared.gate(unet), EngineLimits(max_active_edits=8, max_queued_edits=0,
                                                             max_unet_rows=max_unet_rows))
    unet.calls.clear()
    sinks = run_all(engine, prepared.prepares)
    for case, sink, reference in zip(cases, sinks, alone):
        assert sink.outcome == "finished", (case, sink.events)
        assert torch.equal(sink.state.latents, reference), case  # bit for bit, whatever shared the calls
    assert max(unet.calls) > 2  # rows of several edits did share UNet calls


def test_edits_batched_together_equal_the_same_edits_alone(make_edit, onnx_unet):
    assert_batched_equal_alone(MIXED, [make_edit(**params) for params in MIXED], onnx_unet, max_unet_rows=6)
    assert max(onnx_unet.calls) <= 6  # ... never more than the UNet's max rows


class LaneWatch(EngineMetrics):
    """What the engine's worker did, in its own order: each edit's rows going out (``model_input``), its
    answer coming back (``advance``), and each lane's step ending (``stepped``). Two lanes were in flight
    together when, as one lane's step ended, rows of another were still out. That is an order of events
    the engine makes, whatever the machine's speed; a UNet that sleeps and counts the calls on it at
    once measures the machine as much as the engine (on a loaded one the other lane's call may not have
    arrived before the first returned)."""

    def __init__(self):
        self._out: set[int] = set()  # ids of the states whose rows are out
        self.overlaps = 0  # lane steps that ended while another lane's rows were out

    def watched(self, prepare):
        def watched_prepare():
            state = prepare()
            model_input, advance = state.model_input, state.advance

            def sent():
                self._out.add(id(state))
                return model_input()

            def received(noise_pred):
                self._out.discard(id(state))
                advance(noise_pred)

            state.model_input, state.advance = sent, received
            return state
        return watched_prepare

    def stepped(self, edits):
        if self._out:
            self.overlaps += 1


def test_two_lanes_split_the_edits_into_calls_in_flight_together_and_change_no_result(make_edit, onnx_unet):
    prepares = [make_edit(**params) for params in MIXED]
    alone = [run_alone(prepare, onnx_unet) for prepare in prepares]
    watch = LaneWatch()
    # One prepare thread: the edits become ready, and so are given their lanes, in MIXED's order.
    prepared = AllPrepared([watch.watched(prepare) for prepare in prepares])
    limits = EngineLimits(max_active_edits=8, max_queued_edits=0, max_unet_rows=64, unet_lanes=2)
    engine = DenoiseEngine(prepared.gate(onnx_unet), limits, metrics=watch, prepare_workers=1,
                           costs=PinnedCosts(a_s=0.0, b_s=0.01, host_s_per_edit=0.02),  # two lanes hide half
                           plans=NoRecord())
    onnx_unet.calls.clear()
    sinks = run_all(engine, prepared.prepares)
    for params, sink, reference in zip(MIXED, sinks, alone):
        assert sink.outcome == "finished", (params, sink.events)
        assert torch.equal(sink.state.latents, reference), params
    assert watch.overlaps > 0  # one lane's step ended while the other lane's call was out
    rows_of_all = sum(2 if params.get("guidance", 7.5) > 1 else 1 for params in MIXED[:3])
    assert max(onnx_unet.calls) < rows_of_all  # the 40x24 edits were split between the lanes


class PinnedCosts(CostEstimates):
    """Costs that measuring does not change: they force the planner's choice."""

    def __init__(self, a_s: float, b_s: float, host_s_per_edit: float):
        super().__init__(max_rows=64)
        fit = CostFit(a=a_s, b=b_s, calls=0)
        self._pinned = SimpleNamespace(fit=lambda: fit, observe=lambda rows, seconds: None)
        self.host = SimpleNamespace(per_edit_step=host_s_per_edit, observe=lambda edits, seconds: None)

    def unet(self, latent_size):
        return self._pinned


class NoRecord(PlanRecord):
    """A record of plans in which every plan delivered alike: the cost model's choice always stands."""

    def correction(self, lanes, now, predict):
        return 1.0


@pytest.mark.parametrize("costs, lane_min_rows, two_lanes", [
    (dict(a_s=0.050, b_s=0.001, host_s_per_edit=0.001), 0, False),  # the call's fixed cost dominates
    (dict(a_s=0.0, b_s=0.005, host_s_per_edit=0.010), 0, True),  # host work as long as the calls: hide it
    (dict(a_s=0.0, b_s=0.005, host_s_per_edit=0.010), 100, False),  # the operator's fixed rule: 100 rows a lane
    (dict(a_s=0.050, b_s=0.001, host_s_per_edit=0.001), 2, True),  # ... 2 rows a lane
])
def test_a_second_lane_opens_when_the_costs_call_for_it_and_results_do_not_change(make_edit, onnx_unet, costs,
                                                                                   lane_min_rows, two_lanes):
    prepares = [make_edit(steps=8, seed=seed) for seed in (1, 2, 3)]  # 2 rows each
    alone = [run_alone(prepare, onnx_unet) for prepare in prepares]
    watch = LaneWatch()
    prepared = AllPrepared([watch.watched(prepare) for prepare in prepares])
    limits = EngineLimits(max_active_edits=4, max_queued_edits=0, max_unet_rows=16, unet_lanes=2,
                          lane_min_rows=lane_min_rows)
    engine = DenoiseEngine(prepared.gate(onnx_unet), limits, metrics=watch, costs=PinnedCosts(**costs),
                           plans=NoRecord())
    sinks = run_all(engine, prepared.prepares, timeout_s=60)
    assert all(sink.outcome == "finished" for sink in sinks)
    assert (watch.overlaps > 0) == two_lanes, watch.overlaps
    for sink, reference in zip(sinks, alone):  # whatever plan ran them
        assert torch.equal(sink.state.latents, reference)


def test_edits_move_between_lanes_when_the_plan_changes_and_results_do_not(make_edit, onnx_unet):
    """No edit joins after the first step: the second lane can only fill by moving edits into it, and
    it must, once the costs call for it; later the costs call for one lane again and it empties."""
    prepares = [make_edit(steps=12, seed=seed) for seed in (1, 2, 3, 4)]
    alone = [run_alone(prepare, onnx_unet) for prepare in prepares]
    costs = PinnedCosts(a_s=0.050, b_s=0.001, host_s_per_edit=0.001)  # one lane to start with
    calls = []

    def unet(inputs):
        calls.append(inputs["sample"].shape[0])
        if len(calls) == 3:  # the host's work turns out to be what the calls cost: two lanes pay
            costs._pinned = SimpleNamespace(fit=lambda: CostFit(a=0.0, b=0.005, calls=0), observe=lambda *_: None)
            costs.host = SimpleNamespace(per_edit_step=0.010, observe=lambda *_: None)
        if len(calls) == 14:  # and back
            costs._pinned = SimpleNamespace(fit=lambda: CostFit(a=0.050, b=0.001, calls=0), observe=lambda *_: None)
            costs.host = SimpleNamespace(per_edit_step=0.001, observe=lambda *_: None)
        return onnx_unet(inputs)

    prepared = AllPrepared(prepares)
    limits = EngineLimits(max_active_edits=4, max_queued_edits=0, max_unet_rows=16, unet_lanes=2)
    engine = DenoiseEngine(prepared.gate(unet), limits, costs=costs, plans=NoRecord())
    sinks = run_all(engine, prepared.prepares, timeout_s=60)
    assert all(sink.outcome == "finished" for sink in sinks)
    # The first edit's first step went alone (the others joined at its second); then one lane: every edit's
    # rows in one call; then two lanes of two edits each; then one lane again for the last steps.
    assert calls[1:3] == [8, 8], calls
    assert calls[4:13].count(4) >= 6, calls
    assert 8 in calls[14:], calls  # (once the lanes in flight at the change are back)
    for sink, reference in zip(sinks, alone):
        assert torch.equal(sink.state.latents, reference)


def test_the_engine_measures_its_calls_and_its_own_work(make_edit, onnx_unet):
    engine = DenoiseEngine(onnx_unet, EngineLimits(max_active_edits=4, max_queued_edits=0, max_unet_rows=16))
    try:
        sinks = [submit(engine, make_edit(steps=6, seed=seed)) for seed in (1, 2)]
        assert all(sink.ended.wait(60) and sink.outcome == "finished" for sink in sinks)
    finally:
        engine.close()
    fits = engine.costs.fits()
    assert len(fits) == 1 and next(iter(fits.values())).calls >= 6  # one latent size, every call measured
    assert 0 < next(iter(fits.values())).seconds(4) < 5.0
    assert engine.costs.host.per_edit_step > 0


def test_a_new_edit_joins_at_the_next_step_without_waiting(make_edit, onnx_unet):
    # The long edit waits at its 4th step until the short one is prepared: however slow the machine,
    # the short edit is ready to join with 37 of the long one's steps still to run.
    short_ready, calls = threading.Event(), []

    def unet(inputs):
        calls.append(inputs["sample"].shape[0])
        if len(calls) > 3:
            assert short_ready.wait(60), "the short edit was never prepared"  # a guard against a hang only
        return onnx_unet(inputs)

    prepare_short = make_edit(steps=2, seed=3)

    def short_prepare():
        state = prepare_short()
        short_ready.set()
        return state

    engine = DenoiseEngine(unet, EngineLimits(max_active_edits=4, max_queued_edits=0, max_unet_rows=8))
    try:
        long = submit(engine, make_edit(steps=40), preview_every=0)
        while len(long.events) < 3:
            time.sleep(0.01)
        short = submit(engine, short_prepare)
        assert short.ended.wait(30) and short.outcome == "finished"
        assert not long.ended.is_set()  # the short edit finished while the long one was still running
        assert long.ended.wait(60) and long.outcome == "finished"
    finally:
        engine.close()


def test_admission_refuses_past_active_plus_queued_at_once(make_edit):
    release = threading.Event()

    def blocked_unet(inputs):
        release.wait(120)  # set below; the timeout is only a guard against a hang
        sample = inputs["sample"]
        return np.zeros((sample.shape[0], 4) + sample.shape[2:], dtype=np.float32)

    engine = DenoiseEngine(blocked_unet, EngineLimits(max_active_edits=1, max_queued_edits=1, max_unet_rows=4))
    try:
        admitted = [submit(engine, make_edit(steps=2)), submit(engine, make_edit(steps=2, seed=8))]
        refused, later = make_edit(steps=2, seed=9), make_edit(steps=1)
        with pytest.raises(AtCapacity, match="server at capacity: .*limits 1 \\+ 1"):
            submit(engine, refused)
        # Refused without waiting for a slot: none could free before `release`, and none did. (Events, not a
        # time bound: a loaded 2-core machine once took 1 s to build an edit.)
        assert not any(sink.ended.is_set() for sink in admitted)
        release.set()
        for sink in admitted:
            assert sink.ended.wait(30) and sink.outcome == "finished"
        assert engine.load() == (0, 0)
        again = submit(engine, later)
        assert again.ended.wait(30) and again.outcome == "finished", again.events  # capacity came back
        assert engine.load() == (0, 0)
    finally:
        release.set()
        engine.close()


def test_a_reserved_place_is_counted_claimed_by_its_edit_released_or_lapses(make_edit, onnx_unet):
    engine = DenoiseEngine(onnx_unet, EngineLimits(max_active_edits=1, max_queued_edits=1, max_unet_rows=4))
    try:
        engine.reserve("a")
        engine.reserve("b")
        assert engine.load() == (0, 2)
        with pytest.raises(AtCapacity, match="server at capacity"):
            engine.reserve("c")  # both places are kept for edits on their way
        with pytest.raises(AtCapacity):
            submit(engine, make_edit(steps=2))  # ... so an edit without one is refused too
        engine.release("b")
        claimed = submit(engine, make_edit(steps=2), reservation="a")  # takes its own place, no new check
        assert claimed.ended.wait(30) and claimed.outcome == "finished"
        engine.reserve("d", ttl_s=0.05)
        engine.reserve("e")
        time.sleep(0.1)
        engine.reserve("f")  # "d" lapsed: its edit never came
        assert engine.load() == (0, 2)
    finally:
        engine.close()


def test_a_request_of_several_images_reserves_a_place_for_each_and_its_variations_claim_them(make_edit, onnx_unet):
    engine = DenoiseEngine(onnx_unet, EngineLimits(max_active_edits=2, max_queued_edits=2, max_unet_rows=4))
    try:
        with pytest.raises(TooManyImages, match="5 images at once are more than .* ever holds \\(4\\)"):
            engine.reserve("too many", places=5)
        engine.reserve("three", places=3)
        assert engine.load() == (0, 3)
        with pytest.raises(AtCapacity):
            engine.reserve("two", places=2)  # 3 + 2 > 4
        engine.reserve("one")
        first = submit(engine, make_edit(steps=1), reservation="three")
        assert first.ended.wait(30) and engine.load() == (0, 3)  # two of "three" and "one" still kept
        engine.release("three")  # the request's other variations will not come
        assert engine.load() == (0, 1)
    finally:
        engine.close()


def test_an_edit_past_its_deadline_stops_within_a_step_and_frees_its_rows(make_edit, onnx_unet):
    slow = lambda inputs: (time.sleep(0.02), onnx_unet(inputs))[1]  # noqa: E731
    engine = DenoiseEngine(slow, EngineLimits(max_active_edits=4, max_queued_edits=0, max_unet_rows=8))
    try:
        abandoned = submit(engine, make_edit(steps=200), deadline=time.time() + 0.3, preview_every=0)
        cancelled_flag = threading.Event()
        cancelled = submit(engine, make_edit(steps=200, seed=5), cancelled=cancelled_flag.is_set, preview_every=0)
        kept = submit(engine, make_edit(steps=30, seed=6))
        assert abandoned.ended.wait(5) and abandoned.outcome == "cancelled"
        assert "deadline" in abandoned.events[-1][1]
        cancelled_flag.set()
        steps_when_cancelled = len(cancelled.events)
        assert cancelled.ended.wait(5) and cancelled.outcome == "cancelled"
        assert len(cancelled.events) - 1 <= steps_when_cancelled + 1  # at most one more step ran
        assert kept.ended.wait(30) and kept.outcome == "finished"
        assert len(abandoned.events) - 1 < 200
        assert engine.load() == (0, 0)
    finally:
        engine.close()


def test_one_failing_edit_fails_alone(make_edit, onnx_unet):
    def broken():
        raise ValueError("no such thing")

    def breaks_at_step_two():
        state = make_edit(steps=5)()
        advance = state.advance

        def advance_then_break(noise_pred):
            if state.step_index == 2:
                raise RuntimeError("sampler exploded")
            advance(noise_pred)
        state.advance = advance_then_break
        return state

    engine = DenoiseEngine(onnx_unet, EngineLimits(max_active_edits=4, max_queued_edits=2, max_unet_rows=8))
    try:
        good = submit(engine, make_edit(steps=5, seed=2))
        bad_start = submit(engine, broken)
        bad_step = submit(engine, breaks_at_step_two)
        for sink in (good, bad_start, bad_step):
            assert sink.ended.wait(30)
    finally:
        engine.close()
    assert good.outcome == "finished"
    assert bad_start.events == [("failed", "could not start denoising: no such thing")]
    assert bad_step.outcome == "failed" and "step 2 failed: sampler exploded" in bad_step.events[-1][1]


def test_a_drain_timeout_stops_every_edit_within_a_step_and_says_why(make_edit, onnx_unet):
    shutdown = []
    slow = lambda inputs: (time.sleep(0.02), onnx_unet(inputs))[1]  # noqa: E731  (400 steps: 8 s at least)
    engine = DenoiseEngine(slow, EngineLimits(max_active_edits=1, max_queued_edits=1, max_unet_rows=8),
                           shutdown_reason=lambda: shutdown[0] if shutdown else None)
    states = []

    def prepare_and_keep():
        states.append(make_edit(steps=400)())
        return states[-1]

    try:
        running = submit(engine, prepare_and_keep, preview_every=0)
        while not running.events:
            time.sleep(0.01)
        waiting = submit(engine, make_edit(steps=400, seed=3))  # behind it (one active edit): never starts
        while engine.load() != (1, 1):
            time.sleep(0.01)
        shutdown.append("the server shut down before the edit finished")
        steps_then = states[0].step_index  # the engine's own count (progress events may lag behind it)
        for sink in (running, waiting):
            assert sink.ended.wait(5) and sink.outcome == "cancelled"
            assert sink.events[-1][1].endswith("the server shut down before the edit finished")
            assert sink.reasons == ["shutting_down"]
        assert states[0].step_index <= steps_then + 1  # at most one more step
        assert engine.load() == (0, 0)
    finally:
        engine.close()


def test_a_unet_call_interrupted_by_a_dead_process_is_answered_as_retryable(make_edit, onnx_unet):
    from smartedit.errors import ModelProcessDied

    calls = []

    def dies_on_third_call(inputs):
        calls.append(inputs["sample"].shape[0])
        if len(calls) == 3:
            raise ModelProcessDied("unet")
        return onnx_unet(inputs)

    engine = DenoiseEngine(dies_on_third_call, EngineLimits(max_active_edits=2, max_queued_edits=0, max_unet_rows=8))
    try:
        caught = submit(engine, make_edit(steps=5))
        assert caught.ended.wait(30)
        after = submit(engine, make_edit(steps=5, seed=4))  # the replaced UNet serves the next edit
        assert after.ended.wait(30)
    finally:
        engine.close()
    assert caught.outcome == "interrupted" and "unet model's process died" in caught.events[-1][1]
    assert caught.reasons == ["model_process_died"]
    assert after.outcome == "finished"


def test_progress_after_every_step_and_previews_at_their_cadence(make_edit, onnx_unet):
    engine = DenoiseEngine(onnx_unet, EngineLimits(max_active_edits=2, max_queued_edits=0, max_unet_rows=4))
    try:
        sink = submit(engine, make_edit(steps=5), preview_every=2)
        assert sink.ended.wait(30)
    finally:
        engine.close()
    progress = [e for e in sink.events if e[0] == "progress"]
    assert [(step, total) for _, step, total, _ in progress] == [(s, 5) for s in range(1, 6)]
    assert [step for _, step, _, preview in progress if preview] == [2, 4, 5]  # every 2nd, and the last
    assert sink.events[-1] == ("finished",)


def test_limits_are_checked():
    with pytest.raises(ValueError, match="unet_lanes must be between 1 and 4, got 0"):
        EngineLimits(max_active_edits=1, max_queued_edits=0, max_unet_rows=2, unet_lanes=0)
    with pytest.raises(ValueError, match="max_unet_rows must be >= 2"):
        EngineLimits(max_active_edits=1, max_queued_edits=0, max_unet_rows=1)
    with pytest.raises(ValueError, match="max_active_edits must be >= 1"):
        EngineLimits(max_active_edits=0, max_queued_edits=0, max_unet_rows=2)
