"""The ``regularizer`` kind and its built-in ``repa`` (REPA, Yu et al., ICLR 2025; docs/regularizers.md).

The official repository (sihyun-y/REPA) could not be fetched here, so the loss is checked against an independent
direct computation (``torch.nn.functional.cosine_similarity``), not against a fixture of the official code.
Encoders are tiny and local: a random ``Dinov2Config`` model saved to a temporary folder and a random digits
classifier's weights file; nothing is downloaded."""
from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

import dtr_plugins as dp
from dtr_plugins.core.contracts import Regularizer, TokenLayout, missing_members
from dtr_plugins.core.errors import ConfigError
from dtr_plugins.core.plugins import default_registry
from dtr_plugins.extractors.builtin import DigitsNet
from dtr_plugins.regularizers.encoders import make_encoder, to_tokens
from dtr_plugins.regularizers.repa import Repa, build_projector, repa_loss

from ..conftest import tiny_dit_config


@pytest.fixture
def digits_weights(tmp_path):
    torch.manual_seed(1)
    path = tmp_path / "digits.pt"
    torch.save(DigitsNet().state_dict(), path)
    return str(path)


@pytest.fixture
def dinov2_dir(tmp_path):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(2)
    config = Dinov2Config(hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                          patch_size=2, image_size=8)
    folder = tmp_path / "dinov2"
    Dinov2Model(config).save_pretrained(folder)
    return folder


def repa_config(tmp_path, weights, *, steps=4, **changes):
    section = {"name": "repa", "block": 1, "weight": 0.5, "encoder": "digits-classifier", "encoder_path": weights,
               "projector_dim": 24}
    changes.setdefault("train", {})
    changes["train"] = {"steps": steps, "log_every": 2, "ckpt_every": 2, **changes["train"]}
    return tiny_dit_config(tmp_path, regularizer=section, **changes)


def test_loss_is_the_mean_negative_cosine_over_batch_and_tokens():
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(3, 5, 7, generator=gen) * torch.rand(3, 5, 1, generator=gen) * 4  # norms far from one
    z_tilde = torch.randn(3, 5, 7, generator=gen) * 3 + 0.5
    direct = -F.cosine_similarity(z, z_tilde, dim=-1).mean()
    per_sample = torch.stack([-F.cosine_similarity(z[b], z_tilde[b], dim=-1).mean() for b in range(3)]).mean()
    assert torch.allclose(repa_loss(z, z_tilde), direct, atol=1e-6)
    assert torch.allclose(repa_loss(z, z_tilde), per_sample, atol=1e-6)  # tokens, then batch: the same mean
    assert torch.allclose(repa_loss(z, z), torch.tensor(-1.0), atol=1e-6)
    assert torch.allclose(repa_loss(z, -z), torch.tensor(1.0), atol=1e-6)


def test_projector_is_linear_silu_linear_silu_linear_with_zero_biases():
    torch.manual_seed(0)
    net = build_projector(32, 48, 16)
    kinds = [type(m).__name__ for m in net]
    assert kinds == ["Linear", "SiLU", "Linear", "SiLU", "Linear"]
    assert [tuple(m.weight.shape) for m in net if isinstance(m, torch.nn.Linear)] == [(48, 32), (48, 48), (16, 48)]
    assert all(float(m.bias.detach().abs().sum()) == 0 for m in net if isinstance(m, torch.nn.Linear))
    assert net(torch.randn(2, 9, 32)).shape == (2, 9, 16)


def test_repa_is_registered_like_a_third_party_plugin_and_satisfies_the_contract(digits_weights):
    info = default_registry().get("regularizer", "repa")
    assert info.distribution == "dtr-plugins" and info.plugin == "dtr_plugins.regularizers.repa"
    built = info.build(encoder="digits-classifier", encoder_path=digits_weights)
    assert missing_members(built, Regularizer) == [] and isinstance(built, Regularizer)
    assert (built.block, built.weight, built.projector_dim) == (4, 0.5, 2048)  # the paper's lambda and width


