"""Suites: matrix expansion, stable ids, failure isolation, resumability and the report."""
import csv
import json
import os

import pytest
import torch

from dtr_plugins.experiments.report import build_report, metric_table
from dtr_plugins.experiments.suite import load_suite, run_suite, value_label

from ..conftest import ROOT, write

BASE = """\
name: base
seed: 0
backbone: {name: dit, input_size: 8, patch_size: 2, hidden_size: 32, depth: 2, num_heads: 2, in_channels: 1,
  num_classes: 4}
diffusion: {steps: 100}
data: {name: synthetic, num_samples: 32, image_size: 8, num_classes: 4}
train: {steps: 2, batch_size: 8, log_every: 1}
sample: {respacing: ddim4, num_samples: 8, batch_size: 8}
eval: {at_end: false}
"""


def suite_file(tmp_path, body: str):
    write(tmp_path / "base.yaml", BASE)
    return write(tmp_path / "suite.yaml", f"output_dir: {tmp_path / 'runs'}\nbase: base.yaml\n" + body)


def test_matrix_expansion_exclude_and_stable_ids(tmp_path):
    path = suite_file(tmp_path, """\
name: grid
set: {train.steps: 3}
matrix:
  routing: [{name: vanilla}, {name: dtr, alpha: 4, beta: 0.8}, {name: random, beta: 0.5}]
  seed: [0, 1]
exclude:
  - {routing.name: random, seed: 1}
""")
    suite = load_suite(path)
    ids = [r.id for r in suite.runs]
    assert ids == ["vanilla__seed0", "vanilla__seed1", "dtr-a4-b0.8__seed0", "dtr-a4-b0.8__seed1", "random-b0.5__seed0"]
    assert [r.id for r in load_suite(path).runs] == ids  # stable
    run = suite.runs[2]
    assert run.group == "dtr-a4-b0.8" and run.config.routing.params == {"alpha": 4.0, "beta": 0.8}
    assert run.config.train.steps == 3 and run.config.seed == 0 and run.config.name == run.id
    assert suite.runs[4].config.routing.params == {"beta": 0.5, "seed": 0}


def test_value_labels():
    assert value_label("backbone", {"name": "dit", "size": "S/2"}) == "dit-S2"
    assert value_label("train.lr", 0.001) == "lr0.001"
    assert value_label("routing", {"name": "task_specific_sharing", "shared_ratio": 0.5, "groups": 4}) == \
        "task_specific_sharing-sr0.5-g4"


@pytest.mark.parametrize("body,expected", [
    ("name: s\nmatrix: {routing: [{name: nope}]}\n", "routing.name: unknown strategy 'nope'"),
    ("name: s\nmatrix: {seed: []}\n", "matrix.seed: needs at least one value"),
    ("name: s\nmatrix: {seed: [0]}\nexclude: [{lr: 1}]\n", "exclude.0: key 'lr' is not a matrix key"),
    ("name: s\nmatrx: {seed: [0]}\n", "matrx: unknown key"),
    ("name: s\nmatrix: {seed: [0, 0]}\n", "matrix.seed: the value 0 is given more than once"),
    ("name: s\nmatrix: {routing: [{name: vanilla}, {name: dtr}, {name: vanilla}]}\n",
     'matrix.routing: the value {"name": "vanilla"} is given more than once'),
    ("name: s\nmatrix: {routing: [{name: dtr, alpha: 4.0, beta: 0.8}, {name: dtr, alpha: 4, beta: 0.8}]}\n",
     "matrix: runs dtr-a4-b0.8 and dtr-a4-b0.8__1 are the same run once validated"),
    ("name: s\nmatrix: {routing.beta: [2.0]}\nset: {routing: {name: dtr}}\n",
     "routing.beta: Input should be less than or equal to 1"),
])
def test_bad_suite_files(tmp_path, run_cli, body, expected):
    path = suite_file(tmp_path, body)
    code, _, err = run_cli("suite", str(path), "--dry-run")
    assert code == 2
    lines = [ln for ln in err.splitlines() if not ln.startswith("dtr: warning")]
    assert len(lines) == 1 and expected in lines[0] and "suite.yaml" in lines[0]


