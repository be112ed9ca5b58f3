"""The ``switch`` strategy end to end: ``dtr train`` (aux loss in metrics.jsonl, exact resume), official DiT
weights into a switch model, ``dtr masks`` on a trained run, bad params through the CLI."""
import json

import pytest
import torch

import dtr_plugins as dp
from dtr_plugins.compose import build_components
from dtr_plugins.core.checkpoint import RouterInitWarning, load_checkpoint

from ..conftest import tiny_dit_config, write

#: the shared tiny DiT run (tests/conftest.py) with Switch-DiT routing
TINY = {"name": "tiny-switch",
        "routing": {"name": "switch", "num_experts": 3, "top_k": 2, "jsd_weight": 1.0, "refresh_every": 2}}
AUX_KEY = "aux/switch_jsd"
ROUTER = "routing.learned."


def config_file(tmp_path):
    return tiny_dit_config(tmp_path, "tiny.yaml", **TINY)


def tiny_config(tmp_path, *overrides):
    return dp.load_config(config_file(tmp_path), overrides=[f"output_dir={tmp_path / 'runs'}", *overrides])


def checkpoint(run_dir, step):
    return torch.load(run_dir / "checkpoints" / f"{step:07d}.pt", weights_only=True)


def initial_state(cfg):
    """The weights ``dtr train`` starts from (it seeds with ``cfg.seed``, then composes the run)."""
    torch.manual_seed(cfg.seed)
    return build_components(cfg).model.state_dict()


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_switch_trains_logs_its_prior_and_resumes_bit_identically(tmp_path, run_cli):
    code, out, err = run_cli("train", str(config_file(tmp_path)), "--set", f"output_dir={tmp_path / 'a'}")
    assert code == 0, err
    (straight,) = (tmp_path / "a").iterdir()
    train = [r for r in records(straight) if "loss" in r]
    assert [r["step"] for r in train] == [2, 4, 6]
    assert all(r[AUX_KEY] > 0 for r in train)  # the JSD of the prior, weighted by 1
    final = checkpoint(straight, 6)
    router = {k: v for k, v in final["model"].items() if k.startswith(ROUTER)}
    assert f"{ROUTER}matching" in router and int(router[f"{ROUTER}forwards"]) == 6
    assert any(k.startswith(ROUTER) for k in final["ema"])
    start = initial_state(tiny_config(tmp_path))
    moved = [k for k, v in router.items() if v.is_floating_point() and not torch.equal(v, start[k])]
    assert any("expert_weight" in k for k in moved) and any("router" in k for k in moved)

    code, _, err = run_cli("train", str(config_file(tmp_path)), "--set", f"output_dir={tmp_path / 'b'}",
                           "--set", "train.steps=3")
    assert code == 0, err
    (half,) = (tmp_path / "b").iterdir()
    code, _, err = run_cli("train", str(config_file(tmp_path)), "--set", f"output_dir={tmp_path / 'b'}",
                           "--resume", "--run-dir", str(half))
    assert code == 0, err
    resumed = checkpoint(half, 6)
    for key in ("model", "ema"):
        assert final[key].keys() == resumed[key].keys()
        for name, value in final[key].items():
            assert torch.equal(value, resumed[key][name]), (key, name)
    # log windows that do not straddle the resume (steps 1-2 and 5-6) record the same prior loss
    again = {r["step"]: r[AUX_KEY] for r in records(half) if "loss" in r}
    assert again[2] == train[0][AUX_KEY] and again[6] == train[2][AUX_KEY]


@pytest.mark.parametrize("weight, moves", [(0.0, False), (1.0, True)])
def test_router_moves_in_the_first_step_only_through_the_prior(tmp_path, weight, moves):
    # experts start at zero, so the denoising loss gives the router no gradient in step 1: only the prior can
    run_dir = dp.train(tiny_config(tmp_path, "train.steps=1", "train.ckpt_every=1", "train.log_every=1",
                                   f"routing.jsd_weight={weight}"), progress=False)
    start = initial_state(tiny_config(tmp_path))
    after = checkpoint(run_dir, 1)["model"]
    router = [k for k in after if k.startswith(ROUTER) and ("router" in k or "embed" in k)]
    assert router
    assert any(not torch.equal(after[k], start[k]) for k in router) is moves
    (rec,) = [r for r in records(run_dir) if "loss" in r]
    assert (rec[AUX_KEY] == 0.0) is (not moves)


