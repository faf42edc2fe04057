"""Checkpoints of an edit's loop, and continuing an edit from one (``checkpoint_every``, ``resume_state``).

A checkpoint is everything the loop carries that its family's ``start`` does not make again from the
edit's record: the step, the latents, the sampler's state and the random generator's. Resuming starts
the edit as its family starts it (the same record, photo and mask give the same conditioning, prompt
rows and kept latents) and puts those back, so that the steps left run exactly as they would have.

With an edited checkpoint image, the latents move by the painter's change, in latent space and at the
step's noise level: ``z_t + sqrt(alpha_bar_t) * (E(edited) - E(checkpoint))`` for the samplers of the
DDPM schedule, what the sampler's own ``add_noise`` gives with no noise (``z_t + delta`` for the
sigma-space samplers, Euler and Heun). The noise already in ``z_t`` is kept, not drawn anew.

What a sampler carries between steps differs from one to another (DPM-Solver's and UniPC's past
outputs, PNDM's ``ets``, Heun's half step, the step index of most): the checkpoint holds every
attribute of the scheduler whose value is a number, a tensor or a list of those. On the way back each
is checked against the same attribute of the freshly started scheduler (it must exist there; a tensor
keeps its shape and dtype, or has the latents' shape or none), so a state sent back cannot reach
anything but its own edit's sampler.
"""

from __future__ import annotations

from typing import Any

import torch

from smartedit.diffusion.denoise import DenoiseState
from smartedit.diffusion.resume_state import ResumeState, ResumeStateError

LATENTS, CLEAN, GENERATOR = "latents", "clean_latents", "generator"
_SCALARS = (bool, int, float, type(None))
MAX_LIST = 1024  # a sampler's history (PNDM keeps every step's output): at most a step count's worth


def checkpoint(state: DenoiseState) -> ResumeState:
    """The loop's state after its last step, as copies (the loop goes on): the tensors and the header's
    ``step``, ``total_steps`` and ``scheduler``; the caller adds the rest of the header."""
    tensors = {LATENTS: state.latents.clone(), CLEAN: state.clean_latents().clone(),
               GENERATOR: state.generator.get_state()}
    scheduler = {}
    for name, value in vars(state.scheduler).items():
        encoded = _encode(f"scheduler.{name}", value, tensors)
        if encoded is not None:
            scheduler[name] = encoded
    return ResumeState(header={"step": state.step_index, "total_steps": state.total_steps, "scheduler": scheduler},
                       tensors=tensors)


def _encode(name: str, value: Any, tensors: dict, nested: bool = False) -> dict | None:
    """A scheduler attribute as the header holds it; None for a kind that is no step's state (configs,
    the numpy copies of a schedule)."""
    if isinstance(value, _SCALARS):
        return {"value": value}
    if isinstance(value, torch.Tensor):
        tensors[name] = value.detach().clone()
        return {"tensor": name}
    if isinstance(value, list) and not nested:
        items = [_encode(f"{name}.{index}", item, tensors, nested=True) for index, item in enumerate(value)]
        return None if any(item is None for item in items) else {"list": items}
    return None


def resume(state: DenoiseState, saved: ResumeState, delta: torch.Tensor | None = None) -> DenoiseState:
    """Put ``saved``'s step back into ``state``, the same edit freshly started; with ``delta``
    (``E(edited) - E(checkpoint)``, scaled latents), move its latents by the painter's change.

    Raises:
        ResumeStateError: the state does not fit this edit (its step, its tensors' shapes or types).
    """
    step, total = saved.value("step", int), saved.value("total_steps", int)
    if total != state.total_steps:
        raise ResumeStateError(f"was saved from an edit of {total} steps; this one runs {state.total_steps}")
    if not 0 < step < total:
        raise ResumeStateError(f"its step {step} is not one a checkpoint is taken at (1 to {total - 1})")
    latents = _like(saved.tensor(LATENTS), state.latents, LATENTS)
    clean = _like(saved.tensor(CLEAN), state.latents, CLEAN)
    generator = saved.tensor(GENERATOR)
    try:
        state.generator.set_state(generator)
    except (RuntimeError, TypeError) as error:
        raise ResumeStateError(f"its generator state cannot be restored: {error}") from None
    scheduler = saved.value("scheduler", dict)
    fresh = vars(state.scheduler)
    for name, encoded in scheduler.items():
        # An attribute its first step sets (UniPC's this_order) is not there yet: a plain name, never the
        # class's (a method, a property).
        if name not in fresh and (not name.isidentifier() or name.startswith("__")
                                  or hasattr(type(state.scheduler), name)):
            raise ResumeStateError(f"holds the sampler's {name!r}, which the edit's sampler "
                                   f"({type(state.scheduler).__name__}) cannot take")
        setattr(state.scheduler, name, _decode(name, encoded, fresh.get(name), saved, state.latents))
    state.step_index = step
    state.latents = latents
    state.pred_original = clean
    state.last_prediction = None
    if delta is not None:
        delta = _like(delta, state.latents, "resume_delta")
        t = state.timesteps[step:step + 1]
        state.latents = latents + state.scheduler.add_noise(delta, torch.zeros_like(delta), t)
    return state


def _like(tensor: torch.Tensor, reference: torch.Tensor, name: str) -> torch.Tensor:
    if tensor.shape != reference.shape or tensor.dtype != reference.dtype:
        raise ResumeStateError(f"its {name} are {tuple(tensor.shape)} {tensor.dtype}; this edit's are "
                               f"{tuple(reference.shape)} {reference.dtype} (another photo, mask or size?)")
    return tensor


def _decode(name: str, encoded: Any, fresh: Any, saved: ResumeState, latents: torch.Tensor) -> Any:
    """One sampler attribute back, checked against the fresh sampler's value of it (a number or None may
    become a tensor: PNDM's ``cur_model_output`` starts as 0)."""
    if not isinstance(encoded, dict) or len(encoded) != 1:
        raise ResumeStateError(f"its sampler's {name!r} is malformed")
    (kind, value), = encoded.items()
    if kind == "value" and isinstance(value, _SCALARS) and (value is None or isinstance(fresh, _SCALARS)):
        return value
    if kind == "tensor" and isinstance(value, str) and isinstance(fresh, (torch.Tensor, *_SCALARS)):
        return _checked_tensor(name, saved.tensor(value), fresh, latents)
    if kind == "list" and isinstance(value, list) and isinstance(fresh, list) and len(value) <= MAX_LIST:
        items = []
        for item in value:
            if not isinstance(item, dict) or len(item) != 1 or "list" in item:
                raise ResumeStateError(f"its sampler's {name!r} holds a malformed item")
            items.append(_decode(name, item, None, saved, latents))
        return items
    raise ResumeStateError(f"its sampler's {name!r} is not of the kind the edit's sampler holds there")


def _checked_tensor(name: str, tensor: torch.Tensor, fresh: torch.Tensor | None, latents: torch.Tensor):
    if isinstance(fresh, torch.Tensor):
        if tensor.shape == fresh.shape and tensor.dtype == fresh.dtype:
            return tensor
    elif tensor.shape in (latents.shape, torch.Size([])):  # a step's latents or output, a timestep, a step size
        return tensor
    raise ResumeStateError(f"its sampler's {name!r} is a {tuple(tensor.shape)} {tensor.dtype} tensor, not of the "
                           f"shape the edit's sampler holds there")
