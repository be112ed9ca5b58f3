"""RoutingPlan: the mask tables of one model, and the routed residual every backbone uses.

The plan holds one ``bool`` buffer per *distinct* table (DTR gives every layer of one width the same
table, so a DiT has one), gathers the rows for a batch of timesteps once per forward pass, and hands
them to the blocks as arguments. Layers whose table is all ``True`` (vanilla) get ``None`` and run the
plain block: no mask op at all. There is no global state and no walk over the module tree.

Routing sites: a backbone declares where a strategy's table may act (:attr:`RoutedBackbone.routing_sites`).
``input`` (every backbone, the default) masks block inputs channel by channel, as published. Sites that
route *units of work* (DiT's attention heads and MLP hidden units) can also run only the active units:
when a whole batch shares one timestep, :meth:`RoutingPlan.active_units` tells each block which units to
slice out of its weights (:class:`ActiveUnits`) instead of masking a dense computation.

Learned routing (contract v2, :class:`~dtr_plugins.core.contracts.LearnedRoutingStrategy`): the plan binds
the strategy to the routed layers, keeps it as its submodule ``learned`` (parameters in the model's
state_dict) and hands each block a real-valued gate from :meth:`RoutingPlan.layer_gate`, computed from
the block input; :meth:`RoutingPlan.export_tables` swaps the module for its float task tables (sampling).
At a unit site (a backbone lists it in ``learned_sites``) a gate is one row ``[N, units]`` per routed layer;
exported 0/1 tables there run the sliced path too (:meth:`RoutingPlan.learned_active_units`).
"""
from __future__ import annotations

import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import numpy as np
import torch
from torch import nn

from dtr_plugins.core.continuous_routing import grid_rows
from dtr_plugins.core.contracts import LearnedRoutingStrategy, TimeExpertRouting
from dtr_plugins.core.errors import ConfigError, PluginError
from dtr_plugins.core.expert_dispatch import split_by_expert

if TYPE_CHECKING:
    from dtr_plugins.core.buckets import TimestepBuckets

#: the site every backbone has: block inputs, masked channel by channel (the published DTR)
INPUT_SITE = "input"


def routed_residual(x: torch.Tensor, mask: torch.Tensor | None,
                    branch: Callable[[torch.Tensor], torch.Tensor]) -> torch.Tensor:
    """``x + branch(mask * x)``; the plain ``x + branch(x)`` when ``mask`` is None.

    Inactive channels reach the branch as zeros and pass through the skip untouched. ``mask`` must
    already broadcast against ``x`` (``[N, 1, C]`` for tokens, ``[N, C, 1, 1]`` for feature maps).
    """
    return x + branch(x if mask is None else x * mask)


@dataclass(frozen=True)
class ActiveUnits:
    """The units one routed layer runs at one shared timestep (the sliced execution path).

    ``start``/``stop`` give the units ``[start, stop)`` when they are contiguous (DTR's window: weight
    slices are views, nothing is copied); otherwise ``index`` is a ``[count]`` int64 tensor of unit
    indices on the model's device (weights are gathered with ``index_select``).
    """

    count: int
    total: int
    start: int = 0
    stop: int = 0
    index: torch.Tensor | None = None

    def take(self, weight: torch.Tensor, dim: int, unit_size: int = 1) -> torch.Tensor:
        """The slices of ``weight`` along ``dim`` that belong to the active units, in unit order.

        ``weight.shape[dim]`` must be ``total * unit_size`` (each unit owns ``unit_size`` consecutive
        entries, e.g. the ``head_dim`` rows of one attention head). Returns a view when contiguous.
        """
        if self.index is None:
            return weight.narrow(dim, self.start * unit_size, (self.stop - self.start) * unit_size)
        index = self.index
        if unit_size > 1:
            index = (index[:, None] * unit_size + torch.arange(unit_size, device=index.device)).reshape(-1)
        return weight.index_select(dim, index)


