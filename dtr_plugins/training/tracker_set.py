"""Fan-out to experiment trackers: :class:`TrackerSet` mirrors ``metrics.jsonl`` records and pictures.

``metrics.jsonl`` stays the source of truth; trackers get a copy. A tracker that fails while logging
warns once and is dropped for the rest of the run (training never dies because a viewer broke); a
tracker that cannot start is one clear error line before training begins.

The contract (:class:`~dtr_plugins.core.tracking.Tracker`) lives in :mod:`dtr_plugins.core.tracking`;
the built-in trackers in the modules beside this one.
"""
from __future__ import annotations

import contextlib
import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dtr_plugins.core.errors import PluginError, UserError, first_line
from dtr_plugins.core.images import MASK_GAP, mask_rgb
from dtr_plugins.core.plugins import PluginRegistry, default_registry
from dtr_plugins.core.tracking import KIND, SupportsTrackerResume, Tracker


class TrackerWarning(UserWarning):
    """A tracker failed while logging and was switched off for the rest of the run."""


def flatten_scalars(record: Mapping[str, Any] | list[Any] | tuple[Any, ...], prefix: str = "") -> dict[str, float]:
    """The numeric leaves of a metrics record as ``{"a/b": float}``; ``step``, text, bools and None skipped.

    Nested mappings join their keys with ``/``; lists get their index (``loss_bucket/3``).
    """
    out: dict[str, float] = {}
    items: Iterable[tuple[Any, Any]] = record.items() if isinstance(record, Mapping) else enumerate(record)
    for key, value in items:
        name = f"{prefix}{key}"
        if not prefix and key == "step":
            continue
        if isinstance(value, bool) or value is None:
            continue
        if isinstance(value, (int, float)) and math.isfinite(value):
            out[name] = float(value)
        elif isinstance(value, (Mapping, list, tuple)):
            out.update(flatten_scalars(value, prefix=f"{name}/"))
    return out


