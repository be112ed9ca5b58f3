"""A suite compared at equal compute: the cost table of ``report.md`` and ``plots/quality_vs_flops.png``.

Per run (:func:`run_cost`, kept as :attr:`RunRecord.cost` and in ``raw_results.jsonl`` ``cost``), from what the run
recorded itself:

- ``parameters``, ``active_parameters``: ``meta.json`` ``parameters`` (``total``, ``active``;
  :func:`dtr_plugins.core.param_count.parameter_counts`);
- ``train_flops_per_image``: ``meta.json`` ``cost``, from the counted first training step
  (:mod:`dtr_plugins.training.cost`);
- ``sample_flops_per_image``, ``seconds_per_sample``: the last evaluation record that has them (its sampling,
  :func:`dtr_plugins.sampling.sample.generate`: one image's sampling counted, the batches' wall time over the
  images made);
- ``seconds_per_step``: 1 / the median ``steps_per_s`` of the run's ``metrics.jsonl`` windows (the first window,
  with the counted step and warm-up, left out when there are more).

The table (:func:`cost_table`) has one row per run group: counts and FLOPs from its run with the lowest seed (they
do not depend on the seed), wall-clock as the median over the group's runs (so one run slowed by a busy machine
does not set it; a suite's runs share the machine as ``--parallel`` has them), its ratio to the ``vanilla``
group's median of the same setting, and the primary metric's paired verdict (:mod:`.compare`). What the FLOPs count:
:mod:`dtr_plugins.core.cost`; docs/comparisons.md, "Cost at equal compute".
"""
from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from dtr_plugins.core.numbers import MISSING, fmt
from dtr_plugins.experiments.compare import PRIMARY, ComparisonResult, family, metric_info
from dtr_plugins.runs.record import RunRecord, by_group

__all__ = ["COST_KEYS", "run_cost", "cost_table", "quality_points", "plot_quality_vs_flops"]

COST_KEYS = ("parameters", "active_parameters", "train_flops_per_image", "sample_flops_per_image",
             "seconds_per_step", "seconds_per_sample")
BASELINE = "vanilla"


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None


def run_cost(meta: Mapping[str, Any], evals: Sequence[Mapping[str, Any]],
             train: Sequence[Mapping[str, Any]]) -> dict[str, float | None]:
    """A run's cost record (keys :data:`COST_KEYS`, None where the run did not record it) from its ``meta.json``,
    eval records and training records of ``metrics.jsonl`` (module docstring)."""
    found, counts = meta.get("cost"), meta.get("parameters")
    recorded: Mapping[str, Any] = found if isinstance(found, Mapping) else {}
    sizes: Mapping[str, Any] = counts if isinstance(counts, Mapping) else {}
    out: dict[str, float | None] = {"parameters": _number(sizes.get("total")),
                                    "active_parameters": _number(sizes.get("active")),
                                    "train_flops_per_image": _number(recorded.get("train_flops_per_image"))}
    counted = [e for e in evals if _number(e.get("sample_flops_per_image")) is not None]
    sampled: Mapping[str, Any] = counted[-1] if counted else {}
    out["sample_flops_per_image"] = _number(sampled.get("sample_flops_per_image"))
    out["seconds_per_sample"] = _number(sampled.get("seconds_per_image"))
    rates = [v for r in train if (v := _number(r.get("steps_per_s"))) is not None and v > 0]
    rates = rates[1:] if len(rates) > 1 else rates
    out["seconds_per_step"] = 1.0 / statistics.median(rates) if rates else None
    return out


def _setting(run: RunRecord) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, str(v)) for k, v in run.axes.items() if k != "routing"))


def _representatives(results: Sequence[RunRecord]) -> dict[str, RunRecord]:
    """Per group, its finished run with the lowest seed that recorded a cost (else its lowest seed)."""
    out: dict[str, RunRecord] = {}
    for r in sorted(results, key=lambda r: (r.seed, r.id)):
        known = any(v is not None for v in r.cost.values())
        held = out.get(r.group)
        if held is None or (known and not any(v is not None for v in held.cost.values())):
            out[r.group] = r
    return out



