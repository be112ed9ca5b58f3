"""The training loop: one process, or many under torchrun (DDP), on CPU or GPU.

Resumption is exact: every step re-seeds the RNG from ``(seed, rank, step)`` and draws its batch from
a stream of seeded permutations indexed by the step, so ``N`` steps plus a resumed ``N`` give the same
weights as ``2N`` straight steps.
"""
from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import json
import math
import platform
import subprocess
import time
from pathlib import Path
from typing import Any, Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from dtr_plugins.core.build import build_dataset, build_diffusion, build_loss_weighting, build_model
from dtr_plugins.core.config import ExperimentConfig
from dtr_plugins.core.errors import CheckpointError, ConfigError, UserError
from dtr_plugins.core.io import write_json, write_text
from dtr_plugins.core.plugins import PluginRegistry

from . import distributed
from .trackers import TrackerSet, routing_heatmap

NUM_BUCKETS = 10
CHECKPOINT_FORMAT = "dtr-plugins/1"


class TrainingDiverged(UserError):
    """The loss became NaN or inf."""


# --------------------------------------------------------------------------------------------- data
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


# ---------------------------------------------------------------------------------------------- EMA
@torch.no_grad()
def ema_update(ema: torch.nn.Module, model: torch.nn.Module, decay: float) -> None:
    """``ema = decay * ema + (1 - decay) * model`` over all parameters with foreach kernels."""
    ema_params = [p for p in ema.parameters()]
    params = [p.detach() for p in model.parameters()]
    torch._foreach_lerp_(ema_params, params, 1.0 - decay)


def ema_decay_at(cfg: ExperimentConfig, step: int) -> float:
    """Configured decay, or with warm-up ``min(decay, (1 + step) / (10 + step))`` for short runs."""
    if cfg.train.ema_warmup:
        return min(cfg.train.ema_decay, (1 + step) / (10 + step))
    return cfg.train.ema_decay


# ------------------------------------------------------------------------------------------ helpers
def step_seed(seed: int, rank: int, step: int) -> int:
    return (seed * 1_000_003 + rank * 7919 + step * 104_729) % (2**63 - 1)


def autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return getattr(model, "module", model)


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def run_meta(d: distributed.Dist, cfg: ExperimentConfig) -> dict[str, Any]:
    import dtr_plugins

    device = str(d.device)
    if d.device.type == "cuda":
        device += f" ({torch.cuda.get_device_name(d.device)})"
    else:
        device += f" ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)"
    return {"dtr_plugins": dtr_plugins.__version__, "torch": torch.__version__, "python": platform.python_version(),
            "git_commit": _git_commit(), "device": device, "world_size": d.world_size,
            "precision": cfg.train.precision, "seed": cfg.seed,
            "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")}


def latest_checkpoint(run_dir: Path) -> Path | None:
    ckpts = sorted((run_dir / "checkpoints").glob("*.pt"))
    return ckpts[-1] if ckpts else None


def model_kwargs_for(model: torch.nn.Module, labels: torch.Tensor) -> dict[str, Any]:
    """Class-conditional backbones get ``y``; unconditional ones (``num_classes <= 1``) get nothing."""
    return {"y": labels} if getattr(model, "num_classes", 0) and model.num_classes > 1 else {}


def check_data_fits(model: torch.nn.Module, images: torch.Tensor, cfg: ExperimentConfig) -> None:
    want_c = getattr(model, "in_channels", None)
    if want_c is not None and images.shape[1] != want_c:
        raise ConfigError(f"data: '{cfg.data.name}' gives {images.shape[1]}-channel images but backbone.in_channels "
                          f"is {want_c}")
    want_s = getattr(model, "input_size", None) or getattr(model, "image_size", None)
    if want_s is not None and images.shape[-1] != want_s:
        raise ConfigError(f"data.image_size: '{cfg.data.name}' gives {images.shape[-1]}px images but the backbone "
                          f"expects {want_s}px (backbone.input_size)")


