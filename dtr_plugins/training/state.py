"""What a checkpoint restores: :class:`TrainState` (model, its EMA profiles, optimizer, grad scaler, loss
weighting, step), the EMA update and the routing plan a backbone carries.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import torch

from dtr_plugins.core.config import ExperimentConfig
from dtr_plugins.core.contracts import LossWeighting
from dtr_plugins.core.routing import RoutedBackbone, RoutingPlan

__all__ = ["TrainState", "ema_update", "routing_plan"]


@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """``ema = decay * ema + (1 - decay) * model`` over all parameters with foreach kernels; buffers are copied
    from ``model`` (a learned router's state such as ``switch``'s integer ``matching`` cannot be averaged, and
    the EMA model must route as the trained one does). ``ema`` is a copy of ``model`` (same structure)."""
    ema_params: list[torch.Tensor] = list(ema.parameters())
    params = [p.detach() for p in model.parameters()]
    torch._foreach_lerp_(ema_params, params, 1.0 - decay)
    for ema_buffer, buffer in zip(ema.buffers(), model.buffers(), strict=True):
        ema_buffer.copy_(buffer)


def routing_plan(model: torch.nn.Module) -> RoutingPlan | None:
    """The routing plan attached to a backbone (None for another module or a backbone without one)."""
    return model.plan if isinstance(model, RoutedBackbone) else None


@dataclass
class TrainState:
    """Everything a checkpoint restores: the model, its EMA, the optimizer, the fp16 grad scaler, the
    loss weighting (ANT-UW learns weights) and the number of optimizer steps taken. ``ema`` is the first
    profile of the run's :class:`~dtr_plugins.core.contracts.EmaRule`; ``extra_emas`` the others, named
    ``profiles[1:]`` (checkpoint key ``ema_profiles``)."""

    model: torch.nn.Module
    ema: torch.nn.Module
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    weighting: torch.nn.Module
    step: int = 0
    profiles: list[str] = field(default_factory=lambda: ["ema"])
    extra_emas: list[torch.nn.Module] = field(default_factory=list)
    #: the regulariser's trainable part (REPA's projector; None without one): optimised, saved under
    #: ``regularizer``, never averaged nor exported
    regularizer: torch.nn.Module | None = None

    @classmethod
    def create(cls, model: torch.nn.Module, weighting: torch.nn.Module, cfg: ExperimentConfig,
               device: torch.device, profiles: Sequence[str] = ("ema",),
               regularizer: torch.nn.Module | None = None) -> TrainState:
        """A fresh state: one EMA per name of ``profiles``, each a copy of ``model``; AdamW over the backbone, the
        weighting's groups, then the learned routing strategy's groups (their own lr / weight decay; none for
        static routing), then the regulariser's trainable part (the backbone's lr and weight decay; REPA trains
        its projector with the model)."""
        import copy

        ema = copy.deepcopy(model).requires_grad_(False).eval()
        extra = [copy.deepcopy(ema) for _ in profiles[1:]]
        plan = routing_plan(model)
        routing_groups = plan.param_groups() if plan is not None else []
        routed = {id(p) for g in routing_groups for p in g["params"]}
        groups = [{"params": [p for p in model.parameters() if p.requires_grad and id(p) not in routed]}]
        groups += list(cast(LossWeighting, weighting).param_groups())
        groups += routing_groups
        if regularizer is not None:
            groups.append({"params": [p for p in regularizer.parameters() if p.requires_grad]})
        optimizer = torch.optim.AdamW(groups, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay,
                                      fused=device.type == "cuda")
        scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.precision == "fp16")
        return cls(model, ema, optimizer, scaler, weighting, profiles=list(profiles), extra_emas=extra,
                   regularizer=regularizer)

    def trained(self) -> list[torch.nn.Parameter]:
        """The parameters the step clips and all-reduces with the model's: the model's and the regulariser's."""
        extra = list(self.regularizer.parameters()) if self.regularizer is not None else []
        return [*self.model.parameters(), *extra]

    def averages(self) -> list[torch.nn.Module]:
        """Every tracked average, in the order of ``profiles``."""
        return [self.ema, *self.extra_emas]

    def load(self, ckpt: dict[str, Any]) -> None:
        """Restore from a checkpoint whose ``model`` weights were already applied to ``self.model``."""
        from dtr_plugins.core.errors import CheckpointError

        self.ema.load_state_dict(ckpt["ema"])
        saved = ckpt.get("ema_profiles") or {}
        for name, module in zip(self.profiles[1:], self.extra_emas, strict=True):
            if name not in saved:
                raise CheckpointError(f"checkpoint of step {ckpt.get('step')}: no ema_profiles.{name} (its EMA "
                                      f"profiles: {', '.join(['ema', *saved]) or 'ema'})")
            module.load_state_dict(saved[name])
        if self.regularizer is not None:
            if "regularizer" not in ckpt:
                raise CheckpointError(f"checkpoint of step {ckpt.get('step')}: no regularizer weights (it was trained "
                                      f"without the regularizer section)")
            self.regularizer.load_state_dict(ckpt["regularizer"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.weighting.load_state_dict(ckpt["loss_weighting"])
        if "scaler" in ckpt:
            self.scaler.load_state_dict(ckpt["scaler"])
        self.step = int(ckpt["step"])

    def checkpoint(self, cfg: ExperimentConfig) -> dict[str, Any]:
        """The checkpoint payload (format of :mod:`dtr_plugins.core.checkpoint`), with the config's identity
        (``config_fingerprint``) and the routing the weights were trained with (``routing``)."""
        from dtr_plugins.core.checkpoint import routing_record
        from dtr_plugins.core.fingerprint import weights_fingerprint

        config = cfg.to_dict()
        extra = {"ema_profiles": {name: m.state_dict() for name, m in zip(self.profiles[1:], self.extra_emas)}
                 } if self.extra_emas else {}
        if self.regularizer is not None:
            extra["regularizer"] = self.regularizer.state_dict()
        return dict(step=self.step, model=self.model.state_dict(), ema=self.ema.state_dict(), **extra,
                    optimizer=self.optimizer.state_dict(), loss_weighting=self.weighting.state_dict(),
                    scaler=self.scaler.state_dict(), rng={"torch": torch.get_rng_state()}, data_position=self.step,
                    config=config, config_fingerprint=weights_fingerprint(config), routing=routing_record(self.model))

    @torch.no_grad()
    def nonfinite(self) -> list[str]:
        """Names (``model.X``, ``ema.X``) of floating tensors of the model and its EMA holding a NaN or inf."""
        bad = []
        named = [("model", self.model), ("ema", self.ema)]
        named += [(f"ema_profiles.{n}", m) for n, m in zip(self.profiles[1:], self.extra_emas)]
        named += [("regularizer", self.regularizer)] if self.regularizer is not None else []
        for prefix, module in named:
            for name, t in module.state_dict().items():
                if t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    bad.append(f"{prefix}.{name}")
        return bad
