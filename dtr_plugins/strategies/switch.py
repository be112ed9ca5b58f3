"""``switch``: Switch-DiT-style learned routing (Park et al. 2024, "Switch Diffusion Transformer:
Synergizing Denoising Tasks with Sparse Mixture-of-Experts", arXiv 2403.09176).

Per routed layer ``l`` (width ``C``) a timestep-conditioned router picks experts and gates the block input
token by token; the block computes the routed residual ``x + F(g * x)``:

    e      = MLP(sinusoid(t))                                   [N, D]   (the strategy's own embedding)
    p      = softmax(Linear_l(SiLU(e)))                         [N, E]   expert probabilities
    G      = p on the top-k experts of each row, 0 elsewhere    [N, E]   (not renormalised, as upstream)
    out    = sum_e G[:, e] * (x @ W_e + b_e)                    [N, L, C] (per-token linear experts)
    g      = 1 + out

``W_e`` and ``b_e`` start at zero, so ``g == 1`` exactly and a new ``switch`` model computes the plain
model's output bit for bit. Upstream: ``models/MoE.py`` (``TaskMoE``), ``models/DiT/models.py``
(``DiffusionPrior``, ``create_mask_tasks``), ``util/model_util.py`` (``bipartite_matching``) of
github.com/byeongjun-park/Switch-DiT; defaults from its ``config/routing/DMoE.yaml`` (E = 3, k = 2,
w_JSD = 1) and ``config/base_config.yaml``.

Diffusion prior (the auxiliary loss). Over the ``U = depth * E`` units (layer, expert) a DTR window
(``alpha``; ``n = depth * k`` active units per timestep, i.e. ``beta = k / E``) says which units each
timestep should use. The routers' selections at every timestep (the 0/1 top-k table ``S [T, U]``) are
matched to the window's columns by a minimum-cost bipartite assignment with cost
``sum_t |S[t, i] - W[t, j]|`` (scipy's ``linear_sum_assignment``); the loss of a batch is

    w_jsd * mean_n JSD( p_n / depth , W[t_n, match] / n )

with ``p_n`` the concatenated probabilities of all layers (``[U]``, each layer sums to 1) and
``JSD(a, b) = (KL(a || m) + KL(b || m)) / 2``, ``m = (a + b) / 2``, logarithms taken of ``x + 1e-6`` as
upstream.

Deviations from upstream, and why:

- The router reads this strategy's own timestep embedding (a sinusoid of ``freq_dim`` frequencies, then
  ``Linear, SiLU, Linear`` to ``embed_dim``; ``embed_dim`` null: the backbone's conditioning width) instead
  of the DiT's ``t_embedder``: a plugin never reaches into the backbone, and the routing must not depend on
  the class label (a per-timestep table is what the prior and the pictures read). Upstream the prior's
  gradient therefore also trains the DiT's timestep embedder; here it trains only the router.
- The matching is refreshed every ``refresh_every`` training forwards (upstream: every forward; the
  default 1 keeps that) and stored in the persistent buffer ``matching`` so a resumed run continues with
  the same assignment. Ties in the assignment are broken by a random permutation of both sides as
  upstream, but drawn from a generator seeded with the refresh count, so runs are reproducible.
- The window's active count is ``depth * k`` computed in integers (upstream ``int(U * k / E)`` in floats,
  which can round down by one for some depths).
- Experts are computed densely (per-sample combined weights ``sum_e G[n, e] W_e``, then one batched
  matmul) instead of upstream's sparse CUDA kernel; the result is the same sum. The combined weights take
  ``N * C * C`` values per routed layer (kept for the backward pass): at DiT-XL width (C = 1152) about
  5.3 MB per sample and layer in fp32, so large batches of large models pay memory for it.
- Expert count and ``top_k`` are per strategy (every routed layer the same), as upstream's config.
- Feature maps (``[N, C, H, W]``, U-Net backbones) are gated per pixel over channels, like tokens.
- The router's softmax runs in the logits' dtype but never below float32 (:func:`expert_softmax`): float16
  and bfloat16 logits give float32 probabilities, which is what upstream gets under CUDA autocast (softmax
  is one of autocast's float32 operations); float64 stays float64. The probabilities, the prior loss and the
  top-k gate values are therefore float32 or wider; the gates are cast to the block input's dtype.
- Checkpoint layout. Upstream keys are ``routers.N.f_gate.1.{weight,bias}``, ``routers.N.experts.{w,b}``,
  the buffers ``prior._unit_mapping`` and ``full_time``, and the router reads the DiT's ``t_embedder``.
  Here the same tensors (same shapes, ``experts.w`` as ``[E, C_in, C_out]``) are
  ``routing.learned.layers.N.router.{weight,bias}``, ``...layers.N.expert_{weight,bias}``, the strategy's own
  ``routing.learned.embed_{in,out}`` (a copy of ``t_embedder.mlp.{0,2}``), and the persistent buffers
  ``matching`` and ``forwards``; the window is not stored. :func:`from_official_state_dict` converts an
  official state dict, and ``dtr_plugins.core.checkpoint.load_checkpoint`` applies it to files in the
  official layout (tested against the official code's output, prior loss and router gradients in
  ``tests/parity/test_switch_official.py``).
"""
from __future__ import annotations

