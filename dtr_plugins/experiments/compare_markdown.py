"""The report section of a paired comparison (:mod:`.compare`) as markdown: method, direction check,
paired differences with the test behind each verdict, loss per noise band, convergence."""
from __future__ import annotations

from collections.abc import Sequence

from dtr_plugins.core.numbers import fmt, fmt_interval, fmt_signed
from dtr_plugins.experiments.compare import (
    BETTER,
    LOWER,
    MIN_PAIRS,
    NOT_RESOLVABLE,
    NOT_RESOLVED,
    WORSE,
    ComparisonResult,
    Convergence,
    PairedDifference,
    is_band,
    metric_info,
)

_g, _signed, _ci = fmt, fmt_signed, fmt_interval  # one number format for every table (.numbers)


def _where(setting: tuple[tuple[str, str], ...]) -> str:
    return ", ".join(f"{k}={v}" for k, v in setting) or "—"


def _word(verdict: str) -> str:
    return f"*{verdict}*" if verdict in (NOT_RESOLVED, NOT_RESOLVABLE) else f"**{verdict}**"


def test_label(row: PairedDifference | Convergence) -> str:
    """How a row's verdict was tested: ``"primary, 95%"``, ``"primary, Bonferroni, family of 3, 98.33%"`` or
    ``"Bonferroni, family of 4, 98.75%"``."""
    level = f"{row.interval_level * 100:.4g}%"
    prefix = "primary, " if isinstance(row, PairedDifference) and row.family == "primary" else ""
    if row.family_size > 1:
        return f"{prefix}{row.correction}, family of {row.family_size}, {level}"
    return prefix + level


def direction_check_line(result: ComparisonResult) -> str:
    """One line: what this suite resolved about each of the paper's claims, and the settings behind it."""
    parts = [f"{c.claim.text}: **{c.status}**" + (f" ({c.detail})" if c.detail else "") for c in result.claims]
    return ("**Direction check** (the paper's claims; *confirmed* only when every setting resolves in the claimed "
            "direction) — " + ("; ".join(parts) if parts else "no claims checked") + ".")


def _method(result: ComparisonResult) -> str:
    pct = f"{result.level:.0%}"
    primary = (metric_info(result.primary) or (result.primary,))[0]
    return (f"A pair is a run and the `{result.baseline}` run that differs from it only in `{result.axis}` and "
            f"shares its seed (same initial weights and data order). Δ = strategy − baseline at the final logged "
            f"step, mean over seeds, with a Student-t interval over the seeds' differences (t quantile with "
            f"n − 1 degrees of freedom). Verdict *better* / *worse* when the interval excludes 0 (in the metric's "
            f"direction), else *not resolved*; *not resolvable* with fewer than {MIN_PAIRS} pairs or when every "
            f"pair differs by the same amount (no spread). Multiplicity: the primary metric's ({primary}) "
            f"comparisons, one per strategy and setting, are one family, as are the noisy-half tests of the "
            f"direction check; per strategy and setting, the other metrics are one family and the noise bands "
            f"another; each row of a family of m uses a Bonferroni-adjusted interval (level "
            f"1 − {1 - result.level:.2g}/m; the plain {pct} when m is 1), so that a family reads as resolved by "
            f"chance at most {1 - result.level:.0%} of the time; the column *test* names the correction and the "
            f"family size of each row. Held-out loss: epsilon "
            f"MSE (velocity MSE for flow matching) of the EMA weights on fixed held-out images, times and noise, "
            f"identical for every run of one process.")


