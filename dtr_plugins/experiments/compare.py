"""Paired comparisons of a suite's runs against a baseline, with intervals and verdicts (no torch needed).

Pairs: a run and the baseline run (``vanilla`` on the compared axis, default ``routing``) with the same
seed and the same value on every other axis. Routing adds no parameters, so a pair starts from the same
initial weights and sees the same data order; its difference is free of that seed-to-seed noise, and the
spread of the differences over seeds is what an interval needs.

For each strategy, setting (the other axis values) and metric: the paired differences
``d_i = strategy_i - baseline_i`` at the final step, their mean, and a two-sided Student-t interval
``mean +- t_{(1+level)/2, n-1} * sd / sqrt(n)`` (``sd`` with ``n - 1``). Verdict: *better* or *worse* when
the interval excludes 0 (by the metric's direction), else *not resolved*; with one seed there is no
interval and the verdict is *not resolved*.

Convergence: per seed, the first logged step at which the strategy reaches the baseline's final value,
against the first step at which the baseline itself reaches it; their difference (steps saved) gets the
same interval and the verdict *faster* / *slower* / *not resolved*.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import cast

from dtr_plugins.core.metrics import HIGHER, LOWER, compared, value_of
from dtr_plugins.core.numbers import fmt, fmt_interval, fmt_signed
from dtr_plugins.runs.record import RunRecord

BETTER, WORSE, FASTER, SLOWER, NOT_RESOLVED = "better", "worse", "faster", "slower", "not resolved"
INTERVAL_METHOD = "t"

def metric_info(metric: str) -> tuple[str, str] | None:
    """``(title, "lower" | "higher")`` of a compared metric key (:func:`dtr_plugins.core.metrics.compared`; held-out
    bands are ``heldout/band<k>``); None if unknown or not compared."""
    value = value_of(metric)
    if value is None or value.direction is None:
        return None
    return value.title, value.direction


def is_band(metric: str) -> bool:
    return metric.startswith("heldout/band")


def family(label: str) -> str:
    """The plugin name in a value label: ``dtr-a4-b0.8`` -> ``dtr``."""
    return label.split("-", 1)[0]


# ------------------------------------------------------------------------------------------ inputs
# ----------------------------------------------------------------------------------------- outputs
@dataclass(frozen=True)
class PairedDifference:
    strategy: str
    setting: tuple[tuple[str, str], ...]  # the other axes' values, sorted by axis
    metric: str
    direction: str
    step: int | None  # the final step both runs were compared at (None when no seed could be paired)
    seeds: tuple[int, ...]
    baseline: tuple[float, ...]
    values: tuple[float, ...]
    mean: float | None  # mean of values - baseline
    interval: tuple[float, float] | None
    verdict: str
    reason: str = ""

    @property
    def baseline_mean(self) -> float | None:
        return sum(self.baseline) / len(self.baseline) if self.baseline else None


@dataclass(frozen=True)
class Convergence:
    strategy: str
    setting: tuple[tuple[str, str], ...]
    metric: str
    seeds: tuple[int, ...]
    targets: tuple[float, ...]  # the baseline's final value, per seed
    baseline_steps: tuple[int | None, ...]  # first step the baseline reaches its own final value
    steps: tuple[int | None, ...]  # first step the strategy reaches it (None: never)
    mean_step: float | None
    step_interval: tuple[float, float] | None
    mean_saved: float | None  # mean of baseline_step - step (positive: faster)
    saved_interval: tuple[float, float] | None
    verdict: str
    reason: str = ""


@dataclass(frozen=True)
class Claim:
    text: str
    strategy: str  # a strategy family (the plugin name), e.g. "dtr"
    metric: str
    expect: str  # better / worse (paired difference) or faster (convergence)


@dataclass(frozen=True)
class ClaimCheck:
    claim: Claim
    status: str  # confirmed / contradicted / mixed / not resolved / not tested
    detail: str


@dataclass
class ComparisonResult:
    axis: str
    baseline: str
    level: float
    method: str
    differences: list[PairedDifference] = field(default_factory=list)
    convergence: list[Convergence] = field(default_factory=list)
    claims: list[ClaimCheck] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (run id, why it is in no pair)
    max_seeds: int = 0


#: the paper's claims (DTR, ICLR 2024, tables 2-3 and the convergence figure), checked on every suite
PAPER_CLAIMS: tuple[Claim, ...] = (
    Claim("DTR better than vanilla on FID", "dtr", "frechet_inception_distance", BETTER),
    Claim("DTR better than vanilla on held-out loss", "dtr", "heldout/total", BETTER),
    Claim("random routing worse than vanilla on FID", "random", "frechet_inception_distance", WORSE),
    Claim("random routing worse than vanilla on held-out loss", "random", "heldout/total", WORSE),
    Claim("DTR converges faster than vanilla (held-out loss)", "dtr", "heldout/total", FASTER),
)


# ----------------------------------------------------------------------------------------- statistics
def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, tuple[float, float] | None]:
    """Mean and two-sided Student-t interval of ``values`` (``None`` for fewer than two values)."""
    n = len(values)
    if n == 0:
        raise ValueError("no values")
    mean = math.fsum(values) / n
    if n < 2:
        return mean, None
    from scipy import stats

    sd = math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1))
    half = float(stats.t.ppf((1 + level) / 2, n - 1)) * sd / math.sqrt(n)
    return mean, (mean - half, mean + half)


def _verdict(interval: tuple[float, float] | None, good_if_positive: bool, good: str, bad: str) -> tuple[str, str]:
    if interval is None:
        return NOT_RESOLVED, "one seed: no interval"
    low, high = interval
    if low > 0:
        return (good, "") if good_if_positive else (bad, "")
    if high < 0:
        return (bad, "") if good_if_positive else (good, "")
    return NOT_RESOLVED, "interval contains 0"


# -------------------------------------------------------------------------------------------- pairing
def _setting(run: RunRecord, axis: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted((k, str(v)) for k, v in run.axes.items() if k != axis))


def pair_runs(runs: Sequence[RunRecord], axis: str = "routing", baseline: str = "vanilla"
              ) -> tuple[dict[tuple[str, tuple], list[tuple[RunRecord, RunRecord]]], list[tuple[str, str]]]:
    """Group ``(strategy run, baseline run)`` pairs by ``(strategy label, setting)``; also the runs left out
    and why. A baseline is a run whose ``axis`` value is ``baseline`` (or a label of that plugin)."""
    skipped: list[tuple[str, str]] = []
    usable = []
    for run in runs:
        if run.status != "done":
            skipped.append((run.id, f"status {run.status}, not done"))
        elif axis not in run.axes:
            skipped.append((run.id, f"the suite does not vary `{axis}`"))
        else:
            usable.append(run)
    base: dict[tuple, list[RunRecord]] = {}
    for run in usable:
        if family(str(run.axes[axis])) == baseline:
            base.setdefault((_setting(run, axis), run.seed), []).append(run)
    groups: dict[tuple[str, tuple], list[tuple[RunRecord, RunRecord]]] = {}
    for run in usable:
        label = str(run.axes[axis])
        if family(label) == baseline:
            continue
        setting = _setting(run, axis)
        matches = base.get((setting, run.seed), [])
        where = ", ".join(f"{k}={v}" for k, v in setting)
        if not matches:
            skipped.append((run.id, f"no `{baseline}` run with seed {run.seed}" + (f" and {where}" if where else "")))
        elif len(matches) > 1:
            skipped.append((run.id, f"{len(matches)} `{baseline}` runs match (seed {run.seed}): ambiguous baseline"))
        else:
            groups.setdefault((label, setting), []).append((run, matches[0]))
    return groups, skipped


def _paired(label, setting, metric, direction, pairs, level) -> PairedDifference:
    seeds, base, vals, notes, steps = [], [], [], [], set()
    for run, ref in sorted(pairs, key=lambda p: p[0].seed):
        a, b = run.final(metric), ref.final(metric)
        if a is None or b is None:
            continue
        if metric.startswith("heldout/") and run.heldout_fingerprint != ref.heldout_fingerprint:
            notes.append(f"seed {run.seed}: held-out inputs differ from the baseline's")
            continue
        if a[0] != b[0]:
            notes.append(f"seed {run.seed}: final steps differ ({a[0]} vs {b[0]})")
            continue
        seeds.append(run.seed)
        vals.append(float(a[1]))
        base.append(float(b[1]))
        steps.add(int(a[0]))
    if not seeds:
        return PairedDifference(label, setting, metric, direction, None, (), (), (), None, None, NOT_RESOLVED,
                                "; ".join(notes) or "no pair has this metric")
    mean, interval = t_interval([v - b for v, b in zip(vals, base)], level)
    verdict, reason = _verdict(interval, direction == HIGHER, BETTER, WORSE)
    if len(steps) > 1:
        notes.append(f"final steps differ between seeds ({', '.join(map(str, sorted(steps)))})")
    return PairedDifference(label, setting, metric, direction, max(steps), tuple(seeds), tuple(base), tuple(vals),
                            mean, interval, verdict, "; ".join([reason, *notes]).strip("; "))


def first_reach(points: Sequence[tuple[int, float]], target: float, direction: str) -> int | None:
    """The first step whose value is at least as good as ``target`` (``<=`` when lower is better)."""
    for step, value in points:
        if (value <= target) if direction == LOWER else (value >= target):
            return int(step)
    return None


def _convergence(label, setting, metric, direction, pairs, level) -> Convergence | None:
    seeds, targets, base_steps, steps = [], [], [], []
    for run, ref in sorted(pairs, key=lambda p: p[0].seed):
        final = ref.final(metric)
        if final is None or len(ref.curves[metric]) < 2 or not run.curves.get(metric):
            continue  # one logged point says nothing about when it was reached
        if metric.startswith("heldout/") and run.heldout_fingerprint != ref.heldout_fingerprint:
            continue
        seeds.append(run.seed)
        targets.append(float(final[1]))
        base_steps.append(first_reach(ref.curves[metric], final[1], direction))
        steps.append(first_reach(run.curves[metric], final[1], direction))
    if not seeds:
        return None
    reached = [s for s in steps if s is not None]
    mean_step, step_interval = t_interval(reached, level) if reached else (None, None)
    mean_saved = saved_interval = None
    if len(reached) < len(steps):
        verdict, reason = NOT_RESOLVED, f"not reached in {len(steps) - len(reached)} of {len(steps)} seeds"
    else:
        # every seed reached it (steps == reached), and a reference reaches its own final value by its last point
        ref_steps = cast("list[int]", base_steps)
        mean_saved, saved_interval = t_interval([b - s for b, s in zip(ref_steps, reached)], level)
        verdict, reason = _verdict(saved_interval, True, FASTER, SLOWER)
    return Convergence(label, setting, metric, tuple(seeds), tuple(targets), tuple(base_steps), tuple(steps),
                       mean_step, step_interval, mean_saved, saved_interval, verdict, reason)


def check_claims(claims: Sequence[Claim], differences: Sequence[PairedDifference],
                 convergence: Sequence[Convergence]) -> list[ClaimCheck]:
    """For each claim, the verdicts of the matching comparisons (every setting of that strategy family)."""
    out = []
    for claim in claims:
        pool = convergence if claim.expect in (FASTER, SLOWER) else differences
        found = [c for c in pool if family(c.strategy) == claim.strategy and c.metric == claim.metric]
        if not found:
            out.append(ClaimCheck(claim, "not tested", f"no `{claim.strategy}` run with this metric"))
            continue
        opposite = {BETTER: WORSE, WORSE: BETTER, FASTER: SLOWER, SLOWER: FASTER}[claim.expect]
        agree = sum(c.verdict == claim.expect for c in found)
        against = sum(c.verdict == opposite for c in found)
        open_ = len(found) - agree - against
        status = ("mixed" if agree and against else "confirmed" if agree else "contradicted" if against
                  else NOT_RESOLVED)
        parts = [f"{word} in {n}" for n, word in ((agree, claim.expect), (against, opposite), (open_, NOT_RESOLVED))
                 if n]
        reasons = sorted({c.reason for c in found if c.verdict == NOT_RESOLVED and c.reason})
        detail = f"{', '.join(parts)} of {len(found)} setting{'s' * (len(found) > 1)}"
        out.append(ClaimCheck(claim, status, detail + (f": {'; '.join(reasons)}" if reasons else "")))
    return out


def compare_runs(runs: Sequence[RunRecord], *, axis: str = "routing", baseline: str = "vanilla",
                 metrics: Sequence[str] | None = None, level: float = 0.95,
                 convergence_metrics: Sequence[str] = ("heldout/total", "frechet_inception_distance"),
                 claims: Sequence[Claim] = PAPER_CLAIMS) -> ComparisonResult:
    """Every strategy against its baseline, per setting and metric; convergence; the claims' status.

    ``metrics``: the metric keys to compare (default: every metric with a known direction, see
    :func:`metric_info`, that some run logged). Runs that are not ``done``, that lack the axis, or that
    have no baseline partner are listed in ``skipped`` with the reason.
    """
    groups, skipped = pair_runs(runs, axis, baseline)
    if metrics is None:
        seen = {m for r in runs for m in r.curves}
        metrics = sorted((m for m in seen if metric_info(m)), key=_metric_order)
    result = ComparisonResult(axis=axis, baseline=baseline, level=level, method=INTERVAL_METHOD, skipped=skipped)
    for (label, setting), pairs in groups.items():
        result.max_seeds = max(result.max_seeds, len({r.seed for r, _ in pairs}))
        for metric in metrics:
            info = metric_info(metric)
            if info is None:
                raise ValueError(f"metric {metric!r}: direction unknown (known: {', '.join(compared())}, "
                                 "heldout/band<k>)")
            if any(metric in r.curves and metric in b.curves for r, b in pairs):
                result.differences.append(_paired(label, setting, metric, info[1], pairs, level))
        for metric in convergence_metrics:
            info = metric_info(metric)
            conv = _convergence(label, setting, metric, info[1], pairs, level) if info else None
            if conv is not None:
                result.convergence.append(conv)
    result.claims = check_claims(claims, result.differences, result.convergence)
    return result


def _metric_order(metric: str) -> tuple[int, int, str]:
    keys = list(compared())
    if metric in keys:
        return (0, keys.index(metric), metric)
    return (1, int(metric[len("heldout/band"):]) if is_band(metric) else 0, metric)


# ------------------------------------------------------------------------------------------ markdown
_g, _signed, _ci = fmt, fmt_signed, fmt_interval  # one number format for every table (.numbers)


def _where(setting: tuple[tuple[str, str], ...]) -> str:
    return ", ".join(f"{k}={v}" for k, v in setting) or "—"


def _word(verdict: str) -> str:
    return f"**{verdict}**" if verdict != NOT_RESOLVED else f"*{verdict}*"


def direction_check_line(result: ComparisonResult) -> str:
    """One line: what this suite resolved about each of the paper's claims."""
    parts = [f"{c.claim.text}: **{c.status}**" + (f" ({c.detail})" if c.detail else "") for c in result.claims]
    return "**Direction check** (the paper's claims) — " + ("; ".join(parts) if parts else "no claims checked") + "."