def gate_like(rows: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-sample gate rows ``[N, C]`` laid out against a block input ``x``: ``[N, 1, C]`` for tokens
    ``[N, L, C]``, ``[N, C, 1, 1]`` for feature maps ``[N, C, H, W]``; cast to ``x``'s dtype."""
    rows = rows.to(x.dtype)
    if x.ndim == 3:
        return rows[:, None, :]
    if x.ndim == 4:
        return rows[:, :, None, None]
    raise ValueError(f"gate_like: block input of shape {tuple(x.shape)} is neither tokens [N, L, C] "
                     f"nor maps [N, C, H, W]")


def shared_timestep(t: torch.Tensor) -> int | None:
    """The timestep every element of ``t`` (``[N]``) shares, or None when they differ (one host sync)."""
    if t.numel() == 1:
        return int(t.reshape(-1)[0])
    lo, hi = torch.aminmax(t.reshape(-1))
    lo, hi = torch.stack([lo, hi]).tolist()
    return int(lo) if lo == hi else None


class RoutingPlan(nn.Module):
    """Mask tables for a list of routed layers, deduplicated by content.

    Args:
        strategy: an object with ``mask_table(num_tasks, channels, *, layer, num_layers)``.
        layer_channels: unit count of each routed layer at ``site`` (channels at ``input``), in forward
            order, as given by ``model.routed_channels(site)``.
        num_tasks: number of training timesteps ``T``.
        site: the routing site the tables act on (a name the backbone declares).
        slice_shared: at sites that support it, run only the active units when a batch shares one
            timestep (sampling); False always uses the masked dense path (for tests and benchmarks).
    """

    def __init__(self, strategy: Any, layer_channels: Sequence[int], num_tasks: int, continuous: Any = None, *,
                 site: str = INPUT_SITE, slice_shared: bool = True, cond_dim: int | None = None):
        super().__init__()
        # flow: float times -> tasks u in [0, 1] (a core.continuous_routing.ContinuousTasks); None: index only
        self.continuous = continuous
        self.strategy_repr = repr(strategy)
        self.site = str(site)
        self.slice_shared = bool(slice_shared)
        self.num_tasks = int(num_tasks)
        self.layer_channels = [int(c) for c in layer_channels]
        self.layer_table: list[int | None] = []
        #: the learned strategy (contract v2) when there is one; its tables when exported (sampling)
        self.learned: nn.Module | None = None
        self._exported: list[torch.Tensor] | None = None
        self._exported_host: list[np.ndarray] | None = None  # 0/1 exported tables at a unit site (sliced path)
        tables: list[torch.Tensor] = []
        if isinstance(strategy, LearnedRoutingStrategy):
            self._bind_learned(strategy, cond_dim)
        for layer, channels in enumerate(self.layer_channels if self.learned is None else ()):
            table = strategy.mask_table(self.num_tasks, channels, layer=layer, num_layers=len(self.layer_channels))
            _check_table(table, self.num_tasks, channels, self.strategy_repr)
            if bool(table.all()):
                self.layer_table.append(None)
                continue
            for index, known in enumerate(tables):
                if known.shape == table.shape and torch.equal(known, table):
                    self.layer_table.append(index)
                    break
            else:
                tables.append(table.contiguous())
                self.layer_table.append(len(tables) - 1)
        for index, table in enumerate(tables):
            # Not persistent: tables follow from the config, so checkpoints keep the official layout.
            self.register_buffer(f"table_{index}", table, persistent=False)
        self.num_tables = len(tables)
        # Host copies for active_units(): which units a shared timestep runs, without a device sync.
        self._host_tables = [table.numpy().copy() for table in tables]
        #: timestep buckets of training forwards (train.timestep_buckets; core/buckets.py), None: masked path
        self.buckets: TimestepBuckets | None = None

    def _bind_learned(self, strategy: Any, cond_dim: int | None) -> None:
        declared = typing.cast(LearnedRoutingStrategy, strategy)
        if not isinstance(strategy, nn.Module) or declared.learned_routing is not True:
            raise PluginError(f"strategy {self.strategy_repr}: a learned routing strategy must be a torch.nn.Module "
                              f"with the class attribute learned_routing = True")
        declared.bind(list(self.layer_channels), self.num_tasks, site=self.site, cond_dim=cond_dim)
        self.layer_table = [None] * len(self.layer_channels)
        self.learned = strategy  # a submodule: its parameters are the model's ``routing.learned.*``
        self.strategy_repr = repr(strategy)

    @property
    def is_dense(self) -> bool:
        """True when no layer is routed (vanilla): the backbone then runs its plain blocks."""
        return self.num_tables == 0 and self.learned is None

    @property
    def is_learned(self) -> bool:
        """True when the plan routes with a learned strategy: blocks ask :meth:`layer_gate` for their gate."""
        return self.learned is not None

    @property
    def time_experts(self) -> TimeExpertRouting | None:
        """The learned strategy when it splits the backbone's weights into time experts, else None."""
        return self.learned if isinstance(self.learned, TimeExpertRouting) else None

    def _learned_strategy(self) -> LearnedRoutingStrategy:
        if self.learned is None:
            raise ValueError("this routing plan has no learned strategy")
        return typing.cast(LearnedRoutingStrategy, self.learned)

    def tasks_of(self, t: torch.Tensor) -> torch.Tensor:
        """The tasks a learned strategy sees for the model's times ``t`` ``[N]``: int64 indices, or float32
        noise levels ``u`` in [0, 1] under a continuous process (``ValueError`` for float times without one)."""
        if not t.is_floating_point():
            return t
        if self.continuous is None:
            raise ValueError("float times given to a routing plan built for timestep indices")
        return typing.cast(torch.Tensor, self.continuous.noise_level(t)).float()

    def layer_gate(self, layer: int, x: torch.Tensor, t: torch.Tensor, cond: torch.Tensor | None) -> torch.Tensor:
        """Gate of routed layer ``layer`` for block input ``x`` (``[N, L, C]`` or ``[N, C, H, W]``) at model
        times ``t`` ``[N]``, with the backbone's conditioning ``cond`` ``[N, cond_dim]`` (or None).

        From the exported float tables when :meth:`export_tables` was called (no routing network runs;
        float times read the nearest row ``round(u * (T - 1))``), else from the learned strategy."""
        if self._exported is not None:
            table = self._exported[layer]
            index = t if not t.is_floating_point() else grid_rows(self.tasks_of(t), self.num_tasks)
            rows = table.index_select(0, index.to(table.device))
            return rows.to(x.dtype) if self.site != INPUT_SITE else gate_like(rows, x)
        gate = self._learned_strategy().layer_gate(layer, x, self.tasks_of(t), cond)
        if self.site == INPUT_SITE:
            return gate
        units = self.layer_channels[layer]
        if gate.numel() != x.shape[0] * units:
            raise PluginError(f"strategy {self.strategy_repr}: at routing site {self.site!r} layer_gate must return "
                              f"one gate per sample and unit ([N, {units}]), got {tuple(gate.shape)}")
        return gate.reshape(x.shape[0], units)

    def pop_aux_losses(self) -> dict[str, torch.Tensor]:
        """The learned strategy's weighted auxiliary losses since the last call (empty for static plans)."""
        if self.learned is None:
            return {}
        losses = dict(self._learned_strategy().pop_aux_losses())
        for name, value in losses.items():
            if not isinstance(name, str) or not isinstance(value, torch.Tensor) or value.ndim != 0:
                raise PluginError(f"strategy {self.strategy_repr}: pop_aux_losses must return {{name: scalar tensor}}, "
                                  f"got {name!r}: {type(value).__name__} {tuple(getattr(value, 'shape', ()))}")
        return losses

    def param_groups(self) -> list[dict[str, Any]]:
        """Optimizer groups of the learned strategy (empty for static plans); they must cover exactly its
        trainable parameters (:class:`PluginError` otherwise)."""
        if self.learned is None:
            return []
        groups = list(self._learned_strategy().param_groups())
        given = [id(p) for g in groups for p in g["params"]]
        own = {id(p) for p in self.learned.parameters() if p.requires_grad}
        if len(given) != len(set(given)) or set(given) != own:
            raise PluginError(f"strategy {self.strategy_repr}: param_groups() must list each of its trainable "
                              f"parameters exactly once")
        return groups

    def export_tables(self) -> bool:
        """Replace the learned strategy by its float task tables for the following forward passes (sampling);
        False (nothing changes) when its gates do not depend on the task alone. Call again after the
        weights change; :meth:`clear_exported` returns to the module."""
        if self.learned is None:
            return False
        with torch.no_grad():
            tables = self._learned_strategy().task_tables(self.num_tasks)
        if tables is None:
            self._exported = None
            return False
        if len(tables) != len(self.layer_channels) or any(
                not isinstance(tab, torch.Tensor) or not tab.is_floating_point()
                or tuple(tab.shape) != (self.num_tasks, c) for tab, c in zip(tables, self.layer_channels)):
            raise PluginError(f"strategy {self.strategy_repr}: task_tables must return one float tensor "
                              f"[{self.num_tasks}, C] per routed layer (C = {self.layer_channels})")
        self._exported = [tab.detach() for tab in tables]
        host = [tab.detach().cpu().numpy() for tab in tables]
        binary = self.site != INPUT_SITE and all(bool(((h == 0) | (h == 1)).all()) for h in host)
        self._exported_host = [h != 0 for h in host] if binary else None
        return True

    def clear_exported(self) -> None:
        """Gates come from the learned strategy again (after :meth:`export_tables`)."""
        self._exported = None
        self._exported_host = None

    def learned_active_units(self, t: torch.Tensor, device: torch.device | str | None = None
                             ) -> list[ActiveUnits | None] | None:
        """The sliced routes of a learned plan at a unit site for model times ``t`` ``[N]``: the active units of
        every routed layer when the exported tables (:meth:`export_tables`) are 0/1 and the batch shares one
        row (float times: the nearest row ``round(u * (T - 1))``); None otherwise (the gates are then applied
        densely, :meth:`layer_gate`)."""
        if self._exported_host is None:
            return None
        shared = shared_timestep(t if not t.is_floating_point() else grid_rows(self.tasks_of(t), self.num_tasks))
        if shared is None:
            return None
        return [_units_of_row(host[shared], device) for host in self._exported_host]

    def host_tables(self) -> list[np.ndarray]:
        """Host copies of the distinct tables, ``bool [T, U]`` each (index ``i`` is :meth:`table` ``(i)``)."""
        return list(self._host_tables)

    def table(self, index: int) -> torch.Tensor:
        return typing.cast(torch.Tensor, getattr(self, f"table_{index}"))

    def tables(self) -> list[tuple[torch.Tensor, list[int]]]:
        """Each distinct table with the routed layers that use it (for heatmaps and reports)."""
        return [(self.table(i), [layer for layer, j in enumerate(self.layer_table) if j == i])
                for i in range(self.num_tables)]

    def gather(self, t: torch.Tensor, dtype: torch.dtype) -> list[torch.Tensor | None]:
        """The ``[N, C]`` mask rows of every layer for timesteps ``t``: one index op per distinct table."""
        if self.learned is not None:
            raise ValueError("a learned routing plan has no mask rows: blocks ask layer_gate() for their gates")
        if self.num_tables == 0:
            return [None] * len(self.layer_table)
        if t.is_floating_point():  # continuous time (flow): nearest row or closed form, see continuous_routing
            if self.continuous is None:
                raise ValueError("float times given to a routing plan built for timestep indices")
            index = self.continuous.rows(t, self.num_tasks)
            if index is None:
                return self._closed_form(t, dtype)
            t = index
        rows = [self.table(i).index_select(0, t).to(dtype) for i in range(self.num_tables)]
        return [None if j is None else rows[j] for j in self.layer_table]

    def _closed_form(self, t: torch.Tensor, dtype: torch.dtype) -> list[torch.Tensor | None]:
        """Mask rows of every layer in closed form at the noise levels of float times ``t`` (one per table)."""
        u = self.continuous.noise_level(t)
        per_table: dict[int, torch.Tensor] = {}
        out: list[torch.Tensor | None] = []
        for layer, index in enumerate(self.layer_table):
            if index is None:
                out.append(None)
                continue
            if index not in per_table:  # layers with one table share one closed form too
                mask = self.continuous.closed_form(u, self.layer_channels[layer], layer=layer,
                                                   num_layers=len(self.layer_channels))
                per_table[index] = mask.to(device=t.device, dtype=dtype)
            out.append(per_table[index])
        return out

    def active_units(self, t: int, device: torch.device | str | None = None) -> list[ActiveUnits | None]:
        """The active units of every layer at one timestep ``t`` (host int): None where all units run.

        One :class:`ActiveUnits` per distinct table, shared by its layers. Contiguous rows (DTR) become
        ``start``/``stop``; others an index tensor on ``device``.
        """
        if not 0 <= t < self.num_tasks:
            raise IndexError(f"timestep {t} outside the plan's {self.num_tasks} tasks")
        chosen = [_units_of_row(host[t], device) for host in self._host_tables]
        return [None if j is None else chosen[j] for j in self.layer_table]

    def shared_units(self, t: torch.Tensor,
                     device: torch.device | str | None = None) -> list[ActiveUnits | None] | None:
        """:meth:`active_units` when every element of the model's times ``t`` ``[N]`` is the same, else None.
        Float times (a continuous process) use the mask rows of that time (nearest row or closed form)."""
        if not t.is_floating_point():
            shared = shared_timestep(t)
            return None if shared is None else self.active_units(shared, device)
        if not bool((t == t.reshape(-1)[0]).all()):
            return None
        rows = [None if r is None else r[0].cpu().numpy() != 0 for r in self.gather(t.reshape(-1)[:1], torch.float32)]
        return [None if r is None else _units_of_row(r, device) for r in rows]

    def extra_repr(self) -> str:
        return (f"strategy={self.strategy_repr}, site={self.site}, tasks={self.num_tasks}, "
                f"layers={len(self.layer_table)}, tables={self.num_tables}"
                + (", learned" if self.learned is not None else ""))


def _units_of_row(row: np.ndarray, device: torch.device | str | None) -> ActiveUnits | None:
    """The active units of one bool table row ``[U]``: None (all), a contiguous range, or an index tensor."""
    idx = np.flatnonzero(row)
    if len(idx) == len(row):
        return None
    if len(idx) == 0:
        return ActiveUnits(count=0, total=len(row))
    if idx[-1] - idx[0] + 1 == len(idx):
        return ActiveUnits(count=len(idx), total=len(row), start=int(idx[0]), stop=int(idx[-1]) + 1)
    return ActiveUnits(count=len(idx), total=len(row), index=torch.from_numpy(idx.astype(np.int64)).to(device))


def _check_table(table: Any, num_tasks: int, channels: int, who: str) -> None:
    if not isinstance(table, torch.Tensor) or table.dtype != torch.bool or tuple(table.shape) != (num_tasks, channels):
        got = f"{getattr(table, 'dtype', type(table).__name__)} {tuple(getattr(table, 'shape', ()))}"
        raise PluginError(f"strategy {who}: mask_table must return a torch.bool tensor of shape "
                          f"({num_tasks}, {channels}), got {got}")


class RoutedBackbone(nn.Module):
    """Base class of backbones: declares routed layers and receives the plan built for them.

    Subclasses implement ``routed_channels(site)`` and ``forward(x, t, y=None)``; in ``forward`` they call
    ``self.layer_masks(t, x.dtype)`` once and pass each block its row (or None). A backbone with more
    routing sites than ``input`` lists them in ``routing_sites``. The full contract (``in_channels``,
    ``input_size``, ``num_classes``; ``null_class`` for guidance) is :class:`dtr_plugins.core.contracts.Backbone`.
    """

    #: where a routing may act; ``input`` (block inputs, the published DTR) is the default of every config
    routing_sites: ClassVar[tuple[str, ...]] = (INPUT_SITE,)

    #: "pixels": works on images (identity codec); "latents": on a codec's latents, whose shape sets
    #: ``in_channels`` and ``input_size`` (see :mod:`dtr_plugins.compose`).
    input_space: ClassVar[Literal["pixels", "latents"]] = "pixels"

    #: the sites at which the backbone runs training batches in timestep buckets (``train.timestep_buckets``,
    #: core/buckets.py): it accepts :class:`~dtr_plugins.core.buckets.BucketedUnits` routes there
    bucketed_sites: ClassVar[tuple[str, ...]] = ()

    #: the backbone asks a learned plan for each routed layer's gate (:meth:`RoutingPlan.layer_gate`) with the
    #: block input; a backbone that does not refuses learned strategies when the plan is attached
    learned_gates: ClassVar[bool] = False
    #: the routing sites at which the backbone applies learned gates (``[N, units]`` rows at a unit site)
    learned_sites: ClassVar[tuple[str, ...]] = (INPUT_SITE,)

    #: parameter-name prefixes of the backbone's per-noise-level blocks (DiT: ``blocks.``): what a time-expert
    #: strategy with ``granularity: block`` gives every expert its own copy of; empty: none declared
    expert_blocks: ClassVar[tuple[str, ...]] = ()
    _in_experts: bool = False  # set while the time experts' dispatch runs this backbone's own forward

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """``forward`` as every module; with time experts (:class:`~dtr_plugins.core.contracts.TimeExpertRouting`)
        each sample runs with the weights of the expert owning its time (:mod:`dtr_plugins.core.expert_dispatch`)."""
        plan = self.plan
        experts = plan.time_experts if plan is not None else None
        if experts is None or self._in_experts:
            return super().__call__(*args, **kwargs)
        self._in_experts = True
        try:
            return split_by_expert(self, experts, plan.tasks_of, args, kwargs)  # type: ignore[union-attr]
        finally:
            self._in_experts = False

    def routing_cond_dim(self) -> int | None:
        """Width of the conditioning vector handed to learned gates (``cond`` of ``layer_gate``); None: none."""
        return None

    def routed_channels(self, site: str = INPUT_SITE) -> list[int]:
        """Unit count of every routed layer at ``site``, in forward order (channels at ``input``)."""
        raise NotImplementedError

    def check_site(self, site: str) -> None:
        """Raise :class:`ConfigError` (one line, the allowed sites) unless this backbone declares ``site``."""
        check_routing_site(type(self), site)

    def attach_routing(self, plan: RoutingPlan) -> None:
        self.check_site(plan.site)
        if plan.is_learned and not self.learned_gates:
            raise ConfigError(f"routing.name: backbone {type(self).__name__} does not support learned routing "
                              f"strategies ({plan.strategy_repr})")
        if plan.is_learned and plan.site not in self.learned_sites:
            raise ConfigError(f"routing.site: {plan.site!r} is not supported by learned strategy {plan.strategy_repr} "
                              f"on backbone {type(self).__name__} (allowed: {', '.join(self.learned_sites)})")
        if len(plan.layer_table) != len(routed_units(self, plan.site)):
            raise ValueError("routing plan was built for a different list of routed layers")
        self.add_module("routing", plan)
        if plan.time_experts is not None:  # the experts copy the backbone's weights (their shared parent)
            named = {name: p for name, p in self.named_parameters()
                     if p.requires_grad and not name.startswith("routing.")}
            plan.time_experts.bind_weights(named, self.expert_blocks)

    @property
    def plan(self) -> RoutingPlan | None:
        return self._modules.get("routing")  # type: ignore[return-value]

    def layer_masks(self, t: torch.Tensor, dtype: torch.dtype) -> list[torch.Tensor | None]:
        """Mask rows per routed layer; all None when no plan is attached (the plain model)."""
        plan = self.plan
        if plan is None:
            return [None] * len(routed_units(self, INPUT_SITE))
        return plan.gather(t, dtype)


def declared_backbone_class(factory: Any) -> type[RoutedBackbone] | None:
    """The RoutedBackbone class a backbone factory builds: the factory itself, or its annotated return type
    (None when neither says, e.g. an unannotated function: its routing site is then checked at build)."""
    cls = factory
    if not isinstance(factory, type):
        try:
            cls = typing.get_type_hints(factory).get("return")
        except Exception:  # noqa: BLE001 -- unresolvable annotations (NameError, TypeError...): nothing declared
            return None
    return cls if isinstance(cls, type) and issubclass(cls, RoutedBackbone) else None


def check_routing_site(backbone: type[RoutedBackbone], site: str, name: str | None = None) -> None:
    """``routing.site`` must be one of ``backbone.routing_sites``; else one :class:`ConfigError` line."""
    sites = backbone.routing_sites
    if site not in sites:
        label = f"backbone '{name}'" if name else f"backbone {backbone.__name__}"
        raise ConfigError(f"routing.site: {site!r} is not a routing site of {label} (allowed: {', '.join(sites)})")


def routed_units(model: Any, site: str = INPUT_SITE) -> list[int]:
    """``model.routed_channels(site)``; at the ``input`` site also for backbones written before routing
    sites existed, whose ``routed_channels()`` takes no argument."""
    if site == INPUT_SITE:
        return list(model.routed_channels())
    return list(model.routed_channels(site))
