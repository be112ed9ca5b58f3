"""Export in hub layout, loading from folders and the Hugging Face cache, push (no network)."""
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import dtr_plugins as dp
from dtr_plugins.core.errors import CheckpointError, UserError
from dtr_plugins.sampling.sample import generate, load_run
from dtr_plugins.sharing import hub

from ..conftest import tiny_dit_config, write

#: the shared tiny DiT run (tests/conftest.py), 4 steps, sampled with guidance
TINY = {"name": "tiny-export", "train": {"steps": 4, "ckpt_every": 2}, "sample": {"cfg_scale": 2.0}}

# What the trainer writes to eval.json at the end of a run (training/train.py, _evaluate_during_training).
EVAL = {"frechet_inception_distance": 12.345, "kernel_inception_distance_mean": 0.0123,
        "kernel_inception_distance_std": 0.0011, "precision": 0.71, "recall": 0.42, "class_accuracy": 0.9,
        "feature_extractor": "digits-classifier", "weights_sha256": "ab" * 32, "num_samples": 250,
        "num_reference": 1797, "image_size": [8, 8], "reference_image_size": [8, 8], "samples": "<memory>",
        "reference": "dataset:digits", "kid_subset_size": 250, "reference_cache": "hit", "step": 4,
        "sampler": "ddim", "respacing": "ddim25", "cfg_scale": 2.0, "cfg_channels": "all", "train_precision": "fp32",
        "world_size": 1, "seed": 3}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("hubrun")
    cfg = dp.load_config(tiny_dit_config(root, "tiny.yaml", **TINY), overrides=[f"output_dir={root / 'runs'}"])
    run = dp.train(cfg, progress=False)
    (run / "eval.json").write_text(json.dumps(EVAL))
    return run