def test_failing_run_is_recorded_rerun_skips_and_report(tmp_path, log_text):
    path = suite_file(tmp_path, """\
name: mini
matrix:
  routing: [{name: vanilla}, {name: dtr}]
  backbone.in_channels: [1, 3]
exclude:
  - {routing.name: dtr, backbone.in_channels: 3}
""")
    root = run_suite(path)
    out = log_text()
    states = {p.parent.name: json.loads(p.read_text())["state"] for p in root.glob("*/status.json")}
    assert states == {"vanilla__in_channels1": "done", "vanilla__in_channels3": "failed",
                      "dtr__in_channels1": "done"}
    failed = json.loads((root / "vanilla__in_channels3" / "status.json").read_text())
    assert "in_channels" in failed["error"]
    assert "1 run(s) failed: vanilla__in_channels3" in out
    report = (root / "report.md").read_text()
    assert "failed:" in report and "training loss" in report
    rows = list(csv.DictReader((root / "results.csv").read_text().splitlines()))
    assert {r["run_id"] for r in rows} == set(states)
    ckpt_times = {p: p.stat().st_mtime_ns for p in root.glob("*__in_channels1/checkpoints/*.pt")}

    run_suite(path)  # again: finished runs are skipped, the failed one is retried (and fails again)
    out = log_text()
    assert "skip     vanilla__in_channels1 (finished)" in out and "skip     dtr__in_channels1 (finished)" in out
    assert "start    vanilla__in_channels3" in out
    assert {p: p.stat().st_mtime_ns for p in root.glob("*__in_channels1/checkpoints/*.pt")} == ckpt_times


def test_interrupted_run_resumes(tmp_path, capsys):
    path = suite_file(tmp_path, "name: resumable\nset: {train.steps: 4, train.ckpt_every: 2}\nmatrix: {seed: [0]}\n")
    root = run_suite(path, report=False)
    run_dir = root / "seed0"
    (run_dir / "checkpoints" / "0000004.pt").unlink()  # as if killed after step 2
    (run_dir / "status.json").write_text('{"state": "running"}')
    run_suite(path, report=False)
    assert json.loads((run_dir / "status.json").read_text()) == {**json.loads((run_dir / "status.json").read_text()),
                                                                 "state": "done", "resumed": True}
    assert (run_dir / "checkpoints" / "0000004.pt").exists()


def synthetic_suite(root):
    """A results set written by hand: two strategies x two seeds, evals at steps 10 and 20."""
    runs = []
    values = {("vanilla", 0): (10.0, 8.0), ("vanilla", 1): (12.0, 6.0), ("dtr", 0): (9.0, 5.0), ("dtr", 1): (9.0, 5.0)}
    for (routing, seed), (fid10, fid20) in values.items():
        rid = f"{routing}__seed{seed}"
        runs.append({"id": rid, "group": routing, "assignment": {}})
        d = root / rid
        write(d / "config.yaml", f"name: {rid}\nseed: {seed}\nrouting: {{name: {routing}}}\n")
        write(d / "status.json", '{"state": "done"}')
        write(d / "meta.json", json.dumps({"device": "cpu (test)", "precision": "fp32", "world_size": 1}))
        lines = [{"step": 10, "loss": 0.5, "loss_bucket": [0.1] * 10},
                 {"step": 10, "eval": {"frechet_inception_distance": fid10, "feature_extractor": "digits-classifier"}},
                 {"step": 20, "loss": 0.25 if routing == "dtr" else 0.3, "loss_bucket": [0.1] * 10},
                 {"step": 20, "eval": {"frechet_inception_distance": fid20, "feature_extractor": "digits-classifier"}}]
        write(d / "metrics.jsonl", "\n".join(json.dumps(x) for x in lines) + "\n")
    write(root / "suite.json", json.dumps({"name": "synthetic", "runs": runs}))


