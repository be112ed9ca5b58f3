"""Sampling: images from a trained model, sharded across ranks, written as PNGs, a grid and an .npz.

Under ``torchrun`` each rank samples every world-size-th batch. :func:`sample` writes each rank's part
to ``<partial>/shards/rank{r}.npz`` and rank 0 merges them (no rank ever holds another rank's images
except rank 0 while merging); :func:`generate` (the training-time evaluation path) gathers to rank 0 only.
A sample folder is written as ``.<out>.partial-<pid>/`` (hidden) and renamed into place at the end, so an
interrupted run never leaves a half set that looks complete. Records (``samples.json``) hold the
values applied, never the ones asked for.
"""
from __future__ import annotations

import os
import shutil
import time
import warnings
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from dtr_plugins.compose import compose
from dtr_plugins.core import distributed
from dtr_plugins.core.config import ExperimentConfig
from dtr_plugins.core.contracts import Backbone, Codec, SupportsGuidance, SupportsSolverSteps
from dtr_plugins.core.cost import counting_flops
from dtr_plugins.core.errors import ConfigError, UserError
from dtr_plugins.core.guidance import check_guidance
from dtr_plugins.core.images import to_uint8
from dtr_plugins.core.io import atomic_write, clean_dead_partials, write_json
from dtr_plugins.core.log import show_progress
from dtr_plugins.core.routing import RoutedBackbone
from dtr_plugins.core.sampling_settings import SamplingOverrides, SamplingSettings
from dtr_plugins.core.seeds import derived
from dtr_plugins.runs.rundir import RunDir
from dtr_plugins.sampling.prompts import prompt_kwargs, prompt_labels, prompted
from dtr_plugins.sampling.sample_checks import check_options, check_sampling
from dtr_plugins.sampling.sample_out import check_out, default_out, swap_into_place


def balanced_labels(num: int, num_classes: int) -> np.ndarray:
    """``0, 1, ..., K-1, 0, 1, ...``: every class equally often (up to one)."""
    return np.arange(num) % max(num_classes, 1)


_PRECISION = {torch.float32: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}


def _module(model: Backbone) -> torch.nn.Module:
    """The backbone as the torch module it is (parameters, train/eval mode)."""
    assert isinstance(model, torch.nn.Module), type(model)
    return model


