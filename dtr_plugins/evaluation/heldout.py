"""Held-out denoising loss per noise band: the same inputs for every run, so runs compare pairwise.

A :class:`HeldOutSet` fixes, once, everything the training loss draws at random: which held-out images
(``x0``, their labels), which timesteps ``t`` and which Gaussian ``noise``. It draws them from its own
generator seeded by ``seed`` (never the run's seed), so two runs of one suite, whatever their strategy
or seed, are scored on bit-identical tensors; :attr:`HeldOutSet.fingerprint` (SHA-256 of the tensors)
lets a report check that.

Noise bands: ``num_bands`` equal bands of ``[0, T)``; timestep ``t`` is in band ``t * num_bands // T``
(the training loop's ``loss_bucket`` rule). Each band gets ``per_band`` timesteps stratified inside it
(one uniform draw in each of ``per_band`` equal sub-intervals) paired with the same ``per_band`` images,
so band differences come from the noise level only.

Continuous time (``time="continuous"``, flow matching, :mod:`dtr_plugins.core.flow`): the bands are
``num_bands`` equal bands of the noise level ``u`` in [0, 1] (band ``floor(u * num_bands)``, the flow's
``loss_bucket`` rule, band 0 the cleanest), ``u`` stratified inside each band the same way, and ``t`` is
the flow's float time ``1 - u`` (float32; 1 = data).

Reported term: the per-sample epsilon MSE, ``mean((noise - eps_theta(x_t, t))**2)`` over C, H, W (the
``mse`` term of :meth:`GaussianDiffusion.training_losses`, guided-diffusion's ``LossType.MSE``
"simple" loss). It is the same quantity whatever the loss weighting (Min-SNR, P2, ANT-UW only reweight
it during training) and whether or not the variance is learned (the VB term is left out), so it is the
one number comparable across every run of a suite. For flow matching the same ``mse`` term is the
velocity MSE ``mean((x1 - x0 - v_theta(x_t, t))**2)`` (SiT's velocity loss): comparable between runs of
the same process only (the report pairs runs within one process).
"""
from __future__ import annotations

import hashlib
import typing
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from dtr_plugins.compose.heldout import heldout_dataset_params
from dtr_plugins.core.errors import DataError

#: the per-sample loss term reported (see the module docstring)
HELDOUT_TERM = "mse"
#: how held-out times are drawn: integer timesteps in [0, T) or float flow times t = 1 - u in [0, 1]
TIMES = ("discrete", "continuous")


class Diffusion(typing.Protocol):
    """What the held-out loss needs from a diffusion (:class:`dtr_plugins.core.diffusion.GaussianDiffusion`)."""

    num_timesteps: int

    def training_losses(self, model: Any, x_start: Tensor, t: Tensor, model_kwargs: Mapping[str, Any] | None = None,
                        noise: Tensor | None = None) -> dict[str, Tensor]: ...