def _median(runs: Sequence[RunRecord], key: str) -> float | None:
    """The median of ``key`` over the runs that recorded it (None when none did)."""
    values = [v for r in runs if (v := _number(r.cost.get(key))) is not None]
    return statistics.median(values) if values else None


def _ratio(value: Any, base: Any) -> str:
    v, b = _number(value), _number(base)
    return f"{fmt(v)} ({fmt(v / b, 3)}x)" if v is not None and b else fmt(v)


def _giga(value: Any) -> str:
    v = _number(value)
    return MISSING if v is None else fmt(v / 1e9)


def _verdict(run: RunRecord, comparison: ComparisonResult | None) -> str:
    label = str(run.axes.get("routing", run.routing))
    if family(label) == BASELINE:
        return "baseline"
    for d in comparison.differences if comparison is not None else ():
        if d.family == PRIMARY and d.strategy == label and d.setting == _setting(run):
            return d.verdict + (f" ({d.reason})" if d.reason else "")
    return MISSING


def cost_table(results: Sequence[RunRecord], comparison: ComparisonResult | None = None) -> str:
    """The markdown cost table (module docstring); "" when no run recorded any cost."""
    reps = _representatives(results)
    if not any(v is not None for r in reps.values() for v in r.cost.values()):
        return ""
    members = by_group(results)
    base = {_setting(r): g for g, r in reps.items() if family(str(r.axes.get("routing", r.routing))) == BASELINE}
    metric = comparison.primary if comparison is not None else None
    head = ["run", "timed runs", "params", "active params", "train GFLOPs/img", "sample GFLOPs/img",
            f"s/step (x {BASELINE})", f"s/sample (x {BASELINE})", "verdict" + (f" ({metric})" if metric else "")]
    lines = ["## Cost", "",
             "Parameters and FLOPs counted by torch (matmuls, convolutions, attention; docs/comparisons.md, \"Cost at "
             "equal compute\"); wall-clock: the median over the group's runs (timed runs: how many recorded it), "
             f"with its ratio to the `{BASELINE}` group's median of the same setting; verdict: the primary metric's "
             "paired comparison above.", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for group, r in reps.items():
        runs, ref = members[group], members.get(base.get(_setting(r), ""), [])
        c = r.cost
        timed = sum(_number(x.cost.get("seconds_per_step")) is not None for x in runs)
        lines.append("| " + " | ".join([
            f"`{group}`", str(timed), fmt(_int(c.get("parameters"))), fmt(_int(c.get("active_parameters"))),
            _giga(c.get("train_flops_per_image")), _giga(c.get("sample_flops_per_image")),
            _ratio(_median(runs, "seconds_per_step"), _median(ref, "seconds_per_step")),
            _ratio(_median(runs, "seconds_per_sample"), _median(ref, "seconds_per_sample")),
            _verdict(r, comparison)]) + " |")
    return "\n".join(lines) + "\n"


def _int(value: Any) -> int | None:
    v = _number(value)
    return None if v is None else int(v)


def quality_points(results: Sequence[RunRecord], metric: str) -> dict[str, list[tuple[float, float, int]]]:
    """Per group, ``(sample FLOPs per image, final value of metric, seed)`` of each run that has both."""
    out: dict[str, list[tuple[float, float, int]]] = {}
    for r in sorted(results, key=lambda r: (r.group, r.seed)):
        flops, final = _number(r.cost.get("sample_flops_per_image")), r.final(metric)
        if flops is not None and final is not None:
            out.setdefault(r.group, []).append((flops, final[1], r.seed))
    return out


def plot_quality_vs_flops(results: Sequence[RunRecord], metric: str, path: str | Path) -> Path | None:
    """``path``: the final value of ``metric`` (y) against sampling GFLOPs per image (x), one point per run
    (:func:`dtr_plugins.experiments.plots.plot_quality_vs_flops`); None (nothing drawn) when no run has both."""
    from dtr_plugins.experiments import plots

    points = quality_points(results, metric)
    if not points:
        return None
    info = metric_info(metric)
    label = f"{info[0]} ({info[1]} is better)" if info else metric
    return plots.plot_quality_vs_flops({g: [(f / 1e9, v) for f, v, _ in pts] for g, pts in points.items()},
                                       label, path)
