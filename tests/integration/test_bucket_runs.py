"""train.timestep_buckets end to end: a bucketed run gives the masked run's weights (fp32) and meta.json records
the setting, the K applied and the mean union width; a learned strategy says in one line that it falls back."""
import json

import torch

import dtr_plugins as dp

from .test_train import tiny_config

HEADS_MLP = ["routing={name: dtr, alpha: 2.0, beta: 0.5, site: heads_mlp}", "train.steps=2", "train.ckpt_every=2",
             "train.log_every=1"]


def test_bucketed_run_has_the_masked_weights_and_records_what_it_did(tmp_path, capsys):
    masked = dp.train(tiny_config(tmp_path / "masked", *HEADS_MLP), progress=False)
    bucketed = dp.train(tiny_config(tmp_path / "buckets", *HEADS_MLP, "train.timestep_buckets=auto"), progress=False)
    a = torch.load(masked / "checkpoints" / "0000002.pt", weights_only=True)["model"]
    b = torch.load(bucketed / "checkpoints" / "0000002.pt", weights_only=True)["model"]
    scale = max(x.abs().max().item() for x in a.values() if x.is_floating_point())
    assert max((a[k] - b[k]).abs().max().item() for k in a if a[k].is_floating_point()) <= 1e-5 * scale
    applied = json.loads((bucketed / "meta.json").read_text())["compute"]["timestep_buckets"]
    assert applied["setting"] == "auto" and applied["applied"] is True and applied["forwards"] == 2
    assert sum(applied["k_counts"].values()) == 2 and 0 < applied["mean_union_width"] < 1
    assert json.loads((masked / "meta.json").read_text())["compute"]["timestep_buckets"] == {
        "setting": 0, "applied": False, "why": "not requested"}
    assert "not applied" not in capsys.readouterr().out


def test_learned_strategy_run_falls_back_and_says_so(tmp_path, capsys):
    cfg = tiny_config(tmp_path, "routing={name: switch, num_experts: 3, top_k: 2, freq_dim: 16}", "train.steps=1",
                      "train.timestep_buckets=3")
    run = dp.train(cfg, progress=False)
    lines = [line for line in capsys.readouterr().out.splitlines() if "timestep_buckets" in line]
    assert len(lines) == 1 and "learned strategy" in lines[0] and "the masked path runs" in lines[0]
    applied = json.loads((run / "meta.json").read_text())["compute"]["timestep_buckets"]
    assert applied["applied"] is False and "learned strategy" in applied["why"]
