"""``train(cfg)``: compose a run from its config, set up its run directory and hand it to the
:class:`~dtr_plugins.engine.trainer.Trainer`. One process, or many under torchrun (DDP), on CPU or GPU.

Resumption is exact: every step re-seeds the RNG from ``(seed, rank, step)`` and draws its batch from
a stream of seeded permutations indexed by the step (:class:`StepBatches`), so ``N`` steps plus a
resumed ``N`` give the same weights as ``2N`` straight steps.
"""
from __future__ import annotations

import datetime as _dt
import platform
import subprocess
from pathlib import Path
from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader

from dtr_plugins._version import __version__
from dtr_plugins.core.config import ExperimentConfig
from dtr_plugins.core.errors import CheckpointError, ConfigError, UserError
from dtr_plugins.core.plugins import PluginRegistry, default_registry

from . import distributed
from .compose import Components, build_components
from .heldout import HeldOutSet
from .rundir import RunDir
from .trackers import TrackerSet, routing_heatmap
from .trainer import Trainer, TrainingDiverged, TrainState, ranks_in_sync

__all__ = ["train", "StepBatches", "run_meta", "TrainingDiverged"]


class StepBatches:
    """Batch indices for step ``s``: positions ``[s*B, (s+1)*B)`` of a stream of seeded epoch permutations.

    Each rank takes its contiguous share of the global batch, so the data position is the step itself.
    """

    def __init__(self, dataset_len: int, global_batch: int, rank: int, world: int, seed: int, start_step: int,
                 steps: int):
        if global_batch % world:
            raise ConfigError(f"train.batch_size: {global_batch} is not divisible by the world size {world}")
        self.n, self.batch, self.rank, self.world = dataset_len, global_batch, rank, world
        self.seed, self.start, self.steps = seed, start_step, steps
        self._perms: dict[int, torch.Tensor] = {}

    def _perm(self, epoch: int) -> torch.Tensor:
        if epoch not in self._perms:
            self._perms = {epoch: torch.randperm(self.n, generator=torch.Generator().manual_seed(self.seed * 100003 + epoch))}
        return self._perms[epoch]

    def indices(self, step: int) -> list[int]:
        local = self.batch // self.world
        first = step * self.batch + self.rank * local
        out = []
        for pos in range(first, first + local):
            epoch, i = divmod(pos, self.n)
            out.append(int(self._perm(epoch)[i]))
        return out

    def __iter__(self) -> Iterator[list[int]]:
        for step in range(self.start, self.steps):
            yield self.indices(step)

    def __len__(self) -> int:
        return max(0, self.steps - self.start)


def _collate(batch):
    images = torch.stack([b[0] for b in batch])
    labels = torch.tensor([int(b[1]) for b in batch], dtype=torch.long)
    return images, labels


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def run_meta(d: distributed.Dist, cfg: ExperimentConfig) -> dict[str, Any]:
    """Versions, commit, device, world size, precision, seed and start time of a run (meta.json)."""
    device = str(d.device)
    if d.device.type == "cuda":
        device += f" ({torch.cuda.get_device_name(d.device)})"
    else:
        device += f" ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return {"dtr_plugins": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "git_commit": _git_commit(), "device": device, "world_size": d.world_size,
            "precision": cfg.train.precision, "seed": cfg.seed,
            "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _heldout_for(cfg: ExperimentConfig, parts: Components, registry: PluginRegistry | None,
                 device: torch.device) -> tuple[HeldOutSet | None, dict[str, Any]]:
    """The run's fixed held-out inputs and what meta.json records about them (or why there are none):
    off when ``eval.heldout_every`` is 0, for processes without integer timesteps (flow matching), when
    training from a latent cache and for data without a held-out split."""
    from dtr_plugins.core.diffusion import GaussianDiffusion
    from dtr_plugins.core.errors import DataError

    from .heldout import heldout_set_for

    if not cfg.eval.heldout_every:
        return None, {"applied": False, "why": "eval.heldout_every is 0"}
    if not isinstance(parts.diffusion, GaussianDiffusion):
        return None, {"applied": False, "why": "held-out bands need a Gaussian process with integer timesteps"}
    if parts.model_input.cached:  # encoding held-out images would load the VAE that a cached run never needs
        return None, {"applied": False, "why": "training from a latent cache (no cached held-out latents)"}
    codec = parts.codec
    prepare = None if parts.model_input.identity else (lambda x: codec.encode(x.to(device)))
    try:
        heldout = heldout_set_for(registry or default_registry(), cfg.data.name, cfg.data.params,
                                  parts.diffusion.num_timesteps, per_band=cfg.eval.heldout_per_band,
                                  seed=cfg.eval.heldout_seed, prepare=prepare)
    except (ConfigError, DataError) as exc:
        print(f"dtr: note: no held-out loss for this run: {exc}")
        return None, {"applied": False, "why": str(exc)}
    return heldout, {"applied": True, "every": cfg.eval.heldout_every, "weights": "ema",
                     "num_bands": heldout.num_bands, "per_band": heldout.per_band, "seed": heldout.seed,
                     "fingerprint": heldout.fingerprint}