def _forward(model, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(4, 1, 8, 8, generator=gen)
    t = torch.tensor([0, 17, 50, 99])
    y = torch.tensor([0, 1, 2, 3])
    with torch.no_grad():
        return model.eval()(x, t, y)


def test_export_then_load_gives_identical_outputs_and_samples(run_dir, tmp_path):
    out = hub.export_run(run_dir, tmp_path / "export")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    config = json.loads((out / "config.json").read_text())
    assert config["routing"]["name"] == "dtr" and config["routing"]["alpha"] == 4.0 and config["routing"]["beta"] == 0.8
    record = config["_dtr_export"]
    assert record["weights"] == "ema" and record["step"] == 4 and record["checkpoint"] == "0000004.pt"
    assert len(record["weights_sha256"]) == 64

    cfg, run_model, diffusion, _ = load_run(run_dir, device="cpu")
    model, loaded_cfg, _ = dp.from_pretrained(out)
    assert loaded_cfg.to_dict() == cfg.to_dict()
    assert torch.equal(_forward(model), _forward(run_model))
    assert model.plan.strategy_repr == run_model.plan.strategy_repr and not model.plan.is_dense
    a, _ = generate(run_model, diffusion, cfg, 8, seed=5, progress=False)
    b, _ = generate(model, dp.build_diffusion(loaded_cfg), loaded_cfg, 8, seed=5, progress=False)
    assert a.dtype == np.uint8 and np.array_equal(a, b)


def test_export_raw_weights_differ_from_ema(run_dir, tmp_path):
    ema, _, _ = dp.from_pretrained(hub.export_run(run_dir, tmp_path / "ema"))
    raw, _, _ = dp.from_pretrained(hub.export_run(run_dir, tmp_path / "raw", weights="model"))
    ckpt = torch.load(run_dir / "checkpoints" / "0000004.pt", weights_only=True)
    for key, value in ckpt["model"].items():
        assert torch.equal(raw.state_dict()[key], value)
    assert not torch.equal(_forward(ema), _forward(raw))
    card = (tmp_path / "raw" / "README.md").read_text()
    assert "No metrics are shown: the run's `eval.json` was measured on the **EMA** weights" in card
    assert "| FID |" not in card and "12.35" not in card


def test_model_card_of_an_earlier_checkpoint_shows_no_metrics_of_the_last(run_dir, tmp_path):
    card = (hub.export_run(run_dir / "checkpoints" / "0000002.pt", tmp_path / "s2") / "README.md").read_text()
    assert "checkpoint `0000002.pt` (training step 2)" in card
    assert "No metrics are shown: the run's `eval.json` was measured on training step 4" in card
    assert "| FID |" not in card and "12.35" not in card and "at training step 4" not in card


def test_model_card_carries_the_fid_warning_and_lists_only_metrics(run_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    (run / "eval.json").write_text(json.dumps({**EVAL, "fid_rank_deficient": True, "fid_feature_dim": 128,
                                               "model_evaluations_per_image": 50, "isc_splits": 10}))
    card = (hub.export_run(run, tmp_path / "out") / "README.md").read_text()
    assert "| FID | 12.35 |" in card and "(50 network evaluations per image)" in card
    assert "**Warning:** this FID comes from 250 samples and 1797 reference images with 128-dimensional" in card
    assert "rank-deficient" in card and "| model_evaluations_per_image" not in card and "| isc_splits" not in card


def test_model_card_carries_the_runs_metrics_and_provenance(run_dir, tmp_path):
    card = (hub.export_run(run_dir, tmp_path / "card") / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: dtr-plugins")
    assert "| FID | 12.35 |" in card and "| KID (mean) | 0.0123 |" in card and "| recall | 0.42 |" in card
    assert "| class accuracy | 0.9 |" in card
    for fact in ("250 samples from the **EMA** weights at training step 4", "sampler `ddim`", "respacing `ddim25`",
                 "guidance scale 2.0", "seed 3", "`digits-classifier`", "`dataset:digits` (1797 images)"):
        assert fact in card, fact
    assert "routing `dtr`" in card and "No metrics are shown" not in card  # EMA weights of the evaluated step
    assert "Warning:" not in card  # fid_rank_deficient is not set


def test_model_card_without_evaluation_says_so(run_dir, tmp_path):
    run = tmp_path / "run"
    shutil.copytree(run_dir, run)
    (run / "eval.json").unlink()
    card = (hub.export_run(run, tmp_path / "out") / "README.md").read_text()
    assert "No evaluation was recorded" in card and "| FID |" not in card


def test_export_refuses_a_nonempty_out_and_writes_nothing_on_error(run_dir, tmp_path, run_cli):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("x")
    code, _, err = run_cli("export", str(run_dir), "--out", str(out))
    assert code == 2 and err.count("\n") == 1 and "already exists" in err
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    ckpt = torch.load(run_dir / "checkpoints" / "0000004.pt", weights_only=True)
    del ckpt["ema"]
    torch.save(ckpt, tmp_path / "no_ema.pt")
    with pytest.raises(CheckpointError, match="no 'ema' weights.*--weights model"):
        hub.export_run(tmp_path / "no_ema.pt", tmp_path / "new")
    assert not (tmp_path / "new").exists() and not list(tmp_path.glob(".new*"))


def test_cli_export_prints_the_folder(run_dir, tmp_path, run_cli):
    code, out, err = run_cli("export", str(run_dir), "--weights", "model", "--out", str(tmp_path / "e"))
    assert code == 0 and out.strip() == f"exported: {tmp_path / 'e'}" and err == ""
    assert json.loads((tmp_path / "e" / "config.json").read_text())["_dtr_export"]["weights"] == "model"


def test_export_detects_pretrained_sources(run_dir, tmp_path):
    out = hub.export_run(run_dir, tmp_path / "exp")
    assert hub.is_pretrained_source(out) and hub.is_pretrained_source("hf://org/name")
    assert not hub.is_pretrained_source(run_dir)
    assert not hub.is_pretrained_source(run_dir / "checkpoints" / "0000004.pt")
    cfg, model, diffusion, codec, path, info = hub.load_for_sampling(out, device="cpu")
    assert path == out / "model.safetensors" and info == {"weights": "ema", "step": 4, "source": str(out)}
    assert codec.bounded and codec.latent_shape((1, 8, 8)) == (1, 8, 8)  # a pixel model: the identity codec


def test_cli_sample_from_the_export_gives_the_runs_images(run_dir, tmp_path, run_cli):
    """The issue's Done-when: a run exports, reloads from the folder and samples identical images."""
    out = hub.export_run(run_dir, tmp_path / "exp")
    code, _, err = run_cli("sample", str(run_dir), "--num", "8", "--seed", "7", "--out", str(tmp_path / "from_run"))
    assert code == 0, err
    code, stdout, err = run_cli("sample", str(out), "--num", "8", "--seed", "7", "--out", str(tmp_path / "from_exp"))
    assert code == 0, err
    assert stdout.strip() == f"samples: {tmp_path / 'from_exp'}"
    a, b = np.load(tmp_path / "from_run" / "samples.npz"), np.load(tmp_path / "from_exp" / "samples.npz")
    assert a["arr_0"].shape == (8, 8, 8, 1) and a["arr_0"].std() > 0
    assert np.array_equal(a["arr_0"], b["arr_0"]) and np.array_equal(a["labels"], b["labels"])
    assert (tmp_path / "from_run" / "grid.png").read_bytes() == (tmp_path / "from_exp" / "grid.png").read_bytes()
    info = json.loads((tmp_path / "from_exp" / "samples.json").read_text())
    assert info["weights"] == "ema" and info["step"] == 4 and info["source"] == str(out)
    assert info["checkpoint"] == str(out / "model.safetensors") and info["seed"] == 7 and info["num_samples"] == 8
    assert json.loads((tmp_path / "from_run" / "samples.json").read_text())["weights"] == "ema"
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]


def test_cli_sample_from_an_export_needs_out_and_the_weights_it_holds(run_dir, tmp_path, run_cli):
    out = hub.export_run(run_dir, tmp_path / "exp")
    code, stdout, err = run_cli("sample", str(out), "--num", "2")
    assert code == 2 and err.count("\n") == 1 and "--out" in err and "Traceback" not in err and stdout == ""
    code, _, err = run_cli("sample", str(out), "--num", "2", "--no-ema", "--out", str(tmp_path / "s"))
    assert code == 2 and err.count("\n") == 1 and "--weights model" in err
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    assert not (tmp_path / "s").exists()
    raw = hub.export_run(run_dir, tmp_path / "raw", weights="model")
    code, _, err = run_cli("sample", str(raw), "--num", "2", "--no-ema", "--out", str(tmp_path / "s"))
    assert code == 0, err
    assert json.loads((tmp_path / "s" / "samples.json").read_text())["weights"] == "model"


# ------------------------------------------------------------------------------------------ hub cache

def _populate_cache(cache, repo_id, folder, revision="0123456789abcdef0123456789abcdef01234567"):
    """The layout huggingface_hub keeps: models--ORG--NAME/{refs/main, snapshots/<rev>/...}."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    shutil.copytree(folder, repo / "snapshots" / revision)
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(revision)
    return repo / "snapshots" / revision


def test_hub_id_loads_from_a_local_cache_offline(run_dir, tmp_path, monkeypatch, run_cli):
    out = hub.export_run(run_dir, tmp_path / "exp")
    cache = tmp_path / "hf" / "hub"
    snapshot = _populate_cache(cache, "someone/tiny-dit", out)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HUGGINGFACE_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert hub.resolve("hf://someone/tiny-dit") == snapshot
    model, _, _ = dp.from_pretrained("hf://someone/tiny-dit")
    local, _, _ = dp.from_pretrained(out)
    assert torch.equal(_forward(model), _forward(local))
    bare, _, _ = dp.from_pretrained("someone/tiny-dit")  # no such local folder: a hub id
    assert torch.equal(_forward(bare), _forward(local))
    code, _, err = run_cli("sample", "hf://someone/tiny-dit", "--num", "4", "--out", str(tmp_path / "s"))
    assert code == 0, err
    info = json.loads((tmp_path / "s" / "samples.json").read_text())
    assert info["source"] == "hf://someone/tiny-dit" and info["weights"] == "ema" and info["step"] == 4


def test_absent_hub_id_offline_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError) as info:
        dp.from_pretrained("hf://nobody/absent-model")
    message = str(info.value)
    assert "\n" not in message and "HF_HUB_OFFLINE" in message and "hf download nobody/absent-model" in message
    assert "pass the folder" in message and not (tmp_path / "empty-cache" / "models--nobody--absent-model").exists()


def test_cli_sample_of_an_absent_hub_id_offline_is_one_line_exit_2(tmp_path, monkeypatch, run_cli):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code, stdout, err = run_cli("sample", "hf://nobody/absent-model", "--num", "2", "--out", str(tmp_path / "s"))
    assert code == 2 and err.count("\n") == 1 and stdout == "" and "Traceback" not in err
    assert "hf://nobody/absent-model" in err and "HF_HUB_OFFLINE" in err and "hf download nobody/absent-model" in err
    assert not (tmp_path / "s").exists()


def test_bad_sources_are_one_line(tmp_path):
    with pytest.raises(CheckpointError, match="no such folder"):
        dp.from_pretrained(str(tmp_path / "missing"))
    (tmp_path / "f.txt").write_text("x")
    with pytest.raises(CheckpointError, match="is a file"):
        dp.from_pretrained(tmp_path / "f.txt")
    write(tmp_path / "other" / "config.json", json.dumps({"_class_name": "UNet2DModel"}))
    with pytest.raises(CheckpointError, match="neither an exported dtr-plugins model"):
        dp.from_pretrained(tmp_path / "other")


def test_corrupt_export_weights_are_one_line(run_dir, tmp_path):
    out = hub.export_run(run_dir, tmp_path / "exp")
    (out / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="model.safetensors: corrupt or not a safetensors file"):
        dp.from_pretrained(out)


# ------------------------------------------------------------------------------------------- push

class _FakeApi:
    calls: list = []
    fail: str | None = None

    def __init__(self, token=None):
        _FakeApi.calls.append(("init", token))

    def create_repo(self, **kwargs):
        _FakeApi.calls.append(("create_repo", kwargs))

    def upload_folder(self, **kwargs):
        from pathlib import Path

        folder = Path(kwargs["folder_path"])  # what is in it at upload time (a pipeline's folder is temporary)
        kwargs["uploaded"] = {p.name: p.read_bytes() for p in folder.iterdir()}
        _FakeApi.calls.append(("upload_folder", kwargs))
        if _FakeApi.fail:
            raise RuntimeError(_FakeApi.fail)
        return "https://huggingface.co/org/tiny/commit/abc"


@pytest.fixture
def fake_api(monkeypatch):
    import huggingface_hub

    _FakeApi.calls, _FakeApi.fail = [], None
    monkeypatch.setattr(huggingface_hub, "HfApi", _FakeApi)
    monkeypatch.setenv("HF_TOKEN", "hf_SecretTokenValue123456")
    return _FakeApi


def test_push_uploads_the_folder_and_never_prints_the_token(run_dir, tmp_path, run_cli, fake_api):
    out = hub.export_run(run_dir, tmp_path / "exp")
    code, stdout, stderr = run_cli("push", str(out), "org/tiny")
    assert code == 0 and stdout.strip() == "pushed: https://huggingface.co/org/tiny/commit/abc"
    assert fake_api.calls[0] == ("init", None)  # huggingface_hub finds the token itself
    assert fake_api.calls[1] == ("create_repo", {"repo_id": "org/tiny", "repo_type": "model", "private": None,
                                                 "exist_ok": True})
    name, upload = fake_api.calls[2]
    assert name == "upload_folder" and upload["folder_path"] == str(out) and upload["repo_id"] == "org/tiny"
    assert upload["repo_type"] == "model"
    assert "SecretTokenValue" not in stdout + stderr


def test_push_failure_is_one_line_without_the_token(run_dir, tmp_path, run_cli, fake_api):
    out = hub.export_run(run_dir, tmp_path / "exp")
    fake_api.fail = "401 Unauthorized: invalid token hf_SecretTokenValue123456 for org/tiny"
    code, stdout, stderr = run_cli("push", str(out), "org/tiny")
    errors = [ln for ln in stderr.splitlines() if not ln.startswith("dtr: warning: push:")]  # absolute output_dir
    assert code == 2 and len(errors) == 1 and "upload failed" in stderr and "401 Unauthorized" in stderr
    assert "SecretTokenValue" not in stdout + stderr


def test_push_checks_its_arguments(tmp_path, run_cli, fake_api):
    code, _, err = run_cli("push", str(tmp_path), "not-a-repo-id")
    assert code == 2 and "not a hub repo id" in err
    code, _, err = run_cli("push", str(tmp_path), "org/name")
    assert code == 2 and "no config.json" in err
    assert [c for c in fake_api.calls if c[0] != "init"] == []
    from dtr_plugins.sharing.push import push

    with pytest.raises(UserError):
        push(tmp_path / "missing", "org/name")


def test_latent_model_exports_and_loads_with_its_vae(tmp_path):
    pytest.importorskip("diffusers")
    from diffusers import AutoencoderKL

    from dtr_plugins.core.checkpoint import save_checkpoint

    torch.manual_seed(0)
    AutoencoderKL(in_channels=3, out_channels=3, down_block_types=["DownEncoderBlock2D"] * 2,
                  up_block_types=["UpDecoderBlock2D"] * 2, block_out_channels=[8, 16], latent_channels=4,
                  sample_size=16, norm_num_groups=8, layers_per_block=1).save_pretrained(tmp_path / "vae")
    cfg = dp.load_config(write(tmp_path / "latent.yaml", f"""\
name: tiny-latent
backbone: {{name: latent_dit, patch_size: 2, hidden_size: 32, depth: 2, num_heads: 2, num_classes: 4}}
routing: {{name: dtr, alpha: 4.0, beta: 0.8}}
data: {{name: synthetic, image_size: 16, channels: 3, num_classes: 4}}
vae: {{path: {tmp_path / 'vae'}}}
"""))
    model = dp.build_model(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))
    save_checkpoint(tmp_path / "run" / "checkpoints" / "0000001.pt", step=1, model=model.state_dict(),
                    ema=model.state_dict(), config=cfg.to_dict())
    out = hub.export_run(tmp_path / "run", tmp_path / "exp")
    loaded, loaded_cfg, codec = dp.from_pretrained(out)
    assert loaded_cfg.vae.path == str(tmp_path / "vae") and codec.latent_channels == 4
    assert codec.latent_shape((3, 16, 16)) == (4, 8, 8) and not codec.bounded
    assert "vae" not in "".join(loaded.state_dict())
    record = json.loads((out / "config.json").read_text())["_dtr_export"]["codec"]
    assert record["name"] == "autoencoder_kl" and record["params"]["path"] == str(tmp_path / "vae")
    assert record["in_folder"] is False
    x, t, y = torch.randn(2, 4, 8, 8), torch.tensor([1, 900]), torch.tensor([0, 3])
    with torch.no_grad():
        assert torch.equal(loaded(x, t, y), model.eval()(x, t, y))
    assert "The VAE is not part of this folder" in (out / "README.md").read_text()


def test_cached_snapshot_without_weights_counts_as_absent(run_dir, tmp_path, monkeypatch):
    out = hub.export_run(run_dir, tmp_path / "exp")
    (tmp_path / "partial").mkdir()
    shutil.copy(out / "config.json", tmp_path / "partial" / "config.json")  # e.g. fetched by another tool
    _populate_cache(tmp_path / "cache", "someone/partial", tmp_path / "partial")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(CheckpointError, match="not in the local Hugging Face cache and HF_HUB_OFFLINE is set"):
        dp.from_pretrained("hf://someone/partial")


def test_sample_and_export_read_the_same_config_of_a_resumed_run(run_dir, tmp_path):
    # the bug: `dtr sample RUN` read config.yaml and `dtr export RUN` the checkpoint's config, so after a resume
    # that changed config.yaml (train.steps raised, another respacing; stopped before its next checkpoint) they
    # built the model and sampler from different configs
    run = shutil.copytree(run_dir, tmp_path / "resumed")
    text = (run / "config.yaml").read_text()
    assert "respacing: ddim5" in text and "steps: 4" in text
    text = text.replace("respacing: ddim5", "respacing: ddim3").replace("steps: 4", "steps: 6")
    (run / "config.yaml").write_text(text)
    cfg = load_run(run, device="cpu")[0]
    exported = json.loads((hub.export_run(run, tmp_path / "out") / "config.json").read_text())
    assert (cfg.sample.respacing, cfg.train.steps) == ("ddim5", 4)  # what trained the newest checkpoint's weights
    assert (exported["sample"]["respacing"], exported["train"]["steps"]) == (cfg.sample.respacing, cfg.train.steps)
    assert {k: exported[k] for k in cfg.to_dict()} == cfg.to_dict()


# ------------------------------------------------------------------------------- DTRPipeline (hub methods)
def _state(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_pipeline_save_then_load_gives_identical_weights_and_samples(run_dir, tmp_path):
    pipe = dp.DTRPipeline.from_run(run_dir)
    out = pipe.save_pretrained(tmp_path / "saved")
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "model.safetensors"]
    again = dp.DTRPipeline.from_pretrained(out)
    assert again.cfg.to_dict() == pipe.cfg.to_dict() and again.record["step"] == 4
    before, after = _state(pipe.model), _state(again.model)
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    a, _ = generate(pipe.model, pipe.diffusion, pipe.cfg, 8, seed=11, progress=False)
    b, _ = dp.generate(again.model, again.diffusion, again.cfg, 8, seed=11, progress=False)
    assert a.dtype == np.uint8 and np.array_equal(a, b)

    exported = hub.export_run(run_dir, tmp_path / "export")  # the same bytes as dtr export writes
    assert (exported / "model.safetensors").read_bytes() == (out / "model.safetensors").read_bytes()
    resaved = again.save_pretrained(tmp_path / "resaved")  # unchanged weights keep their card, metrics included
    assert (resaved / "README.md").read_text() == (out / "README.md").read_text()
    assert "| FID | 12.35 |" in (resaved / "README.md").read_text()


def test_pipeline_with_changed_weights_writes_a_card_without_the_old_metrics(run_dir, tmp_path):
    pipe = dp.DTRPipeline.from_pretrained(hub.export_run(run_dir, tmp_path / "export"))
    with torch.no_grad():
        next(pipe.model.parameters()).add_(1.0)  # fine-tuned: eval.json no longer describes these weights
    out = pipe.save_pretrained(tmp_path / "tuned")
    card = (out / "README.md").read_text()
    assert "| FID |" not in card and "No evaluation was recorded" in card and "model-index" not in card
    assert torch.equal(_state(dp.DTRPipeline.from_pretrained(out).model)[next(iter(pipe.model.state_dict()))],
                       next(iter(pipe.model.state_dict().values())))
    with pytest.raises(UserError, match="already exists and is not an empty folder"):
        pipe.save_pretrained(out)


def test_pipeline_revision_applies_to_hub_ids_only(run_dir, tmp_path):
    with pytest.raises(UserError, match="revision='v1' applies to a hub id"):
        dp.DTRPipeline.from_pretrained(hub.export_run(run_dir, tmp_path / "e"), revision="v1")


def test_model_card_front_matter_holds_licence_and_model_index(run_dir, tmp_path):
    import yaml
    from huggingface_hub import ModelCard

    text = (hub.export_run(run_dir, tmp_path / "card") / "README.md").read_text()
    assert text.startswith("---\n")
    front = yaml.safe_load(text.split("---\n")[1])
    assert front["license"] == "mit" and front["library_name"] == "dtr-plugins"
    (index,) = front["model-index"]
    assert index["name"] == "tiny-export"
    (result,) = index["results"]
    assert result["dataset"] == {"name": "dataset:digits", "type": "synthetic"}
    metrics = {m["name"]: m["value"] for m in result["metrics"]}
    assert metrics["FID"] == pytest.approx(12.345) and metrics["recall"] == pytest.approx(0.42)
    assert "model_evaluations_per_image" not in {m["type"] for m in result["metrics"]}
    card = ModelCard(text)  # huggingface_hub's own reader of the card
    assert card.data.license == "mit"
    fid = [r for r in card.data.eval_results if r.metric_type == "frechet_inception_distance"]
    assert [(r.metric_value, r.dataset_name) for r in fid] == [(pytest.approx(12.345), "dataset:digits")]

    raw = (hub.export_run(run_dir, tmp_path / "raw", weights="model") / "README.md").read_text()
    front = yaml.safe_load(raw.split("---\n")[1])
    assert front["license"] == "mit" and "model-index" not in front  # eval.json measured the EMA weights


def test_pipeline_push_to_hub_uploads_a_saved_folder(run_dir, tmp_path, fake_api):
    pipe = dp.DTRPipeline.from_run(run_dir)
    url = pipe.push_to_hub("org/tiny", private=True)
    assert url == "https://huggingface.co/org/tiny/commit/abc"
    assert fake_api.calls[1] == ("create_repo", {"repo_id": "org/tiny", "repo_type": "model", "private": True,
                                                 "exist_ok": True})
    name, upload = fake_api.calls[2]
    assert name == "upload_folder" and upload["repo_id"] == "org/tiny"
    assert upload["commit_message"] == "Upload tiny-export with dtr-plugins"
    files = upload["uploaded"]
    assert sorted(files) == ["README.md", "config.json", "model.safetensors"]
    saved = pipe.save_pretrained(tmp_path / "local")
    assert files["model.safetensors"] == (saved / "model.safetensors").read_bytes()
    assert not Path(upload["folder_path"]).exists()  # the temporary folder is gone
    fake_api.fail = "401 Unauthorized: invalid token hf_SecretTokenValue123456 for org/tiny"
    with pytest.raises(UserError) as info:
        pipe.push_to_hub("org/tiny")
    assert "upload failed" in str(info.value) and "SecretTokenValue" not in str(info.value)
