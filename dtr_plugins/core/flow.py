"""Flow matching with the linear interpolant and velocity prediction (SiT's ``Linear`` / ``velocity`` transport).

Conventions follow SiT (Ma et al., 2024; github.com/willisma/SiT, ``transport/path.py`` ``ICPlan`` and
``transport/transport.py``), so that SiT's time embedding and numbers carry over:

- time ``t`` in [0, 1] runs from **noise (t = 0) to data (t = 1)**: ``x_t = t * x1 + (1 - t) * x0`` with
  ``x1`` the data and ``x0 ~ N(0, I)`` the noise;
- the model predicts the velocity ``v(x_t, t) = dx_t/dt = x1 - x0`` and is called as ``model(x_t, t, **kw)``
  with the float ``t`` itself (SiT feeds ``t`` in [0, 1] to the DiT timestep embedder unchanged);
- the loss is ``mean over non-batch dims of (v - (x1 - x0)) ** 2`` per sample (``train_eps = 0``: the
  velocity objective is finite on the closed interval);
- sampling integrates ``dx/dt = v`` from ``t = 0`` (noise) to ``t = 1`` on the uniform grid
  ``linspace(0, 1, steps + 1)``: Euler, or Heun (torchdiffeq's ``heun2``, explicit trapezoid, the
  corrector applied on every step including the last), as SiT's ``Sampler.sample_ode``; SiT's
  ``num_steps`` is this ``steps + 1``.
- ``time_shift`` ``s`` (Esser et al. 2024, SD3, section 5.3.2 "resolution-dependent shifting"): SD3 writes the
  shift over its noise level (its ``t = 1`` is noise): ``u' = s * u / (1 + (s - 1) * u)``. Here noise is at
  ``t = 0``, so the shift applies to ``u = 1 - t``: each grid time becomes ``t' = 1 - u'`` (:func:`shifted`);
  both ends stay, ``s > 1`` puts more steps at high noise. Euler and Heun only (their fixed grid).
- ``dopri5``: torchdiffeq's adaptive Dormand-Prince 5(4) ``odeint`` from ``t = 0`` to ``t = 1`` with ``atol`` and
  ``rtol`` (SiT's ``Sampler.sample_ode`` with ``sampling_method="dopri5"``, its defaults 1e-6 / 1e-3); the number
  of steps is the solver's own, so ``respacing`` is not read; the network calls (function evaluations) are
  counted by the caller (``nfe_per_batch`` in ``samples.json``).
- ``euler_maruyama``: SiT's ``Sampler.sample_sde`` with ``sampling_method="Euler"``, diffusion form
  ``"sigma"`` (``w(t) = 1 - t``, SiT's sample.py default), norm 1 and last step ``"Mean"``: ``steps - 1``
  Euler-Maruyama steps on ``linspace(0, 1 - h, steps)`` then one mean step of size ``h``
  (``sde_last_step``), ``steps`` model calls in all. Drift ``v + w(t) * score`` with the score from the
  velocity, ``score = (t * v - x) / (1 - t)`` for the linear path.

Routing tasks are the **noise level** ``u = 1 - t`` in [0, 1], ordered clean (0) to noisy (1) like DDPM's
timestep index ``t / (T - 1)`` (see :mod:`dtr_plugins.core.continuous_routing`).
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

import numpy as np
import torch
from torch import Tensor

from dtr_plugins.core.continuous_routing import ContinuousTasks
from dtr_plugins.core.diffusion import mean_flat
from dtr_plugins.core.errors import ConfigError
from dtr_plugins.core.guided_sampling import GuidanceInterval, sampling_start
from dtr_plugins.core.log import show_progress
from dtr_plugins.core.sampling_settings import SolverSettings
from dtr_plugins.core.timesteps import LogitNormalTimes, UniformTimes

__all__ = ["FlowMatching", "flow_steps", "shifted"]

SAMPLERS = ("euler", "heun", "euler_maruyama", "dopri5")
#: the samplers that integrate on the fixed grid ``linspace(0, 1, steps + 1)`` (the time shift applies to them)
GRID_SAMPLERS = ("euler", "heun")


def shifted(t: Tensor, shift: float) -> Tensor:
    """The SD3 time shift in this module's convention (``t = 0`` noise): ``u = 1 - t``,
    ``u' = shift * u / (1 + (shift - 1) * u)``, returns ``1 - u'`` (same shape and dtype as ``t``).

    ``shift = 1`` is the identity; ``t = 0`` and ``t = 1`` are fixed points. Source: Esser et al. 2024, eq. 23."""
    u = 1 - t
    return 1 - shift * u / (1 + (shift - 1) * u)


def flow_steps(respacing: Any) -> int:
    """The number of integration steps ``N`` of a flow sampler from ``sample.respacing`` (``"50"`` or 50).

    Raises :class:`ConfigError` for anything else (``"ddim50"``, ``"10,20"``: those are DDPM respacings).
    """
    text = str(respacing).strip() if respacing is not None else ""
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"sample.respacing: flow_matching takes the number of integration steps, e.g. '50' "
                          f"(got {respacing!r}; 'ddimN' and section lists are Gaussian respacings)")
    return int(text)


class FlowMatching:
    """The linear-interpolant flow-matching process (velocity prediction); see the module docstring.

    Args:
        steps: ``T``, rows of the routing-table grid over ``u`` (static tables are read at row
            ``round(u * (T - 1))``); not a sampling setting.
        time_sampling: ``"uniform"``: ``t ~ U(0, 1)``; ``"logit_normal"``: ``u = sigmoid(m + s * n)``,
            ``n ~ N(0, 1)`` (Esser et al., 2024, SD3, who write u for the noise level), ``t = 1 - u``.
        logit_mean, logit_std: ``m`` and ``s`` of the logit-normal; ``m > 0`` favours noisy times.
        routing: ``"continuous"``: strategies with a closed form over u (``dtr``) use it, others the
            nearest table row; ``"grid"``: every strategy reads the nearest table row.
        sde_last_step: size ``h`` of the final mean step of ``euler_maruyama`` (SiT's 0.04).
    """

    samplers = SAMPLERS
    default_sampler = "euler"
    default_respacing = "50"
    heldout_time = "continuous"  # held-out loss over bands of the noise level u, of the velocity MSE
    heldout_target = "velocity"
    #: loss weightings that work without a discrete Gaussian schedule (min_snr / p2 need SNR(t), ant_uw integer t)
    loss_weightings = ("constant",)
    learn_sigma = False

    def __init__(self, steps: int = 1000, time_sampling: str = "uniform", logit_mean: float = 0.0,
                 logit_std: float = 1.0, routing: str = "continuous", sde_last_step: float = 0.04):
        if time_sampling not in ("uniform", "logit_normal"):
            raise ConfigError(f"diffusion.time_sampling: {time_sampling!r} (allowed: uniform, logit_normal)")
        if routing not in ("continuous", "grid"):
            raise ConfigError(f"diffusion.routing: {routing!r} (allowed: continuous, grid)")
        self.num_timesteps = int(steps)
        self.time_sampling = time_sampling
        self.logit_mean = float(logit_mean)
        self.logit_std = float(logit_std)
        self.routing = routing
        self.sde_last_step = float(sde_last_step)

    def __repr__(self) -> str:
        return (f"FlowMatching(linear, velocity, T_grid={self.num_timesteps}, time={self.time_sampling}, "
                f"routing={self.routing})")

    # -- settings checks ----------------------------------------------------------------------------

    def check_sample_settings(self, sampler: str, respacing: Any) -> None:
        """ConfigError unless ``sampler`` is one of :attr:`samplers` and ``respacing`` a step count."""
        if sampler not in self.samplers:
            raise ConfigError(f"sample.sampler: {sampler!r} is not a flow_matching sampler "
                              f"(allowed: {', '.join(self.samplers)})")
        flow_steps(respacing)

    def check_solver_options(self, solver: SolverSettings) -> None:
        """SupportsSolverOptions: a guidance interval over ``t`` in [0, 1]; the time shift only with a grid sampler
        (:data:`GRID_SAMPLERS`). Raises a one-line :class:`ConfigError`."""
        interval = solver.guidance_interval
        if interval is not None and interval[1] > 1:
            raise ConfigError(f"sample.guidance_interval: [{interval[0]:g}, {interval[1]:g}] is over flow_matching's "
                              "time t (0 noise .. 1 data); give 0 <= lo < hi <= 1")
        if solver.time_shift != 1.0 and solver.sampler not in GRID_SAMPLERS:
            raise ConfigError(f"sample.time_shift: {solver.time_shift:g} shifts the fixed time grid of "
                              f"{', '.join(GRID_SAMPLERS)}; the {solver.sampler!r} sampler needs 1.0")

    # -- routing and logging ------------------------------------------------------------------------

    def continuous_tasks(self, strategy: Any) -> ContinuousTasks:
        """How the routing plan maps the model's time ``t`` to tasks: ``u = 1 - t``."""
        return ContinuousTasks(strategy, exact=self.routing == "continuous", data_at_one=True)

    def log_snr(self, levels: np.ndarray) -> np.ndarray:
        """Log signal-to-noise ratio ``2 log((1 - u) / u)`` of the linear path at noise levels ``u`` in (0, 1)
        (``x = (1 - u) x1 + u x0``; ``SupportsLogSNR``), float64."""
        u = np.asarray(levels, dtype=np.float64)
        return np.asarray(2.0 * (np.log1p(-u) - np.log(u)), dtype=np.float64)

    def loss_bucket(self, t: Tensor, buckets: int) -> Tensor:
        """Bucket ``floor(u * buckets)`` of the noise level ``u = 1 - t`` (bucket 0: clean), int64."""
        return ((1 - t.double()) * buckets).floor().long().clamp_(0, buckets - 1)

    # -- training -----------------------------------------------------------------------------------

    def timestep_sampler(self) -> UniformTimes | LogitNormalTimes:
        """Training times ``t`` in [0, 1] (1 = data) by ``time_sampling``; only the weightings in
        :attr:`loss_weightings` are allowed, none of which needs its own sampler."""
        if self.time_sampling == "uniform":
            return UniformTimes()
        return LogitNormalTimes(self.logit_mean, self.logit_std)

    def training_losses(self, model: Any, x_start: Tensor, t: Tensor, model_kwargs: Mapping[str, Any] | None = None,
                        noise: Tensor | None = None) -> dict[str, Tensor]:
        """Per-sample velocity losses ``{"loss", "mse"}`` (equal), each ``[N]``.

        ``x_start``: data ``x1`` ``[N, C, ...]``; ``t``: ``[N]`` float times in [0, 1]; ``noise``: ``x0``
        (default ``randn_like``). Source: SiT ``Transport.training_losses`` (velocity, no weight).
        """
        if not t.is_floating_point():
            raise ValueError("flow matching takes float times t in [0, 1], got integer timesteps")
        if noise is None:
            noise = torch.randn_like(x_start)
        tt = t.view(-1, *([1] * (x_start.ndim - 1)))
        x_t = tt * x_start + (1 - tt) * noise
        target = x_start - noise
        out = model(x_t, t, **(model_kwargs or {})).float()
        if out.shape != x_start.shape:
            raise ValueError(f"model output {tuple(out.shape)}: flow matching needs the input shape "
                             f"{tuple(x_start.shape)} (velocity; build the backbone with learn_sigma false)")
        mse = mean_flat((out - target.float()) ** 2)
        return {"loss": mse, "mse": mse}

    # -- sampling -----------------------------------------------------------------------------------

    #: the settings ``sample`` applies where neither ``solver`` nor a keyword gives one
    default_solver = SolverSettings(default_sampler, default_respacing, clip_denoised=False)

    @torch.no_grad()
    def sample(self, model: Any, shape: tuple[int, ...] | list[int], solver: SolverSettings | None = None, *,
               noise: Tensor | None = None, model_kwargs: Mapping[str, Any] | None = None, progress: bool = True,
               device: torch.device | str | None = None, **options: Any) -> Tensor:
        """Integrate from noise ``x(0) ~ N(0, I)`` of ``shape`` to data ``x(1)``; returns ``[N, C, ...]``.

        ``respacing``: the number of steps ``N`` (see :func:`flow_steps`). Classifier-free guidance when
        ``cfg_scale != 1``: ``v = v_uncond + s * (v_cond - v_uncond)`` with the backbone's null class,
        on every channel (``"all"``) or the first three (``"first3"``, SiT's / DiT's released behaviour).
        ``guidance_interval`` ``(lo, hi)``: guidance only where ``lo <= t <= hi`` (Kynkäänniemi et al. 2024), the
        conditional velocity elsewhere. ``time_shift``: the grid of Euler / Heun through :func:`shifted`.
        ``dopri5``: adaptive, with ``atol`` / ``rtol`` (see the module docstring).
        ``clip_denoised`` clamps the final sample to [-1, 1]. ``eta`` must be 0 (a DDIM setting).
        Raises :class:`ConfigError` for an unknown sampler, a bad step count or ``eta != 0``.

        ``solver`` (:class:`SolverSettings`; default :attr:`default_solver`): its fields may also be given as
        keywords, which replace those of ``solver`` (an unknown keyword raises TypeError).
        """
        s = replace(solver or self.default_solver, **options)
        sampler, respacing, eta, cfg_scale, cfg_channels = s.sampler, s.respacing, s.eta, s.cfg_scale, s.cfg_channels
        self.check_sample_settings(sampler, respacing)
        steps = flow_steps(respacing)
        if eta:
            raise ConfigError(f"sample.eta: {eta:g} is a DDIM setting; flow_matching samplers need eta 0")
        self.check_solver_options(s)
        interval = None if s.guidance_interval is None else GuidanceInterval(*s.guidance_interval, _time_level)
        model, kwargs, x, device = sampling_start(model, model_kwargs, cfg_scale, cfg_channels, shape, noise, device,
                                                  interval=interval)

        def velocity(x: Tensor, t: Tensor) -> Tensor:
            out: Tensor = model(x, t.expand(x.shape[0]), **kwargs)
            return out.float()

        from tqdm.auto import tqdm

        if sampler == "euler_maruyama":
            x = self._sde(velocity, x, steps, progress)
        elif sampler == "dopri5":
            from torchdiffeq import odeint

            ends = torch.tensor([0.0, 1.0], device=device)
            x = odeint(lambda t, x: velocity(x, t.reshape(1)), x, ends, method="dopri5", atol=s.atol, rtol=s.rtol)[-1]
        else:
            grid = torch.linspace(0.0, 1.0, steps + 1)  # on the CPU first, as SiT
            grid = (grid if s.time_shift == 1.0 else shifted(grid, s.time_shift)).to(device)
            bar = tqdm(range(steps), disable=not show_progress(progress), desc=f"{sampler} {steps} steps", leave=False)
            for i in bar:
                t0, t1 = grid[i], grid[i + 1]
                dt = t1 - t0
                k1 = velocity(x, t0.reshape(1))
                if sampler == "euler":
                    x = x + dt * k1
                else:  # heun2: k2 at (t0 + dt, x + dt * k1), then the trapezoid
                    k2 = velocity(x + dt * k1, (t0 + dt).reshape(1))
                    x = x + dt * (0.5 * k1 + 0.5 * k2)
        return x.clamp(-1, 1) if s.clip_denoised else x

    def solver_steps(self, solver: SolverSettings | None = None) -> tuple[int, int] | None:
        """``(steps, network calls)`` of :meth:`sample` for one batch (SupportsSolverSteps): ``euler`` one call per
        step, ``heun`` two; ``euler_maruyama`` ``steps - 1`` stochastic steps and the final mean step; None for
        ``dopri5`` (adaptive: not known in advance)."""
        s = solver or self.default_solver
        if s.sampler == "dopri5":
            return None
        steps = flow_steps(s.respacing)
        return steps, 2 * steps if s.sampler == "heun" else steps

    def _sde(self, velocity: Callable[[Tensor, Tensor], Tensor], x: Tensor, steps: int, progress: bool) -> Tensor:
        """SiT's Euler-Maruyama with diffusion ``w(t) = 1 - t`` and a final mean step (see module docstring)."""
        if steps < 2:
            raise ConfigError("sample.respacing: euler_maruyama needs at least 2 steps")
        h = self.sde_last_step

        def drift(x: Tensor, t: Tensor) -> Tensor:
            v = velocity(x, t)
            tt = t.view(-1, *([1] * (x.ndim - 1)))
            var = (1 - tt) ** 2 + tt * (1 - tt)  # sigma^2 - (alpha / alpha') sigma' sigma, = 1 - t
            score = (tt * v - x) / var
            return v + (1 - tt) * score

        grid = torch.linspace(0.0, 1.0 - h, steps).to(x.device)
        dt = grid[1] - grid[0]
        from tqdm.auto import tqdm

        bar = tqdm(range(steps - 1), disable=not show_progress(progress), desc=f"euler_maruyama {steps} steps",
                   leave=False)
        for i in bar:
            t = torch.ones(x.shape[0], device=x.device) * grid[i]
            w = torch.randn_like(x)
            dw = w * torch.sqrt(dt)
            mean_x = x + drift(x, t) * dt
            x = mean_x + torch.sqrt(2 * (1 - t.view(-1, *([1] * (x.ndim - 1))))) * dw
        t_last = torch.ones(x.shape[0], device=x.device) * grid[-1]
        return x + drift(x, t_last) * h


def _time_level(t: Tensor) -> Tensor:
    """The noise level a flow guidance interval is over: the model's time ``t`` itself (0 noise, 1 data)."""
    return t
