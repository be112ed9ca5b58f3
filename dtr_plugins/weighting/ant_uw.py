"""``ant_uw``: ANT's uncertainty weighting over uniform timestep clusters (Go et al., 2023)."""
from __future__ import annotations

from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from dtr_plugins.core.errors import ConfigError
from dtr_plugins.core.hookspecs import hookimpl
from dtr_plugins.core.plugins import parse_params
from dtr_plugins.core.timesteps import ClusterBalancedTimesteps, cluster_edges
from dtr_plugins.weighting.base import LossWeighting


class AntUWParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    k: int = Field(8, ge=1, description="number of uniform timestep clusters (DTR uses 8, ANT 5)")
    lr: float = Field(0.025, gt=0, description="learning rate of the log-variances (own group, no weight decay)")


class AntUW(LossWeighting):
    """Uncertainty weighting of ``k`` timestep clusters with learnable log-variances ``s`` (init 0).

    Timesteps: it needs :class:`~dtr_plugins.core.timesteps.ClusterBalancedTimesteps` (the batch split into
    ``k`` consecutive chunks, chunk ``i`` drawn uniformly from cluster ``i``; at least ``k`` samples).
    Loss: ``sum_i 0.5 * (exp(-s_i) * L_i + s_i)``, ``L_i`` the mean per-sample loss (mse + vb) of
    cluster ``i`` divided by ``k``. Samples are grouped by the cluster their ``t`` falls in (the same as
    the chunks of that sampler); a cluster with no sample adds nothing.
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

    def timestep_sampler(self, num_timesteps: int) -> ClusterBalancedTimesteps:
        """The cluster-balanced sampler over this weighting's ``k`` clusters (ConfigError when ``T < k``)."""
        return ClusterBalancedTimesteps(num_timesteps, self.k, who="ant_uw")

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
