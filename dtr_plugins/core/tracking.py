"""The experiment-tracker contract and the config-time check of ``log.trackers``.

A tracker mirrors what the trainer writes to ``metrics.jsonl`` (which stays the source of truth) into
an external viewer: TensorBoard, Weights & Biases, MLflow. Trackers are plugins of kind ``tracker``,
registered through the ``dtr_register_trackers`` hook; the built-ins live in :mod:`dtr_plugins.trackers`,
the fan-out in :mod:`dtr_plugins.training.tracker_set`. The contract itself (:class:`Tracker`,
:class:`TrackerFactory`) is in :mod:`dtr_plugins.core.contracts`; this module holds the config-time check
(imported by ``core.config``) and :class:`RunLabels`.
"""
from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from dtr_plugins.core.contracts import SupportsTrackerResume, Tracker, TrackerFactory
from dtr_plugins.core.errors import ConfigError
from dtr_plugins.core.plugins import PluginRegistry

KIND = "tracker"
#: what every tracker run is, for viewers that label runs by their job (W&B ``job_type``)
JOB_TYPE = "train"


@dataclass(frozen=True)
class RunLabels:
    """How trackers label one training run, read from its resolved config (``ExperimentConfig.to_dict()``).

    ``suite``: ``log.suite`` (set by ``dtr suite`` to the suite's name; None for a lone run): W&B group,
    MLflow experiment. ``strategy`` (``routing.name``), ``process`` (``diffusion.name``) and ``seed`` become tags.
    """

    suite: str | None
    strategy: str | None
    process: str | None
    seed: int | None

    @classmethod
    def of(cls, config: Mapping[str, Any]) -> RunLabels:
        def section_name(key: str) -> str | None:
            section = config.get(key)
            name = section.get("name") if isinstance(section, Mapping) else None
            return str(name) if name is not None else None

        log = config.get("log")
        suite = log.get("suite") if isinstance(log, Mapping) else None
        seed = config.get("seed")
        return cls(suite=str(suite) if suite else None, strategy=section_name("routing"),
                   process=section_name("diffusion"), seed=int(seed) if isinstance(seed, int) else None)

    @property
    def tags(self) -> list[str]:
        """``[strategy, process, "seed=N"]``, each when known: ``["dtr", "ddpm", "seed=0"]``."""
        return [t for t in (self.strategy, self.process, None if self.seed is None else f"seed={self.seed}") if t]


def requirement_missing(module: str, install: str) -> str | None:
    """``None`` if ``module`` can be imported here (checked without importing it), else ``install``."""
    try:
        found = importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        found = False
    return None if found else install


def check_trackers(names: Sequence[str], registry: PluginRegistry) -> None:
    """Every name in ``log.trackers`` is a registered tracker whose package is installed, none twice.

    Raises :class:`ConfigError` with one line naming ``log.trackers``, the culprit and the fix.
    """
    known = registry.names(KIND)
    seen: set[str] = set()
    for i, name in enumerate(names):
        if name in seen:
            raise ConfigError(f"log.trackers.{i}: tracker {name!r} is listed twice")
        seen.add(name)
        if name not in known:
            raise ConfigError(f"log.trackers.{i}: unknown tracker {name!r} "
                              f"(known: {', '.join(known) or 'none installed'})")
        factory = registry.get(KIND, name).factory
        missing = factory.missing_requirement() if isinstance(factory, TrackerFactory) else None
        if missing:
            raise ConfigError(f"log.trackers.{i}: tracker {name!r} needs a package that is not installed; "
                              f"install it with: {missing}")


__all__ = ["JOB_TYPE", "KIND", "RunLabels", "SupportsTrackerResume", "Tracker", "TrackerFactory", "check_trackers",
           "requirement_missing"]