def _savez(path: Path, **arrays: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.savez(f, **arrays)  # type: ignore[arg-type]


class _CountingModel:
    """Calls the backbone; counts the calls (for progress) and the images fed in (``rows``: a guided call
    on the doubled cond + uncond batch evaluates each image twice), for the record."""

    def __init__(self, model: Any, on_call: Any = None):
        self.model, self.calls, self.rows, self.on_call = model, 0, 0, on_call

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        self.calls += 1
        x = args[0] if args else kwargs.get("x")
        self.rows += int(x.shape[0]) if isinstance(x, torch.Tensor) else 1
        if self.on_call is not None:
            self.on_call()
        return self.model(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:  # attributes of the backbone (num_classes, null_class, ...)
        return getattr(self.model, name)


class _StepCounter:
    """Advances a progress bar per network call: by one call, or (``steps``: ``(steps, calls)`` of one batch) by
    the solver steps completed, ``steps`` per batch (Heun's two calls per step count as one step)."""

    def __init__(self, bar: Any, steps: tuple[int, int] | None):
        self.bar, self.steps, self.calls, self.shown = bar, steps, 0, 0

    def call(self) -> None:
        if self.steps is None:
            self.bar.update(1)
            return
        steps, calls = self.steps
        self.calls += 1
        done = (self.calls // calls) * steps + (self.calls % calls) * steps // calls
        self.bar.update(done - self.shown)
        self.shown = done


def _rank_chunks(model: Backbone, diffusion, settings: SamplingSettings, all_labels: np.ndarray, *,
                 d: distributed.Dist, codec: Codec, progress: bool,
                 record: dict[str, Any]) -> list[tuple[int, np.ndarray]]:
    """This rank's batches: ``(first image index, uint8 NHWC images)``; the bar counts network evaluations.

    A learned routing strategy whose gates depend on the task alone is read from its exported float
    tables (no routing network runs); ``record["learned_routing"]`` says which (``task tables`` or ``module``).
    """
    module = _module(model)
    plan = module.plan if isinstance(module, RoutedBackbone) else None
    if plan is None or not plan.is_learned:
        return _sample_chunks(model, diffusion, settings, all_labels, d=d, codec=codec, progress=progress,
                              record=record)
    record["learned_routing"] = "task tables" if plan.export_tables() else "module"
    try:
        return _sample_chunks(model, diffusion, settings, all_labels, d=d, codec=codec, progress=progress,
                              record=record)
    finally:
        plan.clear_exported()


def _sample_chunks(model: Backbone, diffusion, settings: SamplingSettings, all_labels: np.ndarray, *,
                   d: distributed.Dist, codec: Codec, progress: bool,
                   record: dict[str, Any]) -> list[tuple[int, np.ndarray]]:
    from tqdm.auto import tqdm

    s, num, batch = settings, settings.num_samples, settings.batch_size
    shape_chw = (model.in_channels, model.input_size, model.input_size)
    starts = list(range(0, num, batch))[d.rank::d.world_size]
    # solver steps x batches when the process says how many (SupportsSolverSteps), else network calls
    steps = diffusion.solver_steps(s.solver()) if isinstance(diffusion, SupportsSolverSteps) else None
    bar = tqdm(total=steps[0] * len(starts) if steps else None, desc=f"sampling {len(starts)} batch(es)",
               unit="step", disable=not (show_progress(progress) and d.is_main))
    counted = _CountingModel(model, on_call=_StepCounter(bar, steps).call)
    chunks: list[tuple[int, np.ndarray]] = []
    per_batch, nfe = None, []
    started = time.perf_counter()
    for chunk_index in starts:
        idx = slice(chunk_index, min(chunk_index + batch, num))
        n = idx.stop - idx.start
        gen = torch.Generator().manual_seed(derived(s.seed * 1_000_003 + chunk_index))
        noise = torch.randn((n, *shape_chw), generator=gen).to(d.device)
        kwargs = _batch_kwargs(model, s, all_labels[idx], d.device)
        before, rows_before = counted.calls, counted.rows
        x = diffusion.sample(counted, noise.shape, solver=s.solver(), noise=noise, model_kwargs=kwargs,
                             progress=False, device=d.device)
        nfe.append(counted.calls - before)  # function evaluations (network calls) of this batch
        if per_batch is None:  # network evaluations per image: images fed to the network / images made
            per_batch = (counted.rows - rows_before) // n
            if steps is None:
                bar.total = (counted.calls - before) * len(starts)
                bar.refresh()
        x = codec.decode(x)
        chunks.append((chunk_index, to_uint8(x).permute(0, 2, 3, 1).cpu().numpy()))  # uint8 NHWC
    bar.close()
    if d.device.type == "cuda":
        torch.cuda.synchronize(d.device)
    seconds = time.perf_counter() - started
    made = sum(min(c + batch, num) - c for c in starts)
    if starts:  # one more image, counted (not timed): the sampler's FLOPs per image
        record["sample_flops_per_image"] = _sample_flops(model, diffusion, s, all_labels[starts[0]:starts[0] + 1],
                                                         d.device)
    dtype = next(_module(model).parameters()).dtype
    record.update({**s.applied(), "model_evaluations_per_image": per_batch, "nfe_per_batch": nfe,
                   "sampling_seconds": seconds, "seconds_per_image": seconds / made if made else None,
                   "world_size": d.world_size,
                   "sample_precision": _PRECISION.get(dtype, str(dtype)), "device": str(d.device)})
    return chunks


def _batch_kwargs(model: Backbone, s: SamplingSettings, labels: np.ndarray, device: torch.device) -> dict[str, Any]:
    """The model kwargs of one batch: encoded prompts (``labels`` are prompt indices), class labels (with the
    null label when guided) or none (an unconditional model)."""
    if s.prompt_encoder is not None:  # text-to-image: labels are prompt indices
        return prompt_kwargs(s.prompt_encoder, s, labels, device)
    kwargs: dict[str, Any] = {}
    if int(model.num_classes or 0) > 1:
        kwargs["y"] = torch.from_numpy(labels).to(device)
        if s.guided:
            kwargs["y_null"] = null_label(model, s.cfg_scale)
    return kwargs


def _sample_flops(model: Backbone, diffusion: Any, s: SamplingSettings, labels: np.ndarray,
                  device: torch.device) -> float:
    """FLOPs of sampling one image (``labels``: its one label) with the settings ``s``: every network call of the
    real sampling loop (guidance's doubled batch, a routed model's sliced path), counted by
    :func:`~dtr_plugins.core.cost.counting_flops`; decoding is not included. Changes no RNG state."""
    shape = (len(labels), model.in_channels, model.input_size, model.input_size)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        noise = torch.randn(shape, generator=torch.Generator().manual_seed(s.seed)).to(device)
        with counting_flops() as flops:
            diffusion.sample(model, noise.shape, solver=s.solver(), noise=noise,
                             model_kwargs=_batch_kwargs(model, s, labels, device), progress=False, device=device)
    return flops.total / max(len(labels), 1)


def _prepare(model: Backbone, settings: SamplingSettings) -> tuple[np.ndarray, str]:
    """``(labels per image, where the labels came from)``; the last is recorded as ``labels``: ``given``
    (``--labels``), ``balanced``, ``unconditional`` (the model takes none) or ``prompts`` (a text-conditioned
    model: prompt indices, :mod:`.prompts`). Checks the guidance scale against the backbone (:func:`check_guidance`)."""
    num, labels = settings.num_samples, settings.labels
    if prompted(model, settings):
        return prompt_labels(model, settings), "prompts"
    num_classes = int(model.num_classes or 0)
    if labels is not None and num_classes <= 1:
        raise UserError(f"--labels: this model is unconditional (num_classes={num_classes}), so class labels "
                        f"would not be applied; leave out --labels")
    all_labels = np.asarray(labels if labels is not None else balanced_labels(num, num_classes), dtype=np.int64)
    if len(all_labels) != num:
        raise UserError(f"--labels: got {len(all_labels)} labels for --num-samples {num}; give one per image")
    if num_classes > 1 and ((all_labels < 0) | (all_labels >= num_classes)).any():
        raise UserError(f"--labels: labels must lie in 0..{num_classes - 1}")
    check_guidance(model, settings.cfg_scale, settings.key("cfg_scale"))
    mode = "unconditional" if num_classes <= 1 else "given" if labels is not None else "balanced"
    return all_labels, mode


@torch.no_grad()
def generate(model: Backbone, diffusion, cfg: ExperimentConfig | SamplingSettings, num: int | None = None, *,
             seed: int | None = None, cfg_scale: float | None = None, codec: Codec | None = None,
             dist: distributed.Dist | None = None, progress: bool = True,
             record: dict[str, Any] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Sample ``num`` images; under torchrun each rank makes every world-size-th batch and rank 0 gets all.

    ``cfg``: the run config, from whose ``sample`` section the :class:`SamplingSettings` are built with ``num``,
    ``seed`` (default 0) and ``cfg_scale`` over it; or the settings themselves (any other option, e.g. the
    sampler or the labels: ``SamplingSettings.from_config(cfg, SamplingOverrides(...))``), then without
    ``num``, ``seed`` and ``cfg_scale`` (TypeError). The diffusion samples ``[n, model.in_channels,
    model.input_size, model.input_size]`` in the backbone's input space; ``codec`` (default: identity, pixels)
    decodes them into images. Predicted ``x0`` is clipped to ``[-1, 1]`` (``sample.clip_denoised``) only for a
    bounded codec (pixels). Returns uint8 NHWC images (on ranks other than 0 under torchrun: an empty array)
    and the label each was generated for. Noise for image ``i`` comes from a generator seeded with
    ``(seed, i // batch)``, so results do not depend on the number of ranks. ``record`` (a dict) is filled with
    the settings applied. Raises ConfigError for a guidance scale the backbone cannot apply
    (:func:`check_guidance`). A text-conditioned model samples the settings' ``prompts`` encoded by their
    ``prompt_encoder`` (the run's text stage); the labels returned are then prompt indices.
    """
    from dtr_plugins.codecs.identity import IdentityCodec

    codec = codec if codec is not None else IdentityCodec()
    if isinstance(cfg, SamplingSettings):
        if num is not None or seed is not None or cfg_scale is not None:
            raise TypeError("generate: num, seed and cfg_scale are part of the SamplingSettings given")
        settings = cfg
    elif num is None:
        raise TypeError("generate: num (the number of images) is required with a config")
    else:
        asked = SamplingOverrides(num=num, seed=seed or 0, cfg_scale=cfg_scale)
        settings = SamplingSettings.from_config(cfg, asked, bounded=codec.bounded)
    module = _module(model)
    d = dist or distributed.Dist(device=next(module.parameters()).device)
    all_labels, labels_from = _prepare(model, settings)
    was_training = module.training
    module.eval()
    applied: dict[str, Any] = {}
    chunks = _rank_chunks(model, diffusion, settings, all_labels, d=d, codec=codec, progress=progress,
                          record=applied)
    module.train(was_training)
    if record is not None:
        record.update(applied, labels=labels_from)
    if d.enabled:
        import torch.distributed as tdist

        gathered: list[Any] | None = [None] * d.world_size if d.is_main else None
        tdist.gather_object(chunks, gathered, dst=0)
        if not d.is_main:
            return np.zeros((0,), dtype=np.uint8), all_labels
        chunks = [c for part in (gathered or []) for c in part]
    images = np.concatenate([c for _, c in sorted(chunks, key=lambda c: c[0])]) if chunks else np.zeros((0,))
    return images, all_labels


def null_label(model: Backbone, scale: float = 2.0) -> int:
    """The backbone's label for "no class" (classifier-free guidance); one line when it has none."""
    if not isinstance(model, SupportsGuidance) or model.null_class is None:
        check_guidance(model, scale)  # the one guidance rule's line
        raise ConfigError("sample.cfg_scale: this backbone has no null class; use cfg_scale 1.0")
    return int(model.null_class)


def _load(source: str | Path, *, use_ema: bool, allow_unsafe_load: bool, device):
    from dtr_plugins.core.checkpoint import apply_checkpoint, read_checkpoint, weights_in

    run, ckpt_path = RunDir.locate(source)
    ckpt = read_checkpoint(ckpt_path, allow_unsafe=allow_unsafe_load)
    cfg = run.config_of(ckpt, ckpt_path)
    parts = compose(cfg, data=False)  # the model, its process and codec, each built once
    model = parts.model
    apply_checkpoint(model, ckpt, ckpt_path, use_ema=use_ema)  # refuses NaN / inf weights
    weights = weights_in(ckpt, use_ema)
    if use_ema and weights != "ema":
        warnings.warn(f"{ckpt_path}: holds no EMA weights (a checkpoint of another tool?); sampling its raw model "
                      "weights (samples.json records weights: model)", stacklevel=2)
    device = device or distributed.pick_device(cfg.train.device)
    step = ckpt.get("step") if isinstance(ckpt, dict) else None
    if not isinstance(step, int):
        step = int(ckpt_path.stem) if ckpt_path.stem.isdigit() else None
    profile = ckpt.get("ema_profile") if isinstance(ckpt, dict) and weights == "ema" else None
    return cfg, parts.to(device), ckpt_path, step, weights, profile if isinstance(profile, dict) else None


def load_run(source: str | Path, *, use_ema: bool = True, allow_unsafe_load: bool = False, device=None):
    """A run directory (its config and last checkpoint) or one checkpoint file -> (cfg, model, diffusion, path).

    The checkpoint is read once: its ``config`` (when it has one) and its weights come from the same load.
    """
    cfg, parts, ckpt_path, _, _, _ = _load(source, use_ema=use_ema, allow_unsafe_load=allow_unsafe_load, device=device)
    return cfg, parts.model.eval(), parts.diffusion, ckpt_path


def write_samples(images: np.ndarray, labels: np.ndarray, out: Path, *, png: bool = True,
                  info: dict | None = None, class_names: Sequence[str] | None = None) -> Path:
    """``images/000000.png`` ..., ``grid.png`` and ``samples.npz`` (``arr_0`` uint8 NHWC, ``labels``).

    The PNGs get a folder of their own so that ``dtr eval --samples OUT/images`` sees only samples.
    ``grid.png`` shows the first 100 images enlarged to a readable size
    (:func:`~dtr_plugins.core.images.readable_grid`), each under the name of its class when ``class_names``
    is given (a class-conditional model).
    """
    from PIL import Image

    from dtr_plugins.core.images import readable_grid

    def save(img: np.ndarray, tmp: Path) -> None:
        Image.fromarray(img.squeeze(-1) if img.shape[-1] == 1 else img).save(tmp, format="PNG")

    from functools import partial

    out.mkdir(parents=True, exist_ok=True)
    if png:
        (out / "images").mkdir(exist_ok=True)
        for i, img in enumerate(images):
            atomic_write(out / "images" / f"{i:06d}.png", partial(save, img))
    grid = readable_grid(images[:100], labels[:100], class_names)
    atomic_write(out / "grid.png", lambda tmp: save(grid, tmp))
    atomic_write(out / "samples.npz", lambda tmp: _savez(tmp, arr_0=images, labels=labels))
    if info is not None:
        write_json(out / "samples.json", info)
    return out


def _shared_pid(d: distributed.Dist) -> int:
    """Rank 0's process id, on every rank (names the shared ``.partial-<pid>`` folder)."""
    pid = [os.getpid()]
    if d.enabled:
        import torch.distributed as tdist

        tdist.broadcast_object_list(pid, src=0)
    return int(pid[0])


def _merge_shards(shards: Path, world_size: int) -> tuple[np.ndarray, np.ndarray]:
    parts = [np.load(shards / f"rank{r}.npz") for r in range(world_size)]
    index = np.concatenate([p["index"] for p in parts])
    images = np.concatenate([p["images"] for p in parts if len(p["images"])])
    order = np.argsort(index, kind="stable")
    return images[order], index[order]


def sample(source: str | Path, overrides: SamplingOverrides | None = None, *, num: int | None = None,
           seed: int | None = None, out: str | Path | None = None, overwrite: bool = False, device: str | None = None,
           threads: int | None = None, progress: bool = True, allow_unsafe_load: bool = False) -> Path:
    """Sample from a run directory, checkpoint, exported folder or hub id (``hf://ORG/NAME``) and write the
    images; returns the output folder.

    ``overrides`` (:class:`SamplingOverrides`: ``num`` (default: the config's ``sample.num_samples``),
    ``sampler``, ``respacing``, ``cfg_scale``, ``labels``, ``seed``, ``batch_size``, ``use_ema``; ``num`` and
    ``seed`` given here replace those) go over the loaded config's ``sample`` section: the
    :class:`SamplingSettings` are built once from both, and ``samples.json`` records what they applied.
    An exported folder or hub id has no run directory, so ``out`` is required there (:class:`UserError`
    otherwise); it holds one set of weights (``use_ema=False`` needs raw ones). ``samples.json`` records
    ``weights`` (ema, model or diffusers), and for those sources ``source``.
    ``out`` defaults to :func:`default_out`. A folder that exists and is not empty is refused (UserError)
    unless ``overwrite``, which replaces it only once the new set is complete. ``device``: ``cpu``,
    ``cuda`` or ``cuda:N`` (default: the run's ``train.device``); ``threads``: CPU threads.
    """
    from dtr_plugins.sharing.hub import is_pretrained_source, load_for_sampling

    given: dict[str, Any] = {"num": num, "seed": seed}
    asked = replace(overrides or SamplingOverrides(), **{k: v for k, v in given.items() if v is not None})
    pretrained = is_pretrained_source(source)
    if pretrained and out is None:
        raise UserError(f"--out: {source} is an exported model or hub id, not a run directory; give --out DIR")
    sources = _source_paths(Path(source)) if Path(str(source)).exists() else ()  # hf:// ids: none
    if out is not None:  # before loading anything: a bad --out costs no sampling
        check_out(Path(out), overwrite=overwrite, sources=sources)
    check_options(asked, device=device)
    distributed.set_threads(threads)
    d = distributed.setup(device or "auto")
    partial: Path | None = None
    finished = False
    try:
        loaded: dict[str, Any] = {}
        if pretrained:
            cfg, model, diffusion, codec, ckpt_path, loaded = load_for_sampling(source, device=d.device)
            text = None
            if not asked.use_ema and loaded["weights"] != "model":
                raise UserError(f"--no-ema: {source} holds only its {loaded['weights']} weights; export the raw "
                                "weights with dtr export RUN --weights model")
            step = loaded.get("step")
        else:
            cfg, parts, ckpt_path, step, weights, profile = _load(source, use_ema=asked.use_ema,
                                                                  allow_unsafe_load=allow_unsafe_load, device=d.device)
            loaded["weights"] = weights
            if profile is not None:  # an EMA snapshot or a post-hoc EMA (dtr ema)
                loaded["ema_profile"] = profile.get("name")
            model, diffusion, codec, text = parts.model.eval(), parts.diffusion, parts.codec, parts.text
        dev_d = distributed.Dist(rank=d.rank, world_size=d.world_size, local_rank=d.local_rank,
                                 device=next(_module(model).parameters()).device)
        settings = SamplingSettings.from_config(cfg, asked, bounded=codec.bounded)
        settings = replace(settings, prompt_encoder=text)
        all_labels, labels_from = _prepare(model, settings)
        check_sampling(diffusion, settings)  # before the progress bar starts
        out_dir = Path(out) if out is not None else default_out(
            RunDir(source) if Path(source).is_dir() else RunDir.of_checkpoint(source), settings, step=step,
            profile=loaded.get("ema_profile"))
        check_out(out_dir, overwrite=overwrite, sources=sources)
        if d.is_main:
            clean_dead_partials(out_dir)
        partial = out_dir.with_name(f".{out_dir.name}.partial-{_shared_pid(d)}")  # hidden: never taken as samples
        applied: dict[str, Any] = {}
        with torch.no_grad():
            chunks = _rank_chunks(model, diffusion, settings, all_labels, d=dev_d, codec=codec, progress=progress,
                                  record=applied)
        shards = partial / "shards"
        shards.mkdir(parents=True, exist_ok=True)
        index = np.concatenate([np.arange(i, i + len(c)) for i, c in chunks]) if chunks else np.zeros(0, np.int64)
        mine = np.concatenate([c for _, c in chunks]) if chunks else np.zeros((0,), np.uint8)
        atomic_write(shards / f"rank{d.rank}.npz", lambda tmp: _savez(tmp, images=mine, index=index))
        del chunks
        d.barrier()
        failure: BaseException | None = None
        if d.is_main:
            try:
                images, _ = _merge_shards(shards, d.world_size)
                shutil.rmtree(shards)
                info: dict[str, Any] = {"checkpoint": str(ckpt_path), "step": step,
                                        "weights": loaded.get("weights", "ema" if settings.use_ema else "model")}
                info.update({k: loaded[k] for k in ("source", "ema_profile") if k in loaded})
                info.update(labels=labels_from, **applied)
                if labels_from == "prompts":
                    info["prompts"] = list(settings.prompts or ())
                write_samples(images, all_labels, partial, info=info, class_names=_class_names(source, model))
                swap_into_place(partial, out_dir)
            except BaseException as exc:  # noqa: BLE001 -- told to every rank below, then re-raised here
                failure = exc
        if not distributed.all_ok(d, failure is None):  # the other ranks stop with rank 0, never hang
            if failure is not None:
                raise failure
            raise UserError(f"{out_dir}: rank 0 failed while merging the sample shards (its error is above); "
                            f"nothing was written")
        finished = True
        return out_dir
    finally:
        if d.is_main and partial is not None and partial.exists():
            shutil.rmtree(partial, ignore_errors=True)  # interrupted or failed: nothing that looks complete
        distributed.teardown(d, clean=finished)


def _class_names(source: str | Path, model: Backbone) -> list[str] | None:
    """Captions of a sample grid: the run's ``classes.json`` names, else the label numbers; None when the
    model is unconditional."""
    if int(model.num_classes or 0) <= 1:
        return None
    path = Path(source)
    run = RunDir(path) if path.is_dir() else RunDir.of_checkpoint(path) if path.is_file() else None
    names = run.class_names() if run is not None else None
    return names if names is not None else [str(i) for i in range(int(model.num_classes or 0))]


def _source_paths(source: Path) -> tuple[Path, ...]:
    """The run directory (and checkpoint file) sampled from: ``--out`` may be neither, nor hold them."""
    if source.is_file():
        return (source, RunDir.of_checkpoint(source).path)
    return (source,)
