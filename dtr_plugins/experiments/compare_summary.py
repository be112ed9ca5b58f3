"""A suite's primary metric in plain words, from its raw-results lines (``raw_results.jsonl``): what
``scripts/figures.py`` writes into the ``summary-<machine>-<suite>`` blocks of README.md and docs/.

Per strategy (and setting of the other axes): the mean and sample SD over seeds of the primary metric's final
value; per strategy but the baseline: the mean paired difference against the baseline run of the same seed and
setting, its Student-t interval and the verdict, exactly as :func:`~dtr_plugins.experiments.compare.compare_runs`
computes them for the suite's report (docs/comparisons.md).
"""
from __future__ import annotations

import statistics
from collections.abc import Sequence
from typing import Any

from dtr_plugins.core.metrics import value_of
from dtr_plugins.core.numbers import fmt, fmt_interval, fmt_signed
from dtr_plugins.experiments.compare import PRIMARY, compare_runs
from dtr_plugins.experiments.raw_results import primary_of, records_from_raw

__all__ = ["primary_summary"]


def _label(name: str, setting: Sequence[tuple[str, str]]) -> str:
    return name + (f" ({', '.join(f'{k}={v}' for k, v in setting)})" if setting else "")


def _mean_sd(values: list[float]) -> str:
    """Three significant digits (a held-out loss of 0.0667 stays 0.0667, not 0.07), the SD two."""
    sd = f" ± {fmt(statistics.stdev(values), 2)}" if len(values) > 1 else ""
    return f"{fmt(statistics.fmean(values), 3)}{sd}"


def primary_summary(lines: list[dict[str, Any]], source: str) -> str:
    """One Markdown paragraph (ending in a newline) about the primary metric of the finished runs among ``lines``
    (raw-results lines, :mod:`~dtr_plugins.experiments.raw_results`); ``source`` names the file in the text.
    Raises ValueError for a primary metric of unknown direction (as ``compare_runs``)."""
    done = [x for x in lines if x["status"] == "done"]
    primary = primary_of(done)
    known = value_of(primary)
    result = compare_runs(records_from_raw(done), primary=primary)
    per: dict[str, list[float]] = {}
    for x in done:
        if x["final"].get(primary) is not None:
            setting = sorted((k, str(v)) for k, v in x["axes"].items() if k != result.axis)
            per.setdefault(_label(str(x["axes"].get(result.axis, "base")), setting), []).append(
                float(x["final"][primary]))
    parts = [f"{name} {_mean_sd(values)} ({len(values)} runs)" for name, values in per.items()]
    text = (f"**{known.title if known else primary}** (the primary metric; `{source}`, mean ± SD over seeds): "
            f"{'; '.join(parts)}.")
    for d in result.differences:
        if d.family != PRIMARY or d.mean is None:
            continue
        family = f", Bonferroni over {d.family_size} comparisons" if d.family_size > 1 else ""
        interval = (f", {d.interval_level * 100:.4g}% interval{family} {fmt_interval(d.interval, 3)}"
                    if d.interval else "")
        reason = f" ({d.reason})" if d.reason else ""
        text += (f" {_label(d.strategy, d.setting)} minus {result.baseline}, paired by seed over {len(d.seeds)} "
                 f"seeds: {fmt_signed(d.mean, 3)}{interval}: **{d.verdict}**{reason}.")
    return text + "\n"
