"""``ant_uw``: ANT's uncertainty weighting over uniform timestep clusters (Go et al., 2023)."""
from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from dtr_plugins.core.errors import ConfigError
from dtr_plugins.core.hookspecs import hookimpl
from dtr_plugins.core.plugins import parse_params
from dtr_plugins.weighting.base import LossWeighting


class AntUWParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    k: int = Field(8, ge=1, description="number of uniform timestep clusters (DTR uses 8, ANT 5)")
    lr: float = Field(0.025, gt=0, description="learning rate of the log-variances (own group, no weight decay)")


def cluster_edges(num_timesteps: int, k: int) -> list[int]:
    """Boundaries of ``k`` contiguous near-equal timestep intervals: cluster i is ``[e[i], e[i+1])``."""
    return [(i * num_timesteps) // k for i in range(k + 1)]


class AntUW(LossWeighting):
    """Uncertainty weighting of ``k`` timestep clusters with learnable log-variances ``s`` (init 0).

    Timesteps: the batch is split into ``k`` consecutive chunks, chunk ``i`` drawing uniformly from
    cluster ``i``. If ``k`` does not divide the batch, the first ``batch % k`` chunks get one sample
    more; the batch must hold at least ``k`` samples.
    Loss: ``sum_i 0.5 * (exp(-s_i) * L_i + s_i)``, ``L_i`` the mean per-sample loss (mse + vb) of
    cluster ``i`` divided by ``k``. Samples are grouped by the cluster their ``t`` falls in (the same as
    the chunks for timesteps from :meth:`sample_timesteps`); a cluster with no sample adds nothing.
    Effective weight of cluster ``i``: ``0.5 * exp(-s_i)``.
    """

    def __init__(self, **params: Any):
        """``k``, ``lr``: see the params model (their defaults live there)."""
        super().__init__()
        p = parse_params(AntUWParams, params, "ant_uw")
        k, lr = p.k, p.lr
        if k < 1:
            raise ConfigError(f"ant_uw: k must be >= 1 (got {k})")
        self.k = int(k)
        self.lr = float(lr)
        self.log_vars = torch.nn.Parameter(torch.zeros(self.k))

    def sample_timesteps(self, batch_size: int, num_timesteps: int, device: torch.device | str | None = None) -> Tensor:
        if batch_size < self.k:
            raise ConfigError(f"ant_uw: batch of {batch_size} per step cannot cover k={self.k} timestep clusters; "
                              f"use a batch of at least {self.k} (a multiple of {self.k} keeps clusters equal)")
        if num_timesteps < self.k:
            raise ConfigError(f"ant_uw: k={self.k} clusters need at least {self.k} timesteps (got {num_timesteps})")
        edges = torch.tensor(cluster_edges(num_timesteps, self.k), device=device)
        sizes = [batch_size // self.k + (1 if i < batch_size % self.k else 0) for i in range(self.k)]
        cluster = torch.repeat_interleave(torch.arange(self.k, device=device),
                                          torch.tensor(sizes, device=device))
        low, width = edges[cluster], (edges[1:] - edges[:-1])[cluster]
        # one uniform draw per sample from the global generator, floored into its cluster
        u = torch.rand(batch_size, device=device)
        return low + torch.minimum((u * width).long(), width - 1)

    def clusters_of(self, t: Tensor, num_timesteps: int) -> Tensor:
        """Cluster index of each timestep."""
        edges = torch.tensor(cluster_edges(num_timesteps, self.k)[1:-1], device=t.device)
        return torch.bucketize(t, edges, right=True)

    def forward(self, terms: dict[str, Tensor], t: Tensor, diffusion) -> Tensor:
        loss = terms["loss"]
        cluster = self.clusters_of(t, diffusion.num_timesteps)
        one_hot = torch.nn.functional.one_hot(cluster, self.k).to(loss.dtype)  # [N, k]
        count = one_hot.sum(0)
        present = count > 0
        chunk_mean = (one_hot * loss[:, None]).sum(0) / count.clamp(min=1)
        s = self.log_vars.to(loss.dtype)
        per_cluster = 0.5 * (torch.exp(-s) * chunk_mean / self.k + s)
        return (per_cluster * present).sum()

    def param_groups(self) -> list[dict]:
        return [{"params": [self.log_vars], "lr": self.lr, "weight_decay": 0.0}]

    def effective_weights(self) -> Tensor:
        """``0.5 * exp(-s_i)`` per cluster."""
        return 0.5 * torch.exp(-self.log_vars.detach())

    def log_values(self) -> dict[str, float]:
        return {f"uw_weight_{i}": float(w) for i, w in enumerate(self.effective_weights().cpu().tolist())}

    def extra_repr(self) -> str:
        return f"k={self.k}, lr={self.lr:g}"


@hookimpl
def dtr_register_loss_weightings(register):
    register("ant_uw", AntUW, params=AntUWParams,
             description="ANT-UW: stratified timestep clusters with learned uncertainty weights (Go et al. 2023)")
