"""Latent DiT: a tiny local AutoencoderKL, the latent cache, training from it, decoding, offline errors."""
import json
import shutil

import numpy as np
import pytest
import torch

import dtr_plugins as dp
from dtr_plugins.codecs.autoencoder_kl import AutoencoderKLCodec
from dtr_plugins.codecs.latent_cache import LatentCacheDataset, draw_latents
from dtr_plugins.compose import (
    build_codec,
    build_components,
    build_dataset,
    build_model,
    cache_latents,
    latent_cache_root,
)
from dtr_plugins.core.errors import ConfigError
from dtr_plugins.core.plugins import default_registry

from ..conftest import write

TINY_VAE = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
                up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[8, 16], latent_channels=4,
                sample_size=16, norm_num_groups=8, layers_per_block=1)

CONFIG = """\
name: tiny-latent
seed: 1
backbone: {{name: latent_dit, patch_size: 2, hidden_size: 32, depth: 2, num_heads: 2, num_classes: 4}}
routing: {{name: dtr, alpha: 4.0, beta: 0.8}}
diffusion: {{steps: 100, schedule: linear, learn_sigma: true}}
data: {{name: synthetic, num_samples: 20, image_size: 16, channels: 3, num_classes: 4}}
vae: {{path: {vae}, shard_size: 8, batch_size: 6}}
train: {{steps: 3, batch_size: 4, lr: 1.0e-3, log_every: 3}}
sample: {{sampler: ddim, respacing: ddim4, num_samples: 4, batch_size: 4}}
eval: {{at_end: false}}
"""


@pytest.fixture(scope="module")
def vae_dir(tmp_path_factory):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny-vae")
    AutoencoderKL(**TINY_VAE).save_pretrained(folder)
    return folder


def config(tmp_path, vae_dir, *overrides):
    path = write(tmp_path / "latent.yaml", CONFIG.format(vae=vae_dir))
    return dp.load_config(path, overrides=[f"output_dir={tmp_path / 'runs'}", *overrides]), path


def count_encodes(monkeypatch):
    calls = []
    original = AutoencoderKLCodec.posterior

    def counted(self, images):
        calls.append(images.shape[0])
        return original(self, images)

    monkeypatch.setattr(AutoencoderKLCodec, "posterior", counted)
    return calls


