"""Paired comparisons of a suite's runs against a baseline, with intervals and verdicts (no torch needed).

Pairs: a run and the baseline run (``vanilla`` on the compared axis, default ``routing``) with the same
seed and the same value on every other axis. Routing adds no parameters, so a pair starts from the same
initial weights and sees the same data order; its difference is free of that seed-to-seed noise, and the
spread of the differences over seeds is what an interval needs.

For each strategy, setting (the other axis values) and metric: the paired differences
``d_i = strategy_i - baseline_i`` at the final step, their mean, and a two-sided Student-t interval
``mean +- t_{(1+level)/2, n-1} * sd / sqrt(n)`` (``sd`` with ``n - 1``). Verdict: *better* or *worse* when
the interval excludes 0 (by the metric's direction), else *not resolved*.

Multiplicity: a suite declares one *primary* metric (default ``heldout/total``; the suite file's
``primary`` key). Its comparisons, one per strategy and setting, form one family: with ``k`` of them each uses
the Bonferroni-adjusted interval at level ``1 - (1 - level) / k`` (the plain ``level`` when one strategy is
compared), so that a suite of many strategies does not read as resolved by chance more often than a suite of
one. Per strategy and setting, the other metrics form one family and the held-out noise bands another; each row
of a family of ``m`` rows uses the interval at level ``1 - (1 - level) / m`` (Bonferroni 1936; Dunn 1961,
"Multiple comparisons among means"), which keeps the family-wise error rate at most ``1 - level``. Convergence
rows of one strategy and setting are one family too; the noisy-half tests of all strategies and settings are
one family, as the primary comparisons are.

No verdict from nothing: with fewer than :data:`MIN_PAIRS` pairs, or differences that are all equal (zero
spread: a zero-width interval says nothing about noise), the verdict is *not resolvable* and the reason
names which (``"2 pairs"``, ``"no spread"``).

Convergence: per seed, the first logged step at which the strategy reaches the baseline's final value,
against the first step at which the baseline itself reaches it; their difference (steps saved) gets the
same interval and the verdict *faster* / *slower* / *not resolved*.

Where the gain lies (:data:`NOISY_HALF`): per pair, with the held-out bands split into a cleaner and a noisier
half (band 0 is the cleanest under both processes; an odd middle band is left out), the mean over the noisier
half's bands of the relative difference ``loss_b(strategy) / loss_b(baseline) - 1`` (each band counts the
same, though the losses differ by orders of magnitude between bands), minus the same mean over the cleaner
half. Negative: the strategy gains more (or loses less), relative to the
baseline, where the noise is high. One test per strategy and setting (one Bonferroni family over them) with the
same interval and verdict words (*better*: the interval is below 0); it is what the claim "helps the noisy bands
most" is checked on, and is not a row of the band table.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import cast

from dtr_plugins.core.metrics import HIGHER, LOWER, compared, value_of
from dtr_plugins.runs.record import RunRecord

BETTER, WORSE, FASTER, SLOWER, NOT_RESOLVED = "better", "worse", "faster", "slower", "not resolved"
NOT_RESOLVABLE = "not resolvable"
INTERVAL_METHOD = "t"
MIN_PAIRS = 3  # fewer pairs give no verdict word: the t quantile with 1 degree of freedom is 12.7
DEFAULT_PRIMARY = "heldout/total"
PRIMARY, SECONDARY, BANDS, CONVERGENCE = "primary", "other metrics", "noise bands", "convergence"
EMPHASIS = "noisy half"  # the family of the noisy-half tests (one per strategy and setting)
#: the per-pair statistic of "where the gain lies" (module docstring): noisier-half minus cleaner-half relative
#: difference of the held-out band losses; lower means the strategy's gain is in the noisy bands
NOISY_HALF = "heldout/noisy_half_minus_clean_half"
BONFERRONI, NO_CORRECTION = "Bonferroni", "none"

def metric_info(metric: str) -> tuple[str, str] | None:
    """``(title, "lower" | "higher")`` of a compared metric key (:func:`dtr_plugins.core.metrics.compared`; held-out
    bands are ``heldout/band<k>``); None if unknown or not compared."""
    value = value_of(metric)
    if value is None or value.direction is None:
        return None
    return value.title, value.direction


def is_band(metric: str) -> bool:
    return metric.startswith("heldout/band")


#: the label of a matrix value ``null`` (an optional section left unset, e.g. ``token_routing: null``)
NO_VALUE = "none"


def family(label: str) -> str:
    """The plugin name in a value label: ``dtr-a4-b0.8`` -> ``dtr``; a strategy with a token router,
    ``dtr-a4-b0.8+tread``, is the family ``dtr+tread`` (neither ``dtr`` nor a baseline)."""
    return "+".join(part.split("-", 1)[0] for part in label.split("+"))


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
    interval: tuple[float, float] | None  # at ``interval_level`` (Bonferroni-adjusted in a family of several)
    verdict: str
    reason: str = ""
    family: str = PRIMARY  # PRIMARY, SECONDARY, BANDS or EMPHASIS
    family_size: int = 1
    interval_level: float = 0.95

    @property
    def correction(self) -> str:
        return BONFERRONI if self.family_size > 1 else NO_CORRECTION

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
    family_size: int = 1
    interval_level: float = 0.95

    @property
    def correction(self) -> str:
        return BONFERRONI if self.family_size > 1 else NO_CORRECTION


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
    emphasis: list[PairedDifference] = field(default_factory=list)  # metric NOISY_HALF, one per strategy+setting
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (run id, why it is in no pair)
    max_seeds: int = 0
    primary: str = DEFAULT_PRIMARY


#: the paper's claims (DTR, ICLR 2024, tables 2-3 and the convergence figure), checked on every suite
PAPER_CLAIMS: tuple[Claim, ...] = (
    Claim("DTR better than vanilla on FID", "dtr", "frechet_inception_distance", BETTER),
    Claim("DTR better than vanilla on held-out loss", "dtr", "heldout/total", BETTER),
    Claim("random routing worse than vanilla on FID", "random", "frechet_inception_distance", WORSE),
    Claim("random routing worse than vanilla on held-out loss", "random", "heldout/total", WORSE),
    Claim("DTR converges faster than vanilla (held-out loss)", "dtr", "heldout/total", FASTER),
    Claim("DTR's gain lies in the noisy bands (held-out loss, noisier half against cleaner half)", "dtr",
          NOISY_HALF, BETTER),
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


def adjusted_level(level: float, family_size: int) -> float:
    """Bonferroni: each of ``family_size`` intervals at ``1 - (1 - level) / family_size``."""
    return 1 - (1 - level) / max(family_size, 1)


def _verdict(values: Sequence[float], interval: tuple[float, float] | None, good_if_positive: bool, good: str,
             bad: str) -> tuple[str, str]:
    """The verdict word and its reason; *not resolvable* with fewer than :data:`MIN_PAIRS` values or none
    of them different (zero spread, up to a relative 1e-9 for the rounding of ``a - b``)."""
    if len(values) < MIN_PAIRS:
        return NOT_RESOLVABLE, f"{len(values)} pair{'s' * (len(values) != 1)}"
    if interval is None or max(values) - min(values) <= 1e-9 * max(abs(v) for v in values):
        return NOT_RESOLVABLE, "no spread"  # equal up to float rounding of the subtraction
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
    and why. A baseline is a run whose ``axis`` value is ``baseline`` (a plugin, any of its labels, or one
    exact label such as ``dtr-a4-b0.8-sinput``, whose plugin's other labels are then strategies)."""

    def is_baseline(label: str) -> bool:
        return label == baseline or family(label) == baseline

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
        if is_baseline(str(run.axes[axis])):
            base.setdefault((_setting(run, axis), run.seed), []).append(run)
    groups: dict[tuple[str, tuple], list[tuple[RunRecord, RunRecord]]] = {}
    for run in usable:
        label = str(run.axes[axis])
        if is_baseline(label):
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
        return PairedDifference(label, setting, metric, direction, None, (), (), (), None, None, NOT_RESOLVABLE,
                                "; ".join(notes) or "no pair has this metric", interval_level=level)
    diffs = [v - b for v, b in zip(vals, base)]
    mean, interval = t_interval(diffs, level)
    verdict, reason = _verdict(diffs, interval, direction == HIGHER, BETTER, WORSE)
    if len(steps) > 1:
        notes.append(f"final steps differ between seeds ({', '.join(map(str, sorted(steps)))})")
    return PairedDifference(label, setting, metric, direction, max(steps), tuple(seeds), tuple(base), tuple(vals),
                            mean, interval, verdict, "; ".join([reason, *notes]).strip("; "), interval_level=level)


