"""Text-to-image end to end, offline: a dit_t2i on digits_captions with a tiny local CLIP trains, resumes
bit-exactly, samples from prompts (with guidance) and refuses what cannot work with one line."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

import dtr_plugins as dp
from dtr_plugins.backbones.dit_t2i import DiTT2I
from dtr_plugins.core.contracts import SupportsTextConditioning
from dtr_plugins.core.errors import ConfigError
from dtr_plugins.core.text_condition import pack

from ..conftest import write
from ..t2i_helpers import TINY_TEXT_DIM, TINY_TEXT_LENGTH


@pytest.fixture
def clip_dir(tiny_clip_dir):
    return tiny_clip_dir


def t2i_config(clip_dir, folder, **changes) -> dict:
    cfg = {
        "name": "t2i", "seed": 5, "output_dir": str(folder / "runs"),
        "backbone": {"name": "dit_t2i", "input_size": 8, "patch_size": 2, "hidden_size": 32, "depth": 2,
                     "num_heads": 2, "in_channels": 1, "text_dim": TINY_TEXT_DIM, "text_length": TINY_TEXT_LENGTH},
        "routing": {"name": "dtr", "alpha": 4.0, "beta": 0.8},
        "diffusion": {"steps": 100, "schedule": "linear", "learn_sigma": True},
        "data": {"name": "digits_captions"},
        "text": {"name": "clip_text", "path": str(clip_dir), "max_length": TINY_TEXT_LENGTH, "caption_dropout": 0.2,
                 "cache_dir": str(folder / "text_cache")},
        "train": {"steps": 6, "batch_size": 8, "lr": 1.0e-3, "log_every": 2, "ckpt_every": 3, "ema_warmup": True},
        "sample": {"sampler": "ddim", "respacing": "ddim4", "num_samples": 4, "batch_size": 4, "cfg_scale": 1.5},
        "eval": {"at_end": False},
    }
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(cfg.get(key), dict):
            cfg[key] = {**cfg[key], **value}
        else:
            cfg[key] = value
    return cfg


def load(cfg: dict, folder, *overrides):
    return dp.load_config(write(folder / "c.yaml", yaml.safe_dump(cfg)), overrides=list(overrides))


@pytest.mark.parametrize("mode", ["cross_attention", "in_context"])
@pytest.mark.parametrize("site", ["input", "heads_mlp"])
def test_every_text_mode_runs_every_site_and_reads_the_text(mode, site):
    torch.manual_seed(0)
    model = DiTT2I(input_size=8, patch_size=2, in_channels=1, hidden_size=32, depth=2, num_heads=2, text_dim=8,
                   text_length=5, text_mode=mode)
    assert isinstance(model, SupportsTextConditioning) and model.routed_channels(site) == \
        {"input": [32, 32], "heads_mlp": [2, 8, 2, 8]}[site]
    for p in model.parameters():  # leave the zero initialisation, so that the output depends on everything
        p.data.add_(0.05 * torch.randn_like(p))
    x, t = torch.randn(2, 1, 8, 8), torch.tensor([3, 70])
    mask = torch.tensor([[True, True, False, False, False]] * 2)
    y1 = pack(torch.randn(2, 5, 8), torch.randn(2, 8), mask)
    y2 = pack(torch.randn(2, 5, 8), torch.randn(2, 8), mask)
    assert model(x, t, y1).shape == (2, 2, 8, 8)
    assert not torch.allclose(model(x, t, y1), model(x, t, y2))
    if mode == "cross_attention":  # padded tokens are masked out: changing them changes nothing
        y3 = y1.clone()
        y3[:, 2:5, :-1] = torch.randn(2, 3, 8)
        assert torch.allclose(model(x, t, y1), model(x, t, y3), atol=1e-6)
    with pytest.raises(ConfigError, match="backbone.text_dim"):
        model(x, t, pack(torch.randn(2, 5, 4), torch.randn(2, 4), mask))


@pytest.mark.parametrize("mode", ["cross_attention", "in_context"])
def test_routed_text_model_slices_shared_timesteps_like_the_dense_path(mode, tmp_path, clip_dir):
    """DTR at heads_mlp on both text modes: a batch sharing one timestep (sampling) runs only the active heads and
    units, and gives what the masked dense path gives."""
    cfg = load(t2i_config(clip_dir, tmp_path, backbone={"text_mode": mode},
                          routing={"name": "dtr", "alpha": 4.0, "beta": 0.5, "site": "heads_mlp"}), tmp_path)
    torch.manual_seed(0)
    model = dp.build_model(cfg)
    for p in model.parameters():
        p.data.add_(0.05 * torch.randn_like(p))
    x, t = torch.randn(3, 1, 8, 8), torch.full((3,), 90)
    y = pack(torch.randn(3, TINY_TEXT_LENGTH, TINY_TEXT_DIM), torch.randn(3, TINY_TEXT_DIM),
             torch.ones(3, TINY_TEXT_LENGTH, dtype=torch.bool))
    with torch.no_grad():
        dense = model.train()(x, t, y)
        sliced = model.eval()(x, t, y)
    assert model.plan is not None and not model.plan.is_dense and model.plan.site == "heads_mlp"
    assert torch.allclose(dense, sliced, atol=1e-5)


def test_trains_resumes_bit_exactly_and_samples_from_prompts(tmp_path, clip_dir, run_cli):
    cfg = t2i_config(clip_dir, tmp_path)
    straight = dp.train(load(cfg, tmp_path), progress=False)
    dp.train(load(cfg, tmp_path, "name=t2i_b", "train.steps=3"), progress=False)
    resumed = dp.train(load(cfg, tmp_path, "name=t2i_b"), resume=True, progress=False)
    for key in ("model", "ema"):
        a = torch.load(straight / "checkpoints" / "0000006.pt", weights_only=True)[key]
        b = torch.load(resumed / "checkpoints" / "0000006.pt", weights_only=True)[key]
        assert all(torch.equal(a[k], b[k]) for k in a)
        assert any("cross_attn" in k for k in a)
    records = [json.loads(line) for line in (straight / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(r["loss"]) for r in records if "loss" in r)
    cache = next((tmp_path / "text_cache").iterdir())
    assert json.loads((cache / "manifest.json").read_text())["max_length"] == TINY_TEXT_LENGTH
    assert len(list(cache.glob("*/*.pt"))) > 1  # captions and the empty caption, cached by content
    out = tmp_path / "s"
    code, _, err = run_cli("sample", str(straight), "-n", "3", "--prompt", "the number seven",
                           "--prompt", "a picture of a two", "--out", str(out))
    assert code == 0, err
    data = np.load(out / "samples.npz")
    assert data["arr_0"].shape == (3, 8, 8, 1) and list(data["labels"]) == [0, 1, 0]
    info = json.loads((out / "samples.json").read_text())
    assert info["prompts"] == ["the number seven", "a picture of a two"] and info["guidance"] is True
    prompts_file = write(tmp_path / "p.txt", "the number one\n\nzero\n")
    code, _, err = run_cli("sample", str(straight), "-n", "2", "--prompts-file", str(prompts_file), "--seed", "1",
                           "--out", str(tmp_path / "s2"))
    assert code == 0, err
    assert json.loads((tmp_path / "s2" / "samples.json").read_text())["prompts"] == ["the number one", "zero"]
    code, _, err = run_cli("sample", str(straight), "-n", "2", "--out", str(tmp_path / "s3"))
    assert code == 2 and "--prompt: this model is text-conditioned" in err and "Traceback" not in err


def test_mismatches_are_one_line(tmp_path, clip_dir, run_cli):
    cases = [
        ({"text": None}, "text: backbone 'dit_t2i' is text-conditioned and needs a text section"),
        ({"data": {"name": "digits"}}, "data.name: dataset 'digits' has no captions"),
        ({"backbone": {"text_dim": 32}}, "backbone.text_dim: 32 but the conditioner 'clip_text' gives 16"),
        ({"text": {"name": "clip_txt"}}, "text.name: unknown conditioner 'clip_txt'"),
        ({"text": {"max_lenght": 3}}, "text.max_lenght: unknown key"),
    ]
    for change, needle in cases:
        cfg = t2i_config(clip_dir, tmp_path, **change)
        if change.get("text") is None and "text" in change:
            cfg.pop("text")
        path = write(tmp_path / "bad.yaml", yaml.safe_dump(cfg))
        code, _, err = run_cli("validate", str(path))
        assert code == 2 and needle in err and "Traceback" not in err, (needle, err)
    cfg = t2i_config(clip_dir, tmp_path, eval={"at_end": True, "metrics": ["fid"], "num_samples": 4,
                                               "feature_extractor": "digits-classifier",
                                               "reference": "dataset:digits?image_size=8"})
    cfg["text"]["eval_prompts"] = str(tmp_path / "none.txt")
    code, _, err = run_cli("validate", str(write(tmp_path / "ep.yaml", yaml.safe_dump(cfg))))
    assert code == 2 and "text.eval_prompts:" in err and "none.txt is not a file" in err
    code, _, err = run_cli("validate", str(tmp_path / "ep.yaml"), "--set", "eval.at_end=false")
    assert code == 0, err  # no evaluation: the prompts file is never read
    plain = t2i_config(clip_dir, tmp_path)
    plain["backbone"] = {"name": "dit", "input_size": 8, "patch_size": 2, "hidden_size": 32, "depth": 2,
                         "num_heads": 2, "in_channels": 1, "num_classes": 10}
    code, _, err = run_cli("validate", str(write(tmp_path / "plain.yaml", yaml.safe_dump(plain))))
    assert code == 2 and "text: backbone 'dit' reads no text" in err


@pytest.mark.parametrize("name", ["t2i_dit_b2_coco256.yaml", "t2i_digits.yaml"])
def test_t2i_configs_validate_config_only(name, run_cli):
    from ..conftest import ROOT

    code, _, err = run_cli("validate", str(ROOT / "configs" / name), "--config-only")  # no VAE, CLIP or data here
    assert code == 0, err
    cfg = dp.load_config(ROOT / "configs" / name)
    assert cfg.text is not None and cfg.text.name == "clip_text" and cfg.text.caption_dropout == 0.1
    if name.startswith("t2i_dit_b2"):
        assert cfg.backbone.name == "latent_dit_t2i" and cfg.backbone.params["size"] == "B/2"
        assert cfg.vae is not None and cfg.vae.path == "stabilityai/sd-vae-ft-ema"
        assert (cfg.train.steps, cfg.sample.cfg_scale, cfg.eval.num_samples) == (400000, 1.5, 30000)
        assert cfg.text.params == {"path": "openai/clip-vit-large-patch14", "max_length": 77, "batch_size": 64}


def test_t2i_suite_plans_vanilla_random_and_dtr():
    from dtr_plugins.experiments.suite import load_suite

    from ..conftest import ROOT

    suite = load_suite(ROOT / "configs" / "suites" / "dtr_t2i_coco256.yaml")
    assert [r.config.routing.name for r in suite.runs] == ["vanilla", "random", "dtr"]
    assert all(r.config.text is not None for r in suite.runs)


def test_evaluation_prompts_from_a_file_or_coco_captions(tmp_path, clip_dir):
    from dtr_plugins.conditioners.clip_text import ClipTextConditioner
    from dtr_plugins.conditioners.text_cache import TextEmbeddingCache, TextStage
    from dtr_plugins.core.errors import UserError
    from dtr_plugins.sampling.prompts import evaluation_prompts

    stage = TextStage(TextEmbeddingCache(ClipTextConditioner(str(clip_dir)), tmp_path), [["a", "b"], ["c"]])
    drawn = evaluation_prompts(stage, 50, seed=0)
    assert drawn == evaluation_prompts(stage, 50, seed=0) and set(drawn) == {"a", "b", "c"}
    assert evaluation_prompts(stage, 3, 0, str(write(tmp_path / "p.txt", "x\ny\n"))) == ("x", "y", "x")
    ann = write(tmp_path / "val.json", json.dumps({"images": [{"id": 2, "file_name": "b"}, {"id": 1, "file_name": "a"}],
                                                   "annotations": [{"image_id": 1, "id": 1, "caption": "one"},
                                                                   {"image_id": 2, "id": 2, "caption": "two"}]}))
    assert evaluation_prompts(stage, 3, 0, str(ann)) == ("one", "two", "one")
    with pytest.raises(UserError, match="text.eval_prompts: .*missing.txt"):
        evaluation_prompts(stage, 3, 0, str(tmp_path / "missing.txt"))


@pytest.fixture(scope="module")
def clip_model_dir(tmp_path_factory):
    from ..t2i_helpers import tiny_clip_model_folder

    return tiny_clip_model_folder(tmp_path_factory.mktemp("clip-model"), seed=2)


def test_clip_score_is_clipscore_of_the_model(clip_model_dir):
    from transformers import CLIPModel, CLIPProcessor

    from dtr_plugins.evaluation.text_metrics import clip_score

    images = np.random.default_rng(0).integers(0, 255, (6, 8, 8, 1), dtype=np.uint8)
    prompts = ["a cat", "a dog", "the number seven", "zero", "a red bus", "two cats on a mat"]
    model = CLIPModel.from_pretrained(str(clip_model_dir))
    processor = CLIPProcessor.from_pretrained(str(clip_model_dir))
    with torch.no_grad():
        inputs = processor(text=prompts, images=list(np.repeat(images, 3, -1)), return_tensors="pt", padding=True)
        image = model.get_image_features(pixel_values=inputs["pixel_values"])
        text = model.get_text_features(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"])
        image, text = getattr(image, "pooler_output", image), getattr(text, "pooler_output", text)
        cos = torch.nn.functional.cosine_similarity(image, text, dim=-1)
    expected = float(100 * cos.clamp(min=0).mean())
    assert expected > 0 and bool((cos < 0).any())  # both sides of the clamp are exercised
    assert clip_score(images, prompts, str(clip_model_dir), batch_size=4) == pytest.approx(expected, rel=1e-5)
    with pytest.raises(ValueError, match="6 images but 2 prompts"):
        clip_score(images, prompts[:2], str(clip_model_dir))


@pytest.mark.filterwarnings("ignore:FID from 12 samples")  # 12 samples: a rank-deficient FID, said and accepted here
def test_a_text_run_is_scored_with_prompt_class_agreement_and_clip_score(tmp_path, clip_dir, clip_model_dir):
    cfg = t2i_config(clip_dir, tmp_path, train={"steps": 2, "ckpt_every": 0},
                     eval={"at_end": True, "metrics": ["fid"], "feature_extractor": "digits-classifier",
                           "num_samples": 12, "reference": "dataset:digits?image_size=8", "heldout_every": 0})
    cfg["text"]["clip_score_model"] = str(clip_model_dir)
    cfg["sample"]["num_samples"] = 12
    run = dp.train(load(cfg, tmp_path), progress=False)
    result = json.loads((run / "eval.json").read_text())
    assert np.isfinite(result["frechet_inception_distance"]) and 0 <= result["prompt_class_agreement"] <= 1
    assert "class_accuracy" not in result and 0 <= result["clip_score"] <= 100
    assert result["clip_score_model"] == str(clip_model_dir) and result["labels"] == "prompts"