def test_dinov2_targets_are_the_patch_tokens_of_the_image_resized_to_the_token_grid(dinov2_dir):
    from transformers import Dinov2Model

    encoder = make_encoder("dinov2", str(dinov2_dir))
    assert (encoder.dim, encoder.patch, encoder.match) == (16, 2, "resize")
    images = torch.rand(2, 1, 12, 12) * 2 - 1
    got = encoder.features(images, (3, 3))  # 3x3 tokens: the image goes in at 6x6 (3 patches of 2)
    assert got.shape == (2, 9, 16)
    net = Dinov2Model.from_pretrained(dinov2_dir).eval()
    x = ((images + 1) / 2).expand(-1, 3, -1, -1)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    x = F.interpolate((x - mean) / std, size=(6, 6), mode="bicubic", align_corners=False)
    with torch.no_grad():
        expected = net(pixel_values=x).last_hidden_state[:, 1:]
    assert torch.allclose(got, expected, atol=1e-5)
    frozen = encoder._load(torch.device("cpu"))
    assert not frozen.training and not any(p.requires_grad for p in frozen.parameters())


def test_classifier_targets_are_its_conv_map_interpolated_to_the_token_grid(digits_weights):
    encoder = make_encoder("digits-classifier", digits_weights)
    images = torch.rand(3, 1, 8, 8) * 2 - 1
    net = DigitsNet()
    net.load_state_dict(torch.load(digits_weights, weights_only=True))
    maps = F.relu(net.conv2(F.relu(net.conv1(net.preprocess((images + 1) * 127.5)))))  # [3, 32, 4, 4]
    assert torch.allclose(encoder.features(images, (4, 4)), maps.flatten(2).transpose(1, 2), atol=1e-6)
    pooled = F.avg_pool2d(maps, 2).flatten(2).transpose(1, 2)
    assert torch.allclose(encoder.features(images, (2, 2)), pooled, atol=1e-6)
    assert to_tokens(maps, (8, 8)).shape == (3, 64, 32)


def test_bind_refuses_a_block_out_of_range(digits_weights):
    repa = Repa(block=3, encoder="digits-classifier", encoder_path=digits_weights, projector_dim=8)
    with pytest.raises(ConfigError, match=r"regularizer.block: 3 is out of range .* 2 blocks \(allowed: 1 to 2"):
        repa.bind(TokenLayout(blocks=2, width=32, grid=(4, 4)))


def _records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize(("process", "routing"), [
    ("gaussian", {"name": "dtr", "alpha": 4.0, "beta": 0.8}),
    ("flow_matching", {"name": "dtr", "alpha": 4.0, "beta": 0.8}),
    ("gaussian", {"name": "switch", "num_experts": 4}),
    ("flow_matching", {"name": "switch", "num_experts": 4}),
])
def test_trains_under_each_process_and_routing_and_logs_the_aux_loss(tmp_path, digits_weights, process, routing):
    diffusion = {"name": "flow_matching"} if process == "flow_matching" else {"steps": 100}
    sample = None if process == "flow_matching" else {"sampler": "ddim", "respacing": "ddim5"}
    cfg = dp.load_config(repa_config(tmp_path, digits_weights, diffusion=diffusion, routing=routing, sample=sample))
    run = dp.train(cfg, run_dir=tmp_path / "run", progress=False)
    logged = [r for r in _records(run) if "loss" in r]
    assert len(logged) == 2 and all(r["aux/repa"] == r["aux/repa"] for r in logged)
    assert all(-0.5 <= r["aux/repa"] <= 0.5 for r in logged)  # weight 0.5 times a cosine in [-1, 1]
    meta = json.loads((run / "meta.json").read_text())["regularizer"]
    assert meta["applied"] is True and meta["block"] == 1 and meta["encoder"]["name"] == "digits-classifier"
    assert meta["token_grid"] == [4, 4] and meta["ema"] == "excluded"
    ckpt = torch.load(run / "checkpoints" / "0000004.pt", weights_only=True)
    assert sorted(ckpt["regularizer"]) == ["0.bias", "0.weight", "2.bias", "2.weight", "4.bias", "4.weight"]
    assert ckpt["regularizer"]["4.weight"].shape == (32, 24)  # the digits map's 32 channels, projector width 24
    for key in ("model", "ema"):  # the encoder and the projector stay out of the model's weights and the EMA
        assert not any(k.startswith(("0.", "2.", "4.", "conv", "fc")) or "projector" in k for k in ckpt[key])
    if routing["name"] == "switch":
        assert any(k.startswith("aux/") and k != "aux/repa" for k in logged[0])