# --------------------------------------------------------------------------------------------- train
def train(cfg: ExperimentConfig, *, resume: bool = False, run_dir: str | Path | None = None,
          registry: PluginRegistry | None = None, allow_unsafe_load: bool = False, progress: bool = True) -> Path:
    """Train ``cfg``; returns the run directory (DESIGN.md section 8)."""
    from dtr_plugins.core.checkpoint import load_checkpoint, save_checkpoint

    d = distributed.setup(cfg.train.device)
    trackers = TrackerSet()  # trackers: only rank 0 mirrors metrics.jsonl into log.trackers
    try:
        run_dir = Path(run_dir) if run_dir is not None else Path(cfg.output_dir) / cfg.name
        start_ckpt = latest_checkpoint(run_dir)
        if start_ckpt is not None and not resume:
            raise UserError(f"{run_dir}: run directory already has checkpoints; pass --resume to continue it, "
                            f"or choose another name / --run-dir")
        if resume and start_ckpt is None:
            raise CheckpointError(f"{run_dir}: --resume given but there is no checkpoint in {run_dir / 'checkpoints'}")

        torch.manual_seed(cfg.seed)  # identical initial weights on every rank
        model = build_model(cfg, registry).to(d.device)
        diffusion = build_diffusion(cfg)
        weighting = build_loss_weighting(cfg, registry).to(d.device)
        dataset: Dataset = build_dataset(cfg, registry)
        ema = copy.deepcopy(model).requires_grad_(False).eval()

        groups = [{"params": [p for p in model.parameters() if p.requires_grad]}] + list(weighting.param_groups())
        optimizer = torch.optim.AdamW(groups, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay,
                                      fused=d.device.type == "cuda")
        scaler = torch.amp.GradScaler(d.device.type, enabled=cfg.train.precision == "fp16")

        step = 0
        if start_ckpt is not None:
            ckpt = load_checkpoint(model, start_ckpt, use_ema=False, allow_unsafe=allow_unsafe_load)
            ema.load_state_dict(ckpt["ema"])
            optimizer.load_state_dict(ckpt["optimizer"])
            weighting.load_state_dict(ckpt["loss_weighting"])
            if "scaler" in ckpt:
                scaler.load_state_dict(ckpt["scaler"])
            step = int(ckpt["step"])

        if d.is_main:
            run_dir.mkdir(parents=True, exist_ok=True)
            write_text(run_dir / "config.yaml", cfg.to_yaml())
            meta = run_meta(d, cfg)
            if resume and (run_dir / "meta.json").exists():
                meta["resumed_from_step"] = step
            trackers = TrackerSet.open(cfg.log.trackers, run_dir, cfg.to_dict(), cfg.name, registry)  # trackers
            meta["trackers"] = trackers.applied()  # trackers
            write_json(run_dir / "meta.json", meta)
            heatmap = routing_heatmap(model.plan) if model.plan is not None else None  # trackers
            if heatmap is not None:  # trackers
                trackers.log_image(step, "routing/masks", heatmap)  # trackers
        d.barrier()

        net: torch.nn.Module = model
        if d.enabled:
            net = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[d.device.index] if d.device.type == "cuda" else None)
        if cfg.train.compile:
            net = torch.compile(net)

        batches = StepBatches(len(dataset), cfg.train.batch_size, d.rank, d.world_size, cfg.seed, step, cfg.train.steps)
        loader = DataLoader(dataset, batch_sampler=batches, num_workers=cfg.train.num_workers, collate_fn=_collate,
                            pin_memory=d.device.type == "cuda")
        _loop(cfg, d, run_dir, net, model, ema, diffusion, weighting, optimizer, scaler, loader, step, progress,
              save_checkpoint, trackers)
        in_sync = ranks_in_sync(model, d) if d.enabled else None
        if d.is_main:
            meta = json.loads((run_dir / "meta.json").read_text())
            if in_sync is not None:
                meta["ranks_in_sync"] = in_sync
            meta["finished"] = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
            write_json(run_dir / "meta.json", meta)
        return run_dir
    finally:
        trackers.finish()  # trackers
        distributed.teardown(d)


@torch.no_grad()
def ranks_in_sync(model: torch.nn.Module, d: distributed.Dist) -> bool:
    """Do all ranks hold identical weights? Compares position-weighted checksums of every parameter."""
    import torch.distributed as dist

    sums = []
    for p in model.parameters():
        flat = p.detach().double().flatten()
        sums += [flat.sum(), (flat * torch.arange(1, flat.numel() + 1, device=flat.device, dtype=flat.dtype)).sum()]
    local = torch.stack(sums)
    gathered = [torch.empty_like(local) for _ in range(d.world_size)]
    dist.all_gather(gathered, local)
    return all(torch.equal(gathered[0], g) for g in gathered[1:])


