"""``train(cfg)``: compose a run from its config, set up its run directory and hand it to the
:class:`~dtr_plugins.training.trainer.Trainer`. One process, or many under torchrun (DDP), on CPU or GPU.

Resumption is exact: every step re-seeds the RNG from ``(seed, rank, step)`` and draws its batch from
a stream of seeded permutations indexed by the step (:class:`~dtr_plugins.training.batches.StepBatches`); each
sample is read with the torch RNG seeded from ``(seed, step, position in the global batch)``
(:class:`~dtr_plugins.training.batches.SeededItems`), so data
augmentation (``image_folder``'s random flip) is the same with any number of workers and across a resume.
``N`` steps plus a resumed ``N`` give the same weights as ``2N`` straight steps.

A run directory is written by one process at a time (:meth:`RunDir.lock`). A resumed run must have the
same config identity as its checkpoint (:mod:`dtr_plugins.core.fingerprint`); each invocation adds a
segment to ``meta.json``; records of ``metrics.jsonl`` past the resumed checkpoint are dropped; and a
resume at the final step redoes the final outputs a crash lost (:meth:`RunDir.missing_outputs`).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import platform
import subprocess
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from torch.utils.data import DataLoader

from dtr_plugins._version import __version__
from dtr_plugins.compose import (
    Components,
    build_regularizer,
    check_machine,
    check_run,
    compose,
    heldout_skip_reason,
)
from dtr_plugins.core import distributed
from dtr_plugins.core.buckets import apply_train_buckets, bucket_summary
from dtr_plugins.core.compute import apply_activation_checkpointing, tf32_mode
from dtr_plugins.core.config import ExperimentConfig, config_from_dict
from dtr_plugins.core.contracts import Backbone
from dtr_plugins.core.errors import CheckpointError, ConfigError, UserError
from dtr_plugins.core.fingerprint import RESUMABLE_KEYS, first_difference, weights_fingerprint
from dtr_plugins.core.labels import class_map
from dtr_plugins.core.log import run_log
from dtr_plugins.core.param_count import parameter_record
from dtr_plugins.core.plugins import PluginRegistry
from dtr_plugins.core.routing import RoutedBackbone, routed_units
from dtr_plugins.core.timesteps import sampler_record
from dtr_plugins.core.token_routing import token_record
from dtr_plugins.evaluation.heldout import HeldOutSet
from dtr_plugins.runs.rundir import RunDir, RunLocked
from dtr_plugins.training.batches import SeededItems, StepBatches, _collate, draw_key
from dtr_plugins.training.tracker_set import TrackerSet, routing_heatmap
from dtr_plugins.training.trainer import Trainer, TrainingDiverged, TrainState, ranks_in_sync

logger = logging.getLogger(__name__)

__all__ = ["train", "compose_checked", "StepBatches", "SeededItems", "draw_key", "run_meta", "check_resume_identity",
           "TrainingDiverged"]


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


def check_resume_identity(ckpt: Any, cfg: ExperimentConfig, path: Path) -> None:
    """A resumed run must keep its config identity (:data:`~dtr_plugins.core.fingerprint.RESUMABLE_KEYS` may change).

    Raises :class:`ConfigError` naming the first differing key with both values. A checkpoint written before
    fingerprints existed is resumed with a warning.
    """
    stored = ckpt.get("config_fingerprint") if isinstance(ckpt, dict) else None
    if stored is None:
        warnings.warn(f"{path}: the checkpoint has no config fingerprint (an older version wrote it); cannot check "
                      "that the config is the one it was trained with", stacklevel=2)
        return
    new = cfg.to_dict()
    if stored == weights_fingerprint(new):
        return
    trained = _with_current_defaults(ckpt.get("config") or {}, path)
    if weights_fingerprint(trained) == weights_fingerprint(new):
        logger.info(f"{path}: written before some config keys existed; they take their defaults, which keep "
                    "the earlier behaviour")
        return
    allowed = ", ".join(RESUMABLE_KEYS)
    diff = first_difference(trained, new)
    if diff is None:
        raise ConfigError(f"{path}: the config's fingerprint differs from the checkpoint's; --resume may only change "
                          f"{allowed}; start a new run instead")
    key, old, now = diff
    raise ConfigError(f"{key}: {now!r} differs from {old!r} that the run was trained with ({path}); --resume may only "
                      f"change {allowed}; start a new run (another name or --run-dir) instead")


def _with_current_defaults(stored: dict[str, Any], path: Path) -> dict[str, Any]:
    """The checkpoint's resolved config read again by this version: a key added since the checkpoint was
    written takes its default (a new key's default keeps the earlier behaviour; keys the file has keep their
    values). The stored mapping itself when it no longer validates (the difference is then named from it)."""
    try:
        return config_from_dict(dict(stored), source=str(path)).to_dict()
    except UserError:
        return stored


def _begin_meta(rd: RunDir, d: distributed.Dist, cfg: ExperimentConfig, step: int, resume: bool) -> dict[str, Any]:
    """meta.json of this invocation: the first run's fields kept, the current ones updated, one segment added."""
    old = rd.read_meta() if resume else {}
    meta = run_meta(d, cfg)
    segment = {"from_step": step, "to_step": None, "world_size": d.world_size, "device": meta["device"],
               "started": meta["started"], "finished": None, "git_commit": meta["git_commit"]}
    segments = [s for s in old.get("segments", []) if isinstance(s, dict)]
    if old and not segments and "started" in old:  # meta.json of an older version: its one run, as far as known
        segments = [{"from_step": old.get("resumed_from_step", 0), "to_step": None, "world_size": old.get("world_size"),
                     "device": old.get("device"), "started": old.get("started"), "finished": old.get("finished"),
                     "git_commit": old.get("git_commit")}]
    merged = {**old, **meta, "started": old.get("started", meta["started"]), "segments": [*segments, segment],
              "config_fingerprint": weights_fingerprint(cfg.to_dict())}
    for stale in ("finished", "ranks_in_sync"):
        merged.pop(stale, None)
    if resume and old:
        merged["resumed_from_step"] = step
    return merged


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _heldout_for(cfg: ExperimentConfig, parts: Components, device: torch.device) -> tuple[HeldOutSet | None,
                                                                                       dict[str, Any]]:
    """The run's fixed held-out inputs, drawn from the held-out split :func:`compose` opened
    (``parts.heldout_data``), and what meta.json records about them, or why there are none
    (``parts.heldout_why``: ``eval.heldout_every`` 0, a process without :class:`SupportsHeldoutLoss`, a
    text-to-image run, a latent cache, or data without a held-out split)."""
    from dtr_plugins.core.contracts import SupportsHeldoutLoss

    if parts.heldout_data is None:
        if heldout_skip_reason(cfg, parts.diffusion, parts.model_input.cached) is None:  # the data has no split
            logger.info(f"dtr: note: no held-out loss for this run: {parts.heldout_why}")
        return None, {"applied": False, "why": parts.heldout_why}
    process = cast(SupportsHeldoutLoss, parts.diffusion)  # open_heldout_split checked it
    time, target = process.heldout_time, process.heldout_target
    codec = parts.codec
    prepare = None if parts.model_input.identity else (lambda x: codec.encode(x.to(device)))
    heldout = HeldOutSet.build(parts.heldout_data, parts.diffusion.num_timesteps, per_band=cfg.eval.heldout_per_band,
                               seed=cfg.eval.heldout_seed, prepare=prepare, time=time)
    return heldout, {"applied": True, "every": cfg.eval.heldout_every, "weights": "ema", "time": time,
                     "target": target,
                     "num_bands": heldout.num_bands, "per_band": heldout.per_band, "seed": heldout.seed,
                     "fingerprint": heldout.fingerprint}