def test_resume_is_bit_exact_with_the_projector(tmp_path, digits_weights):
    cfg = repa_config(tmp_path, digits_weights)
    straight = dp.train(dp.load_config(cfg), run_dir=tmp_path / "a", progress=False)
    dp.train(dp.load_config(cfg, overrides=["train.steps=2"]), run_dir=tmp_path / "b", progress=False)
    resumed = dp.train(dp.load_config(cfg), run_dir=tmp_path / "b", resume=True, progress=False)
    a = torch.load(straight / "checkpoints" / "0000004.pt", weights_only=True)
    b = torch.load(resumed / "checkpoints" / "0000004.pt", weights_only=True)
    for key in ("model", "ema", "regularizer"):
        assert a[key].keys() == b[key].keys() and all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key
    start = torch.load(resumed / "checkpoints" / "0000002.pt", weights_only=True)["regularizer"]
    assert not torch.equal(start["0.weight"], a["regularizer"]["0.weight"])  # the projector trains
    assert [r["aux/repa"] for r in _records(straight) if "loss" in r] == \
        [r["aux/repa"] for r in _records(resumed) if "loss" in r]


def test_export_is_the_plain_backbone(tmp_path, digits_weights, run_cli):
    run = dp.train(dp.load_config(repa_config(tmp_path, digits_weights, steps=2)), run_dir=tmp_path / "a",
                   progress=False)
    a = torch.load(run / "checkpoints" / "0000002.pt", weights_only=True)
    code, _, err = run_cli("export", str(run), "--out", str(tmp_path / "exported"))
    assert code == 0, err
    from safetensors.torch import load_file

    exported = load_file(tmp_path / "exported" / "model.safetensors")
    assert exported.keys() == a["ema"].keys()  # the plain backbone: no projector, no encoder
    model, loaded_cfg, _ = dp.from_pretrained(tmp_path / "exported")  # loads without building the regulariser
    assert type(model).__name__ == "DiT" and loaded_cfg.regularizer is not None  # config.json: the run's record
    assert all(torch.equal(v, a["ema"][k]) for k, v in model.state_dict().items())


def test_micro_batches_score_their_own_slice_of_the_targets(tmp_path, digits_weights):
    runs = {}
    for k in (1, 2):
        cfg = dp.load_config(repa_config(tmp_path, digits_weights, steps=1, train={"grad_accum_steps": k},
                                         routing={"name": "vanilla"}))
        runs[k] = dp.train(cfg, run_dir=tmp_path / f"k{k}", progress=False)
    one, two = (torch.load(runs[k] / "checkpoints" / "0000001.pt", weights_only=True) for k in (1, 2))
    for key in ("model", "regularizer"):  # the same step in two micro-batches: the same update
        assert all(torch.allclose(one[key][n], two[key][n], atol=1e-6) for n in one[key]), key
    logged = [[r["aux/repa"] for r in _records(runs[k]) if "loss" in r] for k in (1, 2)]
    assert len(logged[0]) == 1 and abs(logged[0][0] - logged[1][0]) < 1e-6


