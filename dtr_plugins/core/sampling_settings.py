"""How images are sampled: one frozen :class:`SamplingSettings`, built once from a run's config and the caller's
options (:meth:`SamplingSettings.from_config`), passed down to the sampler, and recorded as applied
(:meth:`SamplingSettings.applied`: the settings part of ``samples.json`` and of each evaluation record).
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dtr_plugins.core.config import ExperimentConfig


@dataclass(frozen=True)
class SolverSettings:
    """What a process's ``sample`` loop reads (one batch): the sampler and its steps, DDIM's ``eta``,
    classifier-free guidance (``cfg_scale``; 1.0: none) on ``cfg_channels`` (``all`` or ``first3``), and
    whether predicted ``x0`` is clipped to ``[-1, 1]``. Each process holds its own defaults
    (``default_solver``).

    ``guidance_interval``: ``(lo, hi)``, guidance only at noise levels in ``[lo, hi]`` (the process's unit:
    Gaussian ``sigma``, flow matching ``t``; :mod:`dtr_plugins.core.guided_sampling`); None: everywhere.
    ``time_shift``: flow matching's SD3 shift of the time grid (1.0: none; :func:`dtr_plugins.core.flow.shifted`).
    ``atol`` / ``rtol``: tolerances of an adaptive solver (``dopri5``; SiT's defaults 1e-6 / 1e-3).
    """

    sampler: str
    respacing: Any  #: gaussian: ``"250"``, ``"ddim50"``, a step list...; flow matching: the step count
    eta: float = 0.0
    cfg_scale: float = 1.0
    cfg_channels: str = "all"
    clip_denoised: bool = True
    guidance_interval: tuple[float, float] | None = None
    time_shift: float = 1.0
    atol: float = 1e-6
    rtol: float = 1e-3


#: samplers with an adaptive step size: ``respacing`` is not read, ``atol`` / ``rtol`` are
ADAPTIVE_SAMPLERS = ("dopri5",)


def interval_problem(interval: Sequence[float]) -> str | None:
    """Why ``interval`` is not a guidance interval ``[lo, hi]`` (one phrase), or None: two numbers, not NaN,
    ``0 <= lo < hi`` (``hi`` may be ``.inf``)."""
    values = list(interval)
    if len(values) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in values):
        return f"{values!r} is not allowed; give two numbers [lo, hi]"
    lo, hi = float(values[0]), float(values[1])
    if math.isnan(lo) or math.isnan(hi) or not 0 <= lo < hi or math.isinf(lo):
        return f"[{lo:g}, {hi:g}] is not allowed; give 0 <= lo < hi (hi may be .inf)"
    return None


def positive_problem(value: float) -> str | None:
    """Why ``value`` is not a finite number > 0 (``time_shift``, ``atol``, ``rtol``), or None."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        return f"{value!r} is not allowed; give a finite number > 0"
    return None


@dataclass(frozen=True)
class SamplingOverrides:
    """The caller's options over the config's ``sample`` section (``dtr sample`` flags, keywords of
    ``sample`` / ``generate``); ``None``: the config's value."""

    num: int | None = None  #: images to make (``--num-samples``); None: the config's ``sample.num_samples``
    sampler: str | None = None  #: ``--sampler``
    respacing: str | None = None  #: ``--respacing`` (gaussian: ``250``, ``ddim50``...; flow matching: steps)
    cfg_scale: float | None = None  #: ``--cfg-scale`` (1.0: no guidance)
    batch_size: int | None = None  #: ``--batch-size``
    seed: int = 0  #: ``--seed``: the noise of image ``i`` comes from ``(seed, i // batch_size)``
    labels: Sequence[int] | None = None  #: ``--labels``: one class per image (default: balanced)
    use_ema: bool = True  #: False (``--no-ema``): the raw weights
    prompts: Sequence[str] | None = None  #: ``--prompt`` / ``--prompts-file``: image ``i`` gets prompt ``i mod P``
    guidance_interval: Sequence[float] | None = None  #: ``--guidance-interval LO HI``
    time_shift: float | None = None  #: ``--time-shift`` (flow matching)
    atol: float | None = None  #: ``--atol`` (adaptive samplers)
    rtol: float | None = None  #: ``--rtol`` (adaptive samplers)


@dataclass(frozen=True)
class SamplingSettings:
    """The sampling applied: every value the sampler reads, resolved (option over config) and frozen.

    ``clip_denoised`` is the applied value (the config's, for a bounded codec only); ``batch_size`` is at most
    ``num_samples``. ``from_options`` names the fields an option set (an error names ``--sampler`` rather
    than ``sample.sampler``).
    """

    sampler: str
    respacing: str
    eta: float
    cfg_scale: float
    cfg_channels: str
    clip_denoised: bool
    num_samples: int
    batch_size: int
    seed: int = 0
    use_ema: bool = True
    labels: tuple[int, ...] | None = None
    from_options: frozenset[str] = frozenset()
    prompts: tuple[str, ...] | None = None  #: text-to-image: image ``i`` is made from ``prompts[i % len(prompts)]``
    #: text-to-image: what encodes the prompts (the run's ``TextStage``, set by ``dataclasses.replace``); not a
    #: recorded setting, never compared
    prompt_encoder: Any = field(default=None, compare=False, repr=False)
    guidance_interval: tuple[float, float] | None = None
    time_shift: float = 1.0
    atol: float = 1e-6
    rtol: float = 1e-3

    @classmethod
    def from_config(cls, cfg: ExperimentConfig, overrides: SamplingOverrides | None = None, *,
                    bounded: bool = True) -> SamplingSettings:
        """The one place the settings are built: ``overrides`` over ``cfg.sample``; ``bounded``: the codec's
        outputs lie in ``[-1, 1]`` (pixels), the only case where ``sample.clip_denoised`` applies."""
        o = overrides if overrides is not None else SamplingOverrides()
        s = cfg.sample
        num = s.num_samples if o.num is None else o.num
        given = {"sampler": o.sampler, "respacing": o.respacing, "cfg_scale": o.cfg_scale,
                 "batch_size": o.batch_size, "labels": o.labels, "guidance_interval": o.guidance_interval,
                 "time_shift": o.time_shift, "atol": o.atol, "rtol": o.rtol}
        interval = o.guidance_interval if o.guidance_interval is not None else s.guidance_interval
        return cls(sampler=o.sampler or s.sampler, respacing=o.respacing or s.respacing, eta=s.eta,
                   cfg_scale=s.cfg_scale if o.cfg_scale is None else float(o.cfg_scale),
                   cfg_channels=s.cfg_channels, clip_denoised=bool(s.clip_denoised and bounded),
                   num_samples=num, batch_size=min(o.batch_size or s.batch_size, num), seed=o.seed,
                   use_ema=o.use_ema, labels=None if o.labels is None else tuple(o.labels),
                   from_options=frozenset(k for k, v in given.items() if v is not None),
                   prompts=None if o.prompts is None else tuple(o.prompts),
                   guidance_interval=None if interval is None else (float(interval[0]), float(interval[1])),
                   time_shift=float(s.time_shift if o.time_shift is None else o.time_shift),
                   atol=float(s.atol if o.atol is None else o.atol), rtol=float(s.rtol if o.rtol is None else o.rtol))

    @property
    def guided(self) -> bool:
        """Classifier-free guidance applies (a scale other than 1.0)."""
        return self.cfg_scale != 1.0

    def key(self, field: str) -> str:
        """Where a field's value came from, for an error line: ``--cfg-scale`` or ``sample.cfg_scale``."""
        return f"--{field.replace('_', '-')}" if field in self.from_options else f"sample.{field}"

    def solver(self) -> SolverSettings:
        """The part a process's ``sample`` reads."""
        return SolverSettings(self.sampler, self.respacing, self.eta, self.cfg_scale, self.cfg_channels,
                              self.clip_denoised, self.guidance_interval, self.time_shift, self.atol, self.rtol)

    def applied(self) -> dict[str, Any]:
        """The record of these settings (``samples.json``, evaluation records, the report's header).

        ``guidance_interval`` is ``[lo, hi]`` only when guided with an interval (else None); ``atol`` / ``rtol``
        only for an adaptive sampler (:data:`ADAPTIVE_SAMPLERS`, else None)."""
        guided, adaptive = self.guided, self.sampler in ADAPTIVE_SAMPLERS
        interval = list(self.guidance_interval) if guided and self.guidance_interval is not None else None
        return {"sampler": self.sampler, "respacing": str(self.respacing), "cfg_scale": self.cfg_scale,
                "guidance": guided, "cfg_channels": self.cfg_channels if guided else None,
                "guidance_interval": interval, "time_shift": self.time_shift,
                "atol": self.atol if adaptive else None, "rtol": self.rtol if adaptive else None,
                "eta": self.eta, "clip_denoised": self.clip_denoised, "num_samples": self.num_samples,
                "seed": self.seed, "batch_size": self.batch_size}

    def describe(self) -> str:
        """The solver in a few words for a folder name or a header: ``ddim50``, ``dopri5-atol1e-06-rtol0.001``,
        with ``-shift3`` and ``-gi0.3-2.9`` when set."""
        sampler, respacing = self.sampler, str(self.respacing)
        if sampler in ADAPTIVE_SAMPLERS:
            text = f"{sampler}-atol{self.atol:g}-rtol{self.rtol:g}"
        else:
            text = respacing if respacing.startswith(sampler) else f"{sampler}{respacing}"
        if self.time_shift != 1.0:
            text += f"-shift{self.time_shift:g}"
        if self.guided and self.guidance_interval is not None:
            text += f"-gi{self.guidance_interval[0]:g}-{self.guidance_interval[1]:g}"
        return text