def test_report_from_synthetic_results(tmp_path):
    root = tmp_path / "synthetic"
    synthetic_suite(root)
    report = build_report(root).read_text()
    from dtr_plugins.experiments.report import collect

    table = metric_table("frechet_inception_distance", collect(root)[1])
    assert table.splitlines()[2:] == [
        "| run | seeds | step 10 | step 20 |",
        "|---|---|---|---|",
        "| `vanilla` | 2 | 11 ± 1.4 | 7 ± 1.4 |",
        "| `dtr` | 2 | **9 ± 0** | **5 ± 0** |",
    ]
    # the paired comparison: differences -3 and -1 (mean -2), t_{0.975,1} = 12.706 * sd 1.414 / sqrt 2 = 12.7;
    # two pairs give no verdict word
    row = "| `dtr` | — | FID ↓ | 2 | 7 | -2 (-28.6%) | [-14.71, +10.71] | 95% | *not resolvable* (2 pairs) |"
    assert row in report
    assert "### FID (lower is better)" in report and "digits-classifier" in report and "cpu (test)" in report
    rows = list(csv.DictReader((root / "results.csv").read_text().splitlines()))
    assert len(rows) == 8
    assert rows[0] == {"run_id": "vanilla__seed0", "group": "vanilla", "routing": "vanilla", "seed": "0",
                       "status": "done", "step": "10", "frechet_inception_distance": "10", "train_loss": "0.5"}
    raw = [json.loads(line) for line in (root / "raw_results.jsonl").read_text().splitlines()]
    assert [(x["run_id"], x["final"]) for x in raw[:1]] == [("vanilla__seed0", {"frechet_inception_distance": 8.0})]
    assert "raw_results.jsonl" in report
    plots = sorted(p.name for p in (root / "plots").glob("*.png"))
    assert plots == ["loss_per_timestep_bucket.png", "metrics_vs_steps.png", "paired_differences.png",
                     "train_loss.png"]


def test_report_pairs_each_strategy_with_the_vanilla_run_of_the_same_weighting(tmp_path):
    """A routing x loss-weighting suite: DTR + Min-SNR is compared with vanilla + Min-SNR (Δ FID -2 in both
    weightings), never with vanilla + constant (that would read -7); held-out lines stay out of the training
    loss, and the held-out and forest plots are drawn."""
    from ..unit.test_compare import crafted_suite

    root = crafted_suite(tmp_path / "grid")
    report = build_report(root).read_text()
    rows = [line for line in report.splitlines() if line.startswith("| `dtr-a4-b0.8` |") and "FID" in line]
    assert len(rows) == 2
    assert rows[0].startswith("| `dtr-a4-b0.8` | loss_weighting=constant | FID ↓ | 5 | 20.8 | -2 (-9.6%) |")
    assert rows[1].startswith("| `dtr-a4-b0.8` | loss_weighting=min_snr | FID ↓ | 5 | 15.8 | -2 (-12.7%) |")
    assert all(row.endswith("| Bonferroni, family of 2, 97.5% | **better** |") for row in rows)
    assert "**Direction check**" in report and "### Convergence" in report
    assert "- `dtr-a4-b0.8__constant__seed9`: no `vanilla` run with seed 9 and loss_weighting=constant" in report
    plots = {p.name for p in (root / "plots").glob("*.png")}
    assert {"heldout_loss_bands.png", "paired_differences.png", "train_loss.png"} <= plots
    rows = list(csv.DictReader((root / "results.csv").read_text().splitlines()))
    assert {r["train_loss"] for r in rows} == {"0.5"}  # training lines only, never a held-out line


def test_report_command_on_missing_folder(tmp_path, run_cli):
    code, _, err = run_cli("report", str(tmp_path))
    assert code == 2 and "not a suite folder" in err


def test_quickstart_suite_pairs_three_strategies_over_three_seeds():
    suite = load_suite(ROOT / "configs" / "suites" / "quickstart.yaml")
    assert sorted((r.config.routing.name, r.config.seed) for r in suite.runs) == \
        [(name, seed) for name in ("dtr", "random", "vanilla") for seed in (0, 1, 2)]
    cfg = suite.runs[0].config
    assert cfg.eval.heldout_every == 100 and cfg.eval.num_samples > 128 and cfg.eval.every == 0


def test_adm_and_dit_in_one_suite(tmp_path):
    path = suite_file(tmp_path, """\
name: backbones
matrix:
  backbone:
    - {name: dit, input_size: 8, patch_size: 2, hidden_size: 32, depth: 2, num_heads: 2, in_channels: 1, num_classes: 4}
    - {name: adm_unet, preset: small, image_size: 8, in_channels: 1, num_classes: 4}
  routing: [{name: dtr}]
""")
    root = run_suite(path)
    states = {p.parent.name: json.loads(p.read_text())["state"] for p in root.glob("*/status.json")}
    assert states == {"dit__dtr": "done", "adm_unet-small__dtr": "done"}
    assert "`adm_unet-small__dtr`" in (root / "report.md").read_text()


