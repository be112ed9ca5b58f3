"""Codecs: AutoencoderKL normalisation (scale, SD3/FLUX shift, SDXL latents_mean/std) by value, the latent
cache keyed by the VAE's content, explicit latent geometry, the identity codec."""
import json
import shutil

import pytest
import torch

import dtr_plugins as dp
from dtr_plugins.codecs.autoencoder_kl import load_autoencoder_kl
from dtr_plugins.codecs.identity import IdentityCodec
from dtr_plugins.codecs.latent_cache import LatentCacheDataset
from dtr_plugins.compose import build_codec, build_dataset, build_model, cache_latents, latent_cache_root
from dtr_plugins.core.errors import ConfigError

from ..conftest import write
from .test_latent import CONFIG, TINY_VAE


def make_vae(folder, seed=0, **extra):
    from diffusers import AutoencoderKL

    torch.manual_seed(seed)
    AutoencoderKL(**TINY_VAE, **extra).save_pretrained(folder)
    return folder


def config(tmp_path, vae_dir, *overrides):
    path = write(tmp_path / "latent.yaml", CONFIG.format(vae=vae_dir))
    return dp.load_config(path, overrides=[f"output_dir={tmp_path / 'runs'}", *overrides])


def test_shift_factor_applied_on_encode_and_decode(tmp_path):
    codec = load_autoencoder_kl(str(make_vae(tmp_path / "sd3", scaling_factor=1.5, shift_factor=0.25)))
    assert (codec.scale_factor, codec.shift_factor) == (1.5, 0.25)
    # (z - shift) * scale on encode, z / scale + shift on decode, pinned by value
    normalised, std = codec.normalise(torch.full((1, 4, 2, 2), 1.25), torch.full((1, 4, 2, 2), 0.5))
    assert torch.allclose(normalised, torch.full_like(normalised, 1.5))
    assert torch.allclose(std, torch.full_like(std, 0.75))
    assert torch.allclose(codec.denormalise(torch.full((1, 4, 2, 2), 1.5)), torch.full((1, 4, 2, 2), 1.25))

    # ... and the real encode / decode use exactly that
    images = torch.rand(2, 3, 16, 16) * 2 - 1
    raw = codec.module.encode(images).latent_dist
    mean, std = codec.posterior(images)
    torch.testing.assert_close(mean, (raw.mean - 0.25) * 1.5)
    torch.testing.assert_close(std, raw.std * 1.5)
    latents = torch.randn(2, 4, 8, 8)
    expected = codec.module.decode(latents / 1.5 + 0.25).sample.clamp(-1, 1)
    torch.testing.assert_close(codec.decode(latents), expected)


def test_latents_mean_and_std_per_channel(tmp_path):
    folder = make_vae(tmp_path / "sdxl", scaling_factor=0.5, latents_mean=[0.1, 0.2, 0.3, 0.4],
                      latents_std=[2.0, 2.0, 4.0, 4.0])
    codec = load_autoencoder_kl(str(folder))
    z, _ = codec.normalise(torch.ones(1, 4, 1, 1))
    # (z - mean_c) * scale / std_c
    assert z.flatten().tolist() == pytest.approx([0.225, 0.2, 0.0875, 0.075])
    assert codec.denormalise(z).flatten().tolist() == pytest.approx([1.0] * 4)
    bad = json.loads((folder / "config.json").read_text())
    bad["latents_std"] = [1.0, 1.0]
    (folder / "config.json").write_text(json.dumps(bad))
    with pytest.raises(ConfigError, match="latents_std has 2 values, the VAE has 4 latent channels"):
        load_autoencoder_kl(str(folder))


def test_normalisation_fields_key_the_cache(tmp_path):
    plain = make_vae(tmp_path / "plain")
    shifted = make_vae(tmp_path / "shifted", shift_factor=0.25)  # same weights, other normalisation
    root_plain = latent_cache_root(config(tmp_path, plain), build_codec(config(tmp_path, plain)))[0]
    root_shift = latent_cache_root(config(tmp_path, shifted), build_codec(config(tmp_path, shifted)))[0]
    assert root_plain != root_shift
    cfg = config(tmp_path, plain, "vae.scale_factor=0.5")
    assert latent_cache_root(cfg, build_codec(cfg))[0] != root_plain


def test_cache_is_keyed_by_the_vae_content_not_its_path(tmp_path, log_text):
    folder = make_vae(tmp_path / "vae", seed=0)
    cfg = config(tmp_path, folder, "data.num_samples=8")
    root = cache_latents(cfg, progress=False)
    assert isinstance(build_dataset(cfg), LatentCacheDataset)

    # The same weights in another folder: the same cache.
    copy = tmp_path / "copy"
    shutil.copytree(folder, copy)
    cfg_copy = config(tmp_path, copy, "data.num_samples=8")
    assert latent_cache_root(cfg_copy, build_codec(cfg_copy))[0] == root

    # Other weights saved into the same folder: a new cache; the old one is not used.
    make_vae(folder, seed=1)
    assert latent_cache_root(cfg, build_codec(cfg))[0] != root
    log_text()
    assert not isinstance(build_dataset(cfg), LatentCacheDataset)
    assert "does not exist" in log_text()


def test_explicit_latent_geometry_must_agree(tmp_path, run_cli):
    folder = make_vae(tmp_path / "vae")
    model = build_model(config(tmp_path, folder, "backbone.in_channels=4", "backbone.input_size=8"))
    assert (model.in_channels, model.input_size) == (4, 8)
    for key, value, derived in (("in_channels", 8, 4), ("input_size", 16, 8)):
        with pytest.raises(ConfigError, match=rf"^backbone\.{key}: {value} disagrees with {derived} from the codec"):
            build_model(config(tmp_path, folder, f"backbone.{key}={value}"))
    path = write(tmp_path / "latent.yaml", CONFIG.format(vae=folder))
    code, _, err = run_cli("train", str(path), "--set", f"output_dir={tmp_path / 'runs'}", "--set",
                           "backbone.in_channels=8")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "backbone.in_channels: 8 disagrees with 4" in err and not (tmp_path / "runs" / "tiny-latent").exists()


def test_identity_codec_is_the_pixels():
    codec = IdentityCodec()
    x = torch.randn(2, 1, 8, 8)
    assert codec.encode(x) is x and codec.decode(x) is x and codec.bounded
    assert codec.latent_shape((1, 8, 8)) == (1, 8, 8)
    mean, std = codec.posterior(x)
    assert mean is x and torch.equal(std, torch.zeros_like(x))


def test_vae_and_codec_sections_are_exclusive(tmp_path):
    folder = make_vae(tmp_path / "vae")
    with pytest.raises(ConfigError, match="either a vae section .* or a codec section"):
        config(tmp_path, folder, f"codec={{name: autoencoder_kl, path: {folder}}}")
    cfg = config(tmp_path, folder, "vae=null", f"codec={{name: autoencoder_kl, path: {folder}, shard_size: 4}}")
    assert cfg.codec.params == {"path": str(folder), "scale_factor": None, "batch_size": 32}
    assert cfg.codec.shard_size == 4
    assert build_model(cfg).input_size == 8
    with pytest.raises(ConfigError, match=r"codec\.bogus: unknown key"):
        config(tmp_path, folder, "vae=null", f"codec={{name: autoencoder_kl, path: {folder}, bogus: 1}}")
