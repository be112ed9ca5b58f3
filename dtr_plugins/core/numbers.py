"""How numbers are written for people: one helper for every table of a report, ``dtr runs`` and the
end-of-training evaluation line, so the same value reads the same everywhere.

Values are written with :data:`DIGITS` significant digits (``12.35``, ``0.001235``, ``1.235e+05``); integers
as integers; a missing or NaN value as an em dash. Machine-readable files (``results.csv``, ``--json``)
keep full precision and do not use this module.
"""
from __future__ import annotations

import math
from typing import Any

__all__ = ["DIGITS", "MISSING", "fmt", "fmt_interval", "fmt_mean_std", "fmt_signed"]

#: significant digits of a value in a table
DIGITS = 4
#: what a table shows for a value that is missing (or NaN)
MISSING = "—"


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def fmt(value: Any, digits: int = DIGITS) -> str:
    """``value`` for a table: floats with ``digits`` significant digits, ints and strings as they are."""
    if _missing(value):
        return MISSING
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, int):
        return str(value)
    return f"{value:.{digits}g}"


def fmt_signed(value: Any, digits: int = DIGITS) -> str:
    """A difference: always signed (``+0.01235``, ``-1.5``)."""
    return MISSING if _missing(value) else f"{float(value):+.{digits}g}"


def fmt_mean_std(mean: float, std: float, count: int) -> str:
    """``mean ± std`` over ``count`` values (the std with one digit fewer); the mean alone for one value."""
    return f"{fmt(mean)} ± {fmt(std, DIGITS - 2)}" if count > 1 else fmt(mean)


def fmt_interval(interval: tuple[float, float] | None, digits: int = DIGITS) -> str:
    """A signed interval ``[-0.1235, +0.034]``."""
    return MISSING if interval is None else f"[{fmt_signed(interval[0], digits)}, {fmt_signed(interval[1], digits)}]"
