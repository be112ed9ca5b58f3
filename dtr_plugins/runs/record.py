"""The one record of a run that the suite report, the paired comparisons and ``dtr runs`` read (:class:`RunRecord`).

Built from a run directory by :func:`dtr_plugins.experiments.compare_records.run_record`, through the
readers of :class:`~dtr_plugins.runs.rundir.RunDir`; no torch needed.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

__all__ = ["RunRecord", "by_group"]


@dataclass(frozen=True)
class RunRecord:
    """One run of a suite.

    ``axes`` maps each varied axis (not the seed) to its value's label; ``curves`` maps each compared metric
    to its ``(step, value)`` points in step order; ``heldout_fingerprint`` identifies the held-out inputs it
    was scored on (:mod:`dtr_plugins.evaluation.heldout`). ``group``: the run id without the seed (runs of one
    group differ only by seed); ``routing``: the strategy's name; ``config`` / ``meta``: the run's
    ``config.yaml`` and ``meta.json``; ``evals``: one eval record per eval step (with ``"step"``); ``train``: the
    training records of ``metrics.jsonl``; ``current``: trained with the suite's current plan (its recorded
    plan fingerprint is the planned one, or unknown); ``error``: the failure line its ``status.json`` recorded;
    ``cost``: its parameters, FLOPs per image and speeds (:func:`dtr_plugins.experiments.cost_report.run_cost`).
    ``dtr runs`` shows a view of it (:class:`dtr_plugins.runs.listing.RunSummary`).
    """

    id: str
    seed: int = 0
    axes: Mapping[str, str] = field(default_factory=dict)
    curves: Mapping[str, Sequence[tuple[int, float]]] = field(default_factory=dict)
    status: str = "done"
    heldout_fingerprint: str | None = None
    group: str = ""
    routing: str = "?"
    config: Mapping[str, Any] = field(default_factory=dict)
    meta: Mapping[str, Any] = field(default_factory=dict)
    evals: Sequence[Mapping[str, Any]] = field(default_factory=list)
    train: Sequence[Mapping[str, Any]] = field(default_factory=list)
    current: bool = True
    error: str = ""
    cost: Mapping[str, Any] = field(default_factory=dict)

    def final(self, metric: str) -> tuple[int, float] | None:
        """The last ``(step, value)`` of ``metric``, None when the run logged none."""
        points = self.curves.get(metric) or ()
        if not points:
            return None
        step, value = points[-1]
        return (step, value)


def by_group(records: Sequence[RunRecord]) -> dict[str, list[RunRecord]]:
    """The records per :attr:`RunRecord.group` (runs that differ only by seed), in the order first seen."""
    out: dict[str, list[RunRecord]] = {}
    for r in records:
        out.setdefault(r.group, []).append(r)
    return out
