"""``time_experts``: N expert denoisers, each owning an interval of noise levels (time-split experts).

Sources of the idea: eDiff-I (Balaji et al., "eDiff-I: Text-to-Image Diffusion Models with an Ensemble of Expert
Denoisers", arXiv 2211.01324), which trains one denoiser, then splits it into experts for intervals of the noise
level, each initialised from the shared parent and fine-tuned on its interval only; MEME (Lee et al., "Multi-
Architecture Multi-Expert Diffusion Models", arXiv 2306.04990) with one expert per interval of time-steps; Wan2.2's
high-/low-noise experts (two models switched at a signal-to-noise boundary during sampling). **There is no official
code of eDiff-I's or MEME's expert split that can be run here**, so the tests check this module against a hand-computed
reference instead: a model split into N = 2 experts equals two independently built dense models, each evaluated on
the noise levels it owns (``tests/unit/test_time_experts.py``).

The math. With cut points ``0 < c_1 < ... < c_{N-1} < 1`` on the noise axis ``p`` (discrete timesteps: ``p = t / T``;
flow matching: the noise level ``p = u``), expert ``e`` owns ``[c_e, c_{e+1})`` (``c_0 = 0``, ``c_N = 1``, the last
interval closed): ``expert(t) = #{k : t >= ceil(c_k T)}`` for int64 timesteps, ``#{k : u >= c_k}`` for float noise
levels. The model's output for a sample is expert ``expert(t)``'s denoiser at that sample:

    D(x, t) = D_{theta_e}(x, t),   e = expert(t)

so training sends each sample's gradient to its own expert only, and a sampler's trajectory (DDPM, DDIM, flow Euler
or Heun) switches experts where its time crosses a cut. ``boundaries`` places the cuts:

- ``uniform_t``: ``c_k = k / N`` (equal shares of the timesteps, or of ``u``).
- ``uniform_logsnr``: equal steps of the log signal-to-noise ratio ``lambda`` between the ends of the noise axis:
  ``lambda_k = lambda_0 + k / N (lambda_end - lambda_0)``, ``c_k`` where ``lambda`` crosses ``lambda_k`` (linear
  interpolation on the process's ``T``-point grid; discrete: ``lambda_t = log(abar_t / (1 - abar_t))`` at
  ``t = 0..T-1``; flow matching's linear path: ``lambda(u) = 2 log((1 - u) / u)`` at ``u = (k + 1/2) / T``).
- ``measured``: from a trained run's held-out loss per band (``measured_from``: its run directory; the last
  ``heldout`` record of its metrics records, :mod:`dtr_plugins.evaluation.heldout`, ``B`` equal bands of ``p``).
  With ``L_b`` the band losses, taken constant inside a band, the cut points give every expert an equal share of the
  total: ``F(c_k) = k / N`` with ``F(p) = sum_b L_b |[b/B, (b+1)/B) ∩ [0, p)| B / sum_b L_b`` (piecewise linear).
  Harder intervals (more loss) get narrower experts.

``granularity``: ``block`` gives every expert its own copy of the backbone's per-noise-level blocks
(``RoutedBackbone.expert_blocks``; DiT: its transformer blocks), the embeddings and the output layer stay shared;
``model`` gives every expert a whole copy of the backbone's trainable weights (eDiff-I's ensemble; nothing shared).
``init: shared``: every expert starts as a copy of one shared parent: the backbone's initialisation, or with
``train.init_from`` the dense checkpoint loaded into every expert (:meth:`TimeExperts.adapt_state_dict`).

State dict: expert 0 is the backbone's own weights; experts ``1..N-1`` are ``routing.learned.experts.<e-1>.<name>``
(the backbone's parameter name with ``.`` written ``:``); ``routing.learned.cuts`` float64 ``[N-1]`` records the
cut points. Parameters: ``total`` counts every expert, ``active`` one (``SupportsActiveParameters``).

Deviations from the papers, and why:

- eDiff-I splits its experts progressively (a binary tree of fine-tunings from one trained model) and MEME uses
  different architectures per expert; here all N experts exist from the start, share the architecture, and train
  together, each sample reaching its own expert (a schedule of splits is a run that starts with ``init_from``).
- MEME also trains each expert a little on its neighbours' time-steps (its soft interval assignment); here the
  assignment is hard: a sample trains only the expert owning its time.
- eDiff-I and Wan2.2 place boundaries by hand (a noise level, an SNR); ``measured`` is this project's rule (equal
  shares of the held-out loss).
- The routed blocks still take the learned-routing gate, which is constant 1 here (``x * 1``, exact).
- A run with ``boundaries: measured`` needs the measured run's held-out records whenever the model is built; the
  cut points in its checkpoints are the ones trained with (a changed file refuses nothing, the checkpoint wins).
"""
from __future__ import annotations