def train(cfg: ExperimentConfig, *, resume: bool = False, run_dir: str | Path | None = None,
          registry: PluginRegistry | None = None, allow_unsafe_load: bool = False, progress: bool = True,
          parts: Components | None = None) -> Path:
    """Train ``cfg``; returns the run directory (docs/design.md, "6. The run directory"; :class:`RunDir`).

    Progress lines go to the ``dtr_plugins`` logger (silent unless logging is configured; ``dtr train`` shows
    them) and, for the duration of the call, to ``<run>/train.log`` (appended; :func:`~dtr_plugins.core.log.run_log`).

    ``parts``: the run as :func:`compose_checked` composed it (``dtr train`` does this first, to name its config
    file in a refusal); composed here when None.

    Raises :class:`UserError` when the run directory already has checkpoints and ``resume`` is False,
    :class:`CheckpointError` when ``resume`` finds none, :class:`ConfigError` when ``resume`` finds a checkpoint
    of another config, :class:`~dtr_plugins.runs.rundir.RunLocked` when another process writes the run,
    :class:`TrainingDiverged` on a NaN/inf loss or weights.
    """
    if parts is None:
        parts = compose_checked(cfg, registry, run_dir)  # every rank, before any collective or write
    d = distributed.setup(cfg.train.device)
    trackers = TrackerSet()  # only rank 0 mirrors metrics.jsonl into log.trackers
    held = contextlib.ExitStack()
    finished = False
    try:
        compute = _compute_settings(cfg, d, held)
        if not resume and cfg.train.init_from is not None:  # fine-tuning: refused before the run directory opens
            from dtr_plugins.core.checkpoint import load_init_from

            load_init_from(parts.model, cfg.train.init_from, allow_unsafe=allow_unsafe_load)
        rd, start_ckpt = _open_run_dir(cfg, run_dir, resume, d, held)
        if d.is_main:  # the console's lines of this invocation, appended to <run>/train.log
            held.enter_context(run_log(rd.log_path))
            how = f"resuming from {start_ckpt.relative_to(rd.path)}" if start_ckpt is not None else "new run"
            logger.info(f"dtr: run directory: {rd.path} ({how})")
            logger.debug(f"dtr: device {d.device}, world size {d.world_size}, compute {compute}")
        parts.to(d.device)
        compute["activation_checkpointing"] = apply_activation_checkpointing(
            parts.model, cfg.train.activation_checkpointing, cfg.backbone.name)
        compute["timestep_buckets"] = apply_train_buckets(parts.model, cfg.train.timestep_buckets, cfg.train.compile,
                                                          verbose=d.is_main)
        state = _initial_state(cfg, parts, d, start_ckpt, allow_unsafe_load)
        start_step = state.step
        heldout: HeldOutSet | None = None  # only rank 0 scores the held-out loss
        if d.is_main:
            trackers, heldout = _write_run_start(rd, parts, d, state.step,
                                                 _Start(resume, start_ckpt is not None, compute, registry))
        d.barrier()
        trainer = Trainer(cfg, state, _network(cfg, parts.model, d), parts, rd, d, progress=progress,
                          trackers=trackers, heldout=heldout)
        if start_ckpt is not None and start_step < cfg.train.steps:  # a kill during the checkpoint step's evaluation
            _redo_interrupted_evaluation(trainer, rd, cfg, d)
        trainer.run(_loader(cfg, parts.dataset, d, state.step))
        if start_step == cfg.train.steps:  # resumed at the final step: redo the final outputs a crash lost
            _redo_missing_outputs(trainer, rd, cfg, d)
        _finish_meta(rd, parts.model, d, state.step)
        finished = True
        return rd.path
    finally:
        trackers.finish()
        distributed.teardown(d, clean=finished)
        held.close()


