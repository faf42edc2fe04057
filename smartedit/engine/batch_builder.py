"""The engine's batch builder: the only owner of the UNet calls' row layout.

Each call's rows are its edits' rows, in the planner's order (``smartedit.engine.planner``); a row holds
the edit's latents with its conditioning channels after them (``sample``), its timestep, its family's
named row inputs (``DenoiseState.row_inputs``: the prompt embeddings for SD) and its per-step ones
(``DenoiseState.step_inputs``: a controlled edit's conditioning scales), each an array of its own.
Arrays are kept from one step to the next so that an edit's constants are copied only when it joins or
moves.
"""

from __future__ import annotations

import numpy as np

from smartedit.diffusion.denoise import SAMPLE, TIMESTEP, DenoiseState


class UNetBatchBuilder:
    """The arrays each UNet call of an iteration is built in, kept from one iteration to the next.

    Of a row's inputs only the scaled latents and the timestep change from step to step; the
    conditioning channels and the family's named row inputs (the prompt embeddings, ...) are the edit's
    own constants. A row whose edit sat at the same place in the same call last iteration keeps them;
    only edits that moved (joined, or took a leaver's place) have theirs copied. That saves most of the
    memory traffic of a step: at SD 1.5 shapes the embeddings alone are 15 MB per 64 rows.

    An edit whose constants change mid-loop (a text edit, from inverting to denoising) holds them in new
    objects from then on: a row counts as held only while it holds the edit's current ones.
    """

    def __init__(self):
        self._calls: dict = {}  # key -> _CallArrays

    def inputs(self, key, chunk: list) -> dict[str, np.ndarray]:
        """The UNet's inputs of one call by name (``sample``, ``timestep`` and the edits' row inputs);
        ``chunk``: (edit, its ``model_input()``), every edit's state with the same named row inputs."""
        rows = sum(edit.rows for edit, _ in chunk)
        arrays = self._calls.get(key)
        if arrays is None or not arrays.fits(chunk[0][0].state, rows):
            arrays = self._calls[key] = _CallArrays(chunk[0][0].state, rows)
        offset = 0
        for edit, (scaled, t) in chunk:
            state = edit.state
            if not arrays.holds(edit, offset):
                arrays.place(edit, offset)
            arrays.sample[offset:offset + edit.rows, :state.latents.shape[1]] = scaled.numpy()
            arrays.timestep[offset:offset + edit.rows] = float(t)
            for name, value in _step_inputs(state).items():
                arrays.step_inputs[name][offset:offset + edit.rows] = value.numpy()
            offset += edit.rows
        arrays.forget_from(offset)
        return {SAMPLE: arrays.sample[:offset], TIMESTEP: arrays.timestep[:offset],
                **{name: array[:offset] for name, array in arrays.row_inputs.items()},
                **{name: array[:offset] for name, array in arrays.step_inputs.items()}}

    def keep_only(self, lane: int, keys) -> None:
        """Free the arrays of ``lane``'s calls that its last step did not make (a latent size it no
        longer has). Keys are ``(lane, latent size, chunk index)``."""
        for key in [key for key in self._calls if key[0] == lane and key not in keys]:
            del self._calls[key]


def _row_shapes(state: DenoiseState) -> dict[str, tuple]:
    return {name: (tuple(value.shape[1:]), value.dtype) for name, value in state.row_inputs.items()}


def _step_inputs(state: DenoiseState) -> dict:
    return {} if state.step_inputs is None else state.step_inputs(state)


def _step_shapes(state: DenoiseState) -> dict[str, tuple]:
    return {name: (tuple(value.shape[1:]), value.dtype) for name, value in _step_inputs(state).items()}


class _CallArrays:
    """One call's arrays, and which edit's row each row holds."""

    def __init__(self, state: DenoiseState, rows: int):
        # Room for twice the rows asked, so that a few joining edits do not force a new allocation.
        capacity = 2 * rows
        sample_shape = (state.latents.shape[1] + state.conditioning.shape[1],) + tuple(state.latents.shape[2:])
        self.sample = np.empty((capacity,) + sample_shape, dtype=np.float32)
        self.timestep = np.empty((capacity,), dtype=np.float32)
        self._row_shapes = _row_shapes(state)
        self.row_inputs = {name: np.empty((capacity,) + shape, dtype=value.numpy().dtype)
                           for (name, (shape, _)), value in zip(self._row_shapes.items(), state.row_inputs.values())}
        self._step_shapes = _step_shapes(state)
        self.step_inputs = {name: np.empty((capacity,) + value.shape[1:], dtype=value.numpy().dtype)
                            for name, value in _step_inputs(state).items()}
        # (the edit, its row inputs, its conditioning) whose constants row i holds
        self._owners: list = [None] * capacity

    def fits(self, state: DenoiseState, rows: int) -> bool:
        return (rows <= len(self._owners) and _row_shapes(state) == self._row_shapes
                and _step_shapes(state) == self._step_shapes
                and self.sample.shape[1] == state.latents.shape[1] + state.conditioning.shape[1])

    def holds(self, edit, offset: int) -> bool:
        state = edit.state
        return all(owner is not None and owner[0] is edit and owner[1] is state.row_inputs
                   and owner[2] is state.conditioning
                   for owner in self._owners[offset:offset + edit.rows])

    def place(self, edit, offset: int) -> None:
        state, stop = edit.state, offset + edit.rows
        self.sample[offset:stop, state.latents.shape[1]:] = state.conditioning.numpy()
        for name, value in state.row_inputs.items():
            self.row_inputs[name][offset:stop] = value.numpy()
        self._owners[offset:stop] = [(edit, state.row_inputs, state.conditioning)] * edit.rows

    def forget_from(self, offset: int) -> None:
        # Rows past this call's end hold no one: drop references to edits that have left.
        self._owners[offset:] = [None] * (len(self._owners) - offset)
