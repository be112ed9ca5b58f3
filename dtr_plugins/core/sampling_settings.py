"""How images are sampled: one frozen :class:`SamplingSettings`, built once from a run's config and the caller's
options (:meth:`SamplingSettings.from_config`), passed down to the sampler, and recorded as applied
(:meth:`SamplingSettings.applied`: the settings part of ``samples.json`` and of each evaluation record).
"""
from __future__ import annotations

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
    (``default_solver``)."""

    sampler: str
    respacing: Any  #: gaussian: ``"250"``, ``"ddim50"``, a step list...; flow matching: the step count
    eta: float = 0.0
    cfg_scale: float = 1.0
    cfg_channels: str = "all"
    clip_denoised: bool = True


@dataclass(frozen=True)
class SamplingOverrides:
    """The caller's options over the config's ``sample`` section (``dtr sample`` flags, keywords of
    ``sample`` / ``generate``); ``None``: the config's value."""

    num: int = 64  #: images to make (``--num-samples``); the config's ``sample.num_samples`` is not read
    sampler: str | None = None  #: ``--sampler``
    respacing: str | None = None  #: ``--respacing`` (gaussian: ``250``, ``ddim50``...; flow matching: steps)
    cfg_scale: float | None = None  #: ``--cfg-scale`` (1.0: no guidance)
    batch_size: int | None = None  #: ``--batch-size``
    seed: int = 0  #: ``--seed``: the noise of image ``i`` comes from ``(seed, i // batch_size)``
    labels: Sequence[int] | None = None  #: ``--labels``: one class per image (default: balanced)
    use_ema: bool = True  #: False (``--no-ema``): the raw weights
    prompts: Sequence[str] | None = None  #: ``--prompt`` / ``--prompts-file``: image ``i`` gets prompt ``i mod P``


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

    @classmethod
    def from_config(cls, cfg: ExperimentConfig, overrides: SamplingOverrides | None = None, *,
                    bounded: bool = True) -> SamplingSettings:
        """The one place the settings are built: ``overrides`` over ``cfg.sample``; ``bounded``: the codec's
        outputs lie in ``[-1, 1]`` (pixels), the only case where ``sample.clip_denoised`` applies."""
        o = overrides if overrides is not None else SamplingOverrides()
        s = cfg.sample
        given = {"sampler": o.sampler, "respacing": o.respacing, "cfg_scale": o.cfg_scale,
                 "batch_size": o.batch_size, "labels": o.labels}
        return cls(sampler=o.sampler or s.sampler, respacing=o.respacing or s.respacing, eta=s.eta,
                   cfg_scale=s.cfg_scale if o.cfg_scale is None else float(o.cfg_scale),
                   cfg_channels=s.cfg_channels, clip_denoised=bool(s.clip_denoised and bounded),
                   num_samples=o.num, batch_size=min(o.batch_size or s.batch_size, o.num), seed=o.seed,
                   use_ema=o.use_ema, labels=None if o.labels is None else tuple(o.labels),
                   from_options=frozenset(k for k, v in given.items() if v is not None),
                   prompts=None if o.prompts is None else tuple(o.prompts))

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
                              self.clip_denoised)

    def applied(self) -> dict[str, Any]:
        """The record of these settings (``samples.json``, evaluation records, the report's header)."""
        return {"sampler": self.sampler, "respacing": str(self.respacing), "cfg_scale": self.cfg_scale,
                "guidance": self.guided, "cfg_channels": self.cfg_channels if self.guided else None,
                "eta": self.eta, "clip_denoised": self.clip_denoised, "num_samples": self.num_samples,
                "seed": self.seed, "batch_size": self.batch_size}
