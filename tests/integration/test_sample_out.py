"""dtr sample: guidance refused where it cannot apply, records of the applied values, a fresh folder per
setting, no mixing with old samples, no half sets, per-rank shards merged under torchrun."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import dtr_plugins as dp
from dtr_plugins.core.config import config_from_dict, read_yaml
from dtr_plugins.core.errors import ConfigError
from dtr_plugins.core.sampling_settings import SamplingOverrides, SamplingSettings
from dtr_plugins.runs.rundir import RunDir

from ..conftest import free_port, tiny_dit_config, write

#: the shared tiny DiT run (tests/conftest.py) without routing: 2 steps, 32 images, DDIM-4 in batches of 4
TINY = {"routing": None, "diffusion": {"steps": 100, "schedule": None, "learn_sigma": None},
        "data": {"num_samples": 32}, "train": {"steps": 2, "batch_size": 8, "lr": None, "log_every": 1,
                                               "ckpt_every": None, "ema_warmup": None},
        "sample": {"respacing": "ddim4", "batch_size": 4}}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three tiny trained runs: class-conditional with a null class, unconditional, conditional without null."""
    root = tmp_path_factory.mktemp("runs")
    path = tiny_dit_config(root, "tiny.yaml", **TINY)
    out = {}
    for name, sets in {"cond": [], "uncond": ["backbone.num_classes=1", "data.num_classes=1"],
                       "nonull": ["backbone.class_dropout_prob=0.0"]}.items():
        cfg = dp.load_config(path, overrides=[f"output_dir={root}", f"name={name}", *sets])
        out[name] = dp.train(cfg, progress=False)
    return out


def test_guidance_on_unconditional_model_is_refused(runs, run_cli, tmp_path):
    # the bug: images byte-identical to --cfg-scale 1.0 while samples.json said 4.0
    for name, why in (("uncond", "unconditional"), ("nonull", "no null class")):
        code, _, err = run_cli("sample", str(runs[name]), "--num", "2", "--cfg-scale", "4.0",
                               "--out", str(tmp_path / name))
        assert code == 2, err
        assert len(err.strip().splitlines()) == 1 and "--cfg-scale: 4" in err and why in err
        assert not (tmp_path / name).exists() and not list(tmp_path.glob(f".{name}.partial-*"))
    assert run_cli("sample", str(runs["uncond"]), "--num", "2", "--out", str(tmp_path / "ok"))[0] == 0


def test_training_with_guidance_on_unconditional_model_is_refused_before_training(tmp_path):
    path = tiny_dit_config(tmp_path, "tiny.yaml", **TINY)
    cfg = dp.load_config(path, overrides=[f"output_dir={tmp_path}", "backbone.num_classes=1", "data.num_classes=1",
                                          "sample.cfg_scale=4.0", "eval.at_end=true",
                                          "eval.feature_extractor=digits-classifier"])
    with pytest.raises(ConfigError, match=r"sample.cfg_scale: 4 (asks for classifier-free guidance"
                                          r"|needs a class-conditional backbone)"):
        dp.train(cfg, progress=False)
    assert not list((tmp_path / "tiny").glob("checkpoints/*.pt"))


