"""Sampling: images from a trained model, sharded across ranks, written as PNGs, a grid and an .npz."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from dtr_plugins.core.config import ExperimentConfig, config_from_dict, read_yaml
from dtr_plugins.core.contracts import Backbone, Codec
from dtr_plugins.core.errors import CheckpointError, ConfigError, UserError
from dtr_plugins.core.images import to_uint8
from dtr_plugins.core.io import atomic_write

from . import distributed
from .compose import build_codec, build_diffusion, build_model
from .rundir import RunDir


def balanced_labels(num: int, num_classes: int) -> np.ndarray:
    """``0, 1, ..., K-1, 0, 1, ...``: every class equally often (up to one)."""
    return np.arange(num) % max(num_classes, 1)


@torch.no_grad()
def generate(model: Backbone, diffusion, cfg: ExperimentConfig, num: int, *, labels: Sequence[int] | None = None,
             seed: int = 0, dist: distributed.Dist | None = None, sampler: str | None = None,
             respacing: str | None = None, cfg_scale: float | None = None, batch_size: int | None = None,
             codec: Codec | None = None, progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Sample ``num`` images; under torchrun each rank makes every world-size-th one and all ranks get all.

    The diffusion samples ``[n, model.in_channels, model.input_size, model.input_size]`` in the
    backbone's input space; ``codec`` (default: identity, pixels) decodes them into images. Predicted
    ``x0`` is clipped to ``[-1, 1]`` (``sample.clip_denoised``) only for a bounded codec (pixels).
    Returns uint8 NHWC images and the label each was generated for. Noise for image ``i`` comes from a
    generator seeded with ``(seed, i // batch)``, so results do not depend on the number of ranks.
    """
    from dtr_plugins.codecs.identity import IdentityCodec

    codec = codec if codec is not None else IdentityCodec()
    d = dist or distributed.Dist(device=next(model.parameters()).device)
    num_classes = int(model.num_classes or 0)
    conditional = num_classes > 1
    all_labels = np.asarray(labels if labels is not None else balanced_labels(num, num_classes), dtype=np.int64)
    if len(all_labels) != num:
        raise UserError(f"--labels: got {len(all_labels)} labels for --num {num}")
    if conditional and ((all_labels < 0) | (all_labels >= num_classes)).any():
        raise UserError(f"--labels: labels must lie in 0..{num_classes - 1}")
    batch = batch_size or cfg.sample.batch_size
    scale = cfg.sample.cfg_scale if cfg_scale is None else cfg_scale
    shape_chw = (model.in_channels, model.input_size, model.input_size)
    was_training = model.training
    model.eval()
    chunks: list[tuple[int, np.ndarray]] = []
    starts = list(range(0, num, batch))
    from tqdm.auto import tqdm

    for chunk_index in tqdm(starts[d.rank::d.world_size], desc="sampling", disable=not (progress and d.is_main)):
        idx = slice(chunk_index, min(chunk_index + batch, num))
        n = idx.stop - idx.start
        gen = torch.Generator().manual_seed(seed * 1_000_003 + chunk_index)
        noise = torch.randn((n, *shape_chw), generator=gen).to(d.device)
        kwargs: dict[str, Any] = {}
        if conditional:
            kwargs["y"] = torch.from_numpy(all_labels[idx]).to(d.device)
            if scale != 1.0:
                kwargs["y_null"] = null_label(model)
        x = diffusion.sample(model, noise.shape, sampler=sampler or cfg.sample.sampler,
                             respacing=respacing or cfg.sample.respacing, noise=noise, model_kwargs=kwargs,
                             cfg_scale=scale if conditional else 1.0, cfg_channels=cfg.sample.cfg_channels,
                             clip_denoised=cfg.sample.clip_denoised and codec.bounded, eta=cfg.sample.eta,
                             progress=False, device=d.device)
        x = codec.decode(x)
        chunks.append((chunk_index, to_uint8(x).permute(0, 2, 3, 1).cpu().numpy()))  # uint8 NHWC
    model.train(was_training)
    if d.enabled:
        import torch.distributed as tdist

        gathered: list[Any] = [None] * d.world_size
        tdist.all_gather_object(gathered, chunks)
        chunks = [c for part in gathered for c in part]
    images = np.concatenate([c for _, c in sorted(chunks, key=lambda c: c[0])]) if chunks else np.zeros((0,))
    return images, all_labels


def null_label(model: Backbone) -> int:
    """The backbone's label for "no class" (classifier-free guidance); one line when it has none."""
    if model.null_class is None:
        raise ConfigError("sample.cfg_scale: this backbone was built without a null class (label dropout), "
                          "so classifier-free guidance is not available; use cfg_scale 1.0")
    return int(model.null_class)


