"""The one guidance rule: classifier-free guidance (Ho & Salimans 2022) needs a
class-conditional backbone (``num_classes > 1``) trained with label dropout, i.e. one with a ``null_class``, or a
text-conditioned one (:class:`~dtr_plugins.core.contracts.SupportsTextConditioning`, trained with caption dropout:
the empty caption's condition is the null ``y``).

``dtr validate``, ``dtr train``, ``dtr sample``, :func:`~dtr_plugins.sampling.sample.generate` and the
processes' samplers all refuse a scale the backbone cannot apply with :func:`check_guidance`'s one line.
"""
from __future__ import annotations

from typing import Any

from dtr_plugins.core.errors import ConfigError

__all__ = ["check_guidance"]


def check_guidance(model: Any, scale: float, source: str = "sample.cfg_scale") -> None:
    """Refuse a guidance ``scale`` != 1 that ``model`` cannot apply.

    ``model``: a :class:`~dtr_plugins.core.contracts.Backbone` (``num_classes``); guidance needs it to be
    :class:`~dtr_plugins.core.contracts.SupportsGuidance` (``null_class``) too (a meta-device build will do).
    ``source``: the config key or option
    the scale came from, named first in the message. Raises :class:`ConfigError` (one line).
    """
    if scale == 1.0:
        return
    num_classes = int(model.num_classes or 0)
    from dtr_plugins.core.contracts import SupportsGuidance, SupportsTextConditioning

    if isinstance(model, SupportsTextConditioning):  # the empty caption's condition is the null y
        return

    if num_classes > 1 and isinstance(model, SupportsGuidance) and model.null_class is not None:
        return
    why = "is unconditional" if num_classes <= 1 else "has no null class (it was trained without label dropout)"
    raise ConfigError(f"{source}: {scale:g} asks for classifier-free guidance, but this backbone "
                      f"(num_classes={num_classes}) {why}; use a scale of 1.0")
