"""The Gaussian process behind the ``gaussian`` plugin, and the config-time checks of any process.

The contract (:class:`~dtr_plugins.core.contracts.DiffusionProcess`) lives in :mod:`dtr_plugins.core.contracts`.

A process decides how training times are drawn, what the model is trained on, how it samples, and
what a routing task is: an index into the ``T`` rows of each mask table (``gaussian``) or a continuous
noise level ``u`` in [0, 1] (``flow_matching``, see :mod:`dtr_plugins.core.continuous_routing`).
"""
from __future__ import annotations

from typing import Any

from torch import Tensor

from dtr_plugins.core.contracts import DiffusionProcess, SupportsSolverOptions
from dtr_plugins.core.diffusion import GaussianDiffusion, get_named_beta_schedule, space_timesteps
from dtr_plugins.core.errors import ConfigError
from dtr_plugins.core.sampling_settings import SolverSettings
from dtr_plugins.core.timesteps import UniformTimesteps


class GaussianProcess(GaussianDiffusion):
    """guided-diffusion's Gaussian process (:class:`GaussianDiffusion`, unchanged) under the process contract:
    integer timesteps (uniform unless the loss weighting needs another sampler), tasks are timestep indices."""

    samplers = ("ddpm", "ddim")
    default_sampler = "ddim"
    default_respacing = "ddim50"
    #: what ``sample`` applies without settings: the same defaults a config gets (one place)
    default_solver = SolverSettings(default_sampler, default_respacing, clip_denoised=True)
    loss_weightings = None  # any
    heldout_time = "discrete"  # held-out loss over bands of integer timesteps, of the epsilon MSE
    heldout_target = "epsilon"

    def __init__(self, steps: int = 1000, schedule: str = "linear", learn_sigma: bool = True):
        super().__init__(get_named_beta_schedule(schedule, steps), learn_sigma=learn_sigma)

    def check_sample_settings(self, sampler: str, respacing: Any) -> None:
        """ConfigError unless ``sampler`` is ``ddpm`` or ``ddim`` and ``respacing`` fits the ``T`` steps."""
        if sampler == "dopri5":
            raise ConfigError("sample.sampler: 'dopri5' (adaptive ODE) is a flow_matching sampler; the gaussian "
                              f"process has no probability-flow ODE solver (allowed: {', '.join(self.samplers)})")
        if sampler not in self.samplers:
            raise ConfigError(f"sample.sampler: {sampler!r} is not a gaussian sampler "
                              f"(allowed: {', '.join(self.samplers)})")
        try:
            space_timesteps(self.num_timesteps, respacing)
        except ConfigError as exc:
            raise ConfigError(f"sample.respacing: {exc} (diffusion.steps is {self.num_timesteps})") from None

    def check_solver_options(self, solver: SolverSettings) -> None:
        """SupportsSolverOptions: a guidance interval is over ``sigma_t`` (any ``0 <= lo < hi``); the time shift is
        a flow-matching setting (ConfigError unless 1)."""
        if solver.time_shift != 1.0:
            raise ConfigError(f"sample.time_shift: {solver.time_shift:g} shifts flow_matching's time grid; the "
                              "gaussian process needs 1.0 (its steps come from sample.respacing)")

    def timestep_sampler(self) -> UniformTimesteps:
        """Integer timesteps uniform over ``0..T-1`` (a loss weighting may ask for another sampler)."""
        return UniformTimesteps(self.num_timesteps)

    def loss_bucket(self, t: Tensor, buckets: int) -> Tensor:
        """``t * buckets // T`` (bucket 0: the cleanest timesteps)."""
        return (t * buckets // self.num_timesteps).clamp_(max=buckets - 1)

    def continuous_tasks(self, strategy: Any) -> None:
        return None  # tasks are the timestep indices themselves


def check_solver_options(process: DiffusionProcess, solver: SolverSettings) -> None:
    """The process's check of ``solver``'s guidance interval, time shift and tolerances
    (:class:`~dtr_plugins.core.contracts.SupportsSolverOptions`); a process without that check is refused any of
    them but the default. Raises a one-line :class:`ConfigError` (``sample.<key>: ...``)."""
    if isinstance(process, SupportsSolverOptions):
        process.check_solver_options(solver)
        return
    plain = SolverSettings(solver.sampler, solver.respacing)
    for key, value, default in (("guidance_interval", solver.guidance_interval, plain.guidance_interval),
                                ("time_shift", solver.time_shift, plain.time_shift)):
        if value != default:
            raise ConfigError(f"sample.{key}: {value!r} is not applied by this process (it does not check solver "
                              f"options: SupportsSolverOptions); leave it at {default!r}")


def check_process_settings(process: DiffusionProcess, name: str, *, loss_weighting: str, sampler: str,
                           respacing: Any, eta: float = 0.0, solver: SolverSettings | None = None) -> None:
    """Config-time checks of a process against the loss weighting and the sample settings (ConfigError);
    ``eta`` is a DDIM setting, refused (not ignored) for any other sampler; ``solver`` (guidance interval, time
    shift, tolerances): :func:`check_solver_options`."""
    allowed = process.loss_weightings
    if allowed is not None and loss_weighting not in allowed:
        raise ConfigError(f"loss_weighting.name: {loss_weighting!r} does not apply to diffusion {name!r} (it needs the "
                          f"discrete Gaussian schedule or integer timesteps); allowed: {', '.join(allowed)}")
    process.check_sample_settings(sampler, respacing)
    if eta and sampler != "ddim":
        raise ConfigError(f"sample.eta: {eta:g} is a DDIM setting; the {sampler!r} sampler of diffusion {name!r} "
                          "needs eta 0")
    if solver is not None:
        check_solver_options(process, solver)


__all__ = ["DiffusionProcess", "GaussianProcess", "check_process_settings", "check_solver_options"]
