"""Power-function EMA and its post-hoc reconstruction: the math, on plain numbers.

Karras et al., 2024, "Analyzing and Improving the Training Dynamics of Diffusion Models" (EDM2), section 3 and
appendix C. A power-function EMA of exponent ``gamma`` averages the weights ``theta_tau`` seen up to time ``t``
with the profile ``p_t(tau) = (gamma + 1) tau**gamma / t**(gamma + 1)`` on ``[0, t]``; its width is told by
``sigma_rel``, the standard deviation of that profile relative to ``t``:
``sigma_rel**2 = (gamma + 1) / ((gamma + 2)**2 (gamma + 3))`` (EDM2 eq. 123). Tracking it step by step is an
EMA whose decay at the update that reaches time ``t`` after a step of length ``dt`` is
``beta = (1 - dt / t) ** (gamma + 1)`` (eq. 127): the first update (``t = dt``) copies the weights.

Post-hoc reconstruction (EDM2 algorithm 3): snapshots of power-function averages taken at times ``t_i`` with
widths ``sigma_i`` span a space of profiles; the profile of another width at time ``t_out`` is approximated in
the least-squares sense (the L2 inner product of profiles, :func:`profile_inner_products`) by a combination
``sum_i x_i p_i``, and the same combination of the snapshots' weights is the reconstructed average. The
coefficients of one output are normalised to sum to 1. Time may be counted in steps or images: the
coefficients do not change when every time is scaled alike. docs/ema.md explains the run-level workflow.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

__all__ = ["sigma_rel_of", "exponent_of", "power_beta", "profile_inner_products", "posthoc_coefficients"]


def sigma_rel_of(gamma: float | np.ndarray) -> np.ndarray:
    """``sigma_rel`` (float64) of the power-function profile of exponent ``gamma`` (> -1), EDM2 eq. 123."""
    g = np.asarray(gamma, dtype=np.float64)
    return np.sqrt((g + 1) / ((g + 2) ** 2 * (g + 3)))


def exponent_of(sigma_rel: float | Sequence[float] | np.ndarray) -> np.ndarray:
    """The exponent ``gamma`` (float64, same shape) whose profile has relative width ``sigma_rel``.

    ``sigma_rel**2 (gamma + 2)**2 (gamma + 3) = gamma + 1`` is the cubic
    ``gamma**3 + 7 gamma**2 + (16 - s) gamma + (12 - s) = 0`` with ``s = sigma_rel**-2``; of its roots the
    largest real one is the exponent (EDM2 eq. 126). Widths are meaningful in ``(0, sqrt(1/12))``
    (``sqrt(1/12)``: ``gamma = 0``, a plain mean); a ``ValueError`` names a width outside ``(0, 0.2886]``.
    """
    widths = np.asarray(sigma_rel, dtype=np.float64)
    out = np.empty(widths.shape)  # float64
    for index, width in np.ndenumerate(widths):
        if not 0 < width <= np.sqrt(1 / 12):
            raise ValueError(f"sigma_rel {float(width)!r} is outside (0, 0.2886] (0.2886 = sqrt(1/12): gamma 0)")
        s = width ** -2.0
        roots = np.roots([1.0, 7.0, 16.0 - s, 12.0 - s])
        out[index] = roots[np.abs(roots.imag) < 1e-9].real.max()
    return out


def power_beta(sigma_rel: float, t_next: float, t_delta: float = 1.0) -> float:
    """Decay of the power-function EMA of width ``sigma_rel`` at the update that reaches time ``t_next``
    after a step of ``t_delta`` (EDM2 eq. 127): ``(1 - t_delta / t_next) ** (gamma + 1)``; 0 at the first
    update (``t_next == t_delta``), which copies the weights."""
    gamma = float(exponent_of(sigma_rel))
    return float((1.0 - t_delta / t_next) ** (gamma + 1.0))


def profile_inner_products(a_t: np.ndarray, a_gamma: np.ndarray, b_t: np.ndarray, b_gamma: np.ndarray) -> np.ndarray:
    """``<p_a, p_b>``: integral over ``tau`` of the product of two power-function profiles (broadcast arrays).

    With ``p(tau) = (g + 1) tau**g / t**(g + 1)`` on ``[0, t]``, the product lives on ``[0, min(t_a, t_b)]``
    and integrates to ``(g_a + 1)(g_b + 1) / (g_a + g_b + 1) * (t_min / t_max)**g_long / t_max``, where
    ``g_long`` is the exponent of the longer profile (EDM2 eq. 151); written with the ratio so that large
    times and exponents do not overflow."""
    a_t, a_gamma, b_t, b_gamma = (np.asarray(v, dtype=np.float64) for v in (a_t, a_gamma, b_t, b_gamma))
    t_max = np.maximum(a_t, b_t)
    t_min = np.minimum(a_t, b_t)
    g_long = np.where(a_t >= b_t, a_gamma, b_gamma)
    scale = (a_gamma + 1) * (b_gamma + 1) / (a_gamma + b_gamma + 1)
    product: np.ndarray = scale * np.exp(g_long * np.log(t_min / t_max)) / t_max  # float64: the inputs are
    return product


def posthoc_coefficients(in_t: Sequence[float], in_sigma_rel: Sequence[float], out_t: float | Sequence[float],
                         out_sigma_rel: float | Sequence[float]) -> np.ndarray:
    """Coefficients ``[n_in, n_out]`` (float64) of the snapshots for each wanted profile (EDM2 algorithm 3).

    ``in_t``, ``in_sigma_rel``: time and width of each snapshot (``n_in`` of them, pairwise distinct);
    ``out_t``, ``out_sigma_rel``: time and width of each wanted average (broadcast to ``n_out``). Solves the
    normal equations ``A x = b`` of the least-squares fit of each wanted profile by the snapshots' profiles
    (``A``: their Gram matrix under :func:`profile_inner_products`; ``b``: their inner products with the
    wanted one), then scales each column to sum to 1. ``numpy.linalg.LinAlgError`` when ``A`` is singular
    (two snapshots of the same time and width)."""
    # exponent_of and profile_inner_products read every input as float64
    t_in = np.ravel(in_t)
    g_in = exponent_of(np.broadcast_to(in_sigma_rel, t_in.shape))
    t_out, s_out = np.broadcast_arrays(out_t, out_sigma_rel)
    t_out, g_out = np.ravel(t_out), exponent_of(np.ravel(s_out))
    gram = profile_inner_products(t_in[:, None], g_in[:, None], t_in[None, :], g_in[None, :])
    target = profile_inner_products(t_in[:, None], g_in[:, None], t_out[None, :], g_out[None, :])
    x: np.ndarray = np.linalg.solve(gram, target)
    coefficients: np.ndarray = x / x.sum(axis=0)  # each column (one output) sums to 1
    return coefficients