def test_records_hold_the_applied_values_and_guidance_changes_images(runs, run_cli, tmp_path):
    a, b = tmp_path / "s1", tmp_path / "s4"
    assert run_cli("sample", str(runs["cond"]), "--num", "6", "--out", str(a), "--seed", "5")[0] == 0
    code, _, err = run_cli("sample", str(runs["cond"]), "--num", "6", "--out", str(b), "--seed", "5",
                           "--cfg-scale", "4.0", "--sampler", "ddpm", "--respacing", "3", "--no-ema",
                           "--device", "cpu", "--threads", "1")
    assert code == 0, err
    ia, ib = np.load(a / "samples.npz")["arr_0"], np.load(b / "samples.npz")["arr_0"]
    assert ia.shape == ib.shape == (6, 8, 8, 1) and not np.array_equal(ia, ib)
    ra, rb = json.loads((a / "samples.json").read_text()), json.loads((b / "samples.json").read_text())
    assert {k: ra[k] for k in ("sampler", "respacing", "model_evaluations_per_image", "cfg_scale", "guidance",
                               "cfg_channels", "weights", "seed", "num_samples", "world_size", "step",
                               "sample_precision", "batch_size")} == {
        "sampler": "ddim", "respacing": "ddim4", "model_evaluations_per_image": 4, "cfg_scale": 1.0,
        "guidance": False, "cfg_channels": None, "weights": "ema", "seed": 5, "num_samples": 6, "world_size": 1,
        "step": 2, "sample_precision": "fp32", "batch_size": 4}
    assert rb["sampler"] == "ddpm" and rb["respacing"] == "3" and rb["model_evaluations_per_image"] == 6
    assert rb["cfg_scale"] == 4.0 and rb["guidance"] is True and rb["cfg_channels"] == "all"
    assert rb["weights"] == "model" and rb["device"] == "cpu"
    # samples.json holds the settings object's record, built from the run's config and the options given
    cfg = config_from_dict(read_yaml(RunDir(runs["cond"]).config_path))
    asked = SamplingOverrides(num=6, seed=5, cfg_scale=4.0, sampler="ddpm", respacing="3", use_ema=False)
    settings = SamplingSettings.from_config(cfg, asked, bounded=True)
    assert {k: rb[k] for k in settings.applied()} == settings.applied()
    plain = SamplingSettings.from_config(cfg, SamplingOverrides(num=6, seed=5))
    assert {k: ra[k] for k in plain.applied()} == plain.applied() and plain.applied() != settings.applied()


def test_default_out_is_a_fresh_folder_per_setting(runs, run_cli):
    run = runs["cond"]
    write(run / "samples" / "samples.npz", "training-time eval samples")  # what eval.json was computed on
    code, out, err = run_cli("sample", str(run), "--num", "4", "--cfg-scale", "2")
    assert code == 0, err
    folder = run / "samples" / "step0000002-ddim4-cfg2.0-seed0-n4"
    assert f"samples: {folder}" in out and (folder / "samples.npz").exists()
    assert (run / "samples" / "samples.npz").read_text() == "training-time eval samples"
    # the bar counts sampler steps x batches (1 batch of 4 images, 4 DDIM steps), not batches
    assert "4/4" in err
    # the same settings again: refused, one line; --overwrite replaces the set
    code, _, err = run_cli("sample", str(run), "--num", "4", "--cfg-scale", "2")
    assert code == 2 and "already holds files" in err and "--overwrite" in err
    before = (folder / "samples.npz").stat().st_mtime_ns
    assert run_cli("sample", str(run), "--num", "4", "--cfg-scale", "2", "--overwrite")[0] == 0
    assert (folder / "samples.npz").stat().st_mtime_ns != before
    assert sorted(p.name for p in (run / "samples").iterdir()) == ["samples.npz", folder.name]


def test_out_with_old_samples_is_refused_and_interrupt_leaves_no_half_set(runs, run_cli, tmp_path, monkeypatch):
    out = tmp_path / "out"
    assert run_cli("sample", str(runs["cond"]), "--num", "6", "--out", str(out))[0] == 0
    code, _, err = run_cli("sample", str(runs["cond"]), "--num", "2", "--out", str(out))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "already holds files" in err
    assert len(list((out / "images").glob("*.png"))) == 6  # untouched: no mix of old and new

    from dtr_plugins.sampling import sample as sample_mod

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(sample_mod, "write_samples", interrupted)
    code, _, _ = run_cli("sample", str(runs["cond"]), "--num", "2", "--out", str(tmp_path / "new"))
    assert code == 130
    assert not (tmp_path / "new").exists() and not list(tmp_path.glob(".new.partial-*"))
    code, _, _ = run_cli("sample", str(runs["cond"]), "--num", "2", "--out", str(out), "--overwrite")
    assert code == 130 and len(list((out / "images").glob("*.png"))) == 6  # old set kept whole


