"""Everyday use (issue #14), without training: number formatting, readable labelled grids, run discovery and
status, the runs table, the single-run report and the suite's labelled sample rows, on run directories written
by hand."""
import json

import numpy as np
import pytest
from PIL import Image

from dtr_plugins.core.errors import UserError
from dtr_plugins.core.images import enlarge, readable_grid
from dtr_plugins.core.numbers import fmt, fmt_interval, fmt_mean_std, fmt_signed
from dtr_plugins.evaluation.evaluate import describe_metrics
from dtr_plugins.experiments.plots import pick_per_class, plot_sample_rows
from dtr_plugins.experiments.run_report import build_run_report
from dtr_plugins.runs.listing import find_runs, format_runs_table, lock_held, summarize_run
from dtr_plugins.runs.rundir import RunDir

from ..conftest import tiny_dit_config, write


# ------------------------------------------------------------------------------------------ numbers
def test_one_number_format():
    assert fmt(12.345678) == "12.35" and fmt(0.00123456) == "0.001235" and fmt(123456.7) == "1.235e+05"
    assert fmt(7) == "7" and fmt(None) == "—" and fmt(float("nan")) == "—" and fmt("cpu") == "cpu"
    assert fmt_mean_std(5.7163, 0.7104, 3) == "5.716 ± 0.71" and fmt_mean_std(5.7163, 0.0, 1) == "5.716"
    assert fmt_signed(0.0123456) == "+0.01235" and fmt_interval((-0.123456, 0.05)) == "[-0.1235, +0.05]"
    assert describe_metrics({"frechet_inception_distance": 12.3456, "precision": 0.8, "num_samples": 20,
                             "feature_extractor": "x"}) == "FID 12.35, precision 0.8"
    assert describe_metrics({"num_samples": 20}) == "no metric computed"


# ------------------------------------------------------------------------------------------ grids
def digits(n=30):
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(n, 8, 8, 1), dtype=np.uint8), np.arange(n) % 10


def test_enlarge_is_nearest_neighbour_by_a_whole_factor():
    img = digits(1)[0][0]
    big = enlarge(img, 64)
    assert big.shape == (64, 64, 1)
    assert (big[::8, ::8] == img).all() and (big[3::8, 5::8] == img).all()  # each pixel an 8x8 block
    assert enlarge(np.zeros((100, 80, 3), np.uint8), 64).shape == (100, 80, 3)  # already large enough


def test_readable_grid_labels_each_cell_one_class_per_column():
    images, labels = digits(30)
    names = [f"c{i}" for i in range(10)]
    grid = readable_grid(images, labels, names)
    strip, pad = 16, 2
    assert grid.shape == (3 * (64 + strip) + 4 * pad, 10 * 64 + 11 * pad, 3)  # 10 classes a row
    cell = grid[pad + strip: pad + strip + 64, pad: pad + 64, 0]  # image 0 below its caption
    assert (cell == enlarge(images[0], 64)[..., 0]).all()
    first, second = grid[pad: pad + strip, pad: pad + 64], grid[pad: pad + strip, 2 * pad + 64: 2 * pad + 128]
    assert (first < 128).any() and not np.array_equal(first, second)  # a caption, a different one per class
    row2 = grid[2 * pad + 64 + strip: 2 * pad + 64 + 2 * strip]
    assert (grid[pad: pad + strip] == row2[:strip]).all()  # same classes in the same columns on the next row

    plain = readable_grid(images)  # unconditional: no captions, a square
    assert plain.shape == (5 * 64 + 6 * pad, 6 * 64 + 7 * pad, 3)


def test_pick_per_class_and_sample_rows(tmp_path):
    images, labels = digits(30)
    shuffled = np.roll(labels, 3)  # image 3 is the first of class 0, image 0 the first of class 7
    picked, picked_labels = pick_per_class(images, shuffled, 10)
    assert picked_labels.tolist() == list(range(10))
    assert (picked[0] == images[3]).all() and (picked[7] == images[0]).all()
    assert pick_per_class(images, None, None)[0].shape[0] == 10
    out = plot_sample_rows({"vanilla": (picked, picked_labels), "dtr-a4-b0.8": (picked, picked_labels)},
                           tmp_path / "samples.png", class_names=[str(i) for i in range(10)])
    with Image.open(out) as img:
        assert img.width >= 10 * 64 and img.height >= 2 * (64 + 16)  # cells at readable size