def test_shipped_suites_expand():
    for path in sorted((ROOT / "configs" / "suites").glob("*.yaml")):
        assert load_suite(path).runs, path


def test_a_null_matrix_value_unsets_an_optional_section_and_is_labelled_none():
    suite = load_suite(ROOT / "configs" / "suites" / "routing_families_v3.yaml")
    ids = [r.id for r in suite.runs]
    assert len(ids) == 24 and "seed0__vanilla__none" in ids and "seed2__dtr-a4-b0.8__tread" in ids
    assert not any("tread" in i and i.split("__")[1].split("-")[0] in ("switch", "dydit_width", "time_experts")
                   for i in ids)  # the excludes keep TREAD to vanilla and DTR
    plain = next(r for r in suite.runs if r.id == "seed0__vanilla__none")
    routed = next(r for r in suite.runs if r.id == "seed0__vanilla__tread")
    assert plain.config.token_routing is None and routed.config.token_routing.name == "tread"


def test_colliding_short_labels_get_parameters():
    from dtr_plugins.experiments.suite import axis_labels

    a = {"name": "dit", "size": "S/2", "input_size": 8}
    b = {"name": "dit", "size": "S/2", "input_size": 16}
    assert axis_labels("backbone", [a, {"name": "adm_unet"}]) == ["dit-S2", "adm_unet"]
    assert axis_labels("backbone", [a, b]) == ["dit-S2-is8", "dit-S2-is16"]


def test_report_draws_masks_from_recorded_widths_without_building_models(tmp_path, monkeypatch):
    from dtr_plugins import compose

    root = tmp_path / "synthetic"
    synthetic_suite(root)
    for seed in (0, 1):
        d = root / f"dtr__seed{seed}"
        write(d / "config.yaml", f"name: dtr__seed{seed}\nseed: {seed}\nrouting: {{name: dtr, alpha: 4.0, beta: 0.8}}\n"
                                 "diffusion: {steps: 50}\nbackbone: {name: dit, input_size: 8, hidden_size: 32, "
                                 "depth: 2, num_heads: 2}\ndata: {name: digits}\n")
        write(d / "meta.json", json.dumps({"device": "cpu (test)", "routed_channels": [32, 32]}))

    def boom(*args, **kwargs):
        raise AssertionError("the report must not build models")

    monkeypatch.setattr(compose, "build_model", boom)
    build_report(root)
    assert (root / "plots" / "masks_dtr_1.png").exists()
    assert "masks_dtr_1.png" in (root / "report.md").read_text()


def test_raised_train_steps_continues_finished_runs_from_their_checkpoints(tmp_path, run_cli, log_text):
    # the bug: raising train.steps marked every finished run "changed"; --rerun-changed retrained from step 0
    path = suite_file(tmp_path, "name: fp\nset: {train.steps: 2}\nmatrix: {seed: [0, 1]}\n")
    root = run_suite(path, report=False)
    log_text()
    old_fp = (root / "seed0" / "config.sha256").read_text().strip()
    suite = load_suite(path)
    assert old_fp == suite.runs[0].fingerprint and suite.runs[0].fingerprint != suite.runs[1].fingerprint
    first = {p: p.stat().st_mtime_ns for p in root.glob("seed*/checkpoints/0000002.pt")}
    run_suite(path, report=False)  # unchanged: skipped
    assert "skip     seed0 (finished)" in log_text()

    write(path, path.read_text().replace("train.steps: 2", "train.steps: 3"))
    code, out, _ = run_cli("suite", str(path), "--dry-run")
    assert code == 0 and "resume   seed0" in out and "resume   seed1" in out
    code, out, err = run_cli("suite", str(path))
    assert code == 0, err
    assert "continue seed0 (train.steps changed; continues from its checkpoints)" in out and "stale" not in out
    for seed in ("seed0", "seed1"):
        run = root / seed
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["0000002.pt", "0000003.pt"]
        assert json.loads((run / "status.json").read_text())["resumed"] is True  # from step 2, not step 0
        assert json.loads((run / "meta.json").read_text())["resumed_from_step"] == 2
        records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert [r["step"] for r in records if "loss" in r] == [1, 2, 3]  # one training record per step
        assert (run / "config.sha256").read_text().strip() == load_suite(path).runs[int(seed[-1])].fingerprint
    assert {p: p.stat().st_mtime_ns for p in root.glob("seed*/checkpoints/0000002.pt")} == first
    report = (root / "report.md").read_text()
    assert "2 of 2 runs finished with the suite's current config." in report and "stale" not in report
    with open(root / "results.csv") as f:
        rows = list(csv.DictReader(f))
    assert sorted((r["run_id"], r["step"]) for r in rows) == [("seed0", "3"), ("seed1", "3")]
    run_suite(path, report=False)  # and now it is finished
    assert "skip     seed0 (finished)" in log_text()
    # a later sampling setting (the base config file) is resumable too: recorded, nothing retrained
    write(tmp_path / "base.yaml", BASE.replace("respacing: ddim4", "respacing: ddim3"))
    code, out, err = run_cli("suite", str(path), "--only", "seed0")
    assert code == 0 and "continue seed0 (sample.respacing changed" in out and "skip     seed0 (finished)" in out