def compose_checked(cfg: ExperimentConfig, registry: PluginRegistry | None = None,
                    run_dir: str | Path | None = None) -> Components:
    """The run composed once (on the CPU, initial weights from ``cfg.seed``, identical on every rank) and
    checked as ``dtr validate`` checks it (:func:`check_machine`, :func:`check_run`): the same refusals, the
    same lines. Raises :class:`ConfigError` / :class:`PluginError` (one line)."""
    check_machine(cfg)
    distributed.set_threads(cfg.train.threads)
    torch.manual_seed(cfg.seed)  # identical initial weights on every rank
    parts = compose(cfg, registry, device="cpu")
    check_run(cfg, parts, registry, run_dir=run_dir)
    parts.regularizer = build_regularizer(parts, registry)  # its projector after the model, from the same seed
    return parts


def _open_run_dir(cfg: ExperimentConfig, run_dir: str | Path | None, resume: bool, d: distributed.Dist,
                  held: contextlib.ExitStack) -> tuple[RunDir, Path | None]:
    """The run directory, locked (on every rank), and the checkpoint to resume from (None: a fresh start)."""
    rd = RunDir(run_dir if run_dir is not None else Path(cfg.output_dir) / cfg.name)
    if d.is_main and not rd.path.exists():
        created = [p for p in (rd.path, *rd.path.parents) if not p.exists()]
        held.callback(_remove_if_only_lock, rd, created)  # a run refused before it wrote anything leaves no folder
    _lock_on_every_rank(rd, d, held)
    start_ckpt = rd.latest_checkpoint()
    if start_ckpt is not None and not resume:
        raise UserError(f"{rd.path}: run directory already has checkpoints; pass --resume (Python: "
                        f"resume=True) to continue it, or choose another name / --run-dir (Python: run_dir=)")
    if resume and start_ckpt is None:
        raise CheckpointError(f"{rd.path}: --resume given but there is no checkpoint in {rd.checkpoints}")
    return rd, start_ckpt


