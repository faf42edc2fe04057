"""The samplers a request may name, mapped to diffusers' scheduler classes.

Adding a sampler is one line here: the loop uses a scheduler only through ``set_timesteps`` /
``timesteps`` / ``scale_model_input`` / ``step`` / ``add_noise``, as diffusers' pipelines do.
Every scheduler is built ``from_config`` of the model's own scheduler config, so it keeps the
model's noise schedule (betas, timestep spacing, prediction type).
"""

from __future__ import annotations

import inspect
from typing import Any, Mapping

SAMPLERS: dict[str, str] = {
    "ddim": "DDIMScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_ancestral": "EulerAncestralDiscreteScheduler",
    "dpmpp_2m": "DPMSolverMultistepScheduler",
    "pndm": "PNDMScheduler",
    "unipc": "UniPCMultistepScheduler",
    "heun": "HeunDiscreteScheduler",
}
DEFAULT_SAMPLER = "ddim"
# The samplers whose step takes DDIM's eta (the others would ignore it, as diffusers' pipelines do silently).
SAMPLERS_WITH_ETA = frozenset({"ddim"})


def make_scheduler(name: str, scheduler_config: Mapping[str, Any]):
    """A fresh diffusers scheduler ``name`` (a key of ``SAMPLERS``) for one request."""
    import diffusers

    try:
        class_name = SAMPLERS[name]
    except KeyError:
        raise ValueError(f"unknown scheduler {name!r}; known: {', '.join(sorted(SAMPLERS))}") from None
    return getattr(diffusers, class_name).from_config(dict(scheduler_config))


def step_kwargs(scheduler, generator, eta: float = 0.0) -> dict[str, Any]:
    """The extra ``step`` arguments this scheduler takes, as diffusers' ``prepare_extra_step_kwargs``."""
    accepted = set(inspect.signature(scheduler.step).parameters)
    kwargs: dict[str, Any] = {}
    if "eta" in accepted:
        kwargs["eta"] = eta
    if "generator" in accepted:
        kwargs["generator"] = generator
    return kwargs
