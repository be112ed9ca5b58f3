"""Text-to-image on latents, offline: latent_dit_t2i on a small COCO-format folder through a tiny local
AutoencoderKL and a tiny CLIP text model; the latent cache keeps item indices, so captions are still drawn per
step, and the run samples from prompts (the MS-COCO config's pipeline at toy size)."""
import json

import numpy as np
import torch
import yaml

import dtr_plugins as dp
from dtr_plugins.codecs.latent_cache import LatentCacheDataset
from dtr_plugins.compose import build_components, cache_latents

from ..conftest import write
from ..t2i_helpers import TINY_TEXT_DIM, TINY_TEXT_LENGTH
from ..unit.test_caption_data import coco_folder
from .test_latent import TINY_VAE


def test_latent_t2i_trains_from_the_cache_and_samples_from_prompts(tmp_path, tiny_clip_dir, run_cli):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    AutoencoderKL(**TINY_VAE).save_pretrained(tmp_path / "vae")
    images, ann = coco_folder(tmp_path / "coco")
    cfg_dict = {
        "name": "t2i-latent", "seed": 2, "output_dir": str(tmp_path / "runs"),
        "backbone": {"name": "latent_dit_t2i", "patch_size": 2, "hidden_size": 32, "depth": 2, "num_heads": 2,
                     "text_dim": TINY_TEXT_DIM, "text_length": TINY_TEXT_LENGTH, "text_mode": "in_context"},
        "routing": {"name": "random", "beta": 0.8},
        "diffusion": {"steps": 100, "schedule": "linear", "learn_sigma": True},
        "data": {"name": "coco_captions", "images": str(images), "annotations": str(ann), "image_size": 16},
        "vae": {"path": str(tmp_path / "vae"), "shard_size": 2, "batch_size": 2},
        "text": {"name": "clip_text", "path": str(tiny_clip_dir), "max_length": TINY_TEXT_LENGTH},
        "train": {"steps": 3, "batch_size": 2, "lr": 1.0e-3, "log_every": 3},
        "sample": {"sampler": "ddim", "respacing": "ddim4", "num_samples": 2, "batch_size": 2, "cfg_scale": 1.5},
        "eval": {"at_end": False},
    }
    cfg = dp.load_config(write(tmp_path / "c.yaml", yaml.safe_dump(cfg_dict)))
    cache_latents(cfg, progress=False)
    parts = build_components(cfg)
    assert isinstance(parts.dataset, LatentCacheDataset)
    assert [int(parts.dataset[i][1]) for i in range(len(parts.dataset))] == [0, 1, 2]  # item indices, not captions
    assert parts.text is not None and parts.text.caption_sets == [["a bus in the city", "a red bus"], ["two cats"],
                                                                  ["A brown dog.", "a dog on grass"]]
    run = dp.train(cfg, progress=False)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in records if "loss" in r)
    code, _, err = run_cli("sample", str(run), "-n", "2", "--prompt", "a red bus", "--out", str(tmp_path / "s"))
    assert code == 0, err
    assert np.load(tmp_path / "s" / "samples.npz")["arr_0"].shape == (2, 16, 16, 3)