def test_official_dit_weights_load_into_a_switch_model_with_the_router_at_init(tmp_path):
    plain_cfg = tiny_config(tmp_path, "routing={name: vanilla}")
    official = {k: v for k, v in dp.build_model(plain_cfg).state_dict().items() if not k.startswith("routing.")}
    path = tmp_path / "official.pt"
    torch.save(official, path)  # a bare state dict in the official DiT layout
    model = dp.build_model(tiny_config(tmp_path))
    init = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.warns(RouterInitWarning, match="routing.learned"):
        meta = load_checkpoint(model, path)
    assert sorted(meta["initialised_keys"]) == sorted(k for k in init if k.startswith(ROUTER))
    assert f"{ROUTER}layers.1.expert_weight" in meta["initialised_keys"]
    state = model.state_dict()
    for k, v in official.items():
        assert torch.equal(state[k], v), k
    for k, v in state.items():
        if k.startswith(ROUTER):
            assert torch.equal(v, init[k]), k
    # at its initialisation the switch model computes the official model exactly (g == 1)
    plain = dp.build_model(plain_cfg)
    plain.load_state_dict(official, strict=False)
    x, t, y = torch.randn(2, 1, 8, 8), torch.tensor([3, 90]), torch.tensor([0, 2])
    with torch.no_grad():
        assert torch.equal(model.eval()(x, t, y), plain.eval()(x, t, y))


def test_dtr_masks_draws_the_learned_gates_of_a_switch_run(tmp_path, run_cli):
    run_dir = dp.train(tiny_config(tmp_path, "train.steps=2", "train.ckpt_every=2"), progress=False)
    out = tmp_path / "gates.png"
    code, stdout, err = run_cli("masks", str(run_dir), "--out", str(out))
    assert code == 0, err
    assert out.exists() and out.stat().st_size > 1000 and "learned gates of 2 routed layers" in stdout
    ckpt = tmp_path / "copy.pt"
    ckpt.write_bytes((run_dir / "checkpoints" / "0000002.pt").read_bytes())
    code, stdout, err = run_cli("masks", str(ckpt), "--out", str(tmp_path / "g2.png"), "--no-ema")
    assert code == 0, err and "model weights" in stdout
    code, _, err = run_cli("masks", str(run_dir), "--set", "seed=1")
    assert code == 2 and len(err.strip().splitlines()) == 1 and "--set" in err


@pytest.mark.parametrize("override, key", [("routing.top_k=4", "top_k"), ("routing.num_experts=0", "num_experts"),
                                           ("routing.refresh_every=0", "refresh_every"),
                                           ("routing.jsd_weight=-1", "jsd_weight")])
def test_bad_switch_params_are_one_line_exit_2(tmp_path, run_cli, override, key):
    code, out, err = run_cli("validate", str(config_file(tmp_path)), "--set", override)
    assert code == 2 and out == ""
    assert len(err.strip().splitlines()) == 1 and key in err and "Traceback" not in err


def test_suite_report_draws_the_switch_gates_next_to_the_static_masks(tmp_path):
    from dtr_plugins.experiments.suite import run_suite

    tiny_dit_config(tmp_path, "base.yaml", **TINY)
    path = write(tmp_path / "suite.yaml", f"""\
output_dir: {tmp_path / 'runs'}
base: base.yaml
name: families
set: {{train.steps: 2, train.ckpt_every: 2}}
matrix:
  routing: [{{name: dtr, alpha: 4.0, beta: 0.8}}, {{name: switch}}]
""")
    root = run_suite(path)
    report = (root / "report.md").read_text()
    assert (root / "plots" / "masks_dtr_1.png").exists() and "masks_dtr_1.png" in report
    gates = root / "plots" / "gates_switch_2.png"
    assert gates.exists() and "gates_switch_2.png" in report