def _half_gains(finals: Sequence[tuple[tuple[int, float], tuple[int, float]]]) -> tuple[float, float]:
    """The mean over the cleaner and over the noisier half of the bands (``(run, baseline)`` final points,
    sorted by band index) of the per-band relative difference ``run / baseline - 1``."""
    half = len(finals) // 2
    rel = [a[1] / r[1] - 1 for a, r in finals]
    return math.fsum(rel[:half]) / half, math.fsum(rel[-half:]) / half


def _band_gains(pairs) -> tuple[tuple[int, ...], tuple[float, ...], tuple[float, ...], int] | None:
    """Per seed of one strategy and setting, the cleaner and the noisier half's relative differences (module
    docstring), as ``(seeds, clean, noisy, step)``; None when no pair has 2+ bands."""
    seeds, clean, noisy, steps = [], [], [], set()
    for run, ref in sorted(pairs, key=lambda p: p[0].seed):
        bands = sorted((m for m in run.curves if is_band(m) and m in ref.curves),
                       key=lambda m: int(m[len("heldout/band"):]))
        points = [(run.final(b), ref.final(b)) for b in bands]
        finals = [(a, r) for a, r in points if a is not None and r is not None and a[0] == r[0] and r[1] > 0]
        if len(bands) < 2 or len(finals) < len(points) or run.heldout_fingerprint != ref.heldout_fingerprint:
            continue
        gain_clean, gain_noisy = _half_gains(finals)
        seeds.append(run.seed)
        clean.append(gain_clean)
        noisy.append(gain_noisy)
        steps.add(int(finals[0][0][0]))
    return (tuple(seeds), tuple(clean), tuple(noisy), max(steps)) if seeds else None