def test_torchrun_sampling_writes_rank_shards_and_merges_on_rank_0(runs, tmp_path):
    single = tmp_path / "single"
    dp.sample(runs["cond"], num=10, out=single, progress=False)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    # "--": torchrun would take --num for its own --numa-binding
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
           "-m", "dtr_plugins", "--", "sample", str(runs["cond"]), "--num", "10", "--out", str(tmp_path / "two"),
           "--device", "cpu"]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-8000:]
    two = tmp_path / "two"
    assert np.array_equal(np.load(two / "samples.npz")["arr_0"], np.load(single / "samples.npz")["arr_0"])
    assert np.array_equal(np.load(two / "samples.npz")["labels"], np.load(single / "samples.npz")["labels"])
    assert json.loads((two / "samples.json").read_text())["world_size"] == 2
    assert not (two / "shards").exists() and not list(tmp_path.glob(".two.partial-*"))


MERGE_FAILS = """\
import errno
import sys
from dtr_plugins.cli import main
from dtr_plugins.sampling import sample as sample_module

if __import__("os").environ["RANK"] == "0":
    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")
    sample_module.write_samples = full_disk
sys.exit(main(["sample", sys.argv[1], "--num", "4", "--out", sys.argv[2], "--device", "cpu"]))
"""


def test_rank_0_failing_to_merge_stops_every_rank(runs, tmp_path):
    """A rank-0-only failure while merging shards ends every rank with one line. The ranks are started by
    hand (no torchrun agent to kill the survivor), as on two nodes: rank 1 must not wait at a barrier."""

    script = write(tmp_path / "merge_fails.py", MERGE_FAILS)
    port = str(free_port())
    procs = []
    for rank in (0, 1):
        env = dict(os.environ, OMP_NUM_THREADS="1", RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                   LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        procs.append(subprocess.Popen([sys.executable, str(script), str(runs["cond"]), str(tmp_path / "out")],
                                      env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
    errs = []
    for proc in procs:
        _, err = proc.communicate(timeout=240)
        errs.append(err)
        assert proc.returncode == 2 and "Traceback" not in err, err
    assert "No space left on device" in errs[0].strip().splitlines()[-1]
    assert "rank 0 failed while merging the sample shards" in errs[1].strip().splitlines()[-1]
    assert not (tmp_path / "out").exists() and not list(tmp_path.glob(".out.partial-*"))


GATHER = """\
import sys
import numpy as np
from dtr_plugins.core import distributed
from dtr_plugins.sampling.sample import generate, load_run

d = distributed.setup("cpu")
cfg, model, diffusion, _ = load_run(sys.argv[1], device="cpu")
record = {}
images, labels = generate(model, diffusion, cfg, 10, dist=d, progress=False, record=record)
if d.is_main:
    np.save(sys.argv[2], images)
else:
    assert images.shape == (0,), images.shape  # only rank 0 receives the images
assert record["world_size"] == 2 and len(labels) == 10
distributed.teardown(d, clean=True)
"""


def test_generate_under_torchrun_gathers_to_rank_0_only(runs, tmp_path):
    script = write(tmp_path / "gather.py", GATHER)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
           str(script), str(runs["cond"]), str(tmp_path / "images.npy")]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-8000:]
    single = tmp_path / "single"
    dp.sample(runs["cond"], num=10, out=single, progress=False)
    assert np.array_equal(np.load(tmp_path / "images.npy"), np.load(single / "samples.npz")["arr_0"])


@pytest.mark.filterwarnings("ignore:FID from 8 samples")
def test_training_time_eval_records_the_applied_values(tmp_path, run_cli):
    path = tiny_dit_config(tmp_path, "tiny.yaml", **TINY)
    cfg = dp.load_config(path, overrides=[f"output_dir={tmp_path}", "data={name: digits, image_size: 8}",
                                          "backbone.num_classes=10", "sample.cfg_scale=2.0",
                                          "eval={num_samples: 8, feature_extractor: digits-classifier}"])
    run_dir = dp.train(cfg, progress=False)
    final = json.loads((run_dir / "eval.json").read_text())
    assert {k: final[k] for k in ("step", "cfg_scale", "guidance", "cfg_channels", "model_evaluations_per_image",
                                  "num_samples", "seed", "weights", "world_size", "sample_precision")} == {
        "step": 2, "cfg_scale": 2.0, "guidance": True, "cfg_channels": "all", "model_evaluations_per_image": 8,
        "num_samples": 8, "seed": 3, "weights": "ema", "world_size": 1, "sample_precision": "fp32"}
    info = json.loads((run_dir / "samples" / "samples.json").read_text())
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["eval"]["model_evaluations_per_image"] for r in rows if "eval" in r][-1] == 8  # 4 steps x (cond+uncond)
    assert info["cfg_scale"] == 2.0 and info["step"] == 2 and info["model_evaluations_per_image"] == 8
    # the same fields as dtr sample's samples.json (the bug: no checkpoint, no labels)
    assert info["checkpoint"] == str(run_dir / "checkpoints" / "0000002.pt") and info["labels"] == "balanced"
    assert info["batch_size"] == 4  # sample.batch_size 4, 8 images
    assert run_cli("sample", str(run_dir), "-n", "2", "--out", str(tmp_path / "s"))[0] == 0
    assert sorted(info) == sorted(json.loads((tmp_path / "s" / "samples.json").read_text()))