# ------------------------------------------------------------------------------------------ runs
def make_run(path, *, steps=6, losses=(0.5, 0.25), fid=None, heldout=None, final=True, eval_at_end=False,
             status=None, labels_used=True, process=None, target="epsilon"):
    """A run directory as training leaves it (no model is trained): config, meta, metrics, checkpoints."""
    extra = {"diffusion": {"name": process}} if process else {}
    tiny_dit_config(path.parent, f"{path.name}.yaml", train={"steps": steps}, eval={"at_end": eval_at_end}, **extra)
    rd = RunDir(path)
    rd.write_config((path.parent / f"{path.name}.yaml").read_text())
    rd.write_meta({"device": "cpu (test)", "precision": "fp32", "world_size": 1,
                   **({"heldout": {"applied": True, "target": target}} if heldout is not None else {})})
    rd.write_classes({"num_classes": 4, "classes": ["a", "b", "c", "d"], "labels_used": labels_used})
    for i, loss in enumerate(losses):
        rd.append_metrics({"step": 2 * (i + 1), "loss": loss})
    if heldout is not None:
        rd.append_metrics({"step": 4, "heldout": {"band0": 1.0, "band1": 2.0, "total": heldout, "fingerprint": "f"}})
    if fid is not None:
        rd.append_metrics({"step": steps, "eval": {"frechet_inception_distance": fid, "num_samples": 8}})
    write(rd.checkpoint_path(3), "x")
    if final:
        write(rd.checkpoint_path(steps), "x")
    if status is not None:
        rd.write_status(status)
    return rd


def test_find_runs_by_their_files(tmp_path):
    make_run(tmp_path / "a")
    make_run(tmp_path / "suite" / "b")
    write(tmp_path / "suite" / "c" / "status.json", '{"state": "failed", "error": "boom"}')  # failed before training
    write(tmp_path / "a" / "samples" / "x" / "config.yaml", "name: x\n")  # not a run: inside a run's samples
    write(tmp_path / "a" / "samples" / "x" / "meta.json", "{}")
    write(tmp_path / "notes" / "config.yaml", "name: x\n")  # a config alone is not a run
    assert find_runs(tmp_path) == [tmp_path / "a", tmp_path / "suite" / "b", tmp_path / "suite" / "c"]
    assert find_runs(tmp_path / "a") == [tmp_path / "a"]
    with pytest.raises(UserError, match="nope: no such folder"):
        find_runs(tmp_path / "nope")


def test_status_step_loss_and_latest_metrics(tmp_path):
    done = summarize_run(make_run(tmp_path / "done", fid=12.3456, heldout=0.0812).path, tmp_path)
    assert (done.run, done.status, done.step, done.steps, done.loss) == ("done", "done", 6, 6, 0.25)
    assert done.metrics == {"frechet_inception_distance": 12.3456, "heldout/total": 0.0812}
    assert done.metrics_step == {"frechet_inception_distance": 6, "heldout/total": 4}
    assert done.strategy == "dtr (alpha=4.0, beta=0.8)" and done.backbone == "dit (depth 2, hidden 32, patch 2)"

    stopped = summarize_run(make_run(tmp_path / "stopped", final=False).path)
    assert stopped.status == "incomplete" and stopped.step == 4 and stopped.missing == ["checkpoints/0000006.pt"]
    no_eval = summarize_run(make_run(tmp_path / "no_eval", eval_at_end=True).path)
    assert no_eval.status == "incomplete" and no_eval.missing == ["eval.json", "samples/samples.npz"]
    failed = summarize_run(make_run(tmp_path / "failed", final=False, status={"state": "failed", "error": "x"}).path)
    assert failed.status == "failed"

    rd = make_run(tmp_path / "live", final=False, status={"state": "running"})
    assert not lock_held(rd)
    with rd.lock():
        assert lock_held(rd) and summarize_run(rd.path).status == "running"
    assert not lock_held(rd) and summarize_run(rd.path).status == "incomplete"  # a stale "running" status