def render_comparison_markdown(result: ComparisonResult) -> str:
    """The report section: method, direction check, paired differences, loss per noise band, convergence."""
    lines = [f"## Paired comparisons against `{result.baseline}`", "", _method(result), ""]
    if not result.differences and not result.convergence:
        lines += [f"No pairs: {'; '.join(sorted({why for _, why in result.skipped})) or 'no runs'}.", ""]
    elif result.max_seeds < MIN_PAIRS:
        lines += [(f"> **{result.max_seeds} seed{'s' * (result.max_seeds != 1)} per setting: every verdict is "
                   f"*not resolvable*.** Fewer than {MIN_PAIRS} pairs cannot tell a strategy's effect from "
                   "seed-to-seed noise (at this scale, FID over a few hundred samples moves more between seeds than "
                   "between strategies). Add seeds, e.g. `seed: [0, 1, 2]` in the suite's matrix."), ""]
    lines += [direction_check_line(result), ""]
    main = [d for d in result.differences if not is_band(d.metric)]
    if main:
        lines += ["| strategy | setting | metric | seeds | baseline | Δ mean | interval | test | verdict |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for d in main:
            title, direction = metric_info(d.metric) or (d.metric, d.direction)
            arrow = "↓" if direction == LOWER else "↑"
            rel = (f" ({d.mean / d.baseline_mean:+.1%})" if d.mean is not None and d.baseline_mean else "")
            why = f" ({d.reason})" if d.reason else ""
            lines.append(f"| `{d.strategy}` | {_where(d.setting)} | {title} {arrow} | {len(d.seeds)} | "
                         f"{_g(d.baseline_mean)} | {_signed(d.mean)}{rel} | {_ci(d.interval)} | {test_label(d)} | "
                         f"{_word(d.verdict)}{why} |")
        lines.append("")
    bands = [d for d in result.differences if is_band(d.metric)]
    if bands:
        lines += _band_table(bands)
    if result.convergence:
        lines += _convergence_table(result.convergence)
    if result.skipped:
        lines += ["Runs in no pair:", ""] + [f"- `{rid}`: {why}" for rid, why in result.skipped] + [""]
    return "\n".join(lines)


def _convergence_table(rows: Sequence[Convergence]) -> list[str]:
    lines = ["### Convergence", "",
             ("Step at which each strategy first reaches the baseline's final value (per seed, at the logged "
              "steps), against the step at which the baseline itself first reaches it; steps saved = baseline "
              "step − strategy step, mean and t-interval over seeds (the convergence rows of one strategy and "
              "setting are one Bonferroni family)."), "",
             ("| strategy | setting | metric | seeds | baseline reaches it at | strategy reaches it at | "
              "steps saved | test | verdict |"), "|---|---|---|---|---|---|---|---|---|"]
    for c in rows:
        title = (metric_info(c.metric) or (c.metric,))[0]
        reached = [s for s in c.steps if s is not None]
        base = [s for s in c.baseline_steps if s is not None]
        at = (f"{_g(c.mean_step)} {_ci(c.step_interval).replace('+', '')}" if reached else "never")
        if reached and len(reached) < len(c.steps):
            at += f" ({len(reached)} of {len(c.steps)} seeds)"
        why = f" ({c.reason})" if c.reason else ""
        saved = "—" if c.mean_saved is None else f"{_signed(c.mean_saved)} {_ci(c.saved_interval)}"
        lines.append(f"| `{c.strategy}` | {_where(c.setting)} | {title} | {len(c.seeds)} | "
                     f"{_g(sum(base) / len(base)) if base else '—'} | {at} | {saved} | {test_label(c)} | "
                     f"{_word(c.verdict)}{why} |")
    return lines + [""]


def _band_table(bands: Sequence[PairedDifference]) -> list[str]:
    rows: dict[tuple[str, tuple], dict[int, PairedDifference]] = {}
    for d in bands:
        rows.setdefault((d.strategy, d.setting), {})[int(d.metric[len("heldout/band"):])] = d
    width = 1 + max(k for row in rows.values() for k in row)
    mark = {BETTER: " ✓", WORSE: " ✗"}
    tests = sorted({test_label(d) for d in bands})
    lines = ["### Held-out loss per noise band", "",
             ("Δ held-out loss (strategy − baseline, mean over seeds) per band of timesteps, band 0 = least noise; "
              "✓ better, ✗ worse (the band's interval excludes 0), no mark: not resolved or not resolvable. The "
              f"bands of one strategy and setting are one family: {'; '.join(tests)}."), "",
             "| strategy | setting | " + " | ".join(f"band {b}" for b in range(width)) + " |",
             "|---|---|" + "---|" * width]
    for (strategy, setting), row in rows.items():
        cells = [f"{_signed(row[b].mean)}{mark.get(row[b].verdict, '')}" if b in row else "—" for b in range(width)]
        lines.append(f"| `{strategy}` | {_where(setting)} | " + " | ".join(cells) + " |")
    return lines + [""]
