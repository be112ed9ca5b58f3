"""The checks of ``dtr sample``'s options before anything is loaded or sampled: each refusal is one line naming the
option (``--time-shift``) or the config key (``sample.time_shift``) the value came from, and what is allowed."""
from __future__ import annotations

import math
import os
from typing import Any

from dtr_plugins.core.errors import ConfigError, UserError
from dtr_plugins.core.sampling_settings import (
    SamplingOverrides,
    SamplingSettings,
    interval_problem,
    positive_problem,
)

__all__ = ["check_options", "check_sampling"]


def check_options(asked: SamplingOverrides, *, device: str | None) -> None:
    """The checks the config applies to ``sample.*`` / ``train.device``, for the values given as options
    (UserError / ConfigError, one line naming the option and what is allowed)."""
    from dtr_plugins.compose import check_device

    cfg_scale = asked.cfg_scale
    if cfg_scale is not None and (not math.isfinite(float(cfg_scale)) or float(cfg_scale) < 0):
        raise UserError(f"--cfg-scale: {cfg_scale} is not allowed; give a finite number >= 0 (1.0: no guidance)")
    for key, value in (("--num-samples", asked.num), ("--batch-size", asked.batch_size)):
        if value is not None and (isinstance(value, bool) or int(value) != value or value < 1):
            raise UserError(f"{key}: {value!r} is not allowed; give an integer of 1 or more")
    if asked.guidance_interval is not None:
        problem = interval_problem(asked.guidance_interval)
        if problem:
            raise UserError(f"--guidance-interval: {problem}")
    for key, number in (("--time-shift", asked.time_shift), ("--atol", asked.atol), ("--rtol", asked.rtol)):
        problem = None if number is None else positive_problem(number)
        if problem:
            raise UserError(f"{key}: {problem}")
    if device is not None:
        check_device(device, int(os.environ.get("LOCAL_RANK", "0")), key="--device")


def check_sampling(diffusion: Any, settings: SamplingSettings) -> None:
    """The process's own checks of the sampler, the respacing (step count), and the guidance interval, time shift
    and tolerances (:func:`dtr_plugins.core.process.check_solver_options`), as one ConfigError line naming the
    option (``--sampler``, ``--respacing``, ``--time-shift``...) or the config key the value came from."""
    from dtr_plugins.core.process import check_solver_options

    try:
        diffusion.check_sample_settings(settings.sampler, settings.respacing)
        check_solver_options(diffusion, settings.solver())
    except ConfigError as exc:
        text = str(exc)
        key, sep, rest = text.partition(": ")
        field = key.removeprefix("sample.")
        if not sep or not key.startswith("sample.") or not field.isidentifier():
            raise
        raise ConfigError(f"{settings.key(field)}: {rest}") from None