import math
import typing
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor, nn

from dtr_plugins.core.checkpoint import LEARNED_PREFIX
from dtr_plugins.core.contracts import NoiseAxis
from dtr_plugins.core.errors import ConfigError
from dtr_plugins.core.hookspecs import hookimpl
from dtr_plugins.core.plugins import parse_params

SITE = "input"


class TimeExpertsParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    num_experts: int = Field(2, ge=2, le=64, description="experts N, each owning one interval of noise levels")
    granularity: Literal["block", "model"] = Field("block", description="block: per-expert copies of the backbone's "
                                                   "blocks (embeddings, output layer shared); model: whole copies")
    boundaries: Literal["uniform_t", "uniform_logsnr", "measured"] = Field(
        "uniform_t", description="uniform_t: equal shares of t (or u); uniform_logsnr: equal log-SNR steps; "
        "measured: equal shares of a trained run's held-out loss (measured_from)")
    measured_from: str | None = Field(None, description="boundaries: measured: the run directory whose last held-out "
                                      "band losses (its metrics records) place the boundaries")
    init: Literal["shared"] = Field("shared", description="shared: every expert starts as a copy of one parent (the "
                                    "backbone's init, or train.init_from's dense checkpoint)")


# ----------------------------------------------------------------------------------------- the math
def uniform_cuts(num_experts: int) -> np.ndarray:
    """``c_k = k / N``, ``k = 1..N-1`` (float64)."""
    return np.arange(1, num_experts, dtype=np.float64) / num_experts


def grid_positions(axis: NoiseAxis) -> np.ndarray:
    """Positions ``p_k`` of the axis's ``T`` grid points: ``k / T`` (discrete) or ``(k + 1/2) / T`` (continuous)."""
    k = np.arange(axis.num_tasks, dtype=np.float64)
    return (k + 0.5) / axis.num_tasks if axis.continuous else k / axis.num_tasks


def logsnr_cuts(num_experts: int, positions: np.ndarray, log_snr: np.ndarray) -> np.ndarray:
    """Cut points at equal log-SNR steps between ``log_snr[0]`` and ``log_snr[-1]`` (decreasing along
    ``positions``), linearly interpolated between grid points."""
    lam = np.asarray(log_snr, dtype=np.float64)
    targets = lam[0] + uniform_cuts(num_experts) * (lam[-1] - lam[0])
    return np.interp(targets, lam[::-1], positions[::-1])


def measured_cuts(num_experts: int, band_losses: Sequence[float]) -> np.ndarray:
    """Cut points giving each expert an equal share of ``sum(band_losses)`` (bands of equal width on ``[0, 1)``,
    loss constant inside a band): ``F^{-1}(k / N)`` of the piecewise-linear cumulative share ``F``."""
    losses = np.asarray(band_losses, dtype=np.float64)
    edges = np.arange(len(losses) + 1, dtype=np.float64) / len(losses)
    share = np.concatenate([[0.0], np.cumsum(losses) / losses.sum()])
    return np.interp(uniform_cuts(num_experts), share, edges)


def read_band_losses(axis: NoiseAxis, run_dir: str) -> list[float]:
    """The band losses ``[B]`` of the last ``heldout`` record of the trained run ``run_dir`` (read through
    ``axis.run_records``); a ConfigError line naming ``routing.measured_from`` when there is no such run or record,
    its time is not the run's, or a band is not positive."""
    key = "routing.measured_from"
    if not Path(run_dir).is_dir():
        raise ConfigError(f"{key}: {run_dir} is not a directory; boundaries: measured needs a trained run directory "
                          f"with held-out losses (eval.heldout_every)")
    if axis.run_records is None:
        raise ConfigError(f"{key}: this model was built without a reader of run directories; boundaries: measured "
                          f"needs one (build the model through dtr_plugins.compose)")
    found = [r["heldout"] for r in axis.run_records(run_dir) if isinstance(r.get("heldout"), dict)]
    if not found:
        raise ConfigError(f"{key}: {run_dir} has no held-out loss record; train that run with held-out losses "
                          f"(eval.heldout_every) first")
    record: Mapping[str, Any] = found[-1]
    time = "continuous" if axis.continuous else "discrete"
    if record.get("time", "discrete") != time:
        raise ConfigError(f"{key}: {run_dir} measured held-out losses over {record.get('time')} time, this run's "
                          f"process uses {time} time")
    bands = int(record.get("num_bands", 0))
    losses = [record.get(f"band{b}") for b in range(bands)]
    if bands < 1 or not all(isinstance(v, (int, float)) and math.isfinite(v) and v > 0 for v in losses):
        raise ConfigError(f"{key}: {run_dir}: the last held-out record needs a positive finite loss in each of its "
                          f"bands, got {losses}")
    return [float(v) for v in typing.cast(list[float], losses)]


