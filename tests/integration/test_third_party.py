"""A third-party backbone and a third-party codec, each one module plus an entry point in a temporary
distribution, used by name through the ``dtr`` command (train under DTR routing, cache latents, sample)."""
import json
import textwrap
from pathlib import Path

import numpy as np
import torch

from ..conftest import write
from ..unit.test_plugins import dtr, make_distribution

TINY_CONV = textwrap.dedent('''
    """A tiny convolutional denoiser: every hidden conv is a routed layer."""
    import torch
    from pydantic import BaseModel, ConfigDict, Field
    from torch import nn

    import dtr_plugins
    from dtr_plugins.core.routing import RoutedBackbone, routed_residual


    class TinyConvParams(BaseModel):
        model_config = ConfigDict(extra="forbid")
        in_channels: int = Field(1, ge=1)
        input_size: int = Field(8, ge=1)
        width: int = Field(16, ge=1)
        depth: int = Field(2, ge=1)
        num_classes: int = Field(10, ge=1)
        learn_sigma: bool = True


    class TinyConv(RoutedBackbone):
        def __init__(self, in_channels, input_size, width, depth, num_classes, learn_sigma):
            super().__init__()
            self.in_channels, self.input_size, self.num_classes = in_channels, input_size, num_classes
            self.width, self.depth = width, depth
            self.inp = nn.Conv2d(in_channels, width, 3, padding=1)
            self.t_emb = nn.Embedding(4096, width)
            self.y_emb = nn.Embedding(num_classes + 1, width)
            self.blocks = nn.ModuleList(nn.Conv2d(width, width, 3, padding=1) for _ in range(depth))
            self.out = nn.Conv2d(width, 2 * in_channels if learn_sigma else in_channels, 3, padding=1)

        @property
        def null_class(self):
            return self.num_classes

        def routed_channels(self):
            return [self.width] * self.depth

        def forward(self, x, t, y=None):
            h = self.inp(x) + self.t_emb(t)[:, :, None, None]
            if y is not None:
                h = h + self.y_emb(y)[:, :, None, None]
            for block, m in zip(self.blocks, self.layer_masks(t, h.dtype)):
                h = routed_residual(h, None if m is None else m[:, :, None, None], lambda z, b=block: torch.relu(b(z)))
            return self.out(h)


    @dtr_plugins.hookimpl
    def dtr_register_backbones(register):
        register("tiny_conv", TinyConv, params=TinyConvParams, description="a tiny routed conv denoiser")
''')

LINEAR_CODEC = textwrap.dedent('''
    """A fixed linear codec: 2x2 pixel patches -> ``latent_channels`` orthonormal projections (and back)."""
    import hashlib

    import torch
    import torch.nn.functional as F
    from pydantic import BaseModel, ConfigDict, Field

    import dtr_plugins
    from dtr_plugins.core.errors import ConfigError


    class LinearParams(BaseModel):
        model_config = ConfigDict(extra="forbid")
        latent_channels: int = Field(2, ge=1)
        seed: int = 0


    class LinearCodec:
        bounded = False

        def __init__(self, latent_channels, seed):
            self.latent_channels, self.seed = latent_channels, seed

        def _matrix(self, channels):
            g = torch.Generator().manual_seed(self.seed)
            q, _ = torch.linalg.qr(torch.randn(4 * channels, 4 * channels, generator=g, dtype=torch.float64))
            return q[: self.latent_channels].float()  # orthonormal rows [k, 4C]

        def latent_shape(self, image_shape):
            c, h, w = image_shape
            if h % 2 or w % 2 or self.latent_channels > 4 * c:
                raise ConfigError(f"codec: linear needs even sides and latent_channels <= {4 * c}")
            return self.latent_channels, h // 2, w // 2

        def posterior(self, images):
            z = self.encode(images)
            return z, torch.zeros_like(z)

        def encode(self, images):
            u = F.pixel_unshuffle(images.float(), 2)
            return torch.einsum("kc,nchw->nkhw", self._matrix(images.shape[1]).to(u), u)

        def decode(self, latents):
            channels = 1  # this toy codec decodes to grey images
            u = torch.einsum("kc,nkhw->nchw", self._matrix(channels).to(latents), latents)
            return F.pixel_shuffle(u, 2).clamp(-1, 1)

        def fingerprint(self):
            return hashlib.sha256(self._matrix(1).numpy().tobytes()).hexdigest()


    @dtr_plugins.hookimpl
    def dtr_register_codecs(register):
        register("linear", LinearCodec, params=LinearParams, description="a fixed linear 2x2 patch codec")
''')


