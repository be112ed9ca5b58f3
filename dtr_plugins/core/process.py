"""The diffusion-process contract (the ``process`` plugin kind) and the Gaussian process behind it.

A process decides how training times are drawn, what the model is trained on, how it samples, and
what a routing task is: an index into the ``T`` rows of each mask table (``gaussian``) or a continuous
noise level ``u`` in [0, 1] (``flow_matching``, see :mod:`dtr_plugins.core.continuous_routing`).
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

from torch import Tensor

from dtr_plugins.core.diffusion import GaussianDiffusion, get_named_beta_schedule
from dtr_plugins.core.errors import ConfigError


@runtime_checkable
class DiffusionProcess(Protocol):
    """What training, sampling and evaluation use of a process."""

    num_timesteps: int  # T: rows of the routing tables (the grid over u for continuous processes)

    def training_times(self, weighting: Any, batch_size: int, device: Any = None) -> Tensor: ...

    def training_losses(self, model: Any, x_start: Tensor, t: Tensor, model_kwargs: Mapping[str, Any] | None = None,
                        noise: Tensor | None = None) -> dict[str, Tensor]: ...

    def sample(self, model: Any, shape: Any, **kwargs: Any) -> Tensor: ...

    def loss_bucket(self, t: Tensor, buckets: int) -> Tensor: ...

    def continuous_tasks(self, strategy: Any) -> Any: ...


class GaussianProcess(GaussianDiffusion):
    """guided-diffusion's Gaussian process (:class:`GaussianDiffusion`, unchanged) under the process contract:
    integer timesteps drawn by the loss weighting, tasks are timestep indices."""

    samplers = ("ddpm", "ddim")
    loss_weightings = None  # any
    learn_sigma = True  # the class default; each instance sets its own

    def __init__(self, steps: int = 1000, schedule: str = "linear", learn_sigma: bool = True):
        super().__init__(get_named_beta_schedule(schedule, steps), learn_sigma=learn_sigma)

    @classmethod
    def check_sample_settings(cls, sampler: str, respacing: Any) -> None:
        if sampler not in cls.samplers:
            raise ConfigError(f"sample.sampler: {sampler!r} is not a gaussian sampler "
                              f"(allowed: {', '.join(cls.samplers)})")

    def training_times(self, weighting: Any, batch_size: int, device: Any = None) -> Tensor:
        """``weighting.sample_timesteps(batch_size, T, device)``: int64 timesteps, as before."""
        times: Tensor = weighting.sample_timesteps(batch_size, self.num_timesteps, device)
        return times

    def loss_bucket(self, t: Tensor, buckets: int) -> Tensor:
        """``t * buckets // T`` (bucket 0: the cleanest timesteps)."""
        return (t * buckets // self.num_timesteps).clamp_(max=buckets - 1)

    def continuous_tasks(self, strategy: Any) -> None:
        return None  # tasks are the timestep indices themselves


def check_process_settings(process_cls: Any, name: str, *, loss_weighting: str, sampler: str, respacing: Any,
                           eta: float = 0.0) -> None:
    """Config-time checks of a process against the loss weighting and the sample settings (ConfigError);
    ``eta`` is a DDIM setting, refused (not ignored) for any other sampler."""
    allowed = process_cls.loss_weightings
    if allowed is not None and loss_weighting not in allowed:
        raise ConfigError(f"loss_weighting.name: {loss_weighting!r} does not apply to diffusion {name!r} (it needs the "
                          f"discrete Gaussian schedule or integer timesteps); allowed: {', '.join(allowed)}")
    process_cls.check_sample_settings(sampler, respacing)
    if eta and sampler != "ddim":
        raise ConfigError(f"sample.eta: {eta:g} is a DDIM setting; the {sampler!r} sampler of diffusion {name!r} "
                          "needs eta 0")
