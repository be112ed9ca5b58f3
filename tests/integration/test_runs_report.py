"""Everyday use (issue #14): ``dtr runs`` over a small suite (done, failed, incomplete, running), the single-run
report, the end-of-training evaluation's output, and readable labelled sample grids."""
import json

import numpy as np
from PIL import Image

from dtr_plugins.experiments.suite import run_suite
from dtr_plugins.runs.rundir import RunDir

from ..conftest import tiny_dit_config, write


def digits_suite(tmp_path):
    """vanilla and DTR on digits (4 steps, held-out loss every 2, FID at the end), and one run that fails."""
    tiny_dit_config(tmp_path, "base.yaml", name="base", seed=0,
                    backbone={"num_classes": 10, "class_dropout_prob": 0.1},
                    data={"name": "digits", "image_size": 8, "num_samples": None, "num_classes": None},
                    train={"steps": 4, "log_every": 2, "ckpt_every": 0},
                    sample={"num_samples": 20, "batch_size": 20},
                    eval={"at_end": True, "num_samples": 20, "metrics": ["fid"],
                          "feature_extractor": "digits-classifier", "heldout_every": 2, "heldout_per_band": 2})
    return write(tmp_path / "suite.yaml", f"""\
name: everyday
output_dir: {tmp_path / 'runs'}
base: base.yaml
matrix:
  routing: [{{name: vanilla}}, {{name: dtr, alpha: 4.0, beta: 0.8}}]
  backbone.in_channels: [1, 3]
exclude:
  - {{routing.name: dtr, backbone.in_channels: 3}}
""")


def test_runs_table_report_and_eval_output_on_a_suite(tmp_path, run_cli, capsys):
    root = run_suite(digits_suite(tmp_path))
    capsys.readouterr()
    done, failed = root / "vanilla__in_channels1", root / "vanilla__in_channels3"
    dtr = root / "dtr-a4-b0.8__in_channels1"

    # the end-of-training evaluation said what it did, and the FID it computed, in the run's log
    log = (done / "train.log").read_text()
    fid = json.loads((done / "eval.json").read_text())["frechet_inception_distance"]
    assert "step 4: evaluating: sampling 20 images with the EMA weights (ddim, ddim5)" in log
    assert "step 4: scoring fid with digits-classifier against dataset:digits" in log
    result_line = next(line for line in log.splitlines() if line.startswith("dtr: step 4: ") and "FID" in line)
    assert f"FID {fid:.4g}" in result_line.split(", ")[0] or f", FID {fid:.4g}" in result_line

    # the run's grid: 8x8 digits enlarged to 64 px cells under a caption strip, 10 classes a row, on white
    grid = np.asarray(Image.open(done / "samples" / "grid.png"))
    assert grid.shape == (2 * (64 + 16) + 3 * 2, 10 * 64 + 11 * 2, 3)
    assert (grid[2:2 + 16, 2:66] < 128).any()  # the caption ("0") is drawn in the first strip

    (dtr / "eval.json").unlink()  # as if killed during the final evaluation
    with RunDir(done).lock():  # as if `dtr train` were writing it
        code, out, err = run_cli("runs", str(tmp_path / "runs"))
    assert code == 0, err
    header, *rows = out.strip().splitlines()
    assert header.split()[:5] == ["run", "status", "step", "loss", "held-out"] and "FID" in header
    by_run = {r.split()[0]: r.split() for r in rows}
    assert sorted(by_run) == [f"everyday/{p.name}" for p in (dtr, done, failed)]
    assert by_run[f"everyday/{done.name}"][1:3] == ["running", "4/4"]
    assert by_run[f"everyday/{failed.name}"][1] == "failed"
    assert by_run[f"everyday/{dtr.name}"][1:3] == ["incomplete", "4/4"]

    code, out, _ = run_cli("runs", str(tmp_path / "runs"), "--json")
    runs = {r["run"]: r for r in json.loads(out)}
    vanilla = runs[f"everyday/{done.name}"]
    records = [json.loads(line) for line in (done / "metrics.jsonl").read_text().splitlines()]
    assert vanilla["status"] == "done"  # the lock was released
    assert vanilla["loss"] == [r["loss"] for r in records if "loss" in r][-1]
    assert vanilla["metrics"]["frechet_inception_distance"] == fid
    assert vanilla["metrics"]["heldout/total"] == [r["heldout"]["total"] for r in records if "heldout" in r][-1]
    assert vanilla["strategy"] == "vanilla" or vanilla["strategy"].startswith("vanilla (")
    assert vanilla["backbone"].startswith("dit (depth 2, hidden 32, patch 2)")
    assert runs[f"everyday/{dtr.name}"]["missing"] == ["eval.json"]
    assert runs[f"everyday/{dtr.name}"]["strategy"].startswith("dtr (") and "alpha=4.0" in runs[
        f"everyday/{dtr.name}"]["strategy"]

    # one run's report: Markdown with the latest values, and its pictures, inside the run directory
    code, out, err = run_cli("report", str(done))
    assert code == 0 and out.strip() == f"report: {done / 'report.md'}", err
    report = (done / "report.md").read_text()
    assert "Status **done**, step 4 of 4" in report and f"| FID | {fid:.4g} | 4 |" in report
    for name in ("train_loss", "heldout_loss_per_band"):
        assert f"![{name}](plots/{name}.png)" in report and (done / "plots" / f"{name}.png").stat().st_size > 0
    assert "![grid](samples/grid.png)" in report and not (done / "plots" / "samples.png").exists()  # drawn once
    evaluated = [r for r in records if "eval" in r]
    assert ("metrics_vs_steps" in report) == (len(evaluated) > 1)  # one evaluation: no panel with a single dot
    code, out, _ = run_cli("runs", str(tmp_path / "runs"))
    assert len(out.strip().splitlines()) == 4  # the report's plots/ folder is not taken for a run

    # the suite report shows one labelled row of samples per strategy
    code, _, err = run_cli("report", str(root))
    assert code == 0, err
    assert "![samples](plots/samples.png)" in (root / "report.md").read_text()
