"""``dydit_width``: learned width per timestep, DyDiT's timestep-wise dynamic width (TDW).

Zhao et al., "Dynamic Diffusion Transformer", ICLR 2025 (arXiv 2410.03456); read in the official code,
github.com/alibaba-damo-academy/DyDiT commit ``0ddc509``: ``DyDiT/dynamic_model.py`` (``Router``,
``_gumbel_sigmoid``), ``DyDiT/models.py`` (``DiTBlock``: the routers and the always-on first head / group),
``DyDiT/loss.py`` (``DynamicLoss``, ``FLOPS``) and ``DyDiT/train.py`` (loss weight, target warm-up).

Routing site ``heads_mlp`` of the ``dit`` backbone: per block ``b`` two routed layers, its ``H`` attention
heads and its MLP units. Per block a router on a timestep embedding ``e`` ``[N, D]`` decides which heads and
which MLP groups run:

    z      = Linear_b(e)                                         [N, K - 1]   (K: heads, or MLP groups)
    s      = sigmoid((z + g) / tau)   in training, g = G1 - G2 (two Gumbel(0, 1) draws: logistic noise)
           = sigmoid(z)               in eval mode
    m      = [1, 1{s > threshold} - sg(s) + s]                    [N, K]       (straight through; unit 0 always on)

so the first head and the first MLP group always run (upstream concatenates a column of ones in front of
each router's ``K - 1`` outputs); sg is stop-gradient. Router weights start as xavier (DiT's init), the bias
at ``bias_init`` (upstream 15: every unit on, the fine-tune starts as the dense model).

FLOPs-target loss (upstream ``DynamicLoss`` with the token selection off). With the per-block costs
``A = L (4 D^2 + 2 L D)`` (qkv, projection, the two attention matmuls) and ``B = 2 L D M`` (the two MLP
linears, ``M`` hidden channels) in multiply-adds for ``L`` tokens of width ``D`` (these reproduce upstream's
``FLOPS`` table: DiT-S/2, B/2, XL/2 at 256 tokens),

    r_n  = sum_b (mean(m_heads[n, b]) A + mean(m_mlp[n, b]) B) / (depth (A + B))
    loss = loss_weight * (mean_n r_n - target(s)) ** 2

``target(s)`` follows upstream's schedule over the training forwards ``s`` (a persistent counter, so a resume
continues it): 1 for ``s < full_width_steps``, then ``1 - (1 - target) s / warmup_steps`` while
``s <= warmup_steps``, then ``target`` (``warmup_steps`` 0: no ramp). Upstream: ``token_loss_ratio`` 2,
``warmup_step`` 1000, full width for the first 100 steps.

At sampling the decisions depend on the timestep alone: ``task_tables`` gives a 0/1 ``[T, units]`` table per
routed layer, and at a shared timestep the DiT runs only the active heads' and units' weight slices
(``RoutingPlan.learned_active_units``).

Deviations from upstream, and why:

- MLP granularity. ``mlp_groups: dydit`` (default) decides ``H`` groups of ``M / H`` channels as upstream;
  here each group is ``mlp_ratio`` consecutive units of the ``heads_mlp`` site (units are ``head_dim``
  channels, see ``backbones/dit.py``), which is the same set of channels. ``mlp_groups: units`` decides every
  unit (``mlp_ratio`` times finer than DyDiT; the first unit always on). The MLP cost ``B`` assumes units of
  ``head_dim = D / H`` channels, as ``dit`` has them whenever ``head_dim`` divides the MLP width.
- Router input. The routers read this strategy's own timestep embedding (sinusoid of ``freq_dim``
  frequencies, ``Linear, SiLU, Linear``), not the DiT's ``t_embedder`` output: a plugin never reaches into
  the backbone, and the decisions must not depend on the class. Loading a dense checkpoint without these
  keys (``train.init_from``, an official DiT file) copies ``t_embedder.mlp`` into it
  (:meth:`DyDiTWidth.adapt_state_dict`), so training starts with upstream's router input; upstream the width
  loss also trains the ``t_embedder``, here only the strategy's copy.
- Not part of this strategy: DyDiT's spatial-wise dynamic tokens (``TokenSelect``, a separate mechanism) and
  the extra loss of the complete (dense) model that upstream's first fine-tuning stage adds (a strategy
  cannot run a second, dense forward pass).
- Float tasks (flow matching, noise levels ``u`` in [0, 1]) are routed at timestep ``u (T - 1)``.
- The warm-up counts training forward passes (optimizer steps when ``train.grad_accum_steps`` is 1).
"""
from __future__ import annotations

