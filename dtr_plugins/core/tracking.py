"""The experiment-tracker contract and the config-time check of ``log.trackers``.

A tracker mirrors what the trainer writes to ``metrics.jsonl`` (which stays the source of truth) into
an external viewer: TensorBoard, Weights & Biases, MLflow. Trackers are plugins of kind ``tracker``,
registered through the ``dtr_register_trackers`` hook; the built-ins live in
:mod:`dtr_plugins.training.tracker_set`. The contract itself (:class:`Tracker`, :class:`TrackerFactory`) is in
:mod:`dtr_plugins.core.contracts`; this module holds the config-time check (imported by ``core.config``).
"""
from __future__ import annotations

import importlib.util
from collections.abc import Sequence

from dtr_plugins.core.contracts import Tracker, TrackerFactory
from dtr_plugins.core.errors import ConfigError
from dtr_plugins.core.plugins import PluginRegistry

__all__ = ["KIND", "Tracker", "TrackerFactory", "check_trackers", "requirement_missing"]

KIND = "tracker"




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


__all__ = ["KIND", "Tracker", "TrackerFactory", "check_trackers", "requirement_missing"]
