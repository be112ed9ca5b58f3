"""diffusers DiTTransformer2DModel interop on tiny models: exact loading, round trips, export of a vanilla DiT."""
import json

import numpy as np
import pytest
import torch

import dtr_plugins as dp
from dtr_plugins.backbones.dit_diffusers import (
    DiffusersDiT,
    diffusers_timestep_embedding,
    diffusers_to_dit_state,
    dit_params_from_diffusers_config,
    dit_to_diffusers_state,
    refit_time_linear,
)
from dtr_plugins.core.checkpoint import save_checkpoint
from dtr_plugins.core.errors import CheckpointError, UserError
from dtr_plugins.sharing import hub

diffusers = pytest.importorskip("diffusers")
from diffusers import DiTTransformer2DModel  # noqa: E402
from diffusers.models.embeddings import get_timestep_embedding  # noqa: E402

TINY = dict(num_attention_heads=2, attention_head_dim=8, in_channels=3, out_channels=6, num_layers=2, sample_size=8,
            patch_size=2, num_embeds_ada_norm=5)


def _randomize(module, seed, shared_prefix=None):
    """Random weights everywhere (the zero-initialised adaLN would hide mistakes); diffusers' per-block
    conditioning embedders get block 0's values, as in a converted DiT."""
    gen = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in module.state_dict().items():
        shared = key.replace("transformer_blocks.1.norm1.emb", "transformer_blocks.0.norm1.emb") \
            if ".norm1.emb." in key else None
        if shared is not None and shared != key and shared in state:
            state[key] = state[shared]
        elif key == "pos_embed":
            state[key] = value
        else:
            state[key] = torch.randn(value.shape, generator=gen) * 0.3
    module.load_state_dict(state)
    return module.eval()


def _inputs(n=4, channels=3, classes=5, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(n, channels, 8, 8, generator=gen), torch.tensor([0, 10, 500, 999])[:n],
            torch.randint(0, classes, (n,), generator=gen))


@pytest.fixture
def reference(tmp_path):
    model = _randomize(DiTTransformer2DModel(**TINY), seed=1)
    model.save_pretrained(tmp_path / "transformer")
    return model, tmp_path / "transformer"


def test_timestep_frequencies_match_diffusers_and_differ_from_dit():
    from dtr_plugins.backbones.dit import timestep_embedding

    t = torch.tensor([0.0, 1.0, 17.0, 999.0])
    theirs = get_timestep_embedding(t, 256, flip_sin_to_cos=True, downscale_freq_shift=1)
    assert torch.allclose(diffusers_timestep_embedding(t), theirs, atol=1e-6)
    assert (timestep_embedding(t, 256) - theirs).abs().max() > 0.1


def test_diffusers_folder_loads_exactly(reference):
    ref, folder = reference
    model, cfg, _ = dp.from_pretrained(folder)
    assert isinstance(model, DiffusersDiT) and cfg.backbone.name == "dit_diffusers" and cfg.routing.name == "vanilla"
    assert cfg.diffusion.learn_sigma and model.out_channels == 6 and model.null_class == 5
    x, t, y = _inputs()
    with torch.no_grad():
        expected = ref(x, t, y).sample
        got = model(x, t, y)
    assert expected.abs().max() > 1.0  # a real signal, not zeros
    assert (got - expected).abs().max() < 1e-5
    with torch.no_grad():  # the null class (classifier-free guidance) as well
        null = torch.full((4,), 5)
        assert (model(x, t, null) - ref(x, t, null).sample).abs().max() < 1e-5


def test_diffusers_folder_loads_without_a_data_section_and_samples(reference, tmp_path, run_cli):
    _, folder = reference
    _, cfg, _ = dp.from_pretrained(folder)
    assert cfg.data is None and "data" not in cfg.to_dict()  # a model-only config: no invented training data
    code, stdout, err = run_cli("sample", str(folder), "--num", "2", "--respacing", "ddim2", "--out",
                                str(tmp_path / "s"))
    assert code == 0, err
    samples = np.load(tmp_path / "s" / "samples.npz")["arr_0"]
    assert samples.shape == (2, 8, 8, 3) and samples.std() > 0  # the backbone's geometry: 8px, 3 channels


def test_round_trip_diffusers_dit_diffusers(reference, tmp_path):
    ref, folder = reference
    model, _, _ = dp.from_pretrained(folder)
    back = DiTTransformer2DModel(**TINY).eval()
    back.load_state_dict(dit_to_diffusers_state(model.state_dict()))
    for key, value in ref.state_dict().items():
        assert torch.equal(back.state_dict()[key], value), key


