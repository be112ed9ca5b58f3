"""Timestep-bucketed execution of a training batch at a unit routing site (``train.timestep_buckets``).

A training batch mixes timesteps, so the masked dense path runs every unit of a routed layer for every sample
and zeroes the inactive ones. Bucketing sorts the batch by a key read from the static mask tables, splits it
into ``K`` contiguous buckets, and runs each bucket on the **union** of its samples' active units only (the
weight slices of :class:`~dtr_plugins.core.routing.ActiveUnits`, as the shared-timestep sampling path does),
each sample still masked to its own units inside that union.

Why this equals the masked path. At a unit site a routed layer computes ``W_out (m * f(W_in u))`` per sample
(``m`` the sample's 0/1 row over units, ``f`` attention per head or GELU per MLP unit, both unit-separable: unit
``j``'s output depends only on unit ``j``'s slice of ``W_in``). Split the units of a bucket into its union
``U`` and the rest: a unit outside ``U`` has ``m_j = 0`` for every sample of the bucket, so its term of the sum
over units is exactly zero and dropping it (not computing it) changes nothing but the order of a float sum.
Inside ``U`` the sample's own mask ``m_U`` zeroes the units it does not use, as the dense mask does. Every other
op of the model (embeddings, LayerNorm, adaLN, the residual stream) acts per sample, so sorting the batch before
the blocks and restoring its order after them is a permutation and its inverse. The backward is the same
chain rule on the same values: an unused unit's weights get zero gradient in both paths. Losses and gradients
therefore equal the masked path's to float rounding (``tests/unit/test_buckets.py``, 1e-5 in fp32).

Sort key (:func:`timestep_keys`): per timestep, the centroid of its active units (mean unit index divided by
the layer's width), averaged over the distinct tables, ties broken by the timestep. For DTR's sliding window
the centroid is the window start plus half the (fixed) window width, so samples are grouped by window start;
for task-specific sharing by the interval's private slice; for random tables the key groups nothing in
particular (their unions stay wide: see the benchmark).

Buckets (:func:`split_bounds`): ``K`` contiguous runs of the sorted batch of equal size (sizes differ by at
most one); ``K`` is capped at the batch size.

``auto`` (:func:`choose_k`): the ``K`` in ``1..AUTO_MAX_K`` that minimises the estimated cost of the step's
routed layers, in full-width samples::

    cost(K) = sum_b n_b * w_b + K * BUCKET_OVERHEAD

``n_b`` samples in bucket ``b``, ``w_b`` its union width (active units of the union over all routed layers
divided by all units; a head and an MLP unit each count as one unit, attention's ``T^2`` term is not separated);
``BUCKET_OVERHEAD`` = 0.5 full-width samples per bucket: the fixed cost of a bucket's extra ops (slicing, one
small matmul per weight, the gradient scatter into the full weight) and the lower efficiency of narrower
matmuls. It is an estimate chosen once, not measured per machine; ``benchmarks/train_buckets.py`` compares
``auto`` with fixed ``K``. Choosing reads the batch's timesteps on the host (one device sync per step).
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Annotated, Any

import numpy as np
import torch
from pydantic import BeforeValidator

from dtr_plugins.core.errors import ConfigError
from dtr_plugins.core.routing import INPUT_SITE, ActiveUnits, RoutedBackbone, RoutingPlan

#: largest K that ``auto`` considers
AUTO_MAX_K = 16
#: estimated cost of one more bucket, in samples run at full width (see the module docstring)
BUCKET_OVERHEAD = 0.5



class _TakeAll(torch.autograd.Function):
    """Every bucket's slices of one weight in one autograd node: the backward writes their gradients into
    one zero tensor of the weight's shape (slicing per bucket would allocate and add one per bucket)."""

    @staticmethod
    def forward(ctx: Any, weight: torch.Tensor, dim: int, unit_size: int,
                units: tuple[ActiveUnits, ...]) -> tuple[torch.Tensor, ...]:
        ctx.set_materialize_grads(False)
        ctx.dim, ctx.unit_size, ctx.units, ctx.shape = dim, unit_size, units, weight.shape
        return tuple(u.take(weight, dim, unit_size) for u in units)

    @staticmethod
    def backward(ctx: Any, *grads: torch.Tensor | None) -> tuple[torch.Tensor | None, None, None, None]:
        given = [(u, g) for u, g in zip(ctx.units, grads) if g is not None and g.numel()]
        if not given:
            return None, None, None, None
        full = given[0][1].new_zeros(ctx.shape)
        for units, grad in given:
            if units.index is None:
                full.narrow(ctx.dim, units.start * ctx.unit_size, grad.shape[ctx.dim]).add_(grad)
            else:
                index = (units.index[:, None] * ctx.unit_size
                         + torch.arange(ctx.unit_size, device=units.index.device)).reshape(-1)
                full.index_add_(ctx.dim, index, grad)
        return full, None, None, None