def test_non_resumable_change_is_refused_naming_key_old_and_new_then_rerun_changed(tmp_path, run_cli, capsys):
    path = suite_file(tmp_path, "name: fp\nset: {train.steps: 2, routing: {name: dtr, beta: 0.8}}\n"
                                "matrix: {seed: [0, 1]}\n")
    root = run_suite(path, report=False)
    capsys.readouterr()
    old_fp = (root / "seed0" / "config.sha256").read_text().strip()
    write(path, path.read_text().replace("beta: 0.8", "beta: 0.5"))
    code, out, err = run_cli("suite", str(path))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "run seed0: routing.beta: 0.8 -> 0.5" in err and "seed1" in err and "--rerun-changed" in err
    assert "skip" not in out and "start" not in out
    code, out, _ = run_cli("suite", str(path), "--dry-run")
    assert code == 0 and "changed  seed0" in out

    code, out, err = run_cli("suite", str(path), "--rerun-changed", "--only", "seed0")
    assert code == 0, err
    stale = root / f"seed0.stale-{old_fp[:8]}"
    assert f"stale    seed0 -> {stale.name}" in out and (stale / "checkpoints" / "0000002.pt").exists()
    assert (root / "seed0" / "config.sha256").read_text().strip() == load_suite(path).runs[0].fingerprint != old_fp
    report = (root / "report.md").read_text()  # seed1 still holds the beta 0.8 run
    assert ("1 of 2 runs finished with the suite's current config; 1 more finished with an older config of this "
            "suite (stale: `seed1`;") in report and "--rerun-changed" in report


def test_run_config_given_to_suite_says_so(tmp_path, run_cli):
    path = write(tmp_path / "run.yaml", BASE)
    code, _, err = run_cli("suite", str(path), "--dry-run")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "run.yaml: this looks like a run config" in err and "dtr train" in err and "Field required" not in err


@pytest.mark.parametrize("flag", ["--wait", "--cancel"])
def test_wait_and_cancel_apply_to_slurm_only(tmp_path, run_cli, flag):
    path = suite_file(tmp_path, "name: s\nmatrix: {seed: [0]}\n")
    code, out, err = run_cli("suite", str(path), flag)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"{flag}: applies to a scheduler launcher (slurm) only; the local launcher" in err
    assert not (tmp_path / "runs").exists() and "cancelled" not in out


def test_report_flags_rank_deficient_fid(tmp_path):
    root = tmp_path / "synthetic"
    synthetic_suite(root)
    metrics = root / "dtr__seed1" / "metrics.jsonl"
    rows = [json.loads(x) for x in metrics.read_text().splitlines()]
    rows[-1]["eval"].update(fid_rank_deficient=True, fid_feature_dim=64, num_samples=16, num_reference=1797)
    write(metrics, "\n".join(json.dumps(x) for x in rows) + "\n")
    report = build_report(root).read_text()
    assert "**Warning:** FID is rank-deficient in 1 of 8 evaluations: this FID comes from 16 samples and 1797 " \
           "reference images with 64-dimensional features" in report
    assert "4 of 4 runs finished with the suite's current config." in report  # no fingerprints: none is stale