def _initial_state(cfg: ExperimentConfig, parts: Components, d: distributed.Dist, start_ckpt: Path | None,
                   allow_unsafe_load: bool) -> TrainState:
    """The training state: fresh (the model as it is: ``train.init_from``'s weights were loaded into it before
    the run directory opened), or loaded from ``start_ckpt`` (same config identity, step <= train.steps)."""
    from dtr_plugins.core.checkpoint import apply_checkpoint, read_checkpoint

    state = TrainState.create(parts.model, parts.loss_weighting, cfg, d.device,
                              profiles=[p.name for p in parts.ema.profiles()],
                              regularizer=parts.regularizer.module() if parts.regularizer is not None else None)
    if start_ckpt is not None:
        ckpt = read_checkpoint(start_ckpt, allow_unsafe=allow_unsafe_load)
        check_resume_identity(ckpt, cfg, start_ckpt)
        state.load(apply_checkpoint(parts.model, ckpt, start_ckpt, use_ema=False))
        if state.step > cfg.train.steps:  # before anything is written: config.yaml, meta.json stay as they are
            raise ConfigError(f"train.steps: {cfg.train.steps} is below the step of the checkpoint to resume "
                              f"({state.step}, {start_ckpt}); --resume may keep or raise train.steps")
    return state


@dataclass(frozen=True)
class _Start:
    """How this invocation starts: resumed or not, from a checkpoint or not, the compute settings applied."""

    resume: bool
    from_checkpoint: bool
    compute: dict[str, Any]
    registry: PluginRegistry | None


def _write_run_start(rd: RunDir, parts: Components, d: distributed.Dist, step: int,
                     start: _Start) -> tuple[TrackerSet, HeldOutSet | None]:
    """Rank 0: config.yaml, classes.json, meta.json (with this segment), the trackers and the held-out set."""
    cfg = parts.cfg
    rd.path.mkdir(parents=True, exist_ok=True)
    if start.from_checkpoint:
        rd.truncate_metrics(step)  # steps logged after this checkpoint are redone
    else:
        _drop_records_of_an_attempt_without_checkpoint(rd)
    rd.write_config(cfg.to_yaml())
    rd.write_classes(class_map(parts.dataset, cast(Backbone, parts.model).num_classes))
    meta = _begin_meta(rd, d, cfg, step, start.resume)
    meta["compute"] = meta["segments"][-1]["compute"] = start.compute  # as applied by this invocation
    meta["routed_channels"] = routed_units(parts.model, cfg.routing.site)  # the report draws masks from these
    meta.update(parameter_record(parts.model))  # parameters: total and active per forward; time experts' owners
    if (tokens := token_record(parts.model)) is not None:  # token_routing (tread): applied in training forwards
        meta["token_routing"] = tokens
    previous = meta.get("trackers") if start.from_checkpoint else None  # the run ids to continue
    trackers = TrackerSet.open(cfg.log.trackers, rd.path, cfg.to_dict(), cfg.name, start.registry,
                               previous=previous if isinstance(previous, dict) else None)
    meta["trackers"] = trackers.applied()
    heldout, meta["heldout"] = _heldout_for(cfg, parts, d.device)
    meta["ema"] = {**parts.ema.applied(), "applied": True, "section": "ema" if cfg.ema is not None else
                   "train.ema_decay/ema_warmup", "snapshot_every": cfg.ema.snapshot_every if cfg.ema else 0}
    meta["timesteps"] = sampler_record(parts.timestep_sampler, parts.timestep_source)
    meta["regularizer"] = ({**parts.regularizer.applied(), "applied": True} if parts.regularizer is not None
                           else {"applied": False})
    rd.write_meta(meta)
    heatmap = routing_heatmap(parts.model.plan) if parts.model.plan is not None else None
    if heatmap is not None:
        trackers.log_image(step, "routing/masks", heatmap)
    return trackers, heldout


