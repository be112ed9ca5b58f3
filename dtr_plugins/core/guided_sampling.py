"""What every sampler does before its first step: the device, the start noise and the model wrapped for
classifier-free guidance (Ho & Salimans 2022), optionally only inside a guidance interval.

Guidance interval (Kynkäänniemi et al. 2024, "Applying guidance in a limited interval improves sample and
distribution quality in diffusion models", NeurIPS; their eq. 3): the guided output
``uncond + s * (cond - uncond)`` is used only where the noise level lies in ``[lo, hi]``; elsewhere the model runs
on the conditional half alone (one network evaluation of the batch instead of two). The noise level is the
process's own (:class:`GuidanceInterval` ``level``): ``sigma_t = sqrt((1 - abar_t) / abar_t)`` for the Gaussian
process, as in the paper's EDM parameterisation, and the time ``t`` itself for flow matching (SiT's convention,
``t = 0`` noise, ``t = 1`` data; see :mod:`dtr_plugins.core.flow`).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from dtr_plugins.core.errors import ConfigError
from dtr_plugins.core.guidance import check_guidance

Model = Callable[..., Tensor]

__all__ = ["GuidanceInterval", "sampling_start", "CFG_CHANNELS"]

#: ``sample.cfg_channels`` -> how many leading output channels are guided (None: all)
CFG_CHANNELS = {"all": None, "first3": 3}


@dataclass(frozen=True)
class GuidanceInterval:
    """Guide only where ``lo <= level(t) <= hi``; ``level`` maps the timesteps the model is called with
    (``[N]``) to the process's noise level (``[N]`` float; see the module docstring for the unit)."""

    lo: float
    hi: float
    level: Callable[[Tensor], Tensor]

    def inside(self, t: Tensor) -> Tensor:
        """``[N]`` bool: the rows of a batch at timesteps ``t`` that are guided."""
        level = self.level(t).double()
        return (level >= self.lo) & (level <= self.hi)


def _model_device(model: Any) -> torch.device:
    params = getattr(model, "parameters", None)
    if callable(params):
        for p in params():
            device: torch.device = p.device
            return device
    return torch.device("cpu")


def _null_label(model: Any, y_null: Any, scale: float) -> Any:
    if y_null is not None:
        return y_null
    from dtr_plugins.core.contracts import SupportsGuidance

    # the model itself, or the backbone inside DistributedDataParallel (module) / torch.compile (_orig_mod)
    for m in (model, getattr(model, "module", None), getattr(model, "_orig_mod", None)):
        if isinstance(m, SupportsGuidance):  # the backbone says which label means "no class"
            if m.null_class is None:
                check_guidance(m, scale)  # the one guidance rule refuses it
            return m.null_class
    raise ConfigError("classifier-free guidance needs the null label: pass model_kwargs['y_null'] "
                      "or use a backbone with a null_class (SupportsGuidance in dtr_plugins/core/contracts.py)")


def _guided(model: Model, kwargs: dict[str, Any], scale: float, channels: int | None, y_null: Any,
            in_channels: int, interval: GuidanceInterval | None = None) -> Model:
    """Wrap ``model`` into a classifier-free-guided one with the same call convention; with ``interval``, rows
    outside it get the conditional output alone (and a batch wholly outside costs one evaluation, not two)."""
    if kwargs.get("y") is None:
        raise ConfigError(f"cfg_scale={scale:g} needs class labels (model_kwargs['y']); use cfg_scale 1 "
                          "for an unconditional model")
    null = _null_label(model, y_null, scale)

    def guided(x: Tensor, t: Tensor, y: Tensor, **rest: Any) -> Tensor:
        inside = None if interval is None else interval.inside(t)
        if inside is not None and not bool(inside.any()):
            return model(x, t, y=y, **rest).float()
        y_uncond = null.to(y) if torch.is_tensor(null) else torch.full_like(y, int(null))
        out = model(torch.cat([x, x]), torch.cat([t, t]), y=torch.cat([y, y_uncond.expand_as(y)]), **rest)
        cond, uncond = out.float().chunk(2)
        g = in_channels if channels is None else min(channels, in_channels)
        eps = uncond[:, :g] + scale * (cond[:, :g] - uncond[:, :g])
        result = torch.cat([eps, cond[:, g:]], dim=1)
        if inside is not None and not bool(inside.all()):
            result = torch.where(inside.view(-1, *([1] * (x.ndim - 1))), result, cond)
        return result

    return guided


def sampling_start(model: Model, model_kwargs: Mapping[str, Any] | None, cfg_scale: float, cfg_channels: str,
                   shape: Any, noise: Tensor | None, device: Any, *,
                   interval: GuidanceInterval | None = None) -> tuple[Model, dict[str, Any], Tensor, Any]:
    """What every sampler does before its first step (guided-diffusion's loops and the flow ODE/SDE samplers):
    the device, the model wrapped for classifier-free guidance (``model_kwargs["y_null"]`` is the null label,
    ``cfg_channels`` names the guided output channels, ``interval`` limits where guidance applies), and the
    start ``x`` of ``shape`` ``[N, C, H, W]`` (``noise``, or a standard normal draw on the device).

    Raises ConfigError for an unknown ``cfg_channels``; ValueError when ``noise`` is not of ``shape``.
    """
    if cfg_channels not in CFG_CHANNELS:
        raise ConfigError(f"sample.cfg_channels: {cfg_channels!r} (allowed: {', '.join(CFG_CHANNELS)})")
    if device is None:
        device = noise.device if noise is not None else _model_device(model)
    kwargs = dict(model_kwargs or {})
    y_null = kwargs.pop("y_null", None)
    if cfg_scale != 1.0:
        model = _guided(model, kwargs, cfg_scale, CFG_CHANNELS[cfg_channels], y_null, shape[1], interval)
    x = noise.to(device) if noise is not None else torch.randn(*shape, device=device)
    if tuple(x.shape) != tuple(shape):
        raise ValueError(f"noise shape {tuple(x.shape)} != sample shape {tuple(shape)}")
    return model, kwargs, x, device