import math
import typing
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from dtr_plugins.core.checkpoint import LEARNED_PREFIX, RouterInitWarning
from dtr_plugins.core.errors import ConfigError
from dtr_plugins.core.hookspecs import hookimpl
from dtr_plugins.core.plugins import parse_params

#: the name of the FLOPs-target loss in ``pop_aux_losses`` (and so ``aux/dydit_flops`` in metrics.jsonl)
AUX_LOSS = "dydit_flops"
SITE = "heads_mlp"


class DyDiTWidthParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    target: float = Field(0.5, gt=0, le=1, description="FLOPs target: mean active share of the blocks' "
                          "multiply-adds (upstream token_ratio, 0.5 or 0.7 in its scripts)")
    loss_weight: float = Field(2.0, ge=0, description="weight of the FLOPs-target loss (upstream token_loss_ratio 2)")
    tau: float = Field(5.0, gt=0, description="Gumbel-sigmoid temperature in training (upstream 5)")
    threshold: float = Field(0.5, gt=0, lt=1, description="a unit runs where its sigmoid exceeds this (upstream 0.5)")
    bias_init: float = Field(15.0, description="initial router bias (upstream 15: every unit on)")
    warmup_steps: int = Field(1000, ge=0, description="training forwards of the linear target ramp from 1 "
                              "(upstream warmup_step 1000); 0: the target from the start")
    full_width_steps: int = Field(100, ge=0, description="training forwards with target 1 first (upstream 100)")
    mlp_groups: Literal["dydit", "units"] = Field("dydit", description="dydit: num_heads MLP groups as upstream; "
                                                  "units: one decision per heads_mlp MLP unit (head_dim channels)")
    freq_dim: int = Field(256, ge=2, description="sinusoid frequencies of the router's timestep embedding")
    embed_dim: int | None = Field(None, ge=1, description="router embedding width; null: the backbone's "
                                  "conditioning width (upstream: the DiT's hidden size)")
    gate_lr: float | None = Field(None, gt=0, description="learning rate of the routers; null: train.lr")
    gate_weight_decay: float = Field(0.0, ge=0, description="weight decay of the routers")


# ----------------------------------------------------------------------------------------- the math
def logistic_noise(like: Tensor) -> Tensor:
    """``G1 - G2`` for two independent Gumbel(0, 1) draws per entry (upstream draws ``-log(Exp(1))`` twice)."""
    draws = torch.empty((2, *like.shape), dtype=like.dtype, device=like.device).exponential_()
    return draws[1].log() - draws[0].log()


def gumbel_sigmoid_gate(logits: Tensor, noise: Tensor | None, tau: float, threshold: float) -> Tensor:
    """Hard 0/1 decisions ``[..., K]`` with the straight-through gradient of the soft values.

    ``noise`` (training; logistic, see :func:`logistic_noise`): ``s = sigmoid((logits + noise) / tau)``;
    None (eval): ``s = sigmoid(logits)``. Returns ``1{s > threshold} - sg(s) + s`` (upstream ``_gumbel_sigmoid``
    with ``hard=True``)."""
    soft = torch.sigmoid((logits + noise) / tau) if noise is not None else torch.sigmoid(logits)
    hard = (soft > threshold).to(soft.dtype)
    return hard - soft.detach() + soft


