"""The experiment-tracker contract and the config-time check of ``log.trackers``.

A tracker mirrors what the trainer writes to ``metrics.jsonl`` (which stays the source of truth) into
an external viewer: TensorBoard, Weights & Biases, MLflow. Trackers are plugins of kind ``tracker``,
registered through the ``dtr_register_trackers`` hook; the built-ins live in
:mod:`dtr_plugins.training.tracker_set`. This module holds only the contract (imported by ``core.config``),
so ``core`` never imports ``engine``.
"""
from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from dtr_plugins.core.errors import ConfigError
from dtr_plugins.core.plugins import PluginRegistry

KIND = "tracker"


@runtime_checkable
class Tracker(Protocol):
    """One experiment tracker, driven by the trainer through :class:`~dtr_plugins.training.tracker_set.TrackerSet`.

    Call order: ``start`` once, then any number of ``log_scalars`` / ``log_image``, then ``finish``.
    """

    def start(self, run_dir: Path, config: Mapping[str, Any], run_name: str) -> None:
        """Open the tracker's run; everything it writes goes under ``run_dir`` unless configured otherwise.

        ``config`` is the resolved experiment config (``ExperimentConfig.to_dict()``), ``run_name`` the
        experiment's ``name``. Raises on a bad setup (the trainer reports it as one line and stops).
        """

    def log_scalars(self, step: int, values: Mapping[str, float]) -> None:
        """Record ``values`` (flat ``name -> float``, names joined with ``/``) at training step ``step``."""

    def log_image(self, step: int, tag: str, image: np.ndarray) -> None:
        """Record one picture: ``image`` is ``uint8 [H, W, 3]`` (RGB) at training step ``step``."""

    def finish(self) -> None:
        """Flush and close the run; called once, also when training stopped with an error."""

    def applied(self) -> dict[str, Any]:
        """What this tracker actually uses, for ``meta.json`` (folder, mode, store URI, run id); after ``start``."""


@runtime_checkable
class TrackerFactory(Protocol):
    """What a tracker plugin registers: called with its validated params, it returns a :class:`Tracker`.

    ``missing_requirement()`` is asked at config validation (``dtr validate``, before training): ``None``
    when the tracker can run here, else the install command that makes it usable.
    """

    def __call__(self, **params: Any) -> Tracker: ...

    def missing_requirement(self) -> str | None: ...


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