def _band_emphasis(label, setting, gains, level) -> PairedDifference:
    """The :data:`NOISY_HALF` row of one strategy and setting from its :func:`_band_gains`, tested at ``level``;
    ``values``: per seed the noisier half's relative difference, ``baseline``: the cleaner half's."""
    seeds, clean, noisy, step = gains
    diffs = [n - c for n, c in zip(noisy, clean)]
    mean, interval = t_interval(diffs, level)
    verdict, reason = _verdict(diffs, interval, False, BETTER, WORSE)
    return PairedDifference(label, setting, NOISY_HALF, LOWER, step, seeds, clean, noisy, mean, interval, verdict,
                            reason, interval_level=level)


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
        saved = [b - s for b, s in zip(ref_steps, reached)]
        mean_saved, saved_interval = t_interval(saved, level)
        verdict, reason = _verdict(saved, saved_interval, True, FASTER, SLOWER)
    return Convergence(label, setting, metric, tuple(seeds), tuple(targets), tuple(base_steps), tuple(steps),
                       mean_step, step_interval, mean_saved, saved_interval, verdict, reason, interval_level=level)


def _where_of(c: PairedDifference | Convergence) -> str:
    return f"`{c.strategy}`" + "".join(f", {k}={v}" for k, v in c.setting)


def _emphasis_numbers(c: PairedDifference | Convergence) -> str:
    """For a :data:`NOISY_HALF` row: the two halves' mean relative differences and the interval, in points."""
    if not isinstance(c, PairedDifference) or c.metric != NOISY_HALF or c.mean is None:
        return ""
    noisy, clean = (100 * math.fsum(v) / len(v) for v in (c.values, c.baseline))
    where = (f", {100 * c.mean:+.2f} points, {c.interval_level * 100:.4g}% interval [{100 * c.interval[0]:+.2f}, "
             f"{100 * c.interval[1]:+.2f}]" if c.interval else "")
    return (f" (noisier half {noisy:+.2f}%, cleaner half {clean:+.2f}% against the baseline{where}; "
            f"{len(c.seeds)} pairs)")


def check_claims(claims: Sequence[Claim], differences: Sequence[PairedDifference],
                 convergence: Sequence[Convergence],
                 emphasis: Sequence[PairedDifference] = ()) -> list[ClaimCheck]:
    """For each claim, the verdicts of the matching comparisons (every setting of that strategy family);
    a claim on :data:`NOISY_HALF` reads ``emphasis`` and its detail gives each setting's interval.

    *confirmed*: every setting resolves in the claimed direction; *contradicted*: every setting resolves
    against it; *mixed*: some setting resolves and the settings do not all agree; *not resolved*: no
    setting resolves; *not tested*: no comparison. The detail names each setting and its verdict.
    """
    out = []
    for claim in claims:
        pool = convergence if claim.expect in (FASTER, SLOWER) else emphasis if claim.metric == NOISY_HALF \
            else differences
        found = [c for c in pool if family(c.strategy) == claim.strategy and c.metric == claim.metric]
        if not found:
            out.append(ClaimCheck(claim, "not tested", f"no `{claim.strategy}` run with this metric"))
            continue
        opposite = {BETTER: WORSE, WORSE: BETTER, FASTER: SLOWER, SLOWER: FASTER}[claim.expect]
        agree = sum(c.verdict == claim.expect for c in found)
        against = sum(c.verdict == opposite for c in found)
        status = ("confirmed" if agree == len(found) else "contradicted" if against == len(found)
                  else NOT_RESOLVED if agree + against == 0 else "mixed")
        parts = [f"{c.verdict}" + (f" ({c.reason})" if c.reason else "") + _emphasis_numbers(c)
                 + f" at {_where_of(c)}" for c in found]
        out.append(ClaimCheck(claim, status, "; ".join(parts)))
    return out