def forbid_vae(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("the VAE must not be used here")

    for name in ("posterior", "encode", "_load"):
        monkeypatch.setattr(AutoencoderKLCodec, name, boom)


def test_model_geometry_comes_from_the_vae(tmp_path, vae_dir):
    cfg, _ = config(tmp_path, vae_dir)
    codec = build_codec(cfg)
    model = build_model(cfg, codec=codec)
    assert (model.in_channels, model.input_size) == (4, 8)  # 16px / 2 (two levels)
    assert codec.latent_shape((3, 16, 16)) == (4, 8, 8) and model.out_channels == 8
    assert codec.scale_factor == pytest.approx(0.18215)  # the VAE config's scaling_factor
    assert not codec.loaded  # building reads config.json only; weights load on first use
    assert not hasattr(model, "vae")  # the codec is the engine's stage, not part of the model
    cfg2, _ = config(tmp_path, vae_dir, "vae.scale_factor=0.5")
    assert build_codec(cfg2).scale_factor == 0.5


def test_cache_written_reused_and_resumed(tmp_path, vae_dir, monkeypatch):
    cfg, _ = config(tmp_path, vae_dir)
    calls = count_encodes(monkeypatch)
    root = cache_latents(cfg, progress=False)
    assert root.parent == tmp_path / "runs" / "latent_cache" and root.name.startswith("synthetic-16px-")
    manifest = json.loads((root / "manifest.json").read_text())
    assert manifest["complete"] and manifest["num_items"] == 20 and manifest["num_shards"] == 3
    assert manifest["latent_shape"] == [4, 8, 8]
    shards = sorted(root.glob("shard-*.pt"))
    assert [p.name for p in shards] == ["shard-00000.pt", "shard-00001.pt", "shard-00002.pt"]
    assert sum(calls) == 2 * 20  # every image and its flip, once
    assert not list(root.glob("*.tmp")) and not list(root.glob(".*.tmp"))

    # The stored posteriors are the VAE's (scaled), for the image and for its flip.
    shard = torch.load(shards[0], weights_only=True)
    assert shard["posterior"].shape == (8, 2, 2, 4, 8, 8) and shard["labels"].tolist() == [0, 1, 2, 3, 0, 1, 2, 3]
    vae = build_codec(cfg)
    image = default_registry().build("dataset", "synthetic", **cfg.data.params)[1][0]
    mean, std = vae.posterior(torch.stack([image, image.flip(-1)]))
    torch.testing.assert_close(shard["posterior"][1, :, 0], mean, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(shard["posterior"][1, :, 1], std, rtol=1e-4, atol=1e-5)

    # A second call finds the complete cache: nothing is encoded, nothing rewritten.
    mtimes = [p.stat().st_mtime_ns for p in shards]
    calls.clear()
    assert cache_latents(cfg, progress=False) == root
    assert calls == [] and [p.stat().st_mtime_ns for p in shards] == mtimes

    # Resumable: only a missing shard is encoded again.
    shards[1].unlink()
    assert cache_latents(cfg, progress=False) == root
    assert sum(calls) == 2 * 8 and shards[1].exists()
    assert shards[0].stat().st_mtime_ns == mtimes[0] and shards[2].stat().st_mtime_ns == mtimes[2]

    # The key separates caches: another image size or scale factor is another folder.
    other, _ = config(tmp_path, vae_dir, "vae.scale_factor=0.5")
    assert latent_cache_root(other, build_codec(other))[0] != root


def test_train_from_cache_without_vae_then_sample(tmp_path, vae_dir, monkeypatch, log_text, run_cli):
    cfg, _ = config(tmp_path, vae_dir, "data.num_samples=8", "vae.cache_dir=" + str(tmp_path / "cache"))
    root = cache_latents(cfg, progress=False)
    assert root.parent == tmp_path / "cache"
    dataset = build_dataset(cfg)
    assert isinstance(dataset, LatentCacheDataset) and dataset[0][0].shape == (1, 2, 4, 8, 8)

    with monkeypatch.context() as m:
        forbid_vae(m)  # no encoder (and no VAE weights at all) while training from the cache
        run_dir = dp.train(cfg, progress=False)
    assert "hint" not in log_text()
    ckpt = torch.load(run_dir / "checkpoints" / "0000003.pt", weights_only=True)
    assert not any("vae" in k or "encoder" in k or "decoder" in k for k in ckpt["model"])
    assert ckpt["model"].keys() == ckpt["ema"].keys()

    code, out, err = run_cli("sample", str(run_dir), "--num", "3", "--batch-size", "2")
    assert code == 0, err
    folder = run_dir / "samples" / "step0000003-ddim4-cfg1.0-seed0-n3"  # a fresh folder per sampling setting
    assert f"samples: {folder}" in out, out
    images = np.load(folder / "samples.npz")["arr_0"]
    assert images.shape == (3, 16, 16, 3) and images.dtype == np.uint8


def test_draw_latents_flips_and_samples_on_the_device():
    mean = torch.randn(32, 2, 1, 4, 8, 8)
    batch = torch.cat([mean, torch.zeros_like(mean)], dim=2)  # std 0: the sample is the mean of the picked view
    torch.manual_seed(0)
    z = draw_latents(batch)
    assert z.shape == (32, 4, 8, 8)
    picked = [next(v for v in range(2) if torch.equal(z[i], mean[i, v, 0])) for i in range(32)]
    assert set(picked) == {0, 1}  # a random view per sample
    noisy = draw_latents(torch.cat([mean, torch.ones_like(mean)], dim=2))
    assert not any(torch.equal(noisy[i], mean[i, v, 0]) for i in range(32) for v in range(2))  # mean + std * noise
    single = draw_latents(batch[:, :1])
    assert torch.equal(single, mean[:, 0, 0])


def test_online_encoding_keeps_the_vae_frozen(tmp_path, vae_dir, log_text):
    cfg, _ = config(tmp_path, vae_dir, "data.num_samples=8", "train.steps=2", "train.log_every=1")
    parts = build_components(cfg)  # no cache: the images, and a hint
    err = log_text()
    assert "dtr cache-latents" in err and len(err.strip().splitlines()) == 1
    model, codec = parts.model, parts.codec
    images = torch.stack([parts.dataset[i][0] for i in range(4)])
    assert images.shape == (4, 3, 16, 16)

    model.train()
    z = parts.model_input(images)  # the codec stage encodes online
    assert z.shape == (4, 4, 8, 8) and not z.requires_grad
    vae = codec.module
    out = model(z, torch.tensor([1, 5, 50, 99]), torch.tensor([0, 1, 2, 3]))
    out.float().pow(2).mean().backward()
    assert not vae.training and all(not p.requires_grad and p.grad is None for p in vae.parameters())
    ids = {id(p) for p in vae.parameters()}
    assert not ids & {id(p) for p in model.parameters()}
    assert not any(k.startswith(("vae", "encoder", "decoder", "quant")) for k in model.state_dict())
    decoded = codec.decode(z)
    assert decoded.shape == (4, 3, 16, 16) and decoded.min() >= -1 and decoded.max() <= 1

    run_dir = dp.train(cfg, progress=False)  # online encoding through the engine
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    records = [r for r in records if "loss" in r]
    assert [r["step"] for r in records] == [1, 2] and all(np.isfinite(r["loss"]) for r in records)


def test_hub_id_offline_fails_fast_with_one_line(tmp_path, vae_dir, monkeypatch, run_cli):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    _, path = config(tmp_path, vae_dir)
    for command in ("cache-latents", "train", "masks"):
        code, _, err = run_cli(command, str(path), "--set", "vae.path=stabilityai/sd-vae-ft-ema",
                               "--set", f"output_dir={tmp_path / 'runs'}")
        assert code == 2, err
        assert len(err.strip().splitlines()) == 1, err
        assert "vae.path" in err and "stabilityai/sd-vae-ft-ema" in err and "local folder" in err
    code, _, err = run_cli("cache-latents", str(path), "--set", f"vae.path={tmp_path / 'nope'}")
    assert code == 2 and "does not exist" in err and len(err.strip().splitlines()) == 1

    # A hub id already in the local Hugging Face cache loads offline.
    snapshot = tmp_path / "hf" / "hub" / "models--dtr-tests--tiny-vae" / "snapshots" / ("0" * 40)
    shutil.copytree(vae_dir, snapshot)
    write(snapshot.parents[1] / "refs" / "main", "0" * 40)
    cfg, _ = config(tmp_path, vae_dir, "vae.path=dtr-tests/tiny-vae")
    codec = build_codec(cfg)
    assert codec.source == "dtr-tests/tiny-vae" and codec.folder == snapshot
    assert codec.decode(torch.zeros(1, 4, 8, 8)).shape == (1, 3, 16, 16)


def test_config_mistakes_are_one_line(tmp_path, vae_dir, run_cli):
    cfg, path = config(tmp_path, vae_dir)
    no_vae = cfg.model_copy(update={"vae": None})
    with pytest.raises(ConfigError, match=r"^vae\.path: .*latent_dit.*vae section"):
        build_model(no_vae)
    with pytest.raises(ConfigError, match=r"^vae\.path"):
        cache_latents(no_vae)
    stripped = write(tmp_path / "novae.yaml", "\n".join(line for line in path.read_text().splitlines()
                                                         if not line.startswith("vae:")))
    for command in ("train", "validate"):
        code, _, err = run_cli(command, str(stripped), "--set", f"output_dir={tmp_path / 'runs'}")
        assert code == 2 and err.startswith("dtr: error:") and "vae.path" in err and len(err.strip().splitlines()) == 1

    with pytest.raises(ConfigError, match="not divisible by the VAE's downsampling factor 2"):
        build_model(config(tmp_path, vae_dir, "data.image_size=15")[0])
    with pytest.raises(ConfigError, match="input_size=6 must be divisible by patch_size=4.*data.s 3x12x12 images"):
        build_model(config(tmp_path, vae_dir, "data.image_size=12", "backbone.patch_size=4")[0])
    with pytest.raises(ConfigError, match="^vae: backbone 'dit' works on pixels"):
        build_model(config(tmp_path, vae_dir, "backbone={name: dit, input_size: 8, hidden_size: 32, depth: 1, "
                                              "num_heads: 2}")[0])


@pytest.mark.parametrize("name", ["latent_dit_b2_ffhq256.yaml", "latent_dit_l2_imagenet256.yaml"])
def test_paper_configs_validate(name, run_cli):
    from ..conftest import ROOT

    code, out, err = run_cli("validate", str(ROOT / "configs" / name), "--config-only")  # no VAE, no weights here
    assert code == 0, err
    cfg = dp.load_config(ROOT / "configs" / name)
    assert cfg.backbone.name == "latent_dit" and cfg.vae.path == "stabilityai/sd-vae-ft-ema"
    assert (cfg.train.lr, cfg.train.batch_size, cfg.train.ema_decay, cfg.train.precision) == (1e-4, 256, 0.9999, "bf16")
    assert cfg.diffusion.schedule == "linear" and cfg.diffusion.learn_sigma
    assert cfg.eval.feature_extractor == "inception-v3-compat" and cfg.data.name == "image_folder"