def _network(cfg: ExperimentConfig, model: torch.nn.Module, d: distributed.Dist) -> torch.nn.Module:
    """The module the training step calls: the model, wrapped for DDP and compiled as configured."""
    net: torch.nn.Module = model
    if d.enabled:
        plan = model.plan if isinstance(model, RoutedBackbone) else None
        net = torch.nn.parallel.DistributedDataParallel(  # time experts: a batch need not reach every expert
            model, device_ids=[d.device.index] if d.device.type == "cuda" else None,
            find_unused_parameters=plan is not None and plan.time_experts is not None)
    if cfg.train.compile:
        net = cast(torch.nn.Module, torch.compile(net))
    return net


def _loader(cfg: ExperimentConfig, dataset: Any, d: distributed.Dist, step: int) -> DataLoader:
    """This rank's batches from ``step`` on (:class:`StepBatches` over :class:`SeededItems`)."""
    batches = StepBatches(len(dataset), cfg.train.batch_size, d.rank, d.world_size, cfg.seed, step,
                          cfg.train.steps, draw_keys=True)
    return DataLoader(SeededItems(dataset), batch_sampler=batches, num_workers=cfg.train.num_workers,
                      collate_fn=_collate, pin_memory=d.device.type == "cuda")


def _finish_meta(rd: RunDir, model: torch.nn.Module, d: distributed.Dist, step: int) -> None:
    """Close this invocation's segment of meta.json (and record whether the ranks ended in sync)."""
    in_sync = ranks_in_sync(model, d) if d.enabled else None
    if not d.is_main:
        return
    finished = _now()
    meta = rd.read_meta()
    segments = meta.get("segments") or [{}]
    segments[-1].update(to_step=step, finished=finished)
    extra: dict[str, Any] = {"segments": segments, "finished": finished}
    achieved = bucket_summary(model)  # what timestep buckets did in this invocation (rank 0's), None: not applied
    if achieved is not None:
        applied = segments[-1].setdefault("compute", {})["timestep_buckets"] = {
            **meta.get("compute", {}).get("timestep_buckets", {}), **achieved}
        extra["compute"] = {**meta.get("compute", {}), "timestep_buckets": applied}
    if in_sync is not None:
        extra = {"ranks_in_sync": in_sync, **extra}
    rd.update_meta(**extra)


def _compute_settings(cfg: ExperimentConfig, d: distributed.Dist, held: contextlib.ExitStack) -> dict[str, Any]:
    """Check that the micro-batches fit this world size and turn TF32 on or off for the run (restored when ``held``
    closes); returns what meta.json records as applied (activation checkpointing is added once the model exists)."""
    k, world = cfg.train.grad_accum_steps, d.world_size
    if cfg.train.batch_size % (world * k):
        raise ConfigError(f"train.batch_size: {cfg.train.batch_size} is not divisible by world size {world} x "
                          f"train.grad_accum_steps {k}")
    return {"grad_accum_steps": k, "micro_batch_size": cfg.train.batch_size // (world * k),
            "tf32": held.enter_context(tf32_mode(cfg.train.tf32, d.device))}


