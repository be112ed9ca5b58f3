"""The run's schedules, built from the config: its EMA rule (``ema`` kind) and its timestep-sampler rule
(``timestep_sampler`` kind); :func:`~dtr_plugins.compose.build.compose` puts both into the
:class:`~dtr_plugins.compose.build.Components`.

EMA: the ``ema`` section, else its shorthand ``train.ema_warmup`` (``warmup``) / ``train.ema_decay``
(``constant``), so configs written before the ``ema`` kind keep their meaning and their fingerprint.
Timesteps: the ``timesteps`` section, else None (the loss weighting's or the process's own sampler,
:func:`dtr_plugins.core.timesteps.choose_sampler`).
"""
from __future__ import annotations

from typing import Any

from dtr_plugins.core.config import PATH_COMPONENT, ExperimentConfig, PluginSection
from dtr_plugins.core.contracts import EmaRule, TimestepRule, missing_members
from dtr_plugins.core.errors import PluginError
from dtr_plugins.core.plugins import PluginRegistry, default_registry

__all__ = ["ema_section", "build_ema", "build_timestep_rule"]


def ema_section(cfg: ExperimentConfig) -> PluginSection:
    """The run's ``ema`` section as applied: the config's, else the one its ``train`` shorthand stands for."""
    if cfg.ema is not None:
        return cfg.ema
    name = "warmup" if cfg.train.ema_warmup else "constant"
    return PluginSection(name=name, decay=cfg.train.ema_decay)


def build_ema(cfg: ExperimentConfig, registry: PluginRegistry | None = None) -> EmaRule:
    """The :class:`~dtr_plugins.core.contracts.EmaRule` of ``cfg`` (PluginError naming what a plugin lacks)."""
    section = ema_section(cfg)
    rule: EmaRule = _checked(registry, "ema", section, EmaRule)
    names = [profile.name for profile in rule.profiles()]
    bad = [n for n in names if not isinstance(n, str) or not PATH_COMPONENT.fullmatch(n) or n in (".", "..")]
    if not names or bad or len(set(names)) != len(names):
        raise PluginError(f"ema '{section.name}': profiles() must name one or more distinct profiles, each letters, "
                          f"digits, '.', '_', '-' (they are parts of file names); got {names!r}")
    return rule


def build_timestep_rule(cfg: ExperimentConfig, registry: PluginRegistry | None = None) -> TimestepRule | None:
    """The :class:`~dtr_plugins.core.contracts.TimestepRule` the ``timesteps`` section names, or None."""
    if cfg.timesteps is None:
        return None
    return _checked(registry, "timestep_sampler", cfg.timesteps, TimestepRule)


def _checked(registry: PluginRegistry | None, kind: str, section: PluginSection, protocol: type) -> Any:
    info = (registry or default_registry()).get(kind, section.name)
    built = info.build(**section.params)
    missing = missing_members(built, protocol)
    if missing:
        raise PluginError(f"{kind} '{section.name}' of {info.origin} does not satisfy the {protocol.__name__} "
                          f"contract: missing {', '.join(missing)} (see dtr_plugins/core/contracts.py)")
    return built
