"""The training step loop over an explicit :class:`~dtr_plugins.training.state.TrainState` (model, EMA,
optimizer, grad scaler, loss weighting, step), in the manner of guided-diffusion's ``TrainLoop``
(``improved_diffusion/train_util.py``).

Resumption is exact: every step re-seeds the RNG from ``(seed, rank, step)`` and the data position is
the step itself (see :class:`dtr_plugins.training.batches.StepBatches`).
"""
from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Iterable, Iterator
from dataclasses import replace
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch

from dtr_plugins.core import distributed
from dtr_plugins.core.config import ExperimentConfig
from dtr_plugins.core.contracts import Backbone, EmaRule, LossWeighting, TimestepSampler
from dtr_plugins.core.cost import counting_flops
from dtr_plugins.core.errors import ConfigError, UserError
from dtr_plugins.core.log import show_progress
from dtr_plugins.core.sampling_settings import SamplingOverrides, SamplingSettings
from dtr_plugins.core.seeds import derived
from dtr_plugins.evaluation.heldout import HeldOutSet
from dtr_plugins.runs.rundir import RunDir
from dtr_plugins.sampling.prompts import evaluation_prompts
from dtr_plugins.training.accumulate import forward_backward
from dtr_plugins.training.aux_losses import step_aux_losses
from dtr_plugins.training.cost import eager_net, train_cost_record
from dtr_plugins.training.state import TrainState, ema_update, routing_plan
from dtr_plugins.training.tracker_set import TrackerSet

if TYPE_CHECKING:
    from dtr_plugins.compose import Components

logger = logging.getLogger(__name__)

NUM_BUCKETS = 10

__all__ = ["TrainState", "Trainer", "TrainingDiverged", "ema_update", "step_seed", "autocast",
           "model_kwargs_for", "check_data_fits", "ranks_in_sync", "NUM_BUCKETS"]


class TrainingDiverged(UserError):
    """The loss, or the weights about to be saved, became NaN or inf."""


# ---------------------------------------------------------------------------------------- helpers
def step_seed(seed: int, rank: int, step: int) -> int:
    return derived(seed * 1_000_003 + rank * 7919 + step * 104_729)


def autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def lr_at(cfg: ExperimentConfig, step: int) -> float:
    """Learning rate of ``step``: linear warm-up over ``train.lr_warmup_steps``, then constant."""
    if cfg.train.lr_warmup_steps:
        return cfg.train.lr * min(1.0, (step + 1) / cfg.train.lr_warmup_steps)
    return cfg.train.lr


def model_kwargs_for(model: Backbone, labels: torch.Tensor) -> dict[str, Any]:
    """Class-conditional backbones get ``y``; unconditional ones (``num_classes`` None, 0 or 1) get nothing."""
    return {"y": labels} if (model.num_classes or 0) > 1 else {}


def check_data_fits(model: Backbone, x0: torch.Tensor, cfg: ExperimentConfig) -> None:
    """The denoiser's inputs (after the codec) must have the backbone's channels and size."""
    if x0.shape[1] != model.in_channels:
        raise ConfigError(f"data: '{cfg.dataset.name}' gives {x0.shape[1]}-channel images but backbone.in_channels "
                          f"is {model.in_channels}")
    if x0.shape[-1] != model.input_size:
        raise ConfigError(f"data.image_size: '{cfg.dataset.name}' gives {x0.shape[-1]}px images but the backbone "
                          f"expects {model.input_size}px (backbone.input_size)")


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