def train(cfg: ExperimentConfig, *, resume: bool = False, run_dir: str | Path | None = None,
          registry: PluginRegistry | None = None, allow_unsafe_load: bool = False, progress: bool = True) -> Path:
    """Train ``cfg``; returns the run directory (DESIGN.md section 8, :class:`RunDir`).

    Raises :class:`UserError` when the run directory already has checkpoints and ``resume`` is False,
    :class:`CheckpointError` when ``resume`` finds none, :class:`TrainingDiverged` on a NaN/inf loss.
    """
    from dtr_plugins.core.checkpoint import load_checkpoint

    d = distributed.setup(cfg.train.device)
    trackers = TrackerSet()  # only rank 0 mirrors metrics.jsonl into log.trackers
    heldout: HeldOutSet | None = None  # only rank 0 scores the held-out loss
    try:
        rd = RunDir(run_dir if run_dir is not None else Path(cfg.output_dir) / cfg.name)
        start_ckpt = rd.latest_checkpoint()
        if start_ckpt is not None and not resume:
            raise UserError(f"{rd.path}: run directory already has checkpoints; pass --resume to continue it, "
                            f"or choose another name / --run-dir")
        if resume and start_ckpt is None:
            raise CheckpointError(f"{rd.path}: --resume given but there is no checkpoint in {rd.checkpoints}")

        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        parts = build_components(cfg, registry, device=d.device)
        state = TrainState.create(parts.model, parts.loss_weighting, cfg, d.device)
        if start_ckpt is not None:
            state.load(load_checkpoint(parts.model, start_ckpt, use_ema=False, allow_unsafe=allow_unsafe_load))

        if d.is_main:
            rd.path.mkdir(parents=True, exist_ok=True)
            rd.write_config(cfg.to_yaml())
            meta = run_meta(d, cfg)
            meta["routed_channels"] = parts.model.routed_channels()  # the report draws masks from these
            if resume and rd.meta_path.exists():
                meta["resumed_from_step"] = state.step
            trackers = TrackerSet.open(cfg.log.trackers, rd.path, cfg.to_dict(), cfg.name, registry)
            meta["trackers"] = trackers.applied()
            heldout, meta["heldout"] = _heldout_for(cfg, parts, registry, d.device)
            rd.write_meta(meta)
            heatmap = routing_heatmap(parts.model.plan) if parts.model.plan is not None else None
            if heatmap is not None:
                trackers.log_image(state.step, "routing/masks", heatmap)
        d.barrier()

        net: torch.nn.Module = parts.model
        if d.enabled:
            net = torch.nn.parallel.DistributedDataParallel(
                parts.model, device_ids=[d.device.index] if d.device.type == "cuda" else None)
        if cfg.train.compile:
            net = torch.compile(net)

        batches = StepBatches(len(parts.dataset), cfg.train.batch_size, d.rank, d.world_size, cfg.seed, state.step,
                              cfg.train.steps)
        loader = DataLoader(parts.dataset, batch_sampler=batches, num_workers=cfg.train.num_workers,
                            collate_fn=_collate, pin_memory=d.device.type == "cuda")
        trainer = Trainer(cfg, state, net, parts.diffusion, parts.model_input, parts.codec, rd, d, progress=progress,
                          trackers=trackers, heldout=heldout)
        trainer.run(loader)
        in_sync = ranks_in_sync(parts.model, d) if d.enabled else None
        if d.is_main:
            extra: dict[str, Any] = {"finished": _now()}
            if in_sync is not None:
                extra = {"ranks_in_sync": in_sync, **extra}
            rd.update_meta(**extra)
        return rd.path
    finally:
        trackers.finish()
        distributed.teardown(d)