@dataclass(frozen=True)
class BucketedUnits:
    """The route of one unit-site layer for a batch sorted into buckets (training with timestep buckets).

    ``bounds[b] = (lo, hi)``: bucket ``b`` is samples ``[lo, hi)`` of the sorted batch; ``units[b]``: the union of
    their active units (None: all units); ``masks[b]``: ``[hi - lo, units[b].count]`` (``[hi - lo, total]`` when
    ``units[b]`` is None) rows of each sample inside the union, in the model's dtype, or None when all are ones.
    """

    bounds: tuple[tuple[int, int], ...]
    units: tuple[ActiveUnits | None, ...]
    masks: tuple[torch.Tensor | None, ...]

    def take(self, weight: torch.Tensor, dim: int, unit_size: int = 1) -> list[torch.Tensor | None]:
        """Each bucket's union slice of ``weight`` along ``dim`` (:meth:`ActiveUnits.take`; None for a bucket
        that runs all units), taken in one autograd node (one gradient tensor of ``weight``'s shape)."""
        sliced = [u for u in self.units if u is not None]
        taken = iter(_TakeAll.apply(weight, dim, unit_size, tuple(sliced)) if sliced else ())
        return [None if u is None else next(taken) for u in self.units]

    def parts(self) -> list[tuple[slice, ActiveUnits | None, torch.Tensor | None]]:
        """``(samples of the sorted batch, union of units or None, masks inside the union or None)`` per bucket."""
        return [(slice(lo, hi), u, m) for (lo, hi), u, m in zip(self.bounds, self.units, self.masks)]


@dataclass(frozen=True)
class BatchBuckets:
    """One forward's bucketing: ``order`` ``[N]`` (sorted batch = ``batch[order]``), ``inverse`` ``[N]``
    (``sorted[inverse]`` = the batch) and the route of every routed layer (None: a layer with all units)."""

    order: torch.Tensor
    inverse: torch.Tensor
    routes: list[BucketedUnits | None]
    k: int
    width: float


@dataclass
class BucketStats:
    """What bucketing did over the training forwards so far (meta.json): forwards, ``K`` counts, union width."""

    forwards: int = 0
    width_sum: float = 0.0
    k_counts: dict[int, int] = field(default_factory=dict)

    def add(self, k: int, width: float) -> None:
        self.forwards += 1
        self.width_sum += width
        self.k_counts[k] = self.k_counts.get(k, 0) + 1

    def summary(self) -> dict[str, Any]:
        """``{"forwards", "k_counts", "mean_k", "mean_union_width"}`` (None before the first forward)."""
        n = self.forwards
        mean_k = sum(k * c for k, c in self.k_counts.items()) / n if n else None
        return {"forwards": n, "k_counts": {str(k): c for k, c in sorted(self.k_counts.items())},
                "mean_k": mean_k, "mean_union_width": self.width_sum / n if n else None}


def bucket_setting(value: Any) -> int | str:
    """``train.timestep_buckets`` as given: 0 (off), a bucket count ``K`` >= 1, or ``"auto"`` (also digits as a
    string, from a command-line override). Raises ValueError (the config names the key) for anything else."""
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    if value == "auto":
        return "auto"
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return int(value)
    raise ValueError("must be 0 (off), a bucket count K >= 1, or auto")


#: ``train.timestep_buckets``: 0, a bucket count ``K`` >= 1 or ``"auto"`` (:func:`bucket_setting` checks it)
BucketSetting = Annotated[int | str, BeforeValidator(bucket_setting)]
#: its description in the config reference
BUCKETS_HELP = ("K: the batch sorted by its rows of the routing tables into K buckets, each running only its samples' "
                "union of heads/MLP units (same losses and gradients as 0, the masked path; DiT's unit sites; "
                "core/buckets.py); auto: the K of least estimated cost per batch")