import math
import re
import typing
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, model_validator
from scipy.optimize import linear_sum_assignment
from torch import Tensor, nn

from dtr_plugins.core.errors import ConfigError
from dtr_plugins.core.hookspecs import hookimpl
from dtr_plugins.core.plugins import parse_params

#: the name of the prior's loss in ``pop_aux_losses`` (and so in metrics.jsonl)
AUX_LOSS = "switch_jsd"
#: inside the logarithms of the JSD, as upstream's ``compute_JSD_loss``
JSD_EPS = 1e-6


class SwitchParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    num_experts: int = Field(3, ge=1, description="experts per routed layer (E; upstream DMoE.yaml: 3)")
    top_k: int = Field(2, ge=1, description="experts each timestep uses per layer (k <= E; upstream: 2)")
    jsd_weight: float = Field(1.0, ge=0, description="weight of the diffusion-prior JSD loss (upstream w_JSD: 1)")
    alpha: float = Field(4.0, gt=0, description="window speed exponent of the prior, as DTR's alpha")
    refresh_every: int = Field(1, ge=1, description="training forwards between bipartite matchings (upstream: 1)")
    freq_dim: int = Field(256, ge=2, description="sinusoid frequencies of the router's timestep embedding")
    embed_dim: int | None = Field(None, ge=1, description="router embedding width; null: the backbone's "
                                  "conditioning width (upstream shares the DiT's hidden size)")
    gate_lr: float | None = Field(None, gt=0, description="learning rate of the router and experts; null: train.lr")
    gate_weight_decay: float = Field(0.0, ge=0, description="weight decay of the router and experts")

    @model_validator(mode="after")
    def _k_within_e(self) -> SwitchParams:
        if self.top_k > self.num_experts:
            raise ValueError(f"top_k ({self.top_k}) must be at most num_experts ({self.num_experts})")
        return self


# ----------------------------------------------------------------------------------------- the math
def window_prior(num_units: int, active: int, num_tasks: int, alpha: float) -> Tensor:
    """The diffusion prior's window ``float32 [T, U]``: row ``t`` has ones on units
    ``[s_t, s_t + active)``, ``s_t = round((t / (T - 1)) ** alpha * (U - active))`` (float64, half-to-even;
    upstream ``create_mask_tasks``, the DTR window over ``U = depth * E`` units)."""
    if not 1 <= active <= num_units:
        raise ValueError(f"active units {active} outside 1..{num_units}")
    starts = np.round(np.linspace(0, 1, num_tasks) ** alpha * (num_units - active)).astype(np.int64)
    cols = torch.arange(num_units)[None, :]
    start = torch.from_numpy(starts)[:, None]
    return ((cols >= start) & (cols < start + active)).float()


def expert_softmax(logits: Tensor) -> Tensor:
    """Softmax over the last dim of router logits ``[..., E]``, computed in float32 or wider: float16 and
    bfloat16 logits give float32 probabilities (as upstream's softmax under CUDA autocast, which runs it in
    float32), float32 and float64 keep their dtype."""
    return torch.softmax(logits, dim=-1, dtype=torch.promote_types(logits.dtype, torch.float32))