# ---------------------------------------------------------------------------------------- trainer
class Trainer:
    """Runs optimizer steps on a :class:`TrainState`, logs to the run directory, saves and evaluates.

    Args:
        cfg: the run config (train, eval and sample sections are read).
        state: the state to advance.
        net: the module the forward pass goes through (``state.model``, or it wrapped in DDP / compiled).
        parts: the composed run; read are its ``diffusion`` (the process), ``timestep_sampler`` (draws each
            step's ``t``), ``model_input`` (a data batch -> the denoiser's ``x0``) and ``codec`` (decodes
            samples for evaluation).
        run_dir: where metrics, checkpoints and samples go.
        dist: the process group of this rank.
        trackers: experiment trackers that mirror metrics.jsonl (empty on ranks other than 0).
    """

    def __init__(self, cfg: ExperimentConfig, state: TrainState, net: torch.nn.Module, parts: Components,
                 run_dir: RunDir, dist: distributed.Dist, progress: bool = True,
                 trackers: TrackerSet | None = None, heldout: HeldOutSet | None = None):
        self.trackers = trackers if trackers is not None else TrackerSet()
        self.heldout = heldout  # fixed held-out inputs (main rank only; None: no held-out loss)
        self.cfg, self.state, self.net, self.diffusion = cfg, state, net, parts.diffusion
        self.sampler: TimestepSampler = parts.timestep_sampler
        self.ema_rule: EmaRule = parts.ema
        self.snapshot_every = cfg.ema.snapshot_every if cfg.ema is not None else 0
        self.model_input, self.codec, self.run_dir = parts.model_input, parts.codec, run_dir
        self.dist, self.progress = dist, progress
        # the sampling of every evaluation, built once: the EMA weights, eval.num_samples images, seed cfg.seed
        # text-to-image: eval.num_samples prompts (text.eval_prompts, else training captions) drawn with the run's seed
        text, evaluating = parts.text, cfg.eval.at_end or bool(cfg.eval.every)
        prompts = (evaluation_prompts(text, cfg.eval.num_samples, cfg.seed, cfg.text.eval_prompts)
                   if text is not None and cfg.text is not None and evaluating else None)
        self.sampling = replace(SamplingSettings.from_config(
            cfg, SamplingOverrides(num=cfg.eval.num_samples, seed=cfg.seed, prompts=prompts),
            bounded=parts.codec.bounded), prompt_encoder=parts.text)
        device = dist.device
        self.base_lrs = [g.get("lr", cfg.train.lr) for g in state.optimizer.param_groups]
        self.bucket_sum = torch.zeros(NUM_BUCKETS, device=device, dtype=torch.float64)
        self.bucket_count = torch.zeros(NUM_BUCKETS, device=device, dtype=torch.float64)
        self.loss_sum = torch.zeros((), device=device, dtype=torch.float64)
        self.aux_sum: dict[str, torch.Tensor] = {}  # a learned strategy's auxiliary losses over the log window
        self.finite = torch.ones((), device=device, dtype=torch.bool)
        self.window_steps, self.window_start = 0, time.perf_counter()
        self.plan = routing_plan(state.model)
        self.text = parts.text  # text-to-image: labels are item indices; their captions go through the cache
        self.regularizer = parts.regularizer  # an auxiliary loss from a frozen encoder (repa), logged as aux/<name>

    # ------------------------------------------------------------------------------------- loop
    def run(self, loader: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> None:
        """One optimizer step per batch of ``loader``, then logging, checkpoints and evaluation on schedule."""
        from tqdm.auto import tqdm

        cfg, d, state = self.cfg, self.dist, self.state
        if d.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(d.device)
        bar = tqdm(total=cfg.train.steps, initial=state.step, desc=cfg.name,
                   disable=not (show_progress(self.progress) and d.is_main), dynamic_ncols=True)
        state.model.train()
        for batch, labels in loader:
            loss = self.run_step(batch, labels)
            bar.update(1)
            step, last = state.step, state.step == cfg.train.steps
            if step % cfg.train.log_every == 0 or last:
                record = self.log()
                bar.set_postfix(loss=f"{record['loss']:.4f}")
            if self.heldout is not None and (step % cfg.eval.heldout_every == 0 or last):
                with bar_paused(bar):
                    self.score_heldout()
            if self.snapshot_every and (step % self.snapshot_every == 0 or last):  # first: a checkpoint of this
                self.save_ema_snapshots()  # step then implies its snapshots (a resume never skips one)
            if (cfg.train.ckpt_every and step % cfg.train.ckpt_every == 0) or last:
                self.save()
            if cfg.eval.every and (step % cfg.eval.every == 0 or last) or (last and cfg.eval.at_end):
                with bar_paused(bar):  # the bar's rate and elapsed time are the training's
                    self.evaluate(final=last)
            del loss
        bar.close()

    def run_step(self, batch: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """One optimizer step on one batch; returns the (detached) scalar loss."""
        cfg, d, state = self.cfg, self.dist, self.state
        model, weighting, optimizer, scaler = state.model, state.weighting, state.optimizer, state.scaler
        torch.manual_seed(step_seed(cfg.seed, d.rank, state.step))
        batch = batch.to(d.device, non_blocking=True)
        labels = labels.to(d.device, non_blocking=True)
        x0 = self.model_input(batch)
        if state.step == 0 and d.is_main:
            check_data_fits(cast(Backbone, model), x0, cfg)
        # t from the run's sampler, handed to the process and the weighting alike (neither draws it)
        t = self.sampler.sample(x0.shape[0], d.device)
        scale = lr_at(cfg, state.step) / cfg.train.lr
        for group, lr in zip(optimizer.param_groups, self.base_lrs):
            group["lr"] = lr * scale
        optimizer.zero_grad(set_to_none=True)
        # train.grad_accum_steps micro-batches (1: the plain step), see training/accumulate.py; a learned routing
        # strategy's auxiliary losses are added to what is backpropagated (static routing: the loss itself)
        kwargs = (model_kwargs_for(cast(Backbone, model), labels) if self.text is None
                  else {"y": self.text.training_condition(labels)})  # caption dropout: the empty caption's
        first = state.step == 0  # the run's first step is counted (training/cost.py): meta.json ``cost``
        # a regulariser (REPA) reads the clean images and the tokens of one block (training/aux_losses.py)
        with step_aux_losses(model, self.plan, self.regularizer, batch) as aux_losses, \
                counting_flops() if first else contextlib.nullcontext() as flops:
            loss, per_sample_loss, aux = forward_backward(
                eager_net(self.net) if first else self.net, self.diffusion, weighting, x0, t, kwargs,
                k=cfg.train.grad_accum_steps, autocast=lambda: autocast(cfg.train.precision, d.device),
                backward=lambda value: scaler.scale(value).backward(), aux_losses=aux_losses)
        if flops is not None and d.is_main:
            self.run_dir.update_meta(cost=train_cost_record(flops.total, int(x0.shape[0])))
        if d.enabled:  # the weighting's and the regulariser's parameters live outside DDP: average their gradients
            _all_reduce_grads(weighting.parameters(), d.world_size)
            if state.regularizer is not None:
                _all_reduce_grads(state.regularizer.parameters(), d.world_size)
        if cfg.train.grad_clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(state.trained(), cfg.train.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        for average, beta in zip(state.averages(), self.ema_rule.betas(state.step), strict=True):
            ema_update(average, model, beta)

        with torch.no_grad():
            per_sample = per_sample_loss.double()
            bucket = self.diffusion.loss_bucket(t, NUM_BUCKETS)  # by noise level, bucket 0 clean
            self.bucket_sum.index_add_(0, bucket, per_sample)
            self.bucket_count.index_add_(0, bucket, torch.ones_like(per_sample))
            self.loss_sum += loss.detach().double()
            for name, value in aux.items():
                self.aux_sum[name] = self.aux_sum.get(name, 0) + value.detach().double()
            self.finite &= torch.isfinite(loss.detach())
            for value in aux.values():
                self.finite &= torch.isfinite(value)
        state.step += 1
        self.window_steps += 1
        return loss

    # -------------------------------------------------------------------------------- reporting
    def log(self) -> dict[str, Any]:
        """Reduce the window's statistics across ranks, append one record to metrics.jsonl, reset."""
        cfg, d, state = self.cfg, self.dist, self.state
        self._stop_if_diverged()
        stats = _reduce(d, self.loss_sum, self.bucket_sum, self.bucket_count)
        elapsed = max(time.perf_counter() - self.window_start, 1e-9)
        record = {"step": state.step, "loss": stats["loss"] / self.window_steps,
                  "loss_bucket": stats["buckets"], "lr": state.optimizer.param_groups[0]["lr"],
                  "steps_per_s": self.window_steps / elapsed,
                  "images_per_s": self.window_steps * cfg.train.batch_size / elapsed,
                  "ema_decay": float(self.ema_rule.betas(state.step - 1)[0])}
        if d.device.type == "cuda":
            record["peak_memory_mb"] = torch.cuda.max_memory_allocated(d.device) / 2**20
        record.update({f"weighting/{k}": v for k, v in cast(LossWeighting, state.weighting).log_values().items()})
        # the learned strategy's and the regulariser's weighted auxiliary losses (this rank's window mean), added to
        # the training loss
        record.update({f"aux/{k}": float(v) / self.window_steps for k, v in sorted(self.aux_sum.items())})
        self.aux_sum = {}
        if d.is_main:
            self.run_dir.append_metrics(record)
            self.trackers.log_record(record)
        self.bucket_sum.zero_()
        self.bucket_count.zero_()
        self.loss_sum.zero_()
        self.window_steps, self.window_start = 0, time.perf_counter()
        return record

    def score_heldout(self) -> dict[str, Any]:
        """Held-out epsilon MSE per noise band of the EMA weights (:mod:`.heldout`); one metrics.jsonl line."""
        from dtr_plugins.evaluation.heldout import heldout_losses, heldout_record

        assert self.heldout is not None
        model = self.state.model
        losses = heldout_losses(self.state.ema, self.diffusion, self.heldout,
                                lambda y: model_kwargs_for(model, y), device=self.dist.device)  # type: ignore[arg-type]
        record = heldout_record(self.state.step, losses, self.heldout, weights="ema")
        self.run_dir.append_metrics(record)
        self.trackers.log_record(record)
        return record

    def save(self) -> None:
        """Write ``checkpoints/<step>.pt`` (main rank; atomic), after the divergence checks: the loss, and every
        floating tensor of the model and EMA finite on every rank (all ranks stop together otherwise); then keep
        only the newest ``train.keep_last`` (:func:`~dtr_plugins.runs.retention.prune_checkpoints`)."""
        from dtr_plugins.core.checkpoint import save_checkpoint
        from dtr_plugins.runs.retention import prune_checkpoints

        self._stop_if_diverged()
        self._stop_if_weights_nonfinite()
        if self.dist.is_main:
            save_checkpoint(self.run_dir.checkpoint_path(self.state.step), **self.state.checkpoint(self.cfg))
            prune_checkpoints(self.run_dir.checkpoints, self.cfg.train.keep_last)
        self.dist.barrier()

    def save_ema_snapshots(self) -> None:
        """Each EMA profile's weights to ``<run>/ema/`` (main rank; after the finite-weights check on every rank;
        :func:`~dtr_plugins.training.posthoc.write_snapshots`): ``dtr ema`` reconstructs from them."""
        from dtr_plugins.training.posthoc import write_snapshots

        self._stop_if_weights_nonfinite()
        if self.dist.is_main:
            write_snapshots(self.run_dir, self.cfg, self.state, self.ema_rule.profiles())
        self.dist.barrier()

    def evaluate(self, final: bool) -> None:
        """Sample with the EMA weights and score them; append to metrics.jsonl, and eval.json at the end.

        A failed evaluation fails the run: :class:`UserError` on every rank (the checkpoint stays)."""
        from dtr_plugins.core.errors import user_message
        from dtr_plugins.sampling.sample import generate

        d, step = self.dist, self.state.step
        if d.is_main:
            logger.info(f"dtr: step {step}: evaluating: sampling {self.sampling.num_samples} images with the EMA "
                       f"weights ({self.sampling.sampler}, {self.sampling.respacing})")
        applied: dict[str, Any] = {}  # filled by generate with the settings applied
        images, labels = generate(cast(Backbone, self.state.ema), self.diffusion, self.sampling, dist=d,
                                  codec=self.codec, progress=self.progress, record=applied)
        failure: UserError | None = None
        if d.is_main:
            try:
                self._score(images, labels, applied, final)
            except UserError as exc:
                failure = UserError(f"evaluation at step {step} failed: {user_message(exc)} (checkpoints are kept)")
        if not distributed.all_ok(d, failure is None):  # every rank stops with rank 0
            raise failure or UserError(f"evaluation at step {step} failed on rank 0 (its error is above)")

    def _score(self, images: np.ndarray, labels: np.ndarray, applied: dict[str, Any], final: bool) -> None:
        """Main rank: score the evaluation samples and record them (metrics.jsonl, trackers, eval.json)."""
        from dtr_plugins.core.images import image_grid
        from dtr_plugins.evaluation.evaluate import (
            EvalSettings,
            dataset_reference,
            describe_metrics,
            evaluate_model_samples,
        )
        from dtr_plugins.evaluation.text_metrics import score_text_samples
        from dtr_plugins.sampling.sample import write_samples

        cfg, step = self.cfg, self.state.step
        if final:
            write_samples(images[:256], labels[:256], self.run_dir.samples, png=False,
                          info={"checkpoint": str(self.run_dir.checkpoint_path(step)), "step": step,
                                "weights": "ema", **applied}, class_names=self.run_dir.class_names())
        reference = cfg.eval.reference or dataset_reference(cfg.dataset.name, **cfg.dataset.params)
        logger.info(f"dtr: step {step}: scoring {', '.join(cfg.eval.metrics)} with {cfg.eval.feature_extractor} "
                   f"against {reference}")
        scoring = EvalSettings(metrics=cfg.eval.metrics, feature_extractor=cfg.eval.feature_extractor,
                               weights_path=cfg.eval.weights_path,
                               extractor_params=cfg.eval.feature_extractor_params)
        if self.text is None:
            result = evaluate_model_samples(images, labels, reference, scoring)
        else:  # text-to-image: labels are the prompts' classes (offline caption sets), CLIP score when configured
            result = score_text_samples(images, self.sampling.prompts or (), cfg, reference, scoring, self.dist.device)
        logger.info(f"dtr: step {step}: {describe_metrics(result)}")
        result.update({"step": step, **applied, "weights": "ema", "train_precision": cfg.train.precision})
        self.run_dir.append_metrics({"step": step, "eval": result})
        self.trackers.log_image(step, "samples", image_grid(images[:64]))
        self.trackers.log_record({"step": step, "eval": result})
        if final:
            self.run_dir.write_eval(result)

    def _stop_if_diverged(self) -> None:
        """Checked before logging and before saving, so no NaN weights ever reach a checkpoint; the flag is
        all-reduced so that every rank stops together when any rank saw a NaN/inf loss."""
        finite = self.finite.to(torch.int32)
        if self.dist.enabled:
            import torch.distributed as dist

            dist.all_reduce(finite, op=dist.ReduceOp.MIN)
        if not bool(finite):
            ckpts = self.run_dir.checkpoints
            raise TrainingDiverged(f"{self.run_dir.path}: loss became NaN or inf before step {self.state.step}; the "
                                   f"last good checkpoint is kept in {ckpts} (try a lower train.lr, train.grad_clip "
                                   f"or precision fp32)")


    def _stop_if_weights_nonfinite(self) -> None:
        """A NaN/inf gradient leaves a finite loss but NaN weights: refuse to save them, on every rank at once."""
        bad = self.state.nonfinite()
        flag = torch.tensor(0 if bad else 1, device=self.dist.device, dtype=torch.int32)
        if self.dist.enabled:
            import torch.distributed as dist

            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        if int(flag) == 0:
            where = f"{len(bad)} tensors, first {bad[0]}" if bad else "on another rank"
            raise TrainingDiverged(f"{self.run_dir.path}: weights became NaN or inf before step {self.state.step} "
                                   f"({where}); not saved, the last good checkpoint is kept in "
                                   f"{self.run_dir.checkpoints} (try a lower train.lr, train.grad_clip or precision "
                                   "fp32)")


@contextlib.contextmanager
def bar_paused(bar: Any) -> Iterator[None]:
    """Leave the time the block takes out of a tqdm bar's elapsed time and rate (an evaluation between two
    training steps: without this the next rate spans it, 3.8 s/it for 1.2 s/it of training)."""
    started = time.time()
    try:
        yield
    finally:
        if not bar.disable:  # tqdm's clock (time.time): the bar starts, and last printed, that much later
            pause = time.time() - started
            bar.start_t += pause
            bar.last_print_t += pause


def _all_reduce_grads(params, world_size: int) -> None:
    import torch.distributed as dist

    for p in params:
        if p.grad is not None:
            dist.all_reduce(p.grad)
            p.grad /= world_size


def _reduce(d: distributed.Dist, loss_sum, bucket_sum, bucket_count) -> dict[str, Any]:
    if d.enabled:
        import torch.distributed as dist

        packed = torch.cat([loss_sum[None], bucket_sum, bucket_count])
        dist.all_reduce(packed)
        packed[0] /= d.world_size
        loss_sum, bucket_sum, bucket_count = packed[0], packed[1:1 + NUM_BUCKETS], packed[1 + NUM_BUCKETS:]
    buckets = [float(s / c) if c > 0 else None for s, c in zip(bucket_sum.tolist(), bucket_count.tolist())]
    return {"loss": float(loss_sum), "buckets": buckets}