def test_round_trip_dit_state():
    params = dit_params_from_diffusers_config({"_class_name": "DiTTransformer2DModel", **TINY})
    model = _randomize(DiffusersDiT(**params), seed=2)
    there = dit_to_diffusers_state(model.state_dict())
    again = diffusers_to_dit_state(there, num_classes=5, input_size=8, patch_size=2)
    assert set(again) == set(model.state_dict())
    for key, value in model.state_dict().items():
        assert torch.allclose(again[key], value, atol=1e-6), key


def test_per_block_embedders_that_differ_are_refused(reference):
    ref, _ = reference
    state = dict(ref.state_dict())
    key = "transformer_blocks.1.norm1.emb.timestep_embedder.linear_1.weight"
    state[key] = state[key] + 1
    with pytest.raises(CheckpointError, match="block 1 has its own timestep_embedder.linear_1.weight"):
        diffusers_to_dit_state(state, num_classes=5, input_size=8, patch_size=2)


def test_unsupported_diffusers_config_is_one_line(tmp_path):
    with pytest.raises(CheckpointError, match="activation_fn='geglu' has no DiT counterpart"):
        dit_params_from_diffusers_config({"_class_name": "DiTTransformer2DModel", "activation_fn": "geglu"})
    with pytest.raises(CheckpointError, match="out_channels=5"):
        dit_params_from_diffusers_config({"_class_name": "DiTTransformer2DModel", "in_channels": 4,
                                          "out_channels": 5})


# ------------------------------------------------------------------------------ export to diffusers

RUN = """\
name: {name}
backbone: {{name: {backbone}, input_size: 8, patch_size: 2, hidden_size: 16, depth: 2, num_heads: 2, in_channels: 3,
           num_classes: 5}}
routing: {routing}
diffusion: {{steps: 1000, learn_sigma: true}}
data: {{name: synthetic, image_size: 8, channels: 3, num_classes: 5}}
"""


def _fake_run(tmp_path, name, backbone="dit", routing="{name: vanilla}"):
    """A run directory with one checkpoint of random weights (what training would leave, minus the training)."""
    import yaml

    from dtr_plugins.core.config import config_from_dict

    cfg = config_from_dict(yaml.safe_load(RUN.format(name=name, backbone=backbone, routing=routing)))
    model = _randomize(dp.build_model(cfg), seed=3)
    run = tmp_path / name
    (run / "checkpoints").mkdir(parents=True)
    (run / "config.yaml").write_text(cfg.to_yaml())
    state = model.state_dict()
    save_checkpoint(run / "checkpoints" / "0000010.pt", step=10, model=state, ema=state, config=cfg.to_dict())
    return run, model


def test_export_dit_diffusers_to_diffusers_is_exact(tmp_path):
    run, model = _fake_run(tmp_path, "exact", backbone="dit_diffusers")
    out = hub.export_run(run, tmp_path / "out", layout="diffusers")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "diffusion_pytorch_model.safetensors"]
    theirs = DiTTransformer2DModel.from_pretrained(out).eval()
    x, t, y = _inputs()
    with torch.no_grad():
        assert (theirs(x, t, y).sample - model.eval()(x, t, y)).abs().max() < 1e-5
    assert "Time embedding: exact" in (out / "README.md").read_text()
    again, _, _ = dp.from_pretrained(out)  # and back into this project
    with torch.no_grad():
        assert (again(x, t, y) - model(x, t, y)).abs().max() < 1e-5


def test_export_plain_dit_to_diffusers_is_as_close_as_a_refit_allows(tmp_path):
    run, model = _fake_run(tmp_path, "plain", backbone="dit")
    out = hub.export_run(run, tmp_path / "out", layout="diffusers")
    config = json.loads((out / "config.json").read_text())
    assert config["_class_name"] == "DiTTransformer2DModel" and config["norm_eps"] == 1e-6
    theirs = DiTTransformer2DModel.from_pretrained(out).eval()
    copied = DiTTransformer2DModel.from_pretrained(out).eval()  # the same but the time weights copied unchanged
    copied.load_state_dict(dit_to_diffusers_state(model.state_dict()))
    x, _, y = _inputs()
    t = torch.tensor([3, 250, 600, 998])
    with torch.no_grad():
        ours = model.eval()(x, t, y)
        refit_err = (theirs(x, t, y).sample - ours).pow(2).mean().sqrt()
        copy_err = (copied(x, t, y).sample - ours).pow(2).mean().sqrt()
    assert refit_err < copy_err
    # everything but the first time layer is carried over unchanged
    for key, value in copied.state_dict().items():
        if "timestep_embedder.linear_1.weight" not in key:
            assert torch.equal(theirs.state_dict()[key], value), key
    card = (out / "README.md").read_text()
    assert "refitted for diffusers' timestep frequencies over t = 0..999" in card