def test_exclude_that_matches_no_run_is_refused(tmp_path, run_cli):
    path = suite_file(tmp_path, "name: s\nmatrix: {seed: [0, 1]}\nexclude: [{seed: 0}, {seed: 7}]\n")
    code, out, err = run_cli("suite", str(path))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "exclude.1: {'seed': 7} matches no run" in err and "suite.yaml" in err
    assert not (tmp_path / "runs").exists()  # found before any run starts


def test_suite_set_applies_to_every_run(tmp_path, run_cli):
    path = suite_file(tmp_path, "name: s\nset: {train.steps: 5}\nmatrix: {seed: [0, 1]}\n")
    suite = load_suite(path, overrides=["train.steps=1", "train.lr=0.002"])
    assert [(r.config.train.steps, r.config.train.lr) for r in suite.runs] == [(1, 0.002), (1, 0.002)]
    assert [r.config.train.steps for r in load_suite(path).runs] == [5, 5]
    code, _, err = run_cli("suite", str(path), "--dry-run", "--set", "seed=3")
    assert code == 2 and "--set seed=3: seed is a matrix key" in err
    code, _, err = run_cli("suite", str(path), "--dry-run", "--set", "train.steps=0")
    assert code == 2 and "train.steps" in err
    code, _, err = run_cli("suite", str(path), "--dry-run", "--set", f"output_dir={tmp_path / 'elsewhere'}")
    assert code == 2 and "a suite's runs live in <output_dir>/<suite name>/<run id>" in err  # it was ignored
    assert not (tmp_path / "elsewhere").exists()


def test_streamed_log_progress_and_one_thread_per_child(tmp_path, log_text):
    path = suite_file(tmp_path, "name: live\nset: {train.steps: 3}\nmatrix: {seed: [0, 1]}\n")
    root = run_suite(path, report=False, parallel=2, progress_every=0.5,
                     overrides=["data={name: synthetic, num_samples: 32, image_size: 8, num_classes: 4}"])
    out = log_text()
    for rid in ("seed0", "seed1"):
        log = root / rid / "train.log"
        assert f"start    {rid} (log: {log})" in out
        assert f"running  {rid}: step " in out and "/3 (" in out  # live lines while the child trains
        assert log.read_text().strip()
        status = json.loads((root / rid / "status.json").read_text())
        assert status["state"] == "done"
        if not torch.cuda.device_count():  # CPU children side by side: cpu_count // parallel threads each
            threads = max(1, (os.cpu_count() or 1) // 2)
            assert status["threads"] == threads and f"threads: {threads}" in (root / rid / "config.yaml").read_text()


def test_report_header_lists_each_applied_sampling_setting():
    """A routing x process suite samples gaussian runs with DDIM and flow runs with Heun: the header says both
    (with run counts), never only the last run's sampler."""
    from dtr_plugins.experiments.report import _eval_settings
    from dtr_plugins.runs.record import RunRecord

    def run(rid, sampler, respacing):
        ev = {"step": 400, "num_samples": 250, "sampler": sampler, "respacing": respacing, "cfg_scale": 2.0}
        return RunRecord(rid, group=rid, status="done", routing="vanilla", evals=[ev])

    mixed = [run("g0", "ddim", "ddim25"), run("g1", "ddim", "ddim25"), run("f0", "heun", "25")]
    assert _eval_settings(mixed) == ("; 250 samples per eval, sampler ddim ddim25, cfg scale 2.0 (2 runs); "
                                     "250 samples per eval, sampler heun 25, cfg scale 2.0 (1 run)")
    assert _eval_settings(mixed[:2]) == ", 250 samples per eval, sampler ddim ddim25, cfg scale 2.0"
    assert _eval_settings([RunRecord("n", group="n", status="new", routing="vanilla")]) == ""


def test_metric_table_counts_the_seeds_that_have_a_value_not_the_planned_runs():
    from dtr_plugins.runs.record import RunRecord

    def run(seed, status, fid=None):
        evals = [{"step": 400, "frechet_inception_distance": fid}] if fid is not None else []
        return RunRecord(f"vanilla__seed{seed}", seed, group="vanilla", status=status, routing="vanilla", evals=evals)

    table = metric_table("frechet_inception_distance", [run(0, "done", 9.0), run(1, "done", 11.0), run(2, "new")])
    assert "| `vanilla` | 2 | **10 ± 1.4** |" in table.splitlines()  # the only row is the best