def timestep_keys(tables: Sequence[np.ndarray]) -> np.ndarray:
    """Sort key of every timestep ``[T]`` float64 from the distinct tables (``bool [T, U_i]`` each): the mean
    over tables of the centroid of the row's active units (unit index / U_i), plus ``t * 1e-9`` to break ties
    by timestep. A row with no active unit counts as centroid 0."""
    num_tasks = tables[0].shape[0]
    key = np.zeros(num_tasks)
    for table in tables:
        units = table.shape[1]
        count = table.sum(axis=1)
        centroid = (table * np.arange(units)).sum(axis=1) / np.maximum(count, 1) / max(units - 1, 1)
        key += centroid / len(tables)
    return key + np.arange(num_tasks) * 1e-9


def split_bounds(n: int, k: int) -> list[tuple[int, int]]:
    """``k`` (capped at ``n``) contiguous runs of ``range(n)`` whose sizes differ by at most one."""
    k = max(1, min(k, n))
    edges = [round(b * n / k) for b in range(k + 1)]
    return [(edges[b], edges[b + 1]) for b in range(k)]


def union_width(rows: np.ndarray, bounds: list[tuple[int, int]], weights: np.ndarray) -> np.ndarray:
    """Union width of each bucket ``[K]``: ``rows`` ``bool [N, W]`` (sorted samples, all tables' units side by
    side), ``weights`` ``[W]`` (layers per unit's table, summing to 1 over all routed units)."""
    unions = np.logical_or.reduceat(rows, [lo for lo, _ in bounds], axis=0)
    return np.asarray(unions @ weights, dtype=np.float64)


def choose_k(rows: np.ndarray, weights: np.ndarray, max_k: int = AUTO_MAX_K,
             overhead: float = BUCKET_OVERHEAD) -> int:
    """The ``K`` in ``1..max_k`` minimising ``sum_b n_b * w_b + K * overhead`` (the module docstring)."""
    n = rows.shape[0]
    best, best_cost = 1, float("inf")
    for k in range(1, min(max_k, n) + 1):
        bounds = split_bounds(n, k)
        sizes = np.array([hi - lo for lo, hi in bounds])
        cost = float(sizes @ union_width(rows, bounds, weights)) + k * overhead
        if cost < best_cost - 1e-12:
            best, best_cost = k, cost
    return best


def _active(union: np.ndarray, device: torch.device) -> ActiveUnits | None:
    """The union ``bool [U]`` as :class:`ActiveUnits` (start/stop when contiguous), None when all units."""
    idx = np.flatnonzero(union)
    total = len(union)
    if len(idx) == total:
        return None
    if len(idx) == 0:
        return ActiveUnits(count=0, total=total)
    if idx[-1] - idx[0] + 1 == len(idx):
        return ActiveUnits(count=len(idx), total=total, start=int(idx[0]), stop=int(idx[-1]) + 1)
    return ActiveUnits(count=len(idx), total=total, index=torch.from_numpy(idx.astype(np.int64)).to(device))