def top_k_gates(probs: Tensor, k: int) -> Tensor:
    """``[N, E]`` probabilities -> ``[N, E]`` with each row's ``k`` largest kept and the rest 0 (no
    renormalisation, as upstream ``TaskMoE.top_k_gating``)."""
    values, index = probs.topk(k, dim=-1)
    return torch.zeros_like(probs).scatter(-1, index, values)


def top_k_selection(probs: Tensor, k: int) -> Tensor:
    """``[T, E]`` probabilities -> the 0/1 table of each row's ``k`` selected experts (upstream
    ``probs_full_quantized``)."""
    return torch.zeros_like(probs).scatter(-1, probs.topk(k, dim=-1).indices, 1.0)


def match_units(selected: Tensor, window: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """Minimum-cost assignment of the gate units (columns of ``selected [T, U]``) to the window's columns
    (``window [T, U]``), cost ``sum_t |selected[t, i] - window[t, j]|``; returns ``int64 [U]``: gate unit
    ``i`` is paired with window column ``match[i]``. With a ``generator``, ties are broken by permuting both
    sides first (upstream ``DiffusionPrior.forward`` draws those permutations with ``torch.rand``)."""
    units = selected.shape[1]
    if generator is None:
        rows, cols = torch.arange(units), torch.arange(units)
    else:
        rows, cols = torch.randperm(units, generator=generator), torch.randperm(units, generator=generator)
    a, b = selected[:, rows].double().cpu(), window[:, cols].double().cpu()
    cost = (a[:, :, None] - b[:, None, :]).abs().sum(0)
    r, c = linear_sum_assignment(cost.numpy())
    match = torch.empty(units, dtype=torch.int64)
    match[rows[torch.as_tensor(r, dtype=torch.int64)]] = cols[torch.as_tensor(c, dtype=torch.int64)]
    return match


def js_divergence(a: Tensor, b: Tensor, eps: float = JSD_EPS) -> Tensor:
    """Mean over rows of ``(KL(a || m) + KL(b || m)) / 2``, ``m = (a + b) / 2``, logs of ``x + eps``;
    ``a``, ``b``: ``[N, U]`` distributions (upstream ``DiffusionPrior.compute_JSD_loss``)."""
    m = (a + b) / 2
    log_m = torch.log(m + eps)
    kl_a = (a * (torch.log(a + eps) - log_m)).sum(-1)
    kl_b = (b * (torch.log(b + eps) - log_m)).sum(-1)
    return ((kl_a + kl_b) / 2).mean()


def sinusoid(t: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """``[N]`` timesteps (may be fractional) -> ``[N, dim]`` ``[cos, sin]`` features (guided-diffusion's
    ``timestep_embedding``, as the DiT uses)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


def apply_experts(x: Tensor, gates: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """``sum_e gates[n, e] * (x_n @ weight[e] + bias[e])`` per token: ``x`` ``[N, L, C]`` (tokens) or
    ``[N, C, H, W]`` (feature maps, per pixel over channels); ``gates`` ``[N, E]``; ``weight`` ``[E, C, C]``
    (input, output), ``bias`` ``[E, C]``. Returns a tensor shaped like ``x``."""
    w = torch.einsum("ne,eio->nio", gates, weight)
    b = gates @ bias
    if x.dim() == 3:
        return torch.baddbmm(b[:, None, :], x, w)
    flat = x.flatten(2).transpose(1, 2)  # [N, HW, C]
    out = torch.baddbmm(b[:, None, :], flat, w)
    return out.transpose(1, 2).reshape(x.shape)


# ------------------------------------------------------------------------------------ the module
class SwitchLayer(nn.Module):
    """One routed layer's router (``SiLU, Linear(D, E)``) and ``E`` per-token linear experts ``C -> C``."""

    def __init__(self, embed_dim: int, channels: int, num_experts: int):
        super().__init__()
        self.router = nn.Linear(embed_dim, num_experts)
        self.expert_weight = nn.Parameter(torch.zeros(num_experts, channels, channels))
        self.expert_bias = nn.Parameter(torch.zeros(num_experts, channels))
        nn.init.xavier_uniform_(self.router.weight)  # upstream: DiT's _basic_init (xavier, zero bias)
        nn.init.zeros_(self.router.bias)

    def logits(self, embedding: Tensor) -> Tensor:
        """``Linear(SiLU(e))``: ``[N, D]`` -> ``[N, E]`` (upstream ``TaskMoE.f_gate``)."""
        return typing.cast(Tensor, self.router(F.silu(embedding)))


class SwitchRouting(nn.Module):
    """The ``switch`` strategy: a submodule of the model (router and experts are in its state_dict).

    ``bind`` builds the layers; ``layer_gate`` returns ``g = 1 + out`` shaped like the block input and, in
    training forwards (``self.training`` with gradients on), records the probabilities for the prior loss,
    which ``pop_aux_losses`` hands out. See the module docstring for the equations and deviations.
    """

    #: routing contract v2 (``LearnedRoutingStrategy``)
    learned_routing: typing.ClassVar[bool] = True

    window: Tensor  # [T, U] float 0/1, not persistent (follows from the config)
    matching: Tensor  # [U] int64: window column of each gate unit (persistent)
    forwards: Tensor  # [] int64: training forwards scored so far (persistent; drives refresh_every)

    @staticmethod
    def adapt_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Official Switch-DiT checkpoints load as they are (``SupportsStateDictAdapter``): a whole-model
        state dict with upstream router keys becomes this layout (:func:`from_official_state_dict`); any
        other is returned unchanged."""
        return from_official_state_dict(state) if is_official_switch_state_dict(state) else dict(state)

    def __init__(self, **params: Any):
        super().__init__()
        p = parse_params(SwitchParams, params, "switch")
        self.params = p
        self.num_experts, self.top_k = p.num_experts, p.top_k
        self.layer_units: list[int] = []
        self.num_tasks = 0
        self.layers = nn.ModuleList()
        self.embed_in = nn.Linear(1, 1)  # replaced by bind()
        self.embed_out = nn.Linear(1, 1)
        self._probs: dict[int, Tensor] = {}  # layer -> [N, E] of the training forward in progress
        self._losses: list[Tensor] = []

    # ---- building
    def bind(self, layer_units: list[int], num_tasks: int, *, site: str = "input", cond_dim: int | None = None) -> None:
        """Create the router and experts for routed layers of widths ``layer_units`` (forward order) and
        ``num_tasks`` timesteps. ``cond_dim``: the backbone's conditioning width (the default ``embed_dim``)."""
        if site != "input":
            raise ConfigError(f"routing.site: {site!r} is not supported by switch, which gates block inputs "
                              f"(allowed: input)")
        width = self.params.embed_dim or cond_dim
        if width is None:
            raise ConfigError("routing.embed_dim: the backbone gives no conditioning width; set embed_dim")
        self.layer_units = [int(c) for c in layer_units]
        self.num_tasks = int(num_tasks)
        self.site = site
        self.embed_in = nn.Linear(self.params.freq_dim, width)
        self.embed_out = nn.Linear(width, width)
        for lin in (self.embed_in, self.embed_out):  # as DiT's t_embedder: N(0, 0.02) weights, zero bias
            nn.init.normal_(lin.weight, std=0.02)
            nn.init.zeros_(lin.bias)
        self.layers = nn.ModuleList(SwitchLayer(width, c, self.num_experts) for c in self.layer_units)
        units = len(self.layer_units) * self.num_experts
        window = window_prior(units, len(self.layer_units) * self.top_k, self.num_tasks, self.params.alpha)
        self.register_buffer("window", window, persistent=False)  # follows from the config
        self.register_buffer("matching", torch.arange(units), persistent=True)
        self.register_buffer("forwards", torch.zeros((), dtype=torch.int64), persistent=True)

    # ---- the forward pass
    def _timesteps(self, tasks: Tensor) -> Tensor:
        """Timestep indices as floats (flow passes ``u`` in [0, 1]: mapped onto ``0..T-1``)."""
        return tasks * (self.num_tasks - 1) if tasks.is_floating_point() else tasks.float()

    def embedding(self, tasks: Tensor, dtype: torch.dtype) -> Tensor:
        """The router's timestep embedding ``[N, D]``: ``Linear(SiLU(Linear(sinusoid(t))))``."""
        freq = sinusoid(self._timesteps(tasks), self.params.freq_dim).to(dtype)
        return typing.cast(Tensor, self.embed_out(F.silu(self.embed_in(freq))))

    def layer(self, index: int) -> SwitchLayer:
        return typing.cast(SwitchLayer, self.layers[index])

    def probabilities(self, tasks: Tensor) -> Tensor:
        """Expert probabilities ``[N, depth, E]`` at timesteps ``tasks`` ``[N]`` (dtype: :func:`expert_softmax`)."""
        e = self.embedding(tasks, self.embed_in.weight.dtype)
        return torch.stack([expert_softmax(self.layer(i).logits(e)) for i in range(len(self.layers))], dim=1)

    def layer_gate(self, layer: int, x: Tensor, tasks: Tensor, cond: Tensor | None = None) -> Tensor:
        """``g = 1 + out`` ``[N, L, C]`` (or ``[N, C, H, W]``) for routed layer ``layer`` at timesteps
        ``tasks`` ``[N]``; ``cond`` is not read (the routing depends on the timestep only)."""
        mod = self.layer(layer)
        probs = expert_softmax(mod.logits(self.embedding(tasks, x.dtype)))
        if self.training and torch.is_grad_enabled():
            self._probs[layer] = probs
            if layer == len(self.layers) - 1:
                self._record_prior(tasks)
        gates = top_k_gates(probs, self.top_k).to(x.dtype)
        return 1 + apply_experts(x, gates, mod.expert_weight.to(x.dtype), mod.expert_bias.to(x.dtype))

    def _record_prior(self, tasks: Tensor) -> None:
        probs, self._probs = self._probs, {}
        if sorted(probs) != list(range(len(self.layers))):  # a forward that skipped layers: nothing to score
            return
        if int(self.forwards) % self.params.refresh_every == 0:
            self.refresh_matching()
        self.forwards.add_(1)
        joined = torch.cat([probs[i] for i in range(len(self.layers))], dim=1)  # [N, U], layer-major
        self._losses.append(self.params.jsd_weight * self.prior_loss(joined, tasks))

    def prior_loss(self, probs: Tensor, tasks: Tensor) -> Tensor:
        """Unweighted JSD ``[]`` between ``probs / depth`` (``[N, U]``, layers concatenated) and the matched
        window rows of ``tasks`` (normalised to sum 1)."""
        depth = len(self.layers)
        rows = self._rows(tasks)
        target = self.window.index_select(0, rows)[:, self.matching]
        target = target / target.sum(-1, keepdim=True)
        return js_divergence(probs / depth, target)

    def _rows(self, tasks: Tensor) -> Tensor:
        if tasks.is_floating_point():
            return torch.round(tasks.double().clamp(0, 1) * (self.num_tasks - 1)).long()
        return tasks.long()

    @torch.no_grad()
    def refresh_matching(self) -> None:
        """Re-assign gate units to window columns from the routers' current top-k table at every timestep."""
        probs = self.probabilities(torch.arange(self.num_tasks, device=self.window.device))
        selected = top_k_selection(probs, self.top_k).flatten(1)  # [T, U], layer-major like the window
        generator = torch.Generator().manual_seed(int(self.forwards))
        self.matching.copy_(match_units(selected, self.window, generator).to(self.matching.device))

    # ---- what the engine reads
    def pop_aux_losses(self) -> dict[str, Tensor]:
        """``{"switch_jsd": w_jsd * JSD}`` averaged over the training forwards since the last call (empty
        when there were none)."""
        losses, self._losses = self._losses, []
        self._probs = {}
        if not losses:
            return {}
        return {AUX_LOSS: torch.stack(losses).mean()}

    def param_groups(self) -> list[dict[str, Any]]:
        """One optimizer group with every router and expert parameter (``gate_lr``, ``gate_weight_decay``)."""
        group: dict[str, Any] = {"params": [p for p in self.parameters() if p.requires_grad],
                                 "weight_decay": self.params.gate_weight_decay}
        if self.params.gate_lr is not None:
            group["lr"] = self.params.gate_lr
        return [group]

    def task_tables(self, num_tasks: int) -> list[Tensor] | None:
        """None: the gate ``1 + out`` depends on the block input (per-token experts), not on the task alone."""
        return None

    @torch.no_grad()
    def gate_summary(self, num_tasks: int) -> tuple[list[Tensor], str, str]:
        """For pictures: per routed layer the expert selection probabilities ``float32 [num_tasks, E]`` at
        every timestep (the softmax before top-k), with the names of the unit and of the value."""
        probs = self.probabilities(torch.arange(num_tasks, device=self.window.device)).float()
        return [probs[:, i].cpu() for i in range(len(self.layers))], "expert", "selection probability"

    def __repr__(self) -> str:
        p = self.params
        return (f"switch(E={p.num_experts}, k={p.top_k}, w_jsd={p.jsd_weight:g}, alpha={p.alpha:g}, "
                f"refresh_every={p.refresh_every})")


# ------------------------------------------------------------------- official checkpoint layout
#: state-dict prefix of a learned strategy inside a routed backbone (``RoutedBackbone.routing.learned``)
PREFIX = "routing.learned."
_OFFICIAL_KEY = re.compile(r"^routers\.(\d+)\.(f_gate\.1\.weight|f_gate\.1\.bias|experts\.w|experts\.b)$")
_OFFICIAL_NAME = {"f_gate.1.weight": "router.weight", "f_gate.1.bias": "router.bias",
                  "experts.w": "expert_weight", "experts.b": "expert_bias"}
#: official buffers that follow from the config: the prior's window ``[T, U]`` and ``arange(T)``
_OFFICIAL_DROPPED = ("prior._unit_mapping", "full_time")


def is_official_switch_state_dict(state: Mapping[str, Tensor]) -> bool:
    """Whether ``state`` has the official Switch-DiT router keys (``routers.N.f_gate.1.weight``, ...)."""
    return any(_OFFICIAL_KEY.match(key) for key in state)


def from_official_state_dict(state: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """An official Switch-DiT (DMoE) DiT state dict in this project's layout (a ``dit`` backbone with a
    ``switch`` strategy); returns a new dict, ``state`` is not changed.

    - ``routers.N.f_gate.1.{weight,bias}`` -> ``routing.learned.layers.N.router.{weight,bias}`` (``[E, D]``,
      ``[E]``); ``routers.N.experts.{w,b}`` -> ``...layers.N.expert_weight`` ``[E, C, C]`` (input, output, the
      same layout) and ``...layers.N.expert_bias`` ``[E, C]``;
    - ``t_embedder.mlp.{0,2}.*`` is kept for the backbone and also copied to ``routing.learned.embed_{in,out}.*``
      (upstream routes on the DiT's own timestep embedding; here the strategy has its own copy);
    - ``prior._unit_mapping`` and ``full_time`` are dropped (the window follows from the config);
    - ``routing.learned.matching`` is set to ``arange(depth * E)`` and ``forwards`` to 0 (upstream keeps no
      matching: it is recomputed at every training forward, as here with ``refresh_every`` 1).

    Raises ValueError when ``state`` has no router keys or no ``t_embedder.mlp`` weights.
    """
    out: dict[str, Tensor] = {}
    experts: dict[int, int] = {}
    for key, value in state.items():
        found = _OFFICIAL_KEY.match(key)
        if found:
            layer = int(found[1])
            out[f"{PREFIX}layers.{layer}.{_OFFICIAL_NAME[found[2]]}"] = value
            experts[layer] = int(value.shape[0])
        elif key not in _OFFICIAL_DROPPED:
            out[key] = value
    if not experts:
        raise ValueError("not an official Switch-DiT state dict: no routers.N.f_gate / routers.N.experts keys")
    for ours, theirs in (("embed_in", "t_embedder.mlp.0"), ("embed_out", "t_embedder.mlp.2")):
        for name in ("weight", "bias"):
            if f"{theirs}.{name}" not in state:
                raise ValueError(f"official Switch-DiT state dict without {theirs}.{name}")
            out[f"{PREFIX}{ours}.{name}"] = state[f"{theirs}.{name}"].clone()
    out[f"{PREFIX}matching"] = torch.arange(sum(experts.values()))
    out[f"{PREFIX}forwards"] = torch.zeros((), dtype=torch.int64)
    return out


@hookimpl
def dtr_register_strategies(register):
    register("switch", SwitchRouting, params=SwitchParams,
             description="Switch-DiT: timestep-gated per-token experts, a DTR-window JSD prior (learned)")