def test_third_party_backbone_trains_under_dtr_routing(tmp_path):
    site = tmp_path / "site"
    make_distribution(site, "acme-tinyconv", "acme_tinyconv", TINY_CONV)
    config = write(tmp_path / "tiny.yaml", textwrap.dedent(f"""\
        name: tiny-conv
        output_dir: {tmp_path / 'runs'}
        backbone: {{name: tiny_conv, width: 16, depth: 2, num_classes: 10}}
        routing: {{name: dtr, alpha: 4.0, beta: 0.8}}
        diffusion: {{steps: 100}}
        data: {{name: digits, image_size: 8, channels: 1}}
        train: {{steps: 3, batch_size: 8, lr: 1.0e-3, log_every: 1}}
        sample: {{respacing: ddim4, cfg_scale: 2.0}}
        eval: {{at_end: false}}
        """))
    listed = dtr(site, "plugins", "--json")
    assert listed.returncode == 0, listed.stderr
    rows = {(r["kind"], r["name"]): r for r in json.loads(listed.stdout)}
    assert rows[("backbone", "tiny_conv")]["distribution"] == "acme-tinyconv"

    trained = dtr(site, "train", str(config))
    assert trained.returncode == 0, trained.stderr
    run = tmp_path / "runs" / "tiny-conv"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    records = [r for r in records if "loss" in r]  # the held-out line at the end is checked elsewhere
    assert [r["step"] for r in records] == [1, 2, 3] and all(np.isfinite(r["loss"]) for r in records)
    assert json.loads((run / "meta.json").read_text())["routed_channels"] == [16, 16]
    ckpt = torch.load(run / "checkpoints" / "0000003.pt", weights_only=True)
    assert "blocks.0.weight" in ckpt["model"] and not any(k.startswith("routing") for k in ckpt["model"])

    sampled = dtr(site, "sample", str(run), "--num", "3")  # guided sampling with the plugin's null class
    assert sampled.returncode == 0, sampled.stderr
    folder = sampled.stdout.split("samples: ", 1)[1].strip()  # the fresh folder dtr sample made
    assert np.load(Path(folder) / "samples.npz")["arr_0"].shape == (3, 8, 8, 1)

    masks = dtr(site, "masks", str(config), "--out", str(tmp_path / "masks.png"))
    assert masks.returncode == 0, masks.stderr
    assert "1 distinct table(s) over 2 routed layers" in masks.stdout


def test_third_party_codec_with_latent_dit(tmp_path):
    site = tmp_path / "site"
    make_distribution(site, "acme-linear-codec", "acme_linear_codec", LINEAR_CODEC)
    config = write(tmp_path / "linear.yaml", textwrap.dedent(f"""\
        name: linear-latent
        output_dir: {tmp_path / 'runs'}
        backbone: {{name: latent_dit, patch_size: 2, hidden_size: 32, depth: 2, num_heads: 2, num_classes: 4}}
        routing: {{name: dtr}}
        diffusion: {{steps: 100}}
        data: {{name: synthetic, num_samples: 12, image_size: 8, channels: 1, num_classes: 4}}
        codec: {{name: linear, latent_channels: 3, shard_size: 5}}
        train: {{steps: 2, batch_size: 4, log_every: 1}}
        sample: {{respacing: ddim4}}
        eval: {{at_end: false}}
        """))
    cached = dtr(site, "cache-latents", str(config))
    assert cached.returncode == 0, cached.stderr
    cache = next((tmp_path / "runs" / "latent_cache").glob("synthetic-8px-*"))
    manifest = json.loads((cache / "manifest.json").read_text())
    assert manifest["complete"] and manifest["latent_shape"] == [3, 4, 4] and manifest["num_shards"] == 3
    assert manifest["key"]["codec"]["name"] == "linear"

    trained = dtr(site, "train", str(config))
    assert trained.returncode == 0, trained.stderr
    assert "hint" not in trained.stderr  # trained from the cache
    run = tmp_path / "runs" / "linear-latent"
    ckpt = torch.load(run / "checkpoints" / "0000002.pt", weights_only=True)
    assert ckpt["model"]["x_embedder.proj.weight"].shape[1] == 3  # in_channels from the codec's latents

    sampled = dtr(site, "sample", str(run), "--num", "2")
    assert sampled.returncode == 0, sampled.stderr
    folder = sampled.stdout.split("samples: ", 1)[1].strip()  # the fresh folder dtr sample made
    assert np.load(Path(folder) / "samples.npz")["arr_0"].shape == (2, 8, 8, 1)  # decoded by the codec


def test_backbone_missing_a_contract_attribute_is_one_plugin_error():
    import types

    import pytest

    from dtr_plugins.compose import build_model
    from dtr_plugins.core.config import config_from_dict
    from dtr_plugins.core.errors import PluginError
    from dtr_plugins.core.plugins import build_registry

    module = types.ModuleType("acme_no_size")
    exec(TINY_CONV.replace("self.in_channels, self.input_size, self.num_classes = in_channels, input_size, "
                           "num_classes", "self.in_channels, self.num_classes = in_channels, num_classes"),
         module.__dict__)
    registry = build_registry([(module, "acme-no-size", "0.1")])
    cfg = config_from_dict({"name": "x", "backbone": {"name": "tiny_conv"}, "data": {"name": "digits"}},
                           registry=registry)
    with pytest.raises(PluginError, match=r"^backbone 'tiny_conv' \(acme_no_size, distribution acme-no-size\) "
                                          r"lacks input_size of dtr_plugins.core.contracts.Backbone$"):
        build_model(cfg, registry)