def block_costs(tokens: int, dim: int, mlp_hidden: int) -> tuple[float, float]:
    """Multiply-adds of one DiT block's attention and MLP (``mlp_hidden`` channels) for ``tokens`` tokens of
    width ``dim``: ``(L (4 D^2 + 2 L D), 2 L D M)`` (upstream ``FLOPS``, there in units of 1e9)."""
    return float(tokens * (4 * dim * dim + 2 * tokens * dim)), float(2 * tokens * dim * mlp_hidden)


def width_ratio(head_masks: Tensor, mlp_masks: Tensor, attn_cost: float, mlp_cost: float) -> Tensor:
    """Active share of the blocks' multiply-adds per sample ``[N]``: masks ``[N, depth, K]`` (heads, MLP
    groups; any 0/1 or straight-through values), costs from :func:`block_costs`."""
    depth = head_masks.shape[1]
    used = head_masks.mean(-1) * attn_cost + mlp_masks.mean(-1) * mlp_cost      # [N, depth]
    return used.sum(-1) / (depth * (attn_cost + mlp_cost))


def width_loss(ratio: Tensor, target: float, weight: float) -> Tensor:
    """``weight * (mean(ratio) - target) ** 2`` (upstream ``DynamicLoss`` without token selection)."""
    return weight * (ratio.mean() - target) ** 2


def target_at(forwards: int, target: float, warmup_steps: int, full_width_steps: int) -> float:
    """Upstream's schedule of the FLOPs target over training forwards (see the module docstring)."""
    if forwards < full_width_steps:
        return 1.0
    if warmup_steps > 0 and forwards <= warmup_steps:
        return 1.0 - (1.0 - target) * forwards / warmup_steps
    return target