@pytest.mark.parametrize(("section", "needle"), [
    ({"block": 3}, "regularizer.block: 3 is out of range for a backbone of 2 blocks (allowed: 1 to 2"),
    ({"encoder": "clip"}, "regularizer.encoder: "),
    ({"encoder": "dinov2", "encoder_path": "/nonexistent/dinov2"},
     "regularizer.encoder_path: folder '/nonexistent/dinov2' does not exist"),
    ({"encoder_path": "/nonexistent/digits.pt"}, "regularizer.encoder_path: weights file '/nonexistent/digits.pt'"),
    ({"encoder": "dinov2", "encoder_path": "WRONG_TYPE"}, "is model_type 'vit', not 'dinov2'"),
    ({"blocks": 2}, "regularizer.blocks: unknown key"),
])
def test_bad_settings_are_one_line_naming_file_and_key_in_validate(tmp_path, digits_weights, run_cli, section,
                                                                    needle):
    if section.get("encoder_path") == "WRONG_TYPE":  # features whose tokens would not fit the patch grid
        folder = tmp_path / "vit"
        folder.mkdir()
        (folder / "config.json").write_text(json.dumps({"model_type": "vit", "hidden_size": 8, "patch_size": 2}))
        section = {**section, "encoder_path": str(folder)}
    path = repa_config(tmp_path, digits_weights)
    import yaml

    data = yaml.safe_load(path.read_text())
    data["regularizer"].update(section)
    path.write_text(yaml.safe_dump(data))
    code, _, err = run_cli("validate", str(path))
    assert code == 2 and needle in err and str(path) in err and len(err.strip().splitlines()) == 1, err
    assert "Traceback" not in err


def test_a_backbone_without_block_tokens_is_refused(tmp_path, digits_weights, run_cli):
    path = repa_config(tmp_path, digits_weights, routing={"name": "vanilla"}, backbone={
        "name": "adm_unet", "image_size": 8, "in_channels": 1, "model_channels": 32, "num_res_blocks": 1,
        "attention_resolutions": [], "channel_mult": [1, 2], "num_classes": 4})
    code, _, err = run_cli("validate", str(path))
    assert code == 2 and "regularizer.name: repa reads a block's hidden tokens; backbone 'adm_unet'" in err, err


def test_the_tap_gives_block_tokens_in_the_batch_order_also_with_timestep_buckets(tmp_path):
    from dtr_plugins.compose import compose
    from dtr_plugins.core.buckets import apply_train_buckets

    torch.manual_seed(0)
    cfg = dp.load_config(tiny_dit_config(tmp_path, routing={"name": "dtr", "alpha": 4.0, "beta": 0.8,
                                                            "site": "heads_mlp"}))
    model = compose(cfg, data=False).model.train()
    x, t, y = torch.randn(6, 1, 8, 8), torch.tensor([90, 3, 50, 7, 99, 0]), torch.zeros(6, dtype=torch.long)
    got: list[torch.Tensor] = []
    model.tap_block(2, got.append)
    torch.manual_seed(1)
    model(x, t, y)
    assert apply_train_buckets(model, 2, verbose=False)["applied"]
    torch.manual_seed(1)
    model(x, t, y)
    model.tap_block(2, None)
    model(x, t, y)
    assert len(got) == 2 and got[0].shape == (6, 16, 32)  # 2 forwards tapped; none after the tap is removed
    assert torch.allclose(got[0], got[1], atol=1e-5)  # buckets run the batch sorted; the tap restores its order


def test_a_hub_id_outside_the_cache_is_one_line_when_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty_cache"))
    with pytest.raises(ConfigError, match="regularizer.encoder_path: cannot load the hub model 'facebook/dinov2-base': "
                                          "it is not in the local Hugging Face cache and HF_HUB_OFFLINE is set"):
        Repa(encoder="dinov2")  # the default hub id; nothing is downloaded


def test_with_token_routing_a_block_inside_the_span_is_refused_and_the_span_end_trains(tmp_path, digits_weights,
                                                                                       run_cli):
    tread = {"name": "tread", "ratio": 0.5, "start": 0, "end": 1}
    path = repa_config(tmp_path, digits_weights, token_routing=tread)  # repa block 1: the output of block 0
    code, _, err = run_cli("validate", str(path))
    assert code == 2 and "regularizer.block: block 1's output holds only the tokens the token router keeps" in err
    import yaml

    data = yaml.safe_load(path.read_text())
    data["regularizer"]["block"] = 2  # after the span's last block every token is back in place
    path.write_text(yaml.safe_dump(data))
    run = dp.train(dp.load_config(path), run_dir=tmp_path / "run", progress=False)
    assert all(abs(r["aux/repa"]) <= 0.5 for r in _records(run) if "loss" in r)