def render_comparison_markdown(result: ComparisonResult) -> str:
    """The report section: method, direction check, paired differences, loss per noise band, convergence."""
    pct = f"{result.level:.0%}"
    method = (f"A pair is a run and the `{result.baseline}` run that differs from it only in `{result.axis}` and "
              f"shares its seed (same initial weights and data order). Δ = strategy − baseline at the final logged "
              f"step, mean over seeds, with a {pct} Student-t interval over the seeds' differences (t quantile with "
              f"n − 1 degrees of freedom). Verdict *better* / *worse* when the interval excludes 0 (in the metric's "
              f"direction), else *not resolved*. Held-out loss: epsilon MSE (velocity MSE for flow matching) of the "
              f"EMA weights on fixed held-out images, times and noise, identical for every run of one process. "
              f"Each row is its own test: among many rows, "
              f"about one in {round(1 / (1 - result.level))} differences that are zero in truth still reads as "
              f"resolved.")
    lines = [f"## Paired comparisons against `{result.baseline}`", "", method, ""]
    if not result.differences and not result.convergence:
        lines += [f"No pairs: {'; '.join(sorted({why for _, why in result.skipped})) or 'no runs'}.", ""]
    elif result.max_seeds < 2:
        lines += [("> **One seed per setting: every verdict is *not resolved*.** A single pair cannot tell a "
                  "strategy's effect from seed-to-seed noise (at this scale, FID over a few hundred samples moves "
                  "more between seeds than between strategies). Add seeds, e.g. `seed: [0, 1, 2]` in the suite's "
                   "matrix, to get intervals."), ""]
    lines += [direction_check_line(result), ""]
    main = [d for d in result.differences if not is_band(d.metric)]
    if main:
        lines += ["| strategy | setting | metric | seeds | baseline | Δ mean | " + pct + " interval | verdict |",
                  "|---|---|---|---|---|---|---|---|"]
        for d in main:
            title, direction = metric_info(d.metric) or (d.metric, d.direction)
            arrow = "↓" if direction == LOWER else "↑"
            rel = (f" ({d.mean / d.baseline_mean:+.1%})" if d.mean is not None and d.baseline_mean else "")
            why = f" ({d.reason})" if d.reason else ""
            lines.append(f"| `{d.strategy}` | {_where(d.setting)} | {title} {arrow} | {len(d.seeds)} | "
                         f"{_g(d.baseline_mean)} | {_signed(d.mean)}{rel} | {_ci(d.interval)} | "
                         f"{_word(d.verdict)}{why} |")
        lines.append("")
    bands = [d for d in result.differences if is_band(d.metric)]
    if bands:
        lines += _band_table(bands)
    if result.convergence:
        lines += ["### Convergence", "",
                  ("Step at which each strategy first reaches the baseline's final value (per seed, at the logged "
                  "steps), against the step at which the baseline itself first reaches it; steps saved = baseline "
                   f"step − strategy step, mean and {pct} t-interval over seeds."), "",
                  ("| strategy | setting | metric | seeds | baseline reaches it at | strategy reaches it at | "
                   "steps saved | verdict |"), "|---|---|---|---|---|---|---|---|"]
        for c in result.convergence:
            title = (metric_info(c.metric) or (c.metric,))[0]
            reached = [s for s in c.steps if s is not None]
            base = [s for s in c.baseline_steps if s is not None]
            at = (f"{_g(c.mean_step)} {_ci(c.step_interval).replace('+', '')}" if reached else "never")
            if reached and len(reached) < len(c.steps):
                at += f" ({len(reached)} of {len(c.steps)} seeds)"
            why = f" ({c.reason})" if c.reason else ""
            saved = "—" if c.mean_saved is None else f"{_signed(c.mean_saved)} {_ci(c.saved_interval)}"
            lines.append(f"| `{c.strategy}` | {_where(c.setting)} | {title} | {len(c.seeds)} | "
                         f"{_g(sum(base) / len(base)) if base else '—'} | {at} | {saved} | {_word(c.verdict)}{why} |")
        lines.append("")
    if result.skipped:
        lines += ["Runs in no pair:", ""] + [f"- `{rid}`: {why}" for rid, why in result.skipped] + [""]
    return "\n".join(lines)


def _band_table(bands: Sequence[PairedDifference]) -> list[str]:
    rows: dict[tuple[str, tuple], dict[int, PairedDifference]] = {}
    for d in bands:
        rows.setdefault((d.strategy, d.setting), {})[int(d.metric[len("heldout/band"):])] = d
    width = 1 + max(k for row in rows.values() for k in row)
    mark = {BETTER: " ✓", WORSE: " ✗", NOT_RESOLVED: ""}
    lines = ["### Held-out loss per noise band", "",
             ("Δ held-out loss (strategy − baseline, mean over seeds) per band of timesteps, band 0 = least noise; "
              "✓ better, ✗ worse (interval excludes 0), no mark: not resolved."), "",
             "| strategy | setting | " + " | ".join(f"band {b}" for b in range(width)) + " |",
             "|---|---|" + "---|" * width]
    for (strategy, setting), row in rows.items():
        cells = [f"{_signed(row[b].mean)}{mark[row[b].verdict]}" if b in row else "—" for b in range(width)]
        lines.append(f"| `{strategy}` | {_where(setting)} | " + " | ".join(cells) + " |")
    return lines + [""]