def sinusoid(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """``[N]`` (fractional) timesteps -> ``[N, dim]`` ``[cos, sin]`` features (the DiT's ``timestep_embedding``)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    return F.pad(torch.cat([torch.cos(args), torch.sin(args)], dim=-1), (0, dim % 2))


# ------------------------------------------------------------------------------------ the module
class DyDiTWidth(nn.Module):
    """The ``dydit_width`` strategy (see the module docstring): per block a head router and an MLP router
    on the strategy's timestep embedding; a submodule of the model (``routing.learned.*``)."""

    learned_routing: typing.ClassVar[bool] = True

    forwards: Tensor  # [] int64: training forwards scored so far (persistent; drives the target schedule)

    def __init__(self, **params: Any):
        super().__init__()
        self.params = parse_params(DyDiTWidthParams, params, "dydit_width")
        self.num_tasks = 0
        self.heads: list[int] = []
        self.groups: list[int] = []
        self.units: list[int] = []
        self.embed_in = nn.Linear(1, 1)  # replaced by bind()
        self.embed_out = nn.Linear(1, 1)
        self.head_routers = nn.ModuleList()
        self.mlp_routers = nn.ModuleList()
        self._masks: dict[int, Tensor] = {}  # routed layer -> [N, K] decisions of the training forward in progress
        self._losses: list[Tensor] = []

    def bind(self, layer_units: Sequence[int], num_tasks: int, *, site: str, cond_dim: int | None) -> None:
        """Routers for the ``heads_mlp`` site's layers (heads, MLP units per block); ConfigError elsewhere."""
        if site != SITE:
            raise ConfigError(f"routing.site: {site!r} is not supported by dydit_width, which routes attention heads "
                              f"and MLP groups (allowed: {SITE})")
        width = self.params.embed_dim or cond_dim
        if width is None:
            raise ConfigError("routing.embed_dim: the backbone gives no conditioning width; set embed_dim")
        self.num_tasks = int(num_tasks)
        self.heads, self.units = [int(u) for u in layer_units[0::2]], [int(u) for u in layer_units[1::2]]
        if self.params.mlp_groups == "dydit":
            bad = [b for b, (h, u) in enumerate(zip(self.heads, self.units)) if u % h]
            if bad:
                raise ConfigError(f"routing.mlp_groups: dydit needs the MLP units to split into num_heads groups "
                                  f"(block {bad[0]}: {self.units[bad[0]]} units, {self.heads[bad[0]]} heads); "
                                  f"allowed: units")
            self.groups = list(self.heads)
        else:
            self.groups = list(self.units)
        self.embed_in = nn.Linear(self.params.freq_dim, width)
        self.embed_out = nn.Linear(width, width)
        for lin in (self.embed_in, self.embed_out):  # as DiT's t_embedder: N(0, 0.02) weights, zero bias
            nn.init.normal_(lin.weight, std=0.02)
            nn.init.zeros_(lin.bias)
        self.head_routers = nn.ModuleList(self._router(width, h) for h in self.heads)
        self.mlp_routers = nn.ModuleList(self._router(width, g) for g in self.groups)
        self.register_buffer("forwards", torch.zeros((), dtype=torch.int64), persistent=True)

    def _router(self, width: int, count: int) -> nn.Linear:
        router = nn.Linear(width, count - 1)  # unit 0 is always on
        if count > 1:
            nn.init.xavier_uniform_(router.weight)  # upstream: DiT's _basic_init, then the bias constant
        nn.init.constant_(router.bias, self.params.bias_init)
        return router

    # ---- the forward pass
    def embedding(self, tasks: Tensor) -> Tensor:
        """The routers' timestep embedding ``[N, D]``; float tasks (noise levels ``u``) at timestep ``u (T - 1)``."""
        steps = tasks * (self.num_tasks - 1) if tasks.is_floating_point() else tasks.float()
        freq = sinusoid(steps, self.params.freq_dim).to(self.embed_in.weight.dtype)
        return typing.cast(Tensor, self.embed_out(F.silu(self.embed_in(freq))))

    def decisions(self, layer: int, embedding: Tensor, noise: Tensor | None) -> Tensor:
        """Routed layer ``layer``'s unit-0-first decisions ``[N, K]`` (heads or MLP groups) from ``embedding``;
        ``noise`` ``[N, K - 1]`` in training, None in eval (see :func:`gumbel_sigmoid_gate`)."""
        block, is_mlp = divmod(layer, 2)
        router = (self.mlp_routers if is_mlp else self.head_routers)[block]
        gate = gumbel_sigmoid_gate(router(embedding), noise, self.params.tau, self.params.threshold)
        return torch.cat([torch.ones_like(gate[:, :1]), gate], dim=1)

    def expand(self, layer: int, decisions: Tensor) -> Tensor:
        """Decisions ``[N, K]`` -> one gate per routed unit ``[N, units]`` (DyDiT's groups: each repeated)."""
        block, is_mlp = divmod(layer, 2)
        if not is_mlp or self.groups[block] == self.units[block]:
            return decisions
        return decisions.repeat_interleave(self.units[block] // self.groups[block], dim=1)

    def layer_gate(self, layer: int, x: Tensor, tasks: Tensor, cond: Tensor | None = None) -> Tensor:
        """Gate rows ``[N, units]`` of routed layer ``layer`` (even: heads, odd: MLP units of block
        ``layer // 2``) at tasks ``[N]``; ``x`` (block input ``[N, L, D]``) gives the costs of the loss."""
        e = self.embedding(tasks)
        logits_shape = (e.shape[0], (self.groups if layer % 2 else self.heads)[layer // 2] - 1)
        noise = logistic_noise(e.new_empty(logits_shape)) if self.training else None
        decided = self.decisions(layer, e, noise)
        if self.training and torch.is_grad_enabled():
            self._masks[layer] = decided
            if layer == 2 * len(self.heads) - 1:
                self._record_loss(x)
        return self.expand(layer, decided).to(x.dtype)

    def _record_loss(self, x: Tensor) -> None:
        masks, self._masks = self._masks, {}
        depth = len(self.heads)
        if sorted(masks) != list(range(2 * depth)):  # a forward that skipped layers: nothing to score
            return
        dim = x.shape[-1]
        attn, mlp = block_costs(x.shape[1], dim, self.units[0] * dim // self.heads[0])
        ratio = width_ratio(torch.stack([masks[2 * b] for b in range(depth)], 1),
                            torch.stack([masks[2 * b + 1] for b in range(depth)], 1), attn, mlp)
        p = self.params
        goal = target_at(int(self.forwards), p.target, p.warmup_steps, p.full_width_steps)
        self.forwards.add_(1)
        self._losses.append(width_loss(ratio, goal, p.loss_weight))

    # ---- what the engine reads
    def pop_aux_losses(self) -> dict[str, Tensor]:
        """``{"dydit_flops": weighted FLOPs-target loss}`` averaged over the training forwards since the last
        call (empty when there were none)."""
        losses, self._losses = self._losses, []
        self._masks = {}
        return {AUX_LOSS: torch.stack(losses).mean()} if losses else {}

    def param_groups(self) -> list[dict[str, Any]]:
        """One optimizer group with the routers and their embedding (``gate_lr``, ``gate_weight_decay``)."""
        group: dict[str, Any] = {"params": [p for p in self.parameters() if p.requires_grad],
                                 "weight_decay": self.params.gate_weight_decay}
        if self.params.gate_lr is not None:
            group["lr"] = self.params.gate_lr
        return [group]

    @torch.no_grad()
    def task_tables(self, num_tasks: int) -> list[Tensor] | None:
        """Eval-mode decisions at every timestep: one float 0/1 ``[num_tasks, units]`` table per routed layer."""
        e = self.embedding(torch.arange(num_tasks, device=self.embed_in.weight.device))
        return [self.expand(layer, self.decisions(layer, e, None)).float() for layer in range(2 * len(self.heads))]

    def adapt_state_dict(self, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """A dense checkpoint (no ``routing.learned.*`` keys, with the DiT's ``t_embedder.mlp``): the router
        embedding starts as a copy of ``t_embedder.mlp.{0,2}`` and the routers keep their initialisation (a
        :class:`RouterInitWarning` names them). Any other state dict is returned unchanged."""
        own = self.state_dict()
        source = {"embed_in": "t_embedder.mlp.0", "embed_out": "t_embedder.mlp.2"}
        copies = {f"{ours}.{n}": state.get(f"{theirs}.{n}")
                  for ours, theirs in source.items() for n in ("weight", "bias")}
        if any(k.startswith(LEARNED_PREFIX) for k in state) or any(
                v is None or tuple(v.shape) != tuple(own[k].shape) for k, v in copies.items()):
            return dict(state)
        out = dict(state)
        for key, value in own.items():
            found = copies.get(key)
            out[LEARNED_PREFIX + key] = (found if found is not None else value).detach().clone()
        kept = [LEARNED_PREFIX + k for k in own if k not in copies]
        warnings.warn(f"a dense checkpoint: dydit_width's router embedding starts as a copy of t_embedder.mlp; "
                      f"{len(kept)} keys keep their initialisation ({kept[0]}, ...)", RouterInitWarning, stacklevel=2)
        return out

    def __repr__(self) -> str:
        p = self.params
        return (f"dydit_width(target={p.target:g}, w={p.loss_weight:g}, tau={p.tau:g}, mlp_groups={p.mlp_groups}, "
                f"warmup={p.warmup_steps})")


@hookimpl
def dtr_register_strategies(register):
    register("dydit_width", DyDiTWidth, params=DyDiTWidthParams,
             description="DyDiT timestep-wise dynamic width: per-block routers pick attention heads and MLP "
                         "groups per timestep, a FLOPs-target loss (learned; routing.site heads_mlp)")