def test_records_say_the_batch_and_labels_applied(runs, run_cli, tmp_path):
    # the bug: batch_size 4 (the config's) recorded for -n 2; --labels on an unconditional model ignored but
    # recorded as "given"; "balanced" recorded where no labels are used
    out = tmp_path / "c"
    assert run_cli("sample", str(runs["cond"]), "-n", "2", "--out", str(out), "--labels", "1", "3")[0] == 0
    info = json.loads((out / "samples.json").read_text())
    assert info["batch_size"] == 2 and info["labels"] == "given"
    assert np.load(out / "samples.npz")["labels"].tolist() == [1, 3]
    code, _, err = run_cli("sample", str(runs["uncond"]), "-n", "2", "--labels", "1", "2")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "--labels: this model is unconditional (num_classes=1)" in err
    assert not list((runs["uncond"] / "samples").glob("*labels*"))
    out = tmp_path / "u"
    assert run_cli("sample", str(runs["uncond"]), "-n", "6", "--batch-size", "4", "--out", str(out))[0] == 0
    info = json.loads((out / "samples.json").read_text())
    assert info["labels"] == "unconditional" and info["batch_size"] == 4
    code, _, err = run_cli("sample", str(runs["cond"]), "-n", "3", "--labels", "1", "--out", str(tmp_path / "x"))
    assert code == 2 and "--labels: got 1 labels for --num-samples 3" in err and "--num " not in err


@pytest.mark.filterwarnings("ignore:FID from")
def test_eval_takes_device_and_threads(runs, run_cli, tmp_path):
    out = tmp_path / "s"
    assert run_cli("sample", str(runs["cond"]), "--num", "4", "--out", str(out), "--threads", "1")[0] == 0
    code, _, err = run_cli("eval", "--samples", str(out / "samples.npz"), "--ref", "dataset:digits",
                           "--feature-extractor", "digits-classifier", "--device", "cpu", "--threads", "1",
                           "--out", str(tmp_path / "eval.json"))
    assert code == 0, err
    assert json.loads((tmp_path / "eval.json").read_text())["device"] == "cpu"
    # the folder dtr sample wrote is read as its samples.npz: labels and provenance, not grid.png as a sample
    code, _, err = run_cli("eval", "--samples", str(out), "--ref", "dataset:digits", "--feature-extractor",
                           "digits-classifier", "--metrics", "prc", "--out", str(tmp_path / "folder.json"))
    assert code == 0, err
    got = json.loads((tmp_path / "folder.json").read_text())
    assert got["provenance_file"] == str(out / "samples.json") and got["num_samples"] == 4
    assert got["sample_labels"] == "labels" and "class_accuracy" in got


