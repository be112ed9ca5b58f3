"""Gaussian diffusion: schedules, forward process, training losses and samplers.

Semantics follow openai/guided-diffusion as used by DiT, so numbers are comparable with published
results: epsilon prediction; with ``learn_sigma`` the model outputs ``2C`` channels whose second half
interpolates the log-variance between the posterior variance and ``beta_t`` ("learned range") and is
trained by the hybrid loss ``mse + vb`` (the VB term sees the mean through a stop-gradient); without
it the variance is fixed to ``beta_t`` ("fixed large"). The loss type is plain MSE, so ``vb`` is not
rescaled. Coefficients are computed in float64 and used in float32.

Names follow the paper: ``betas`` (beta_t), ``alphas_cumprod`` (alpha-bar_t), ``snr`` = abar / (1 - abar).
Respacing keeps a subset of the training steps; the model is always called with the *original*
timestep indices (``timestep_map``), so routing masks are the training masks.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dtr_plugins.core.errors import ConfigError
from dtr_plugins.core.guided_sampling import GuidanceInterval, sampling_start
from dtr_plugins.core.guided_sampling import _guided as _guided
from dtr_plugins.core.guided_sampling import _null_label as _null_label
from dtr_plugins.core.log import show_progress
from dtr_plugins.core.sampling_settings import SolverSettings

Model = Callable[..., Tensor]

__all__ = ["get_named_beta_schedule", "betas_for_alpha_bar", "space_timesteps", "GaussianDiffusion",
           "normal_kl", "discretized_gaussian_log_likelihood", "mean_flat", "sampling_start"]


# ------------------------------------------------------------------------------------------------
# schedules and respacing
# ------------------------------------------------------------------------------------------------

def get_named_beta_schedule(name: str, num_timesteps: int) -> np.ndarray:
    """beta_t for ``num_timesteps`` steps, float64.

    ``linear``: Ho et al.'s 1e-4 .. 0.02 for T = 1000, both ends scaled by 1000 / T.
    ``cosine``: improved DDPM, abar(s) = cos((s + 0.008) / 1.008 * pi / 2) ** 2, beta capped at 0.999.
    """
    if name == "linear":
        scale = 1000.0 / num_timesteps
        if scale * 0.02 > 1.0:
            raise ConfigError(f"linear schedule: T={num_timesteps} gives beta_T={scale * 0.02:g} > 1 "
                              "(the schedule is scaled by 1000 / T); use T >= 20 or the cosine schedule")
        return np.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=np.float64)
    if name == "cosine":
        return betas_for_alpha_bar(num_timesteps, lambda s: math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2)
    raise ConfigError(f"unknown beta schedule '{name}' (allowed: linear, cosine)")


def betas_for_alpha_bar(num_timesteps: int, alpha_bar: Callable[[float], float], max_beta: float = 0.999) -> np.ndarray:
    """Discretise a continuous abar(s), s in [0, 1]: beta_i = min(1 - abar((i+1)/T) / abar(i/T), max_beta)."""
    edges = [alpha_bar(i / num_timesteps) for i in range(num_timesteps + 1)]
    return np.array([min(1.0 - edges[i + 1] / edges[i], max_beta) for i in range(num_timesteps)], dtype=np.float64)


def space_timesteps(num_timesteps: int, section_counts: str | int | Iterable[int] | None) -> list[int]:
    """The sorted training-step indices kept by a respacing, guided-diffusion semantics.

    - ``"250"`` / ``"10,15,20"``: split the T steps into equal sections (the first ``T % n`` one step
      longer) and take the given count from each, evenly strided with rounding;
    - ``"ddimN"``: ``range(0, T, stride)`` with the integer stride giving exactly N steps (error if none);
    - ``None``, ``""`` or ``T``: every step.
    """
    spec = section_counts
    if spec is None or (isinstance(spec, str) and not spec.strip()):
        return list(range(num_timesteps))
    if isinstance(spec, str):
        text = spec.strip()
        if text.startswith("ddim"):
            try:
                want = int(text[len("ddim"):])
            except ValueError:
                raise ConfigError(f"respacing '{spec}': expected 'ddimN' with an integer N") from None
            for stride in range(1, num_timesteps + 1):
                if len(range(0, num_timesteps, stride)) == want:
                    return list(range(0, num_timesteps, stride))
            raise ConfigError(f"respacing '{spec}': no integer stride gives exactly {want} of {num_timesteps} steps")
        try:
            counts = [int(part) for part in text.split(",")]
        except ValueError:
            raise ConfigError(f"respacing '{spec}': expected 'N', 'N1,N2,...' or 'ddimN'") from None
    elif isinstance(spec, int):
        counts = [spec]
    else:
        counts = [int(c) for c in spec]
    if not counts or any(c < 1 for c in counts):
        raise ConfigError(f"respacing '{spec}': every section needs at least one step")
    size_per, extra = divmod(num_timesteps, len(counts))
    steps: list[int] = []
    start = 0
    for i, count in enumerate(counts):
        size = size_per + (1 if i < extra else 0)
        if size < count:
            raise ConfigError(f"respacing '{spec}': cannot take {count} steps from a section of {size}"
                              f" (T = {num_timesteps})")
        spacing = 1.0 if count == 1 else (size - 1) / (count - 1)
        steps += [start + round(j * spacing) for j in range(count)]
        start += size
    return sorted(set(steps))


# ------------------------------------------------------------------------------------------------
# likelihood helpers
# ------------------------------------------------------------------------------------------------

def mean_flat(x: Tensor) -> Tensor:
    """Mean over every dimension but the batch."""
    return x.mean(dim=tuple(range(1, x.ndim)))


def normal_kl(mean1: Tensor, logvar1: Tensor, mean2: Tensor, logvar2: Tensor) -> Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2)
                  + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def _approx_std_normal_cdf(x: Tensor) -> Tensor:
    # tanh approximation of Phi(x), as in Ho et al. (kept for numeric parity)
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_log_likelihood(x: Tensor, means: Tensor, log_scales: Tensor) -> Tensor:
    """log p(x) of 8-bit data in [-1, 1] (bins of width 2/255) under N(means, e^(2 log_scales)), in nats."""
    centered = x - means
    inv_std = torch.exp(-log_scales)
    cdf_plus = _approx_std_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = _approx_std_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


# ------------------------------------------------------------------------------------------------
# the process
# ------------------------------------------------------------------------------------------------

_SAMPLERS = ("ddpm", "ddim")


class GaussianDiffusion:
    """A discrete Gaussian diffusion with ``T = len(betas)`` steps and epsilon prediction.

    ``timestep_map[i]`` is the training-step index the model sees at step ``i`` of this process: the
    identity for the training process, the kept indices for a respaced one (see :meth:`respaced`).
    """

    def __init__(self, betas: np.ndarray, *, learn_sigma: bool = True, timestep_map: Iterable[int] | None = None):
        betas = np.asarray(betas, dtype=np.float64)
        if betas.ndim != 1 or not ((betas > 0) & (betas <= 1)).all():
            raise ValueError("betas must be a 1-D array with values in (0, 1]")
        self.learn_sigma = bool(learn_sigma)
        self.betas = betas
        self.num_timesteps = T = len(betas)
        self.timestep_map = (torch.arange(T) if timestep_map is None
                             else torch.as_tensor(list(timestep_map), dtype=torch.long))
        if self.timestep_map.shape != (T,):
            raise ValueError(f"timestep_map needs {T} entries, got {tuple(self.timestep_map.shape)}")

        alphas = 1.0 - betas
        self.alphas_cumprod = abar = np.cumprod(alphas)
        self.alphas_cumprod_prev = abar_prev = np.append(1.0, abar[:-1])
        self.sqrt_alphas_cumprod = np.sqrt(abar)
        self.sqrt_one_minus_alphas_cumprod = np.sqrt(1.0 - abar)
        self.sqrt_recip_alphas_cumprod = np.sqrt(1.0 / abar)
        self.sqrt_recipm1_alphas_cumprod = np.sqrt(1.0 / abar - 1.0)
        # posterior q(x_{t-1} | x_t, x_0); its variance is 0 at t = 0, so the log uses the t = 1 value there
        self.posterior_variance = betas * (1.0 - abar_prev) / (1.0 - abar)
        # (a one-step process has no t = 1: it clips to beta_0 instead)
        self.posterior_log_variance_clipped = np.log(np.append(self.posterior_variance[1], self.posterior_variance[1:])
                                                     if T > 1 else betas)
        self.posterior_mean_coef1 = betas * np.sqrt(abar_prev) / (1.0 - abar)
        self.posterior_mean_coef2 = (1.0 - abar_prev) * np.sqrt(alphas) / (1.0 - abar)
        # "fixed large" variance: beta_t, with the posterior variance at t = 0 (better decoder likelihood)
        self.fixed_large_variance = np.append(self.posterior_variance[1], betas[1:]) if T > 1 else betas.copy()
        self.log_fixed_large_variance = np.log(self.fixed_large_variance)
        self.log_betas = np.log(betas)
        self._device_cache: dict[tuple[str, str], Tensor] = {}
        self._respaced: dict[tuple[int, ...], GaussianDiffusion] = {}

    @classmethod
    def from_config(cls, cfg: Any) -> GaussianDiffusion:
        """From a :class:`dtr_plugins.core.config.DiffusionConfig` (``steps``, ``schedule``, ``learn_sigma``)."""
        return cls(get_named_beta_schedule(cfg.schedule, cfg.steps), learn_sigma=cfg.learn_sigma)

    def __repr__(self) -> str:
        return (f"GaussianDiffusion(T={self.num_timesteps}, learn_sigma={self.learn_sigma}, "
                f"respaced={not torch.equal(self.timestep_map, torch.arange(self.num_timesteps))})")

    # -- helpers ---------------------------------------------------------------------------------

    def _table(self, name: str, device: torch.device) -> Tensor:
        """A float64-computed coefficient array as float32 on ``device`` (cached)."""
        key = (name, str(device))
        table = self._device_cache.get(key)
        if table is None:
            table = torch.from_numpy(np.ascontiguousarray(getattr(self, name))).float().to(device)
            self._device_cache[key] = table
        return table

    def _extract(self, name: str, t: Tensor, ndim: int) -> Tensor:
        """``arr[t]`` shaped ``[N, 1, ..., 1]`` for broadcasting against an ``ndim``-D batch."""
        return self._table(name, t.device)[t].view(-1, *([1] * (ndim - 1)))

    def model_timesteps(self, t: Tensor) -> Tensor:
        """The original training-step indices the model is called with for this process's steps ``t``."""
        key = ("timestep_map", str(t.device))
        table = self._device_cache.get(key)
        if table is None:
            table = self._device_cache[key] = self.timestep_map.to(t.device)
        return table[t]

    def snr(self, t: Tensor) -> Tensor:
        """Signal-to-noise ratio abar_t / (1 - abar_t) per timestep (float32, on ``t``'s device)."""
        key = ("snr", str(t.device))
        table = self._device_cache.get(key)
        if table is None:
            abar = self.alphas_cumprod
            table = self._device_cache[key] = torch.from_numpy(abar / (1.0 - abar)).float().to(t.device)
        return table[t]

    def sigma_of(self, t: Tensor) -> Tensor:
        """``sigma_t = sqrt((1 - abar_t) / abar_t)`` (EDM's noise level of ``x_t / sqrt(abar_t)``) at this process's
        step indices ``t`` (``[N]`` int64; the training indices for the training process), float64."""
        key = ("sigma", str(t.device))
        table = self._device_cache.get(key)
        if table is None:
            abar = self.alphas_cumprod
            table = self._device_cache[key] = torch.from_numpy(np.sqrt((1.0 - abar) / abar)).to(t.device)
        return table[t]

    # -- forward process ---------------------------------------------------------------------------

    def q_sample(self, x_start: Tensor, t: Tensor, noise: Tensor | None = None) -> Tensor:
        """Sample x_t ~ q(x_t | x_0) = N(sqrt(abar_t) x_0, (1 - abar_t) I)."""
        if noise is None:
            noise = torch.randn_like(x_start)
        nd = x_start.ndim
        return (self._extract("sqrt_alphas_cumprod", t, nd) * x_start
                + self._extract("sqrt_one_minus_alphas_cumprod", t, nd) * noise)

    def q_posterior_mean_variance(self, x_start: Tensor, x_t: Tensor, t: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Mean, variance and clipped log-variance of q(x_{t-1} | x_t, x_0), each broadcastable to x_t."""
        nd = x_t.ndim
        mean = (self._extract("posterior_mean_coef1", t, nd) * x_start
                + self._extract("posterior_mean_coef2", t, nd) * x_t)
        return (mean, self._extract("posterior_variance", t, nd),
                self._extract("posterior_log_variance_clipped", t, nd))

    def predict_xstart_from_eps(self, x_t: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        nd = x_t.ndim
        return (self._extract("sqrt_recip_alphas_cumprod", t, nd) * x_t
                - self._extract("sqrt_recipm1_alphas_cumprod", t, nd) * eps)

    def predict_eps_from_xstart(self, x_t: Tensor, t: Tensor, pred_xstart: Tensor) -> Tensor:
        nd = x_t.ndim
        return ((self._extract("sqrt_recip_alphas_cumprod", t, nd) * x_t - pred_xstart)
                / self._extract("sqrt_recipm1_alphas_cumprod", t, nd))

    # -- reverse process ---------------------------------------------------------------------------

    def _call_model(self, model: Model, x: Tensor, t: Tensor, model_kwargs: Mapping[str, Any] | None) -> Tensor:
        out = model(x, self.model_timesteps(t), **(model_kwargs or {})).float()
        want = 2 * x.shape[1] if self.learn_sigma else x.shape[1]
        if out.shape[0] != x.shape[0] or out.shape[1] != want or out.shape[2:] != x.shape[2:]:
            raise ValueError(f"model output {tuple(out.shape)}: expected {want} channels for {x.shape[1]}-channel "
                             f"inputs (learn_sigma={self.learn_sigma})")
        return out

    def p_mean_variance_from_output(self, output: Tensor, x: Tensor, t: Tensor,
                                    clip_denoised: bool = True) -> dict[str, Tensor]:
        """p(x_{t-1} | x_t) from a model output already computed: ``mean``, ``variance``, ``log_variance``,
        ``pred_xstart`` and the predicted ``eps``."""
        nd, C = x.ndim, x.shape[1]
        if self.learn_sigma:
            eps, var_values = output[:, :C], output[:, C:]
            min_log = self._extract("posterior_log_variance_clipped", t, nd)
            max_log = self._extract("log_betas", t, nd)
            frac = (var_values + 1) / 2  # [-1, 1] spans [posterior variance, beta_t] in log space
            log_variance = frac * max_log + (1 - frac) * min_log
            variance = torch.exp(log_variance)
        else:
            eps = output
            variance = self._extract("fixed_large_variance", t, nd).expand_as(x)
            log_variance = self._extract("log_fixed_large_variance", t, nd).expand_as(x)
        pred_xstart = self.predict_xstart_from_eps(x, t, eps)
        if clip_denoised:
            pred_xstart = pred_xstart.clamp(-1, 1)
        mean, _, _ = self.q_posterior_mean_variance(pred_xstart, x, t)
        return {"mean": mean, "variance": variance, "log_variance": log_variance,
                "pred_xstart": pred_xstart, "eps": eps}

    def p_mean_variance(self, model: Model, x: Tensor, t: Tensor, model_kwargs: Mapping[str, Any] | None = None,
                        clip_denoised: bool = True) -> dict[str, Tensor]:
        """Call ``model(x, timestep_map[t], **model_kwargs)`` and return p(x_{t-1} | x_t) (see
        :meth:`p_mean_variance_from_output`)."""
        return self.p_mean_variance_from_output(self._call_model(model, x, t, model_kwargs), x, t, clip_denoised)

    # -- training ----------------------------------------------------------------------------------

    def _vb_terms_bits(self, output: Tensor, x_start: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """Per-sample VLB term in bits per dimension: KL(q || p) for t > 0, the decoder NLL at t = 0."""
        true_mean, _, true_log_var = self.q_posterior_mean_variance(x_start, x_t, t)
        p = self.p_mean_variance_from_output(output, x_t, t, clip_denoised=False)
        kl = mean_flat(normal_kl(true_mean, true_log_var, p["mean"], p["log_variance"])) / math.log(2.0)
        nll = -discretized_gaussian_log_likelihood(x_start, p["mean"], 0.5 * p["log_variance"])
        nll = mean_flat(nll) / math.log(2.0)
        return torch.where(t == 0, nll, kl)

    def training_losses(self, model: Model, x_start: Tensor, t: Tensor, model_kwargs: Mapping[str, Any] | None = None,
                        noise: Tensor | None = None) -> dict[str, Tensor]:
        """Per-sample losses at timesteps ``t``: ``mse`` (epsilon), ``vb`` (with ``learn_sigma``) and
        ``loss = mse + vb``. Each is ``[N]`` (mean over the non-batch dimensions)."""
        if noise is None:
            noise = torch.randn_like(x_start)
        x_t = self.q_sample(x_start, t, noise)
        output = self._call_model(model, x_t, t, model_kwargs)
        C = x_start.shape[1]
        eps = output[:, :C]
        terms: dict[str, Tensor] = {"mse": mean_flat((noise.float() - eps) ** 2)}
        if self.learn_sigma:
            # the VB term trains the variance only: the mean sees it through a stop-gradient
            frozen = torch.cat([eps.detach(), output[:, C:]], dim=1)
            terms["vb"] = self._vb_terms_bits(frozen, x_start.float(), x_t.float(), t)
            terms["loss"] = terms["mse"] + terms["vb"]
        else:
            terms["loss"] = terms["mse"]
        return terms

    # -- sampling ----------------------------------------------------------------------------------

    def solver_steps(self, solver: SolverSettings | None = None) -> tuple[int, int]:
        """``(steps, network calls)`` of :meth:`sample` for one batch: one call per kept step (SupportsSolverSteps)."""
        n = self.respaced((solver or self.default_solver).respacing).num_timesteps
        return n, n

    def respaced(self, respacing: str | int | Iterable[int] | None = None, *,
                 use_timesteps: Iterable[int] | None = None) -> GaussianDiffusion:
        """The process over the steps kept by ``respacing`` (see :func:`space_timesteps`), or over the explicit
        training-step indices ``use_timesteps``: new betas from the kept alphas_cumprod, model calls with the
        original indices. Cached; keeping every step gives ``self``."""
        if not torch.equal(self.timestep_map, torch.arange(self.num_timesteps)):
            raise ValueError("respace the training process, not an already respaced one")
        if use_timesteps is not None:
            keep = tuple(sorted({int(i) for i in use_timesteps}))
            if not keep or keep[0] < 0 or keep[-1] >= self.num_timesteps:
                raise ValueError(f"use_timesteps must be non-empty indices in 0..{self.num_timesteps - 1}")
        else:
            keep = tuple(space_timesteps(self.num_timesteps, respacing))
        if len(keep) == self.num_timesteps:
            return self
        spaced = self._respaced.get(keep)
        if spaced is None:
            abar = self.alphas_cumprod[list(keep)]
            betas = 1.0 - abar / np.append(1.0, abar[:-1])
            spaced = self._respaced[keep] = GaussianDiffusion(betas, learn_sigma=self.learn_sigma, timestep_map=keep)
        return spaced

    def ddpm_step(self, model: Model, x: Tensor, t: Tensor, model_kwargs: Mapping[str, Any] | None = None,
                  clip_denoised: bool = True, noise: Tensor | None = None) -> Tensor:
        """One ancestral step x_t -> x_{t-1} = mean + exp(log_variance / 2) * noise (no noise at t = 0).

        ``noise``: the standard-normal draw, shaped like ``x`` (default: a fresh ``torch.randn_like(x)``).
        guided-diffusion ``GaussianDiffusion.p_sample``."""
        p = self.p_mean_variance(model, x, t, model_kwargs, clip_denoised)
        if noise is None:
            noise = torch.randn_like(x)
        nonzero = (t != 0).float().view(-1, *([1] * (x.ndim - 1)))
        return p["mean"] + nonzero * torch.exp(0.5 * p["log_variance"]) * noise

    def ddim_step(self, model: Model, x: Tensor, t: Tensor, model_kwargs: Mapping[str, Any] | None = None,
                  clip_denoised: bool = True, eta: float = 0.0, noise: Tensor | None = None) -> Tensor:
        """One DDIM step (Song et al., eq. 12); ``eta = 0`` is deterministic, ``eta = 1`` matches DDPM's variance.
        Epsilon is re-derived from the (clipped) x_0 prediction (guided-diffusion ``ddim_sample``).

        ``noise``: the standard-normal draw scaled by sigma_t when ``eta > 0``, shaped like ``x`` (default: a
        fresh ``torch.randn_like(x)``); unused when ``eta = 0``."""
        p = self.p_mean_variance(model, x, t, model_kwargs, clip_denoised)
        eps = self.predict_eps_from_xstart(x, t, p["pred_xstart"])
        abar = self._extract("alphas_cumprod", t, x.ndim)
        abar_prev = self._extract("alphas_cumprod_prev", t, x.ndim)
        sigma = eta * torch.sqrt((1 - abar_prev) / (1 - abar)) * torch.sqrt(1 - abar / abar_prev)
        x_prev = p["pred_xstart"] * torch.sqrt(abar_prev) + torch.sqrt(1 - abar_prev - sigma ** 2) * eps
        if eta > 0:
            if noise is None:
                noise = torch.randn_like(x)
            nonzero = (t != 0).float().view(-1, *([1] * (x.ndim - 1)))
            x_prev = x_prev + nonzero * sigma * noise
        return x_prev

    #: the settings ``sample`` applies where neither ``solver`` nor a keyword gives one
    default_solver = SolverSettings("ddim", "ddim50", clip_denoised=True)

    @torch.no_grad()
    def sample(self, model: Model, shape: tuple[int, ...] | list[int], solver: SolverSettings | None = None, *,
               noise: Tensor | None = None, model_kwargs: Mapping[str, Any] | None = None, progress: bool = True,
               device: torch.device | str | None = None, step_noise: Callable[[Tensor], Tensor] | None = None,
               **options: Any) -> Tensor:
        """Generate ``shape`` samples with ``sampler`` ("ddpm" ancestral or "ddim") over the steps kept by
        ``respacing``.

        Classifier-free guidance when ``cfg_scale != 1``: conditional and unconditional (``y`` replaced by
        the null label ``model_kwargs["y_null"]``, else ``model.num_classes``) run as one doubled batch;
        eps = uncond + s * (cond - uncond) on every epsilon channel (``cfg_channels="all"``) or on the
        first three only (``"first3"``, the published DiT behaviour); the remaining channels and the
        learned variance come from the conditional half. ``guidance_interval`` ``(lo, hi)``: guidance only where
        ``sigma_t = sqrt((1 - abar_t) / abar_t)`` of the training step lies in ``[lo, hi]`` (Kynkäänniemi et al.
        2024; :mod:`dtr_plugins.core.guided_sampling`), the conditional output elsewhere.

        ``noise`` is the starting x_T (default: drawn with ``torch.randn``). ``step_noise(x)`` draws the noise of
        each stochastic step, one call per step from the first to the last (t = 0 included, where it is multiplied
        by zero), as guided-diffusion's loops do; default ``torch.randn_like``. It is never called by DDIM with
        ``eta = 0``. Tests pass recorded draws through it.

        ``solver`` (:class:`SolverSettings`: ``sampler``, ``respacing``, ``eta``, ``cfg_scale``, ``cfg_channels``,
        ``clip_denoised``, ``guidance_interval``; default :attr:`default_solver`); its fields may also be given as
        keywords, which replace those of ``solver`` (an unknown keyword raises TypeError).
        """
        s = replace(solver or self.default_solver, **options)
        sampler, respacing, eta, clip_denoised = s.sampler, s.respacing, s.eta, s.clip_denoised
        cfg_scale, cfg_channels = s.cfg_scale, s.cfg_channels
        if sampler not in _SAMPLERS:
            raise ConfigError(f"sampler '{sampler}': allowed {', '.join(_SAMPLERS)}")
        process = self.respaced(respacing)
        interval = None if s.guidance_interval is None else GuidanceInterval(*s.guidance_interval, self.sigma_of)
        model, kwargs, x, device = sampling_start(model, model_kwargs, cfg_scale, cfg_channels, shape, noise, device,
                                                  interval=interval)
        from tqdm.auto import tqdm

        steps = range(process.num_timesteps - 1, -1, -1)
        for i in tqdm(steps, disable=not show_progress(progress), desc=f"{sampler} {len(steps)} steps", leave=False):
            t = torch.full((x.shape[0],), i, device=device, dtype=torch.long)
            stochastic = sampler == "ddpm" or eta > 0
            drawn = step_noise(x) if step_noise is not None and stochastic else None
            if sampler == "ddpm":
                x = process.ddpm_step(model, x, t, kwargs, clip_denoised, noise=drawn)
            else:
                x = process.ddim_step(model, x, t, kwargs, clip_denoised, eta, noise=drawn)
        return x