def _lr_at(cfg: ExperimentConfig, step: int) -> float:
    if cfg.train.lr_warmup_steps:
        return cfg.train.lr * min(1.0, (step + 1) / cfg.train.lr_warmup_steps)
    return cfg.train.lr


def _loop(cfg, d, run_dir, net, model, ema, diffusion, weighting, optimizer, scaler, loader, step, progress,
          save_checkpoint, trackers: TrackerSet) -> None:
    from tqdm.auto import tqdm

    T = diffusion.num_timesteps
    total = cfg.train.steps
    base_lrs = [g.get("lr", cfg.train.lr) for g in optimizer.param_groups]
    bucket_sum = torch.zeros(NUM_BUCKETS, device=d.device, dtype=torch.float64)
    bucket_count = torch.zeros(NUM_BUCKETS, device=d.device, dtype=torch.float64)
    loss_sum = torch.zeros((), device=d.device, dtype=torch.float64)
    finite = torch.ones((), device=d.device, dtype=torch.bool)
    window_steps, window_start = 0, time.perf_counter()
    if d.device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(d.device)
    bar = tqdm(total=total, initial=step, desc=cfg.name, disable=not (progress and d.is_main), dynamic_ncols=True)
    metrics_path = run_dir / "metrics.jsonl"
    prepare = getattr(model, "prepare_batch", None)
    model.train()

    for images, labels in loader:
        torch.manual_seed(step_seed(cfg.seed, d.rank, step))
        images = images.to(d.device, non_blocking=True)
        labels = labels.to(d.device, non_blocking=True)
        if prepare is not None:  # e.g. a latent backbone: VAE-encode, or draw from cached posteriors
            images = prepare(images)
        if step == 0 and d.is_main:
            check_data_fits(model, images, cfg)
        t = weighting.sample_timesteps(images.shape[0], T, d.device)
        scale = _lr_at(cfg, step) / cfg.train.lr
        for group, lr in zip(optimizer.param_groups, base_lrs):
            group["lr"] = lr * scale
        with autocast(cfg.train.precision, d.device):
            terms = diffusion.training_losses(net, images, t, model_kwargs=model_kwargs_for(model, labels))
            loss = weighting(terms, t, diffusion)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if d.enabled:  # the weighting's own parameters (ANT-UW) live outside DDP: average their gradients
            _all_reduce_grads(weighting.parameters(), d.world_size)
        if cfg.train.grad_clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        ema_update(ema, model, ema_decay_at(cfg, step))

        with torch.no_grad():
            per_sample = terms["loss"].detach().double()
            bucket = (t * NUM_BUCKETS // T).clamp_(max=NUM_BUCKETS - 1)
            bucket_sum.index_add_(0, bucket, per_sample)
            bucket_count.index_add_(0, bucket, torch.ones_like(per_sample))
            loss_sum += loss.detach().double()
            finite &= torch.isfinite(loss.detach())
        step += 1
        window_steps += 1
        bar.update(1)

        last = step == total
        if step % cfg.train.log_every == 0 or last:
            _stop_if_diverged(finite, run_dir, step)
            stats = _reduce(d, loss_sum, bucket_sum, bucket_count)
            elapsed = max(time.perf_counter() - window_start, 1e-9)
            record = {"step": step, "loss": stats["loss"] / window_steps,
                      "loss_bucket": stats["buckets"], "lr": optimizer.param_groups[0]["lr"],
                      "steps_per_s": window_steps / elapsed,
                      "images_per_s": window_steps * cfg.train.batch_size / elapsed,
                      "ema_decay": ema_decay_at(cfg, step - 1)}
            if d.device.type == "cuda":
                record["peak_memory_mb"] = torch.cuda.max_memory_allocated(d.device) / 2**20
            record.update({f"weighting/{k}": v for k, v in weighting.log_values().items()})
            if d.is_main:
                _append_jsonl(metrics_path, record)
                trackers.log_record(record)  # trackers
                bar.set_postfix(loss=f"{record['loss']:.4f}")
            bucket_sum.zero_(); bucket_count.zero_(); loss_sum.zero_()
            window_steps, window_start = 0, time.perf_counter()
        if (cfg.train.ckpt_every and step % cfg.train.ckpt_every == 0) or last:
            _stop_if_diverged(finite, run_dir, step)
            if d.is_main:
                save_checkpoint(run_dir / "checkpoints" / f"{step:07d}.pt", step=step, model=model.state_dict(),
                                ema=ema.state_dict(), optimizer=optimizer.state_dict(),
                                loss_weighting=weighting.state_dict(), scaler=scaler.state_dict(),
                                rng={"torch": torch.get_rng_state()}, data_position=step,
                                config=cfg.to_dict())
            d.barrier()
        if cfg.eval.every and (step % cfg.eval.every == 0 or last) or (last and cfg.eval.at_end):
            _evaluate_during_training(cfg, d, run_dir, ema, diffusion, step, final=last, trackers=trackers)
    bar.close()


def _stop_if_diverged(finite: torch.Tensor, run_dir: Path, step: int) -> None:
    """Checked before logging and before saving, so no NaN weights ever reach a checkpoint."""
    if not bool(finite):
        raise TrainingDiverged(f"{run_dir}: loss became NaN or inf before step {step}; the last good checkpoint is "
                               f"kept in {run_dir / 'checkpoints'} (try a lower train.lr, train.grad_clip or "
                               f"precision fp32)")


def _all_reduce_grads(params, world_size: int) -> None:
    import torch.distributed as dist

    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world_size


def _reduce(d, loss_sum, bucket_sum, bucket_count) -> dict[str, Any]:
    if d.enabled:
        import torch.distributed as dist

        packed = torch.cat([loss_sum[None], bucket_sum, bucket_count])
        dist.all_reduce(packed)
        packed[0] /= d.world_size
        loss_sum, bucket_sum, bucket_count = packed[0], packed[1:1 + NUM_BUCKETS], packed[1 + NUM_BUCKETS:]
    buckets = [float(s / c) if c > 0 else None for s, c in zip(bucket_sum.tolist(), bucket_count.tolist())]
    return {"loss": float(loss_sum), "buckets": buckets}


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(record) + "\n")