def test_runs_table_and_json_from_the_cli(tmp_path, run_cli):
    make_run(tmp_path / "runs" / "a", fid=12.3456, heldout=0.0812)
    make_run(tmp_path / "runs" / "b", final=False, losses=(0.5,))
    runs = [summarize_run(p, tmp_path / "runs") for p in find_runs(tmp_path / "runs")]
    lines = format_runs_table(runs).splitlines()
    assert lines[0].split() == ["run", "status", "step", "loss", "held-out", "loss", "(epsilon", "MSE)", "FID", "eval",
                                "step", "process", "strategy", "backbone"]
    assert lines[1].split()[:8] == ["a", "done", "6/6", "0.25", "0.0812", "12.35", "6", "gaussian"]
    assert lines[2].split()[:8] == ["b", "incomplete", "3/6", "0.5", "—", "—", "—", "gaussian"]  # step: checkpoint 3
    assert lines[1].index("done") == lines[0].index("status") and lines[1].index("dtr") == lines[0].index("strategy")

    code, out, err = run_cli("runs", str(tmp_path / "runs"))
    assert code == 0 and out.splitlines() == lines, err
    code, out, _ = run_cli("runs", str(tmp_path / "runs"), "--json")
    assert [(r["run"], r["status"], r["metrics"]) for r in json.loads(out)] == [
        ("a", "done", {"frechet_inception_distance": 12.3456, "heldout/total": 0.0812}), ("b", "incomplete", {})]
    assert [(r["process"], r["heldout_target"]) for r in json.loads(out)] == [("gaussian", "epsilon"),
                                                                               ("gaussian", None)]
    code, out, err = run_cli("runs", str(tmp_path / "empty-missing"))
    assert code == 2 and out == "" and len(err.strip().splitlines()) == 1 and "no such folder" in err


def test_runs_table_never_puts_epsilon_and_velocity_mse_in_one_column(tmp_path):
    make_run(tmp_path / "runs" / "ddpm", heldout=0.0812)
    make_run(tmp_path / "runs" / "flow", heldout=0.9, process="flow_matching", target="velocity")
    runs = [summarize_run(p, tmp_path / "runs") for p in find_runs(tmp_path / "runs")]
    assert [(r.process, r.heldout_target) for r in runs] == [("gaussian", "epsilon"), ("flow_matching", "velocity")]
    lines = format_runs_table(runs).splitlines()
    eps, vel = lines[0].index("held-out loss (epsilon MSE)"), lines[0].index("held-out loss (velocity MSE)")
    assert eps < vel and "process" in lines[0]
    ddpm, flow = lines[1], lines[2]
    assert ddpm.split()[:6] == ["ddpm", "done", "6/6", "0.25", "0.0812", "—"]  # epsilon column, velocity empty
    assert flow.split()[:6] == ["flow", "done", "6/6", "0.25", "—", "0.9"]
    assert "gaussian" in ddpm and "flow_matching" in flow