def compare_runs(runs: Sequence[RunRecord], *, axis: str = "routing", baseline: str = "vanilla",
                 metrics: Sequence[str] | None = None, level: float = 0.95,
                 convergence_metrics: Sequence[str] = ("heldout/total", "frechet_inception_distance"),
                 claims: Sequence[Claim] = PAPER_CLAIMS, primary: str = DEFAULT_PRIMARY) -> ComparisonResult:
    """Every strategy against its baseline, per setting and metric; convergence; the claims' status.

    ``metrics``: the metric keys to compare (default: every metric with a known direction, see
    :func:`metric_info`, that some run logged). ``primary``: the metric whose comparisons, one per strategy and
    setting, form one Bonferroni family; the others and the bands are Bonferroni families per strategy and setting
    (module docstring). Runs that are
    not ``done``, that lack the axis, or that have no baseline partner are listed in ``skipped`` with the
    reason. Raises ``ValueError`` for a metric (or primary) of unknown direction.
    """
    if metric_info(primary) is None:
        raise ValueError(f"primary metric {primary!r}: direction unknown (known: {', '.join(compared())}, "
                         f"heldout/band<k>)")
    groups, skipped = pair_runs(runs, axis, baseline)
    if metrics is None:
        seen = {m for r in runs for m in r.curves}
        metrics = sorted((m for m in seen if metric_info(m)), key=_metric_order)
    result = ComparisonResult(axis=axis, baseline=baseline, level=level, method=INTERVAL_METHOD, skipped=skipped,
                              primary=primary)
    for metric in metrics:
        if metric_info(metric) is None:
            raise ValueError(f"metric {metric!r}: direction unknown (known: {', '.join(compared())}, "
                             "heldout/band<k>)")
    present_in = {key: [m for m in metrics if any(m in r.curves and m in b.curves for r, b in pairs)]
                  for key, pairs in groups.items()}
    # the primary metric of every strategy and setting is one family, and so is the noisy-half test
    primaries = sum(primary in present for present in present_in.values())
    gains = {key: _band_gains(pairs) for key, pairs in groups.items()}  # read once, tested at the family's level
    emphases = sum(g is not None for g in gains.values())
    for (label, setting), pairs in groups.items():
        result.max_seeds = max(result.max_seeds, len({r.seed for r, _ in pairs}))
        present = present_in[(label, setting)]
        families = {m: PRIMARY if m == primary else BANDS if is_band(m) else SECONDARY for m in present}
        sizes = {f: sum(v == f for v in families.values()) for f in set(families.values())}
        for metric in present:
            size = primaries if families[metric] == PRIMARY else sizes[families[metric]]
            d = _paired(label, setting, metric, metric_info(metric)[1], pairs,  # type: ignore[index]
                        adjusted_level(level, size))
            result.differences.append(replace(d, family=families[metric], family_size=size))
        directions = [(m, info[1]) for m in convergence_metrics if (info := metric_info(m))]
        found = [m for m, d in directions if _convergence(label, setting, m, d, pairs, level) is not None]
        for metric, direction in directions:
            conv = _convergence(label, setting, metric, direction, pairs, adjusted_level(level, len(found)))
            if conv is not None:
                result.convergence.append(replace(conv, family_size=len(found)))
        if (found_gains := gains[(label, setting)]) is not None:
            emphasis = _band_emphasis(label, setting, found_gains, adjusted_level(level, emphases))
            result.emphasis.append(replace(emphasis, family=EMPHASIS, family_size=emphases))
    result.claims = check_claims(claims, result.differences, result.convergence, result.emphasis)
    return result


def _metric_order(metric: str) -> tuple[int, int, str]:
    keys = list(compared())
    if metric in keys:
        return (0, keys.index(metric), metric)
    return (1, int(metric[len("heldout/band"):]) if is_band(metric) else 0, metric)