def load_run(source: str | Path, *, use_ema: bool = True, allow_unsafe_load: bool = False, device=None):
    """A run directory (its config and last checkpoint) or one checkpoint file -> (cfg, model, diffusion, path).

    The checkpoint is read once: its ``config`` (when it has one) and its weights come from the same load.
    """
    from dtr_plugins.core.checkpoint import apply_checkpoint, nonfinite_tensors, read_checkpoint

    source = Path(source)
    if source.is_dir():
        ckpt_path = RunDir(source).require_checkpoint()
        run_cfg = RunDir(source).config_path
    elif source.is_file():
        ckpt_path, run_cfg = source, RunDir.of_checkpoint(source).config_path
    else:
        raise CheckpointError(f"{source}: no such run directory or checkpoint file")
    ckpt = read_checkpoint(ckpt_path, allow_unsafe=allow_unsafe_load)
    if source.is_file() and isinstance(ckpt, dict) and "config" in ckpt:
        cfg = config_from_dict(ckpt["config"], source=f"{source} (config)")
    elif run_cfg.exists():
        cfg = config_from_dict(read_yaml(run_cfg), source=str(run_cfg))
    else:
        raise CheckpointError(f"{source}: checkpoint holds no config and {run_cfg} does not exist")
    model = build_model(cfg)
    apply_checkpoint(model, ckpt, ckpt_path, use_ema=use_ema)
    bad = nonfinite_tensors(model.state_dict())
    if bad:  # a diverged model samples black images: refuse
        raise CheckpointError(f"{ckpt_path}: the {'EMA' if use_ema else 'model'} weights hold NaN or inf "
                              f"({len(bad)} tensors, first {bad[0]}); the run diverged, use an earlier checkpoint")
    device = device or distributed.pick_device(cfg.train.device)
    return cfg, model.to(device).eval(), build_diffusion(cfg), ckpt_path


def sample_record(cfg: ExperimentConfig, *, sampler: str | None = None, respacing: str | None = None,
                  cfg_scale: float | None = None) -> dict[str, Any]:
    """The sampler settings used (arguments over the config's ``sample`` section), for records."""
    return {"sampler": sampler or cfg.sample.sampler, "respacing": respacing or cfg.sample.respacing,
            "cfg_scale": cfg.sample.cfg_scale if cfg_scale is None else cfg_scale}


def write_samples(images: np.ndarray, labels: np.ndarray, out: Path, *, png: bool = True, info: dict | None = None) -> Path:
    """``images/000000.png`` ..., ``grid.png`` and ``samples.npz`` (``arr_0`` uint8 NHWC, ``labels``).

    The PNGs get a folder of their own so that ``dtr eval --samples OUT/images`` sees only samples.
    """
    from PIL import Image

    from .plots import image_grid

    out.mkdir(parents=True, exist_ok=True)
    if png:
        (out / "images").mkdir(exist_ok=True)
        for i, img in enumerate(images):
            atomic_write(out / "images" / f"{i:06d}.png", lambda tmp, img=img: Image.fromarray(img.squeeze(-1) if img.shape[-1] == 1 else img).save(tmp, format="PNG"))
    grid = image_grid(images[:256])
    atomic_write(out / "grid.png", lambda tmp: Image.fromarray(grid.squeeze(-1) if grid.shape[-1] == 1 else grid).save(tmp, format="PNG"))
    atomic_write(out / "samples.npz", lambda tmp: np.savez(open(tmp, "wb"), arr_0=images, labels=labels))
    if info is not None:
        from dtr_plugins.core.io import write_json

        write_json(out / "samples.json", info)
    return out


def sample(source: str | Path, *, num: int = 64, out: str | Path | None = None, sampler: str | None = None,
           respacing: str | None = None, cfg_scale: float | None = None, labels: Sequence[int] | None = None,
           seed: int = 0, batch_size: int | None = None, use_ema: bool = True, allow_unsafe_load: bool = False,
           progress: bool = True) -> Path:
    """Sample from a run directory, checkpoint, exported folder or hub id (``hf://ORG/NAME``) and write the
    images; returns the output folder. An exported folder or hub id has no run directory, so ``out`` is
    required (:class:`UserError` otherwise); it holds one set of weights (``use_ema=False`` needs raw ones).
    ``samples.json`` records ``weights`` (ema, model or diffusers), and for those sources ``source`` and ``step``."""
    from .hub import is_pretrained_source, load_for_sampling

    pretrained = is_pretrained_source(source)
    if pretrained and out is None:
        raise UserError(f"--out: {source} is an exported model or hub id, not a run directory; give --out DIR")
    d = distributed.setup("auto")
    try:
        applied: dict[str, Any]
        if pretrained:
            cfg, model, diffusion, codec, ckpt_path, applied = load_for_sampling(source, device=d.device)
            if not use_ema and applied["weights"] != "model":
                raise UserError(f"--no-ema: {source} holds only its {applied['weights']} weights; export the raw "
                                "weights with dtr export RUN --weights model")
        else:
            cfg, model, diffusion, ckpt_path = load_run(source, use_ema=use_ema, allow_unsafe_load=allow_unsafe_load,
                                                        device=d.device)
            codec, applied = build_codec(cfg), {"weights": "ema" if use_ema else "model"}
        images, used_labels = generate(model, diffusion, cfg, num, labels=labels, seed=seed, dist=d, sampler=sampler,
                                       respacing=respacing, cfg_scale=cfg_scale, batch_size=batch_size,
                                       codec=codec, progress=progress)
        if out is not None:
            out_dir = Path(out)
        else:
            out_dir = (RunDir(source) if Path(source).is_dir() else RunDir.of_checkpoint(source)).samples
        if d.is_main:
            info = {"checkpoint": str(ckpt_path), **applied, "num": num, "seed": seed,
                    **sample_record(cfg, sampler=sampler, respacing=respacing, cfg_scale=cfg_scale),
                    "cfg_channels": cfg.sample.cfg_channels, "world_size": d.world_size}
            write_samples(images, used_labels, out_dir, info=info)
        d.barrier()
        return out_dir
    finally:
        distributed.teardown(d)