# ------------------------------------------------------------------------------------------ report of one run
def test_single_run_report(tmp_path, run_cli):
    rd = make_run(tmp_path / "run", fid=12.3456, heldout=0.0812)
    images, labels = digits(12)
    rd.samples.mkdir()
    np.savez(rd.samples / "samples.npz", arr_0=images, labels=labels % 4)
    code, out, err = run_cli("report", str(rd.path))
    assert code == 0 and out.strip() == f"report: {rd.path / 'report.md'}", err
    report = (rd.path / "report.md").read_text()
    assert "Status **done**, step 6 of 6. Strategy dtr (alpha=4.0, beta=0.8)" in report
    assert "| training loss | 0.25 | 6 |" in report and "| FID | 12.35 | 6 |" in report
    assert "| held-out loss | 0.0812 | 4 |" in report and "| 6 | 12.35 |" in report  # latest values, evaluations
    for name in ("train_loss", "heldout_loss_per_band", "samples"):
        assert f"![{name}](plots/{name}.png)" in report
    assert "metrics_vs_steps" not in report and "heldout_loss_bands" not in report  # one eval: no one-dot panels
    with Image.open(rd.path / "plots" / "samples.png") as img:  # no grid.png: the samples drawn here
        assert img.size == (4 * 64 + 5 * 2, 3 * (64 + 16) + 4 * 2)  # 4 classes a row, captioned

    stopped = make_run(tmp_path / "stopped", final=False)
    build_run_report(stopped.path)
    text = (stopped.path / "report.md").read_text()
    assert "Status **incomplete**" in text and "Still missing: checkpoints/0000006.pt" in text

    write(tmp_path / "other" / "x.txt", "")
    code, out, err = run_cli("report", str(tmp_path / "other"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "not a run directory" in err and "suite" in err
    code, out, err = run_cli("report", str(tmp_path))  # a folder of runs: names one and the command that lists them
    assert code == 2 and f"holds 2 run(s), e.g. {tmp_path / 'run'} (`dtr runs {tmp_path}` lists them)" in err
    code, out, err = run_cli("report", str(tmp_path / "missing"))
    assert code == 2 and err.strip() == f"dtr: error: {tmp_path / 'missing'}: no such run directory or suite folder"


def test_single_run_report_draws_what_suits_one_run(tmp_path):
    """Curves where there are several points, the held-out loss against the band, the run's masks, sampling's
    grid.png linked once; never a panel with a single dot or a second copy of the grid."""
    import matplotlib.pyplot as plt

    from dtr_plugins.experiments.plots import heldout_band_figure
    from dtr_plugins.experiments.run_report import heldout_by_step

    rd = make_run(tmp_path / "run", losses=(0.5, 0.4, 0.3, 0.25), fid=12.0, heldout=0.08)
    rd.append_metrics({"step": 6, "heldout": {"band0": 0.5, "band1": 1.5, "total": 1.0, "fingerprint": "f"}})
    rd.append_metrics({"step": 8, "eval": {"frechet_inception_distance": 10.0, "precision": 0.5, "num_samples": 8}})
    rd.write_meta({**rd.read_meta(), "routed_channels": [32, 32], "heldout": {"target": "velocity"}})
    rd.samples.mkdir()
    write(rd.samples / "grid.png", "png")
    report = build_run_report(rd.path).read_text()
    drawn = sorted(p.name for p in (rd.path / "plots").iterdir())
    assert drawn == ["heldout_loss_per_band.png", "masks_dtr_1.png", "metrics_vs_steps.png", "train_loss.png"]
    assert "![grid](samples/grid.png)" in report and report.count("grid.png") == 1
    assert "![masks_dtr_1](plots/masks_dtr_1.png)" in report

    by_step = heldout_by_step(run_record_curves(rd))
    assert by_step == {4: [1.0, 2.0], 6: [0.5, 1.5]}
    fig = heldout_band_figure(by_step, "velocity")
    try:
        ax = fig.axes[0]
        assert [len(line.get_xdata()) for line in ax.get_lines()] == [2, 2]  # a line per evaluation, not dots
        assert [t.get_text() for t in ax.get_legend().get_texts()] == ["step 4", "step 6"]
        assert ax.get_ylabel() == "held-out velocity MSE" and ax.get_xlabel().startswith("noise band")
    finally:
        plt.close(fig)


def run_record_curves(rd):
    from dtr_plugins.experiments.compare_records import curves_from_records

    return curves_from_records(rd.read_metrics())[0]


def test_suite_progress_line_says_what_the_evaluation_is_doing(tmp_path):
    from dtr_plugins.launchers.local import _evaluation_note

    bar = "tiny:  50%|#####     | 2/4 [00:01<00:01]\r" + " " * 40 + "\r"
    log = write(tmp_path / "train.log", "dtr: step 9: evaluating: an earlier attempt\n")
    start = log.stat().st_size
    assert _evaluation_note(log, 0) == "evaluating: an earlier attempt" and _evaluation_note(log, start) == ""
    with open(log, "a") as f:
        f.write(bar + "dtr: step 4: evaluating: sampling 20 images with the EMA weights (ddim, ddim5)\n" + bar)
    assert _evaluation_note(log, start) == "evaluating: sampling 20 images with the EMA weights (ddim, ddim5)"
    with open(log, "a") as f:
        f.write("dtr: step 4: scoring fid with digits-classifier against dataset:digits\n")
    assert _evaluation_note(log, start) == "scoring fid with digits-classifier against dataset:digits"
    with open(log, "a") as f:
        f.write("dtr: step 4: FID 35.55\n")
    assert _evaluation_note(log, start) == ""  # finished: nothing to add to the step
    assert _evaluation_note(tmp_path / "none.log", 0) == ""


def test_metric_table_counts_the_seeds_that_have_a_value():
    from dtr_plugins.experiments.report import metric_table
    from dtr_plugins.runs.record import RunRecord

    def run(seed, fid=None):
        evals = [{"step": 20, "frechet_inception_distance": fid}] if fid is not None else []
        return RunRecord(id=f"dtr__seed{seed}", group="dtr", seed=seed, status="done" if evals else "new",
                         routing="dtr", config={}, meta={}, evals=evals)

    table = metric_table("frechet_inception_distance", [run(0, 36.3412), run(1), run(2)])
    assert "| `dtr` | 1 | **36.34** |" in table  # one of the group's three runs has finished
    table = metric_table("frechet_inception_distance", [run(0, 36.3412), run(1, 34.0), run(2)])
    assert "| `dtr` | 2 | **35.17 ± 1.7** |" in table
