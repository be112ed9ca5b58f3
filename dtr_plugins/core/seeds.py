"""Seeds: the range a seed may take, and derived seeds kept inside what torch's generators accept.

``torch.Generator.manual_seed`` takes a signed 64-bit integer, so a seed is 0 to ``SEED_MAX``. Seeds derived
by arithmetic (``seed * 100003 + epoch``) can leave that range for a large seed; :func:`derived` folds them back.
"""
from __future__ import annotations

SEED_MAX = 2**63 - 1


def derived(value: int) -> int:
    """``value`` modulo ``SEED_MAX`` (0 to ``SEED_MAX - 1``): equal to ``value`` for any value already below it,
    so the draws of existing runs do not change."""
    return value % SEED_MAX
