"""The built-in ``ema`` rules: ``constant``, ``warmup`` and EDM2's power-function ``power``.

``constant`` and ``warmup`` are what ``train.ema_decay`` / ``train.ema_warmup`` always meant (that shorthand
still selects them): one average with decay ``decay``, or ``min(decay, (1 + step) / (10 + step))`` (useful on
short runs). ``power`` tracks one power-function average per ``sigma_rels`` entry (Karras et al., 2024, EDM2;
the math in :mod:`dtr_plugins.core.phema`): with ``ema.snapshot_every`` set, its snapshots let ``dtr ema RUN
--sigma-rel S`` reconstruct an average of another width after training (docs/ema.md).
"""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from dtr_plugins.core.contracts import EmaProfile
from dtr_plugins.core.hookspecs import hookimpl
from dtr_plugins.core.phema import exponent_of

#: the widest power-function profile (exponent 0: the plain mean of all weights so far)
MAX_SIGMA_REL = (1 / 12) ** 0.5


class DecayParams(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    decay: float = Field(0.9999, ge=0, lt=1, description="the EMA decay per optimizer step")


class PowerParams(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)
    sigma_rels: list[float] = Field(default_factory=lambda: [0.05, 0.10], min_length=1, max_length=8,
                                    description="relative widths of the tracked power-function profiles (EDM2 "
                                    "tracks 0.05 and 0.10); the first is the run's EMA")

    @field_validator("sigma_rels")
    @classmethod
    def _widths(cls, value: list[float]) -> list[float]:
        for width in value:
            if not 0 < width <= MAX_SIGMA_REL:
                raise ValueError(f"{width!r} is outside (0, 0.2886] (0.2886 = sqrt(1/12), the plain mean)")
        if len({profile_name(w) for w in value}) != len(value):
            raise ValueError(f"{value} repeats a width (at 3 decimals)")
        return value


def profile_name(sigma_rel: float) -> str:
    """``sigma0.050``: the name of the power-function profile of width ``sigma_rel`` (file names use it)."""
    return f"sigma{sigma_rel:.3f}"


class ConstantEma:
    """One average with a fixed decay."""

    def __init__(self, decay: float = 0.9999):
        self.decay = float(decay)

    def __repr__(self) -> str:
        return f"constant(decay={self.decay:g})"

    def profiles(self) -> list[EmaProfile]:
        return [EmaProfile("ema")]

    def betas(self, step: int) -> list[float]:
        return [self.decay]

    def applied(self) -> dict[str, Any]:
        return {"name": "constant", "decay": self.decay, "profiles": ["ema"]}


class WarmupEma(ConstantEma):
    """One average with decay ``min(decay, (1 + step) / (10 + step))``."""

    def __repr__(self) -> str:
        return f"warmup(decay={self.decay:g})"

    def betas(self, step: int) -> list[float]:
        return [min(self.decay, (1 + step) / (10 + step))]

    def applied(self) -> dict[str, Any]:
        return {"name": "warmup", "decay": self.decay, "rule": "min(decay, (1 + step) / (10 + step))",
                "profiles": ["ema"]}


class PowerEma:
    """Power-function averages, one per width: after optimizer step ``step`` (0-based) the decay of width
    ``s`` is ``(1 - 1 / (step + 1)) ** (gamma(s) + 1)`` (EDM2 eq. 127, time counted in optimizer steps: the
    first update copies the weights)."""

    def __init__(self, sigma_rels: list[float] | None = None):
        self.sigma_rels = [float(s) for s in (sigma_rels if sigma_rels is not None else [0.05, 0.10])]
        self.exponents = [float(g) for g in exponent_of(self.sigma_rels)]

    def __repr__(self) -> str:
        return f"power(sigma_rels={self.sigma_rels})"

    def profiles(self) -> list[EmaProfile]:
        return [EmaProfile(profile_name(s), s) for s in self.sigma_rels]

    def betas(self, step: int) -> list[float]:
        fraction = 1.0 - 1.0 / (step + 1)
        return [fraction ** (g + 1.0) for g in self.exponents]

    def applied(self) -> dict[str, Any]:
        return {"name": "power", "sigma_rels": self.sigma_rels, "exponents": self.exponents,
                "profiles": [p.name for p in self.profiles()], "time": "optimizer steps"}


@hookimpl
def dtr_register_ema(register):
    register("constant", ConstantEma, params=DecayParams, description="a fixed EMA decay (train.ema_decay)")
    register("warmup", WarmupEma, params=DecayParams,
             description="decay min(decay, (1+step)/(10+step)) (train.ema_warmup)")
    register("power", PowerEma, params=PowerParams,
             description="EDM2 power-function EMA over sigma_rels; post-hoc widths with dtr ema")