def test_refit_beats_copying_on_its_own_measure():
    weight = torch.randn(16, 256, generator=torch.Generator().manual_seed(0)) * 0.02
    fitted, report = refit_time_linear(weight, 1000)
    assert fitted.shape == weight.shape and report["rms"] < 0.6 * report["copy_rms"]
    assert fitted.abs().max() < 10 * weight.abs().max()  # the ridge keeps it well-conditioned


def test_routed_model_exports_to_own_layout_only(tmp_path, run_cli):
    run, _ = _fake_run(tmp_path, "routed", routing="{name: dtr, alpha: 4.0, beta: 0.8}")
    code, _, err = run_cli("export", str(run), "--format", "diffusers", "--out", str(tmp_path / "out"))
    assert code == 2 and err.count("\n") == 1 and "routed" in err and "own layout only" in err
    assert not (tmp_path / "out").exists()
    assert hub.export_run(run, tmp_path / "own").is_dir()


def test_non_dit_backbone_refuses_diffusers_layout(tmp_path):
    from dtr_plugins.core.config import config_from_dict

    cfg = config_from_dict({"name": "adm", "backbone": {"name": "adm_unet", "image_size": 8, "in_channels": 1,
                                                        "model_channels": 32, "num_res_blocks": 1,
                                                        "attention_resolutions": [], "channel_mult": [1],
                                                        "num_heads": 1, "num_classes": 1},
                            "data": {"name": "synthetic", "image_size": 8}})
    model = dp.build_model(cfg)
    run = tmp_path / "adm"
    save_checkpoint(run / "checkpoints" / "0000001.pt", step=1, model=model.state_dict(), ema=model.state_dict(),
                    config=cfg.to_dict())
    with pytest.raises(UserError, match="backbone 'adm_unet' declares no diffusers state-dict adapter "
                                        r"\(backbones that do: dit, dit_diffusers, latent_dit, latent_dit_diffusers\)"):
        hub.export_run(run, tmp_path / "out", layout="diffusers")


# ------------------------------------------------------------------------------ a diffusers DiT pipeline

TINY_VAE = dict(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
                up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[8, 16], latent_channels=4,
                sample_size=16, norm_num_groups=8, layers_per_block=1)


def _pipeline(tmp_path, scheduler):
    """The layout of facebook/DiT-XL-2-256: model_index.json, transformer/, vae/, scheduler/ (tiny)."""
    from diffusers import AutoencoderKL

    folder = tmp_path / "pipe"
    transformer = _randomize(DiTTransformer2DModel(**{**TINY, "in_channels": 4, "out_channels": 8}), seed=4)
    transformer.save_pretrained(folder / "transformer")
    torch.manual_seed(0)
    AutoencoderKL(**TINY_VAE).save_pretrained(folder / "vae")
    (folder / "scheduler").mkdir()
    (folder / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "DiTPipeline"}))
    return folder, transformer


def test_diffusers_pipeline_loads_on_its_vae_and_samples(tmp_path):
    from dtr_plugins.backbones.dit_diffusers import LatentDiffusersDiT
    from dtr_plugins.core.sampling_settings import SamplingOverrides, SamplingSettings
    from dtr_plugins.sampling.sample import generate

    folder, transformer = _pipeline(tmp_path, {"_class_name": "KarrasDiffusionSchedulers", "num_train_timesteps": 500,
                                               "beta_schedule": "linear", "beta_start": 0.0002, "beta_end": 0.04})
    model, cfg, codec = dp.from_pretrained(folder)
    assert isinstance(model, LatentDiffusersDiT) and cfg.backbone.name == "latent_dit_diffusers"
    assert cfg.diffusion.steps == 500 and cfg.diffusion.schedule == "linear"
    assert cfg.vae.path == str((folder / "vae").resolve()) and cfg.data is None
    assert model.input_size == 8 and codec.latent_shape((3, 16, 16)) == (4, 8, 8)
    x, t, y = _inputs(channels=4)
    t = t.clamp(max=499)
    with torch.no_grad():
        assert (model(x, t, y) - transformer(x, t, y).sample).abs().max() < 1e-5
    settings = SamplingSettings.from_config(cfg, SamplingOverrides(num=2, respacing="ddim2"), bounded=codec.bounded)
    images, labels = generate(model, dp.build_diffusion(cfg), settings, codec=codec, progress=False)
    assert images.shape == (2, 16, 16, 3) and list(labels) == [0, 1]


def test_pipeline_scheduler_that_differs_is_one_line(tmp_path):
    folder, _ = _pipeline(tmp_path, {"num_train_timesteps": 1000, "beta_schedule": "scaled_linear"})
    with pytest.raises(CheckpointError, match="beta_schedule='scaled_linear' has no counterpart"):
        dp.from_pretrained(folder)