def test_overwrite_never_replaces_a_run_a_file_or_foreign_files(runs, run_cli, tmp_path, monkeypatch):
    # the bug: `dtr sample RUN --out RUN --overwrite` deleted checkpoints/, config.yaml, metrics.jsonl
    import shutil

    run = tmp_path / "runs" / "cond"
    shutil.copytree(runs["cond"], run)
    before = sorted(str(p.relative_to(run)) for p in run.rglob("*"))
    precious = write(tmp_path / "precious.txt", "keep me")
    foreign = tmp_path / "pdir"
    write(foreign / "notes.txt", "keep me too")
    ckpt = next((run / "checkpoints").glob("*.pt"))
    cases = {str(run): "run sampled from", str(tmp_path / "runs"): "run sampled from",
             str(run / "checkpoints"): "not a sample set", str(precious): "is a file",
             str(foreign): "not a sample set", str(precious / "sub"): "is a file"}
    for out, why in cases.items():
        code, _, err = run_cli("sample", str(run), "--num", "2", "--out", out, "--overwrite")
        assert code == 2, (out, err)
        assert len(err.strip().splitlines()) == 1 and err.startswith("dtr: error: --out ") and why in err, err
    # from a checkpoint file: its run is protected too
    code, _, err = run_cli("sample", str(ckpt), "--num", "2", "--out", str(run), "--overwrite")
    assert code == 2 and "run sampled from" in err
    monkeypatch.chdir(tmp_path / "pdir")
    for out in (".", ".."):
        code, _, err = run_cli("sample", str(run), "--num", "2", "--out", out, "--overwrite")
        assert code == 2 and len(err.strip().splitlines()) == 1 and "--out" in err and "Traceback" not in err
    assert sorted(str(p.relative_to(run)) for p in run.rglob("*")) == before
    assert precious.read_text() == "keep me" and (foreign / "notes.txt").read_text() == "keep me too"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pdir", "precious.txt", "runs"]
    # an earlier sample set is still replaced
    out = tmp_path / "set"
    assert run_cli("sample", str(run), "--num", "2", "--out", str(out))[0] == 0
    assert run_cli("sample", str(run), "--num", "3", "--out", str(out), "--overwrite")[0] == 0
    assert len(list((out / "images").glob("*.png"))) == 3
    write(out / "notes.txt", "mine")  # no longer only a sample set: refused
    code, _, err = run_cli("sample", str(run), "--num", "2", "--out", str(out), "--overwrite")
    assert code == 2 and "not a sample set" in err and (out / "notes.txt").exists()


def test_sampler_and_respacing_errors_name_the_option_before_the_bar(runs, run_cli, tmp_path):
    # the bug: "sampler 'foo': allowed ddpm, ddim" after a progress-bar fragment (2 lines on stderr)
    cases = ((["--sampler", "foo"], "dtr: error: --sampler: 'foo' is not a gaussian sampler (allowed: ddpm, ddim)"),
             (["--respacing", "ddim0"], "dtr: error: --respacing: respacing 'ddim0': no integer stride gives"),
             (["--respacing", "x7"], "dtr: error: --respacing: respacing 'x7': expected 'N', 'N1,N2,...' or 'ddimN'"))
    for args, expected in cases:
        code, out, err = run_cli("sample", str(runs["cond"]), "-n", "2", "--out", str(tmp_path / "o"), *args)
        assert code == 2 and out == "" and len(err.splitlines()) == 1 and err.startswith(expected), err
    assert list(tmp_path.iterdir()) == []


def test_export_out_file_says_it_is_a_file(runs, run_cli, tmp_path):
    afile = write(tmp_path / "afile", "x")
    code, _, err = run_cli("export", str(runs["cond"]), "--out", str(afile))
    assert code == 2 and err.strip() == f"dtr: error: --out: {afile} is a file; choose a new folder"
    assert afile.read_text() == "x"
