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
    # Consistency samplers, for latent-consistency (LCM) and trajectory-consistency (TCD) distilled weights: a
    # distilled checkpoint or a base model with an LCM-/TCD-LoRA fused at export. 4-8 steps at guidance 1-2.
    "lcm": "LCMScheduler",
    "tcd": "TCDScheduler",
}
DEFAULT_SAMPLER = "ddim"
# The samplers that suit only consistency-distilled weights (on other weights their few steps give a blur),
# and that such weights need (the others take 20+ steps to what they give in 4).
FEW_STEP_SAMPLERS = frozenset({"lcm", "tcd"})
# The samplers whose step takes ``eta`` (the others would ignore it, as diffusers' pipelines do silently):
# DDIM's eta, and TCD's gamma (its stochasticity: 0 is deterministic, 0.3 what TCD's authors suggest).
SAMPLERS_WITH_ETA = frozenset({"ddim", "tcd"})
# What a scheduler's step output calls its estimate of the clean latents: DDIM, Euler and Heun's
# ``pred_original_sample``, LCM's ``denoised``. (TCD's second output, ``pred_noised_sample``, is not one; DPM-Solver,
# PNDM and UniPC give none.)
_CLEAN_ESTIMATE_FIELDS = ("pred_original_sample", "denoised")


def clean_estimate(step_output):
    """The clean-latents estimate in a scheduler's ``step`` output (``return_dict=True``), or None."""
    for name in _CLEAN_ESTIMATE_FIELDS:
        value = getattr(step_output, name, None)
        if value is not None:
            return value
    return None


def suited_samplers(scheduler_class: str) -> list[str]:
    """The samplers that suit weights exported with the scheduler ``scheduler_class`` (the class name in the
    model's scheduler config): the consistency samplers for distilled weights, the weights' own first; every
    other one otherwise."""
    few_step = [name for name in sorted(FEW_STEP_SAMPLERS) if SAMPLERS[name] == scheduler_class]
    if few_step:
        return few_step + [name for name in sorted(FEW_STEP_SAMPLERS) if name not in few_step]
    return [name for name in SAMPLERS if name not in FEW_STEP_SAMPLERS]


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