class TimestepBuckets:
    """Bucketing of training batches for one routing plan's static tables (built once per plan).

    Args:
        tables: the plan's distinct tables, ``bool [T, U_i]`` host arrays.
        layer_table: per routed layer, the index of its table (None: all units, never bucketed).
        setting: ``K`` >= 1, or ``"auto"`` (:func:`choose_k` per batch).
    """

    def __init__(self, tables: Sequence[np.ndarray], layer_table: Sequence[int | None], setting: int | str):
        self.tables = [np.asarray(t, dtype=bool) for t in tables]
        self.layer_table = list(layer_table)
        self.setting = setting
        self.keys = timestep_keys(self.tables)
        uses = [sum(1 for j in self.layer_table if j == i) for i in range(len(self.tables))]
        total = sum(u * t.shape[1] for u, t in zip(uses, self.tables))  # units of the bucketed layers
        self.weights = np.concatenate([np.full(t.shape[1], u / max(total, 1)) for u, t in zip(uses, self.tables)])
        self.stats = BucketStats()

    def split(self, t: torch.Tensor, dtype: torch.dtype) -> BatchBuckets:
        """The buckets of timesteps ``t`` (``[N]`` int64 on the model's device; read on the host)."""
        device = t.device
        host = t.detach().cpu().numpy()
        order = np.argsort(self.keys[host], kind="stable")
        rows = [table[host[order]] for table in self.tables]                       # [N, U_i] each, sorted
        joint = np.concatenate(rows, axis=1)
        k = choose_k(joint, self.weights) if self.setting == "auto" else int(self.setting)
        bounds = split_bounds(len(host), k)
        per_table = [self._table_route(r, bounds, dtype, device) for r in rows]
        sizes = np.array([hi - lo for lo, hi in bounds])
        width = float(sizes @ union_width(joint, bounds, self.weights)) / len(host)
        self.stats.add(len(bounds), width)
        order_t = torch.from_numpy(order.astype(np.int64)).to(device)
        inverse = torch.empty_like(order_t)
        inverse[order_t] = torch.arange(len(host), device=device)
        return BatchBuckets(order_t, inverse, [None if j is None else per_table[j] for j in self.layer_table],
                            len(bounds), width)

    @staticmethod
    def _table_route(rows: np.ndarray, bounds: list[tuple[int, int]], dtype: torch.dtype,
                     device: torch.device) -> BucketedUnits:
        """One table's buckets: each bucket's union and its samples' masks inside it (one host-to-device copy)."""
        units, pieces, shapes = [], [], []
        for lo, hi in bounds:
            part = rows[lo:hi]
            union = np.asarray(part.any(axis=0))
            units.append(_active(union, device))
            inside = part if units[-1] is None else part[:, union]
            shapes.append(None if inside.all() else inside.shape)
            if shapes[-1] is not None:
                pieces.append(inside.reshape(-1))
        flat = torch.from_numpy(np.concatenate(pieces).astype(np.float32)).to(device=device, dtype=dtype) \
            if pieces else None
        masks: list[torch.Tensor | None] = []
        offset = 0
        for shape in shapes:
            if shape is None or flat is None:
                masks.append(None)
                continue
            size = shape[0] * shape[1]
            masks.append(flat[offset:offset + size].view(shape))
            offset += size
        return BucketedUnits(tuple(bounds), tuple(units), tuple(masks))


def enable_train_buckets(plan: RoutingPlan, setting: int | str) -> str | None:
    """Turn timestep buckets on for ``plan``'s training forwards (``setting``: ``K`` >= 1 or ``"auto"``; 0 turns
    them off). Returns None when applied, else why the masked path stays (the caller prints it as one line):
    a learned strategy (its gates are computed from the block input, there is no static row to bucket by),
    a continuous-time process (float times), a plan with nothing routed, or the ``input`` site (raises
    :class:`ConfigError` there instead: every op of a block reads all input channels, nothing can be sliced)."""
    plan.buckets = None
    if setting == 0:
        return None
    if plan.is_learned:
        return f"learned strategy {plan.strategy_repr} has no static table per timestep"
    if plan.site == INPUT_SITE:
        raise ConfigError(f"train.timestep_buckets: {setting!r} needs a unit routing site; routing.site "
                          f"{INPUT_SITE!r} masks block-input channels, which every op of a block reads "
                          f"(allowed: 0 at site {INPUT_SITE!r})")
    if plan.continuous is not None:
        return "continuous-time process (float times index no table row)"
    if plan.is_dense:
        return f"strategy {plan.strategy_repr} routes nothing"
    plan.buckets = TimestepBuckets(plan.host_tables(), plan.layer_table, setting)
    return None


def apply_train_buckets(model: torch.nn.Module, setting: int | str, compiled: bool = False,
                        verbose: bool = True) -> dict[str, Any]:
    """``train.timestep_buckets`` (``setting``) on the model's routing plan; returns what meta.json records
    (``setting``, ``applied``, ``why`` when not). Where the masked path stays (a learned strategy, a continuous
    process, ``compiled``: ``train.compile``, whose bucket shapes would change every step) one line says so
    (printed when ``verbose``). Raises :class:`ConfigError` at the ``input`` site."""
    plan = model.plan if isinstance(model, RoutedBackbone) else None
    if setting == 0 or plan is None:
        return {"setting": setting, "applied": False, "why": "not requested" if setting == 0 else "no routing plan"}
    why = ("train.compile: bucket sizes change every step (each would recompile)" if compiled
           else enable_train_buckets(plan, setting))
    if why is not None and verbose:
        print(f"dtr: note: train.timestep_buckets {setting!r} not applied, the masked path runs: {why}", flush=True)
    return {"setting": setting, "applied": why is None, **({"why": why} if why is not None else {})}


def bucket_summary(model: torch.nn.Module) -> dict[str, Any] | None:
    """What timestep buckets did in the model's training forwards (:meth:`BucketStats.summary`); None when its
    plan has none."""
    plan = model.plan if isinstance(model, RoutedBackbone) else None
    return None if plan is None or plan.buckets is None else plan.buckets.stats.summary()
