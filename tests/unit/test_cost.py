"""Cost at equal compute: FLOPs counted by torch, parameters and active parameters, and where runs record them."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from dtr_plugins.backbones.dit import DiT
from dtr_plugins.core.config import load_config
from dtr_plugins.core.cost import counting_flops
from dtr_plugins.core.routing import RoutingPlan
from dtr_plugins.runs.rundir import RunDir
from dtr_plugins.strategies.dtr import SlidingWindow

from ..conftest import tiny_dit_config

TINY = dict(input_size=8, patch_size=2, in_channels=4, hidden_size=64, depth=2, num_heads=4, num_classes=10)
T = 1000


def dit(strategy=None, site: str = "heads_mlp") -> DiT:
    model = DiT(**TINY)
    if strategy is not None:
        model.attach_routing(RoutingPlan(strategy, model.routed_channels(site), T, site=site))
    return model.eval()


def forward_flops(model: nn.Module, t: int = 500, n: int = 2) -> int:
    x, y = torch.randn(n, 4, 8, 8), torch.arange(n)
    with torch.no_grad(), counting_flops() as flops:
        model(x, torch.full((n,), t), y)
    return flops.total


def hand_count(model: DiT, n: int) -> int:
    """2 FLOPs per multiply-add of every Linear (rows of its input) and the patch convolution, plus attention's
    two batched products (q k^T and p v: 2 * 2 * N * heads * tokens^2 * head_dim), of one dense forward."""
    total = 0

    def linear(module, args, out):
        nonlocal total
        total += 2 * args[0].numel() // module.in_features * module.in_features * module.out_features

    def conv(module, args, out):
        nonlocal total
        total += 2 * out.numel() * module.in_channels * module.kernel_size[0] * module.kernel_size[1]

    hooks = [m.register_forward_hook(linear) for m in model.modules() if isinstance(m, nn.Linear)]
    hooks += [m.register_forward_hook(conv) for m in model.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        model(torch.randn(n, 4, 8, 8), torch.full((n,), 500), torch.arange(n))
    for h in hooks:
        h.remove()
    tokens, heads, head_dim = (8 // 2) ** 2, 4, 64 // 4
    return total + TINY["depth"] * 2 * 2 * n * heads * tokens ** 2 * head_dim


def test_one_linear_layer_counts_two_flops_per_multiply_add():
    layer = nn.Linear(32, 48)
    with counting_flops() as flops:
        layer(torch.randn(5, 7, 32))
    assert flops.total == 2 * 32 * 48 * 5 * 7


def test_a_dense_dit_forward_is_its_linears_convolution_and_attention():
    model = dit()
    assert forward_flops(model, n=2) == hand_count(model, 2)


def test_attention_backward_is_counted_on_the_cpu_too():
    q = torch.randn(2, 4, 16, 8, requires_grad=True)
    with counting_flops() as flops:
        torch.nn.functional.scaled_dot_product_attention(q, q, q).sum().backward()
    product = 2 * 2 * 4 * 16 * 16 * 8  # one [16 x 8] x [8 x 16] product per head and image, 2 FLOPs each
    assert flops.total == (2 + 5) * product  # forward: q k^T, p v; backward (torch's formula): the scores again, 4 more


def test_dtr_sliced_sampling_counts_fewer_flops_at_beta_half_and_the_same_at_beta_one():
    vanilla = forward_flops(dit())
    half = forward_flops(dit(SlidingWindow(alpha=4.0, beta=0.5)))
    one = forward_flops(dit(SlidingWindow(alpha=4.0, beta=1.0)))
    assert half < 0.8 * vanilla and one == vanilla
    train_mode = dit(SlidingWindow(alpha=4.0, beta=0.5)).train()  # masked dense: the full matmuls run
    x, y = torch.randn(2, 4, 8, 8), torch.arange(2)
    with torch.no_grad(), counting_flops() as flops:
        train_mode(x, torch.tensor([10, 900]), y)
    assert flops.total >= vanilla


def sample_record(tmp_path, routing: dict, cfg_scale: float = 1.0) -> dict:
    from dtr_plugins.compose import build_diffusion, build_model
    from dtr_plugins.sampling.sample import generate

    cfg = load_config(tiny_dit_config(tmp_path, routing=routing), [])
    torch.manual_seed(0)
    model, diffusion = build_model(cfg), build_diffusion(cfg)
    record: dict = {}
    generate(model, diffusion, cfg, num=3, seed=1, cfg_scale=cfg_scale, progress=False, record=record)
    return record


def test_the_sampling_record_has_its_flops_per_image_and_time(tmp_path):
    vanilla = sample_record(tmp_path, {"name": "vanilla"})
    steps = 5  # ddim5: one forward per step
    assert vanilla["sample_flops_per_image"] == pytest.approx(steps * forward_flops_of_run(tmp_path))
    assert vanilla["sampling_seconds"] > 0 and vanilla["seconds_per_image"] == pytest.approx(
        vanilla["sampling_seconds"] / 3)
    guided = sample_record(tmp_path, {"name": "vanilla"}, cfg_scale=2.0)
    assert guided["sample_flops_per_image"] == pytest.approx(2 * vanilla["sample_flops_per_image"])
    sliced = sample_record(tmp_path, {"name": "dtr", "site": "heads_mlp", "alpha": 4.0, "beta": 0.5})
    assert sliced["sample_flops_per_image"] < vanilla["sample_flops_per_image"]


def forward_flops_of_run(tmp_path) -> int:
    from dtr_plugins.compose import build_model

    model = build_model(load_config(tiny_dit_config(tmp_path, routing={"name": "vanilla"}), [])).eval()
    with torch.no_grad(), counting_flops() as flops:
        model(torch.randn(1, 1, 8, 8), torch.tensor([50]), torch.tensor([1]))
    return flops.total


def test_training_records_parameters_and_flops_per_image_at_the_start(tmp_path):
    from dtr_plugins.training.train import train

    cfg = load_config(tiny_dit_config(tmp_path, routing={"name": "vanilla"}, train={"steps": 2, "ckpt_every": 2}), [])
    run = train(cfg, run_dir=tmp_path / "run", progress=False)
    cost = RunDir(run).read_meta()["cost"]
    forward = forward_flops_of_run(tmp_path)  # per image
    assert 2.5 * forward < cost["train_flops_per_image"] < 3.5 * forward  # backward: about twice the forward
    assert "FlopCounterMode" in cost["flops_counted"]
    from dtr_plugins.experiments.compare_records import run_record

    recorded = run_record(RunDir(run), "run").cost  # what the report reads: meta.json parameters and cost
    assert recorded["parameters"] == recorded["active_parameters"] == RunDir(run).read_meta()["parameters"]["total"] > 0
    assert recorded["train_flops_per_image"] == cost["train_flops_per_image"]
    assert json.loads((run / "meta.json").read_text())["cost"] == cost



def test_tread_token_routing_counts_fewer_training_flops(tmp_path):
    from dtr_plugins.training.train import train

    flops = {}
    for name, tokens in (("dense", None), ("tread", {"name": "tread", "ratio": 0.5, "start": 1, "end": 2})):
        changes = {"routing": {"name": "vanilla"}, "backbone": {"depth": 4}, "train": {"steps": 1, "ckpt_every": 1},
                   **({"token_routing": tokens} if tokens else {})}
        cfg = load_config(tiny_dit_config(tmp_path / name, **changes), [])
        run = train(cfg, run_dir=tmp_path / name / "run", progress=False)
        flops[name] = RunDir(run).read_meta()["cost"]["train_flops_per_image"]
    assert flops["tread"] < 0.85 * flops["dense"]  # half the tokens skip two of four blocks

# ------------------------------------------------------------------------------------------------- the report
SAMPLE_GFLOPS = {"vanilla": 10.0, "dtr": 6.0, "random": 8.0}
STEPS_PER_S = {"vanilla": 4.0, "dtr": 5.0, "random": 2.0}


def costed_suite(root, seeds=range(3)):
    """The crafted suite of test_compare with what training and sampling record about cost."""
    from .test_compare import crafted_suite

    crafted_suite(root, seeds=seeds, extra=False)
    for run in sorted(p for p in root.iterdir() if p.is_dir()):
        name = run.name.split("-")[0].split("__")[0]
        counts = {"total": 1000, "active": 200 if name == "random" else 1000}  # as if random held 5 time experts
        (run / "meta.json").write_text(json.dumps({"parameters": counts, "cost": {"train_flops_per_image": 3e9}}))
        rate = STEPS_PER_S[name]
        lines = [{"step": s, "loss": 0.5, "steps_per_s": r} for s, r in ((100, 0.1), (200, rate), (300, rate))]
        lines.append({"step": 400, "eval": {"sample_flops_per_image": SAMPLE_GFLOPS[name] * 1e9,
                                            "seconds_per_image": 0.5 / rate}})
        with (run / "metrics.jsonl").open("a") as f:
            f.write("".join(json.dumps(x) + "\n" for x in lines))
    return root


def test_run_records_carry_their_cost(tmp_path):
    from dtr_plugins.experiments.compare_records import runs_from_suite

    runs = {r.id: r for r in runs_from_suite(costed_suite(tmp_path / "s"))}
    dtr = runs["dtr-a4-b0.8__min_snr__seed1"].cost
    assert dtr == {"parameters": 1000, "active_parameters": 1000, "train_flops_per_image": 3e9,
                   "sample_flops_per_image": 6e9, "seconds_per_sample": 0.1,
                   "seconds_per_step": pytest.approx(0.2)}  # the first window (0.1 steps/s) left out


def test_cost_table_and_plot_rebuild_from_raw_results(tmp_path):
    from dtr_plugins.experiments.compare import compare_runs
    from dtr_plugins.experiments.compare_records import runs_from_suite
    from dtr_plugins.experiments.cost_report import cost_table, quality_points
    from dtr_plugins.experiments.raw_results import export_raw_results, read_raw_results, records_from_raw

    root = costed_suite(tmp_path / "s")
    runs = runs_from_suite(root)
    comparison = compare_runs(runs)
    table = cost_table(runs, comparison)
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in table.splitlines() if line.startswith("| `")}
    assert len(rows) == 6  # one per group, not per seed
    dtr, vanilla, rnd = rows["`dtr-a4-b0.8__constant`"], rows["`vanilla__constant`"], rows["`random-b0.8-s0__min_snr`"]
    assert dtr[1:6] == ["3", "1000", "1000", "3", "6"] and rnd[3] == "200"
    assert dtr[6] == "0.2 (0.8x)" and vanilla[6] == "0.25 (1x)" and rnd[6] == "0.5 (2x)"
    assert dtr[7] == "0.1 (0.8x)"
    expected = next(d for d in comparison.differences if d.strategy == "dtr-a4-b0.8" and d.family == "primary"
                    and dict(d.setting) == {"loss_weighting": "constant"})
    assert dtr[8].startswith(expected.verdict) and vanilla[8].startswith("baseline")
    lines = read_raw_results(export_raw_results(root))
    assert all(x["cost"]["sample_flops_per_image"] for x in lines) and lines[0]["group"] == "vanilla__constant"
    rebuilt = records_from_raw(lines)
    assert cost_table(rebuilt, compare_runs(rebuilt)) == table  # committed runs.jsonl files rebuild the table
    points = quality_points(rebuilt, "heldout/total")
    assert [p[2] for p in points["dtr-a4-b0.8__constant"]] == [0, 1, 2]  # one point per seed
    assert {p[0] for p in points["dtr-a4-b0.8__constant"]} == {6e9}


def test_wall_clock_is_the_median_over_the_groups_runs_so_one_slowed_run_does_not_set_it(tmp_path):
    from dtr_plugins.experiments.compare_records import runs_from_suite
    from dtr_plugins.experiments.cost_report import cost_table

    root = costed_suite(tmp_path / "s")
    slowed = root / "vanilla__constant__seed0" / "metrics.jsonl"  # the lowest seed ran beside other jobs: 10x slower
    slowed.write_text(slowed.read_text().replace('"steps_per_s": 4.0', '"steps_per_s": 0.4'))
    assert slowed.read_text().count('"steps_per_s": 0.4') == 2
    table = cost_table(runs_from_suite(root))
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in table.splitlines() if line.startswith("| `")}
    assert rows["`vanilla__constant`"][6] == "0.25 (1x)" and rows["`dtr-a4-b0.8__constant`"][6] == "0.2 (0.8x)"
    assert "the median over the group's runs" in table


def test_no_cost_recorded_no_table(tmp_path):
    from dtr_plugins.experiments.compare_records import runs_from_suite
    from dtr_plugins.experiments.cost_report import cost_table, plot_quality_vs_flops

    from .test_compare import crafted_suite

    runs = runs_from_suite(crafted_suite(tmp_path / "s", seeds=range(2), extra=False))
    assert cost_table(runs) == ""
    assert plot_quality_vs_flops(runs, "heldout/total", tmp_path / "q.png") is None
    assert not (tmp_path / "q.png").exists()


def test_the_suite_report_has_the_cost_table_and_the_quality_against_flops_plot(tmp_path, monkeypatch):
    from dtr_plugins.experiments import report as report_module
    from dtr_plugins.experiments.compare import compare_runs
    from dtr_plugins.experiments.compare_records import runs_from_suite
    from dtr_plugins.experiments.cost_report import cost_table
    from dtr_plugins.experiments.report import build_report

    monkeypatch.setattr(report_module, "_plots", lambda *args: [])  # the other plots: tested elsewhere, slow here
    monkeypatch.setattr(report_module, "_comparison_plots", lambda *args: [])
    root = costed_suite(tmp_path / "s", seeds=range(1))
    report = build_report(root).read_text()
    runs = runs_from_suite(root)
    assert cost_table(runs, compare_runs(runs)) in report and "## Cost" in report
    assert "### Parameters" not in report  # the cost table gives total and active parameters once
    assert (root / "plots" / "quality_vs_flops.png").stat().st_size > 0
    assert "![quality_vs_flops](plots/quality_vs_flops.png)" in report