def band_edges(num_timesteps: int, num_bands: int) -> list[tuple[int, int]]:
    """``[lo, hi)`` of each band: the timesteps ``t`` with ``t * num_bands // num_timesteps == band``."""
    if num_bands < 1 or num_timesteps < num_bands:
        raise ValueError(f"need 1 <= num_bands <= num_timesteps, got {num_bands} bands over T = {num_timesteps}")
    lo = [-(-b * num_timesteps // num_bands) for b in range(num_bands + 1)]  # ceil(b * T / n)
    return [(lo[b], lo[b + 1]) for b in range(num_bands)]


def _inside_bands(t: Tensor, num_bands: int, per_band: int) -> Tensor:
    """Float32 flow times ``t`` (band-major) moved by an ulp where the cast put ``u = 1 - t`` in a neighbour band
    (the flow's ``loss_bucket`` rule, ``floor((1 - t) * num_bands)`` in float64)."""
    want = torch.arange(num_bands).repeat_interleave(per_band)
    for _ in range(4):
        got = ((1 - t.double()) * num_bands).floor().long().clamp(0, num_bands - 1)
        if bool((got == want).all()):
            break
        t = torch.where(got > want, torch.nextafter(t, torch.ones_like(t)),
                        torch.where(got < want, torch.nextafter(t, torch.zeros_like(t)), t))
    return t


@dataclass(frozen=True)
class HeldOutSet:
    """Fixed held-out inputs, band-major: rows ``[b * per_band, (b + 1) * per_band)`` are band ``b``.

    ``x0``: ``[N, C, H, W]`` float32 model inputs (latents when built with ``prepare``); ``labels``: ``[N]``
    int64; ``t``: ``[N]`` int64 training timesteps in ``[0, T)`` (``time="discrete"``) or float32 flow times
    ``1 - u`` in [0, 1] (``time="continuous"``); ``noise``: like ``x0``; ``band``: ``[N]`` int64.
    ``N = num_bands * per_band``. All on the CPU.
    """

    x0: Tensor
    labels: Tensor
    t: Tensor
    noise: Tensor
    band: Tensor
    num_timesteps: int
    num_bands: int
    per_band: int
    seed: int
    fingerprint: str
    time: str = "discrete"
    images: int = 0  # distinct images per band (fewer than per_band when the split is smaller; 0: not recorded)

    @classmethod
    def build(cls, dataset: Any, num_timesteps: int, *, num_bands: int = 10, per_band: int = 64, seed: int = 0,
              prepare: Callable[[Tensor], Tensor] | None = None, time: str = "discrete") -> HeldOutSet:
        """Draw the held-out inputs from ``dataset`` (a map-style dataset of ``(image [C, H, W], label)``).

        ``per_band`` images are taken in an order permuted by ``seed`` (cycling when the dataset is smaller)
        and reused in every band. ``prepare`` maps the CPU image batch ``[per_band, C, H, W]`` to the model's
        input space once (e.g. ``lambda x: model.prepare_batch(x.to(device))`` for a latent backbone: a VAE
        posterior sample), under the same fixed seed; its output is kept on the CPU. The global RNG states
        (CPU and CUDA) are left as they were. ``time``: ``"discrete"`` (Gaussian timesteps) or
        ``"continuous"`` (flow times over equal bands of ``u``; see the module docstring).

        Raises :class:`DataError` for an empty dataset and ``ValueError`` for ``per_band < 1``,
        ``num_timesteps < num_bands`` or an unknown ``time``.
        """
        if time not in TIMES:
            raise ValueError(f"time must be one of {', '.join(TIMES)}, got {time!r}")
        edges = band_edges(num_timesteps, num_bands)
        if per_band < 1:
            raise ValueError(f"per_band must be at least 1, got {per_band}")
        size = len(dataset)
        if size == 0:
            raise DataError("held-out split: the dataset is empty")
        gen = torch.Generator().manual_seed(seed)
        order = torch.randperm(size, generator=gen)
        picks = order[torch.arange(per_band) % size].tolist()
        if size < per_band:  # the band's rows repeat images: fewer independent inputs than per_band says
            warnings.warn(f"held-out split: {size} image(s) for {per_band} rows per band (eval.heldout_per_band); "
                          f"each band reuses them, so its loss averages {size} distinct image(s), not {per_band}",
                          stacklevel=2)
        cuda = list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(seed)  # any randomness inside the dataset or `prepare` is fixed too
            items = [dataset[i] for i in picks]
            images = torch.stack([torch.as_tensor(img).float() for img, _ in items])
            labels = torch.tensor([int(lbl) for _, lbl in items], dtype=torch.long)
            if prepare is not None:
                with torch.no_grad():
                    images = prepare(images).detach().float().cpu()
        u = torch.rand(num_bands, per_band, generator=gen, dtype=torch.float64)
        steps = torch.arange(per_band, dtype=torch.float64)
        if time == "discrete":
            t = torch.cat([lo + torch.floor((steps + u[b]) * (hi - lo) / per_band).long()
                           for b, (lo, hi) in enumerate(edges)])
        else:  # noise level u stratified in [b / n, (b + 1) / n), kept inside the band after the float32 cast
            level = torch.cat([(b + (steps + u[b]) / per_band) / num_bands for b in range(num_bands)])
            t = _inside_bands((1 - level).float(), num_bands, per_band)
        x0 = images.repeat(num_bands, *([1] * (images.ndim - 1))).contiguous()
        noise = torch.randn(x0.shape, generator=gen)
        band = torch.arange(num_bands).repeat_interleave(per_band)
        labels = labels.repeat(num_bands)
        suffix = "" if time == "discrete" else f";time={time}"  # discrete fingerprints are unchanged
        digest = hashlib.sha256(f"T={num_timesteps};bands={num_bands};term={HELDOUT_TERM}{suffix}".encode())
        for tensor in (x0, labels, t, noise):
            digest.update(str(tuple(tensor.shape)).encode())
            digest.update(tensor.numpy().tobytes())
        return cls(x0=x0, labels=labels, t=t, noise=noise, band=band, num_timesteps=num_timesteps,
                   num_bands=num_bands, per_band=per_band, seed=seed, fingerprint=digest.hexdigest(), time=time,
                   images=min(size, per_band))

    def __len__(self) -> int:
        return len(self.t)


@torch.no_grad()
def heldout_losses(model: torch.nn.Module, diffusion: Diffusion, heldout: HeldOutSet,
                   model_kwargs_fn: Callable[[Tensor], dict[str, Any]] | None = None, *, batch_size: int = 256,
                   device: torch.device | str | None = None) -> dict[str, float]:
    """Mean epsilon MSE on ``heldout`` per band and in total: ``{"heldout/band0": .., .., "heldout/total": ..}``.

    ``model`` is called as in training (``diffusion.training_losses(model, x0, t, model_kwargs, noise=noise)``)
    in eval mode, ``batch_size`` rows at a time, on ``device`` (default: the model's); its train/eval mode is
    restored afterwards. ``model_kwargs_fn(labels)`` gives the conditioning (``{"y": labels}`` for a
    class-conditional backbone; ``None``: no conditioning). The total is the mean over all ``N`` rows,
    which equals the mean of the band means (every band has ``per_band`` rows). Values are float64 sums
    of the float32 per-sample losses. Raises ``ValueError`` when the diffusion's ``T`` is not the one the
    set was built for.
    """
    if diffusion.num_timesteps != heldout.num_timesteps:
        raise ValueError(f"held-out set built for T = {heldout.num_timesteps}, diffusion has "
                         f"T = {diffusion.num_timesteps}")
    if device is None:
        first = next(model.parameters(), None)
        device = first.device if first is not None else torch.device("cpu")
    was_training = model.training
    model.eval()
    per_sample = []
    try:
        for start in range(0, len(heldout), batch_size):
            rows = slice(start, start + batch_size)
            labels = heldout.labels[rows].to(device)
            kwargs = model_kwargs_fn(labels) if model_kwargs_fn is not None else {}
            terms = diffusion.training_losses(model, heldout.x0[rows].to(device), heldout.t[rows].to(device),
                                              model_kwargs=kwargs, noise=heldout.noise[rows].to(device))
            per_sample.append(terms[HELDOUT_TERM].detach().double().cpu())
    finally:
        model.train(was_training)
    losses = torch.cat(per_sample)
    sums = torch.zeros(heldout.num_bands, dtype=torch.float64).index_add_(0, heldout.band, losses)
    out = {f"heldout/band{b}": float(sums[b] / heldout.per_band) for b in range(heldout.num_bands)}
    out["heldout/total"] = float(losses.mean())
    return out


def heldout_record(step: int, losses: Mapping[str, float], heldout: HeldOutSet, *, weights: str) -> dict[str, Any]:
    """One ``metrics.jsonl`` line: ``{"step": 400, "heldout": {"band0": .., .., "total": .., "term": "mse",
    "time": "discrete", "weights": "ema", "num_bands": 10, "per_band": 64, "seed": 0, "fingerprint": "<sha256>"}}``
    (``time``: ``"continuous"`` for flow matching, where ``mse`` is the velocity MSE).

    ``weights`` says which weights were scored (``"ema"`` or ``"model"``); the rest says what was applied.
    """
    body: dict[str, Any] = {k.removeprefix("heldout/"): float(v) for k, v in losses.items()}
    body.update(term=HELDOUT_TERM, time=heldout.time, weights=weights, num_bands=heldout.num_bands,
                per_band=heldout.per_band, images=heldout.images,
                seed=heldout.seed, fingerprint=heldout.fingerprint)
    return {"step": int(step), "heldout": body}


def heldout_set_for(registry: Any, dataset_name: str, dataset_params: Mapping[str, Any], num_timesteps: int, *,
                    num_bands: int = 10, per_band: int = 64, seed: int = 0,
                    prepare: Callable[[Tensor], Tensor] | None = None, time: str = "discrete") -> HeldOutSet:
    """The :class:`HeldOutSet` of a run's data: the dataset plugin ``dataset_name`` (from ``registry``, a
    :class:`dtr_plugins.core.plugins.PluginRegistry`) built with its training ``dataset_params`` switched to
    the held-out split (see :func:`heldout_dataset_params`). Raises :class:`ConfigError` when the dataset
    has no held-out split and :class:`DataError` when it is empty."""
    info = registry.get("dataset", dataset_name)
    params = heldout_dataset_params(dataset_name, info.params, dataset_params)
    dataset = registry.build("dataset", dataset_name, **params)
    return HeldOutSet.build(dataset, num_timesteps, num_bands=num_bands, per_band=per_band, seed=seed, prepare=prepare,
                            time=time)