def _drop_records_of_an_attempt_without_checkpoint(rd: RunDir) -> None:
    """A fresh start in a run directory without checkpoints (an earlier attempt stopped before its first
    one): its ``metrics.jsonl`` and ``eval.json`` describe weights that no longer exist, so they are removed
    (with a warning) rather than appended to (which recorded steps 2, 4, 2, 4, 6)."""
    stale = [p for p in (rd.metrics_path, rd.eval_path) if p.exists()]
    if not stale:
        return
    rows = len(rd.read_metrics()) if rd.metrics_path.exists() else 0
    for path in stale:
        path.unlink()
    warnings.warn(f"{rd.path}: an earlier attempt stopped before its first checkpoint; starting afresh "
                  f"(dropped {rows} metrics record(s) and {', '.join(p.name for p in stale)})", stacklevel=3)


def _remove_if_only_lock(rd: RunDir, created: list[Path]) -> None:
    """Undo the folders this run created (``created``: the run folder and the missing parents above it, deepest
    first) when the run was refused before it wrote anything but its lock (and the first lines of train.log)."""
    with contextlib.suppress(OSError):
        names = {p.name for p in rd.path.iterdir()}
        if rd.lock_path.name in names and names <= {rd.lock_path.name, rd.log_path.name}:  # its log says no more
            for name in names:
                (rd.path / name).unlink()
            for folder in created:
                folder.rmdir()  # stops (OSError) at the first folder that holds anything else


def _lock_on_every_rank(rd: RunDir, d: distributed.Dist, held: contextlib.ExitStack) -> None:
    """The main rank takes the run's lock; under torchrun every rank learns the outcome, so all stop together."""
    refused: UserError | None = None
    if d.is_main:
        try:
            held.enter_context(rd.lock())
        except UserError as exc:  # RunLocked, or a file system without flock
            refused = exc
    if d.enabled:
        import torch.distributed as dist

        flag = torch.tensor(0 if refused else 1, device=d.device, dtype=torch.int32)
        dist.all_reduce(flag, op=dist.ReduceOp.MIN)
        if refused is None and int(flag) == 0:
            refused = RunLocked(f"{rd.path}: rank 0 could not lock the run directory (see {rd.lock_path})")
    if refused is not None:
        raise refused


def _redo_missing_outputs(trainer: Trainer, rd: RunDir, cfg: ExperimentConfig, d: distributed.Dist) -> None:
    """Write the final-step outputs of :meth:`RunDir.missing_outputs` again (every rank takes part)."""
    d.barrier()
    missing = rd.missing_outputs(cfg)
    if not missing:
        return
    if d.is_main:
        logger.info(f"dtr: {rd.path}: training is complete; redoing the missing {', '.join(missing)}")
    final_ckpt = str(rd.checkpoint_path(cfg.train.steps).relative_to(rd.path))
    if final_ckpt in missing:
        trainer.save()
    if (cfg.eval.at_end or cfg.eval.every) and any(m != final_ckpt for m in missing):
        if d.is_main:  # an evaluation record of a crashed final evaluation is replaced, not repeated
            rd.truncate_metrics(cfg.train.steps, drop_eval_at_step=True)
        trainer.evaluate(final=True)


def _redo_interrupted_evaluation(trainer: Trainer, rd: RunDir, cfg: ExperimentConfig, d: distributed.Dist) -> None:
    """The ``eval.every`` evaluation scheduled at the resumed checkpoint's step runs after that checkpoint is
    written; a run killed during it has the checkpoint but no record. It is redone (every rank takes part) before
    training goes on, so ``metrics.jsonl`` keeps every scheduled point."""
    step, every = trainer.state.step, cfg.eval.every
    if not every or step == 0 or step % every:
        return
    d.barrier()  # the main rank has truncated metrics.jsonl
    if any("eval" in r and r.get("step") == step for r in rd.read_metrics() if isinstance(r, dict)):
        return
    if d.is_main:
        logger.info(f"dtr: {rd.path}: the evaluation of step {step} has no record (interrupted); redoing it")
    trainer.evaluate(final=False)