def _key(name: str) -> str:
    return name.replace(".", ":")


# ------------------------------------------------------------------------------------ the module
class TimeExperts(nn.Module):
    """The ``time_experts`` strategy (see the module docstring): a learned strategy (gates constant 1) that holds
    the experts' weight copies and says which expert owns each noise level (``TimeExpertRouting``)."""

    learned_routing: typing.ClassVar[bool] = True

    cuts: Tensor  # [N-1] float64 cut points on the noise axis (persistent: checkpoints record them)

    def __init__(self, **params: Any):
        super().__init__()
        self.params = parse_params(TimeExpertsParams, params, "time_experts")
        if self.params.boundaries == "measured" and not self.params.measured_from:
            raise ConfigError("routing.measured_from: boundaries: measured needs the run directory whose held-out "
                              "losses place the boundaries")
        if self.params.boundaries != "measured" and self.params.measured_from:
            raise ConfigError(f"routing.measured_from: only read with boundaries: measured (got boundaries: "
                              f"{self.params.boundaries})")
        self.num_experts = self.params.num_experts
        self.num_tasks = 0
        self.continuous = False
        self.owned: list[str] = []
        self.experts = nn.ModuleList()
        self.register_buffer("cuts", torch.from_numpy(uniform_cuts(self.num_experts)), persistent=True)

    # ---- building
    def bind(self, layer_units: Sequence[int], num_tasks: int, *, site: str, cond_dim: int | None) -> None:
        """Only the ``input`` site (the experts own weights, they gate nothing); ``num_tasks``: ``T``."""
        if site != SITE:
            raise ConfigError(f"routing.site: {site!r} is not supported by time_experts, whose experts own whole "
                              f"blocks (allowed: {SITE})")
        self.num_tasks = int(num_tasks)
        self._check(uniform_cuts(self.num_experts), "uniform_t")

    def bind_noise(self, axis: NoiseAxis) -> None:
        """Place the cut points by ``boundaries`` on the run's noise axis (see the module docstring)."""
        self.num_tasks, self.continuous = int(axis.num_tasks), bool(axis.continuous)
        rule = self.params.boundaries
        if rule == "uniform_t":
            cuts = uniform_cuts(self.num_experts)
        elif rule == "uniform_logsnr":
            if axis.log_snr is None:
                raise ConfigError("routing.boundaries: uniform_logsnr needs a process that reports its log-SNR "
                                  "(allowed here: uniform_t, measured)")
            cuts = logsnr_cuts(self.num_experts, grid_positions(axis), axis.log_snr)
        else:
            cuts = measured_cuts(self.num_experts, read_band_losses(axis, str(self.params.measured_from)))
        self._check(cuts, rule)
        with torch.no_grad():
            self.cuts.copy_(torch.from_numpy(cuts))

    def _check(self, cuts: np.ndarray, rule: str) -> None:
        """Every expert must own some noise levels (discrete: at least one timestep)."""
        edges = np.concatenate([[0.0], cuts, [1.0]])
        if not self.continuous:
            edges = np.ceil(edges * self.num_tasks)
        if not bool((np.diff(edges) > 0).all()):
            raise ConfigError(f"routing.num_experts: {self.num_experts} experts with boundaries {rule} over "
                              f"{self.num_tasks} timesteps leave an expert no noise levels (cut points "
                              f"{np.round(cuts, 4).tolist()}); use fewer experts")

    def bind_weights(self, named: Mapping[str, Tensor], blocks: Sequence[str]) -> None:
        """Copy the split parameters (``granularity``) into experts ``1..N-1`` (expert 0: the backbone's own)."""
        if self.params.granularity == "block":
            if not blocks:
                raise ConfigError("routing.granularity: block needs a backbone that declares its blocks "
                                  "(expert_blocks); allowed here: model")
            names = [n for n in named if n.startswith(tuple(blocks))]
        else:
            names = list(named)
        self.owned = names
        self.experts = nn.ModuleList(
            nn.ParameterDict({_key(n): nn.Parameter(named[n].detach().clone()) for n in names})
            for _ in range(self.num_experts - 1))

    # ---- what the engine reads
    def expert_of(self, tasks: Tensor) -> Tensor:
        """Expert index ``[N]`` int64 of int64 timesteps or float noise levels ``tasks`` ``[N]``."""
        if tasks.is_floating_point():
            cuts = self.cuts.to(tasks.device)
            return (tasks.double()[:, None] >= cuts[None, :]).sum(1)
        thresholds = torch.ceil(self.cuts * self.num_tasks).long().to(tasks.device)
        return (tasks.long()[:, None] >= thresholds[None, :]).sum(1)

    def expert_weights(self, expert: int) -> dict[str, Tensor]:
        """Backbone parameter name -> expert ``expert``'s tensor; empty for expert 0 (the backbone's weights)."""
        if expert == 0:
            return {}
        own = typing.cast(nn.ParameterDict, self.experts[expert - 1])
        return {n: own[_key(n)] for n in self.owned}

    def intervals(self) -> list[dict[str, Any]]:
        """Per expert the noise levels it owns: ``timesteps [lo, hi)`` (discrete) or ``noise_level [lo, hi)`` of
        ``u`` (continuous; the last closed)."""
        cuts = [float(c) for c in self.cuts.cpu()]
        edges = [0.0, *cuts, 1.0]
        out = []
        for e in range(self.num_experts):
            if self.continuous:
                out.append({"expert": e, "noise_level": [round(edges[e], 6), round(edges[e + 1], 6)]})
            else:
                lo, hi = (math.ceil(edges[i] * self.num_tasks) for i in (e, e + 1))
                out.append({"expert": e, "timesteps": [lo, hi]})
        return out

    def inactive_parameters(self) -> int:
        """Parameters no single forward uses: ``N - 1`` copies of the split weights (``SupportsActiveParameters``)."""
        return sum(p.numel() for p in self.experts.parameters())

    def layer_gate(self, layer: int, x: Tensor, tasks: Tensor, cond: Tensor | None = None) -> Tensor:
        """The constant gate 1 (a 0-dim tensor of ``x``'s dtype): the experts route whole weights, not channels."""
        return x.new_ones(())

    def pop_aux_losses(self) -> dict[str, Tensor]:
        """No auxiliary loss."""
        return {}

    def param_groups(self) -> list[dict[str, Any]]:
        """One group with every expert copy, at ``train.lr`` and ``train.weight_decay`` like the backbone."""
        params = [p for p in self.parameters() if p.requires_grad]
        return [{"params": params}] if params else []

    def task_tables(self, num_tasks: int) -> list[Tensor] | None:
        """None: no gate tables (the gate is constant; the experts differ in weights)."""
        return None

    @torch.no_grad()
    def gate_summary(self, num_tasks: int) -> tuple[list[Tensor], str, str]:
        """For ``dtr masks``: one table ``float32 [num_tasks, N]``, 1 where the expert owns the timestep (row
        ``k``: timestep ``k``, or ``u = k / (T - 1)`` under flow matching)."""
        rows = torch.arange(num_tasks, device=self.cuts.device)
        tasks = rows.double() / max(num_tasks - 1, 1) if self.continuous else rows
        owner = self.expert_of(tasks)
        return [torch.nn.functional.one_hot(owner, self.num_experts).float().cpu()], "expert", "owns the timestep"

    def adapt_state_dict(self, state: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """A dense checkpoint (no ``routing.learned.*`` keys: ``train.init_from``, an official DiT) initialises every
        expert: its backbone weights are copied into each expert's keys and the cut points are this model's
        (``SupportsStateDictAdapter``). A state with expert keys is returned unchanged."""
        if any(k.startswith(LEARNED_PREFIX) for k in state) or not self.owned:
            return dict(state)
        out = dict(state)
        for e in range(self.num_experts - 1):
            for name in self.owned:
                if name in state:
                    out[f"{LEARNED_PREFIX}experts.{e}.{_key(name)}"] = state[name].clone()
        out[f"{LEARNED_PREFIX}cuts"] = self.cuts.detach().cpu().clone()
        return out

    def __repr__(self) -> str:
        p = self.params
        return f"time_experts(N={p.num_experts}, {p.granularity}, {p.boundaries})"


@hookimpl
def dtr_register_strategies(register):
    register("time_experts", TimeExperts, params=TimeExpertsParams,
             description="time-split experts (eDiff-I, MEME): N denoisers, each owning an interval of noise levels")