def _evaluate_during_training(cfg, d, run_dir, ema, diffusion, step, final, trackers: TrackerSet) -> None:
    """Sample with the EMA weights and score them; append to metrics.jsonl, and eval.json at the end."""
    from .evaluate import dataset_reference, evaluate_model_samples
    from .sample import generate, write_samples

    images, labels = generate(ema, diffusion, cfg, num=cfg.eval.num_samples, seed=cfg.seed, dist=d, progress=False)
    if not d.is_main:
        return
    from .plots import image_grid  # trackers

    trackers.log_image(step, "samples", image_grid(images[:64]))  # trackers
    if final:
        write_samples(images[:256], labels[:256], run_dir / "samples", png=False,
                      info={"step": step, "weights": "ema", "sampler": cfg.sample.sampler,
                            "respacing": cfg.sample.respacing, "cfg_scale": cfg.sample.cfg_scale})
    reference = cfg.eval.reference or dataset_reference(cfg.data.name, **cfg.data.params)
    try:
        result = evaluate_model_samples(images, labels, reference, metrics=cfg.eval.metrics,
                                        feature_extractor=cfg.eval.feature_extractor,
                                        weights_path=cfg.eval.weights_path)
    except UserError as exc:
        print(f"dtr: warning: evaluation at step {step} skipped: {exc}")
        return
    result.update({"step": step, "sampler": cfg.sample.sampler, "respacing": cfg.sample.respacing,
                   "cfg_scale": cfg.sample.cfg_scale, "cfg_channels": cfg.sample.cfg_channels,
                   "train_precision": cfg.train.precision, "world_size": d.world_size, "seed": cfg.seed})
    _append_jsonl(run_dir / "metrics.jsonl", {"step": step, "eval": result})
    trackers.log_record({"step": step, "eval": result})  # trackers
    if final:
        write_json(run_dir / "eval.json", result)