def as_rgb_uint8(image: np.ndarray | torch.Tensor | str | Path) -> np.ndarray:
    """A picture as ``uint8 [H, W, 3]``: from a ``uint8`` array ``[H, W]``, ``[H, W, 1|3|4]`` or a PNG path.

    Raises ``TypeError``/``ValueError`` for anything else (a programming error, not a tracker failure).
    """
    if isinstance(image, (str, Path)):
        from PIL import Image

        with Image.open(image) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8)
    if isinstance(image, torch.Tensor):
        image = image.detach().cpu().numpy()
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise TypeError(f"tracker images must be uint8 arrays, got {image.dtype}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise ValueError(f"tracker images must be [H, W], [H, W, 1|3|4], got shape {tuple(image.shape)}")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return np.ascontiguousarray(image[:, :, :3])


def routing_heatmap(plan: Any, gap: int = 2) -> np.ndarray | None:
    """The distinct mask tables of a :class:`~dtr_plugins.core.routing.RoutingPlan` side by side.

    Returns ``uint8 [T, sum(C) + gap * (n - 1), 3]``: row 0 is timestep ``T-1`` (t = 0 at the bottom, as
    in ``dtr masks``), in the colours of ``dtr masks`` (:func:`dtr_plugins.core.images.mask_rgb`: active units
    :data:`~dtr_plugins.core.images.MASK_ACTIVE`, masked ones ``MASK_MASKED``), tables separated by ``gap``
    columns of ``MASK_GAP``. ``None`` when nothing is masked (vanilla: no tables).
    """
    tables = [table for table, _ in plan.tables()]
    if not tables:
        return None
    parts: list[np.ndarray] = []
    for i, table in enumerate(tables):
        if i:
            parts.append(np.broadcast_to(np.array(MASK_GAP, np.uint8), (table.shape[0], gap, 3)))
        parts.append(mask_rgb(table)[::-1])
    return np.ascontiguousarray(np.concatenate(parts, axis=1))


class TrackerSet:
    """The run's started trackers, by name; every call fans out to each of them.

    Build it with :meth:`open`; use it as a context manager (or call :meth:`finish`) so every tracker is
    closed, also when training fails.
    """

    def __init__(self, trackers: Mapping[str, Tracker] | None = None):
        self._active: dict[str, Tracker] = dict(trackers or {})
        self.disabled: dict[str, str] = {}  # name -> why it was switched off

    @classmethod
    def open(cls, sections: Sequence[Any], run_dir: str | Path, config: Mapping[str, Any], run_name: str,
             registry: PluginRegistry | None = None,
             previous: Mapping[str, Mapping[str, Any]] | None = None) -> TrackerSet:
        """Build and start each tracker of ``log.trackers`` (resolved ``PluginSection`` entries).

        ``previous``: on a resume, what the previous segment's trackers applied (``meta.json`` ``trackers``);
        a tracker that :class:`SupportsTrackerResume` continues the run recorded there (same run id).
        Raises :class:`PluginError` (one line naming ``log.trackers`` and the tracker) if one cannot
        start; the ones already started are finished first.
        """
        registry = registry or default_registry()
        started: dict[str, Tracker] = {}
        run_dir = Path(run_dir)
        for i, section in enumerate(sections):
            name = section.name
            try:
                tracker = registry.build(KIND, name, **section.params)
                record = (previous or {}).get(name)
                if isinstance(record, Mapping) and isinstance(tracker, SupportsTrackerResume):
                    tracker.resume_from(record)
                tracker.start(run_dir, config, run_name)
            except UserError:
                cls(started).finish()
                raise
            except Exception as exc:
                cls(started).finish()
                raise PluginError(f"log.trackers.{i}: tracker {name!r} could not start: {first_line(exc)}") from exc
            started[name] = tracker
        return cls(started)

    @property
    def names(self) -> list[str]:
        """The trackers still logging."""
        return list(self._active)

    def applied(self) -> dict[str, dict[str, Any]]:
        """``{tracker name: what it applied}`` for ``meta.json`` (see ``Tracker.applied``)."""
        out: dict[str, dict[str, Any]] = {}
        for name, tracker in self._active.items():
            try:
                out[name] = dict(tracker.applied())
            except Exception as exc:  # noqa: BLE001 - a record of settings must not stop training
                out[name] = {"error": first_line(exc)}
        return out

    def log_record(self, record: Mapping[str, Any]) -> None:
        """Mirror one ``metrics.jsonl`` record (``{"step": N, "loss": ..., ...}``); its numbers only."""
        if not self._active:
            return
        values = flatten_scalars(record)
        if values:
            step = int(record["step"])
            self._each(f"log_scalars at step {step}", lambda t: t.log_scalars(step, values))

    def log_image(self, step: int, tag: str, image: np.ndarray | torch.Tensor | str | Path) -> None:
        """Mirror one picture (sample grid, mask heatmap): a ``uint8`` array or a PNG path."""
        if self._active:
            picture = as_rgb_uint8(image)
            self._each(f"log_image {tag!r} at step {step}", lambda t: t.log_image(int(step), tag, picture))

    def finish(self) -> None:
        """Close every tracker; a failure to close warns and the others still close."""
        active, self._active = self._active, {}
        for name, tracker in active.items():
            try:
                tracker.finish()
            except Exception as exc:  # noqa: BLE001 - a viewer must not hide the run's own outcome
                warnings.warn(f"tracker {name!r} failed to finish: {first_line(exc)}", TrackerWarning, stacklevel=2)

    def _each(self, what: str, call: Callable[[Tracker], None]) -> None:
        for name, tracker in list(self._active.items()):
            try:
                call(tracker)
            except Exception as exc:  # noqa: BLE001 - see the module docstring
                why = f"{what}: {first_line(exc)}"
                self.disabled[name] = why
                del self._active[name]
                warnings.warn(f"tracker {name!r} failed ({why}); it is switched off for the rest of this run "
                              f"(metrics.jsonl is unaffected)", TrackerWarning, stacklevel=3)
                with contextlib.suppress(Exception):  # already reported above
                    tracker.finish()

    def __enter__(self) -> TrackerSet:
        return self

    def __exit__(self, *exc: object) -> None:
        self.finish()


__all__ = ["TrackerSet", "TrackerWarning", "as_rgb_uint8", "flatten_scalars", "routing_heatmap"]
