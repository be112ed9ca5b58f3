"""The loss-weighting contract: per-sample terms -> scalar training loss.

The training engine calls, each step::

    t = sampler.sample(batch_size, device)   # core.timesteps.training_sampler(diffusion, weighting)
    terms = diffusion.training_losses(model, x, t, model_kwargs)   # {"loss", "mse", "vb"?}, each [N]
    loss = weighting(terms, t, diffusion)

A weighting never draws ``t``: ``timestep_sampler(T)`` names the sampler it needs (``ant_uw``), or None
for the process's own.

adds ``weighting.param_groups()`` to its optimizer, saves ``weighting.state_dict()`` in checkpoints
and logs ``weighting.log_values()``. A weighting is an ``nn.Module`` so learnable weights travel with
``.to(device)`` and ``state_dict``.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

if TYPE_CHECKING:
    from dtr_plugins.core.contracts import TimestepSampler
    from dtr_plugins.core.diffusion import GaussianDiffusion


class LossWeighting(torch.nn.Module):
    """Base class: the process's own timesteps, the plain mean of ``terms["loss"]``, no parameters,
    nothing to log."""

    def timestep_sampler(self, num_timesteps: int) -> TimestepSampler | None:
        """The sampler this weighting needs for a process of ``num_timesteps`` tasks; None (the default):
        the process's own (:func:`dtr_plugins.core.timesteps.training_sampler`)."""
        return None

    def forward(self, terms: dict[str, Tensor], t: Tensor, diffusion: GaussianDiffusion) -> Tensor:
        """The scalar training loss from per-sample ``terms`` at timesteps ``t``."""
        return terms["loss"].mean()

    def param_groups(self) -> list[dict]:
        """Extra optimizer parameter groups (learnable weights); none by default."""
        return []

    def log_values(self) -> dict[str, float]:
        """Numbers to log in metrics.jsonl; none by default."""
        return {}


class MSEWeighting(LossWeighting):
    """A fixed per-timestep weight ``w(t)`` on the epsilon MSE, the VB term unweighted:
    ``mean(w(t) * mse + vb)``.

    The VB term only trains the learned variance (its mean input is detached), so re-weighting it
    would change the variance objective without serving the weighting's purpose, which is to balance
    the denoising (mean) tasks; Min-SNR's and P2's reference code weight the MSE term alone.
    """

    def weight(self, t: Tensor, diffusion: GaussianDiffusion) -> Tensor:
        """Per-sample weights ``[N]`` for timesteps ``t``."""
        raise NotImplementedError

    def forward(self, terms: dict[str, Tensor], t: Tensor, diffusion: GaussianDiffusion) -> Tensor:
        if "mse" not in terms:  # a diffusion that only reports "loss": weight the whole of it
            return (self.weight(t, diffusion) * terms["loss"]).mean()
        per_sample = self.weight(t, diffusion).to(terms["mse"]) * terms["mse"]
        if "vb" in terms:
            per_sample = per_sample + terms["vb"]
        return per_sample.mean()
