"""Run directory integrity (issue #12): config identity, routing record, metrics lines, missing outputs, the lock."""
import os
import subprocess
import sys

import pytest
import torch

import dtr_plugins as dp
from dtr_plugins.compose import build_model
from dtr_plugins.core.checkpoint import RoutingMismatchWarning, routing_record, save_checkpoint
from dtr_plugins.core.errors import CheckpointError, UserError
from dtr_plugins.core.fingerprint import RESUMABLE_KEYS, first_difference, identity_config, weights_fingerprint
from dtr_plugins.runs.rundir import RunDir, RunLocked

from ..conftest import tiny_dit_config, write


def cfg_with(tmp_path, *overrides):
    return dp.load_config(tiny_dit_config(tmp_path, sample=None), overrides=[f"output_dir={tmp_path}", *overrides])


# ------------------------------------------------------------------------------------ fingerprint
def test_fingerprint_ignores_resumable_keys_and_names_the_first_changed_key(tmp_path):
    base = cfg_with(tmp_path, "train.steps=20").to_dict()
    longer = cfg_with(tmp_path, "train.steps=40", "train.log_every=5", "train.num_workers=2",
                      "eval.num_samples=10", "output_dir=/elsewhere", "train.threads=1").to_dict()
    other_beta = cfg_with(tmp_path, "routing.beta=0.5", "train.steps=40").to_dict()
    assert weights_fingerprint(base) == weights_fingerprint(longer)
    assert weights_fingerprint(base) != weights_fingerprint(other_beta)
    assert first_difference(base, other_beta) == ("routing.beta", 0.8, 0.5)
    assert first_difference(base, longer) is None
    keys = identity_config(base)
    assert "train.lr" in keys and "train.batch_size" in keys and "seed" in keys and "routing.beta" in keys
    assert not any(k.startswith(("eval.", "sample.", "log.")) or k == "train.steps" for k in keys)
    assert "train.steps" in RESUMABLE_KEYS


# ------------------------------------------------------------------------------- routing record
def test_loading_into_a_model_with_other_routing_raises_unless_allowed(tmp_path):
    trained = build_model(cfg_with(tmp_path, "routing.beta=0.8"))
    other = build_model(cfg_with(tmp_path, "routing.beta=0.5"))
    same = build_model(cfg_with(tmp_path, "routing.beta=0.8"))
    record = routing_record(trained)
    assert record is not None and record != routing_record(other) and record == routing_record(same)
    path = save_checkpoint(tmp_path / "c.pt", model=trained.state_dict(), step=1, routing=record)
    with pytest.raises(CheckpointError, match=r"trained with routing .*beta=0\.8.* but the model uses .*beta=0\.5"):
        dp.load_checkpoint(other, path)
    with pytest.warns(RoutingMismatchWarning, match="allow_routing_mismatch"):
        dp.load_checkpoint(other, path, allow_routing_mismatch=True)
    for name, t in other.state_dict().items():
        assert torch.equal(t, trained.state_dict()[name]), name
    dp.load_checkpoint(same, path)  # same routing: silent
    # same strategy settings, other tables (another number of timesteps): the message says what differs
    steps = build_model(cfg_with(tmp_path, "routing.beta=0.8", "diffusion.steps=500"))
    with pytest.raises(CheckpointError, match=r"trained with routing dtr\(alpha=4, beta=0\.8\), as the model's, but "
                                              r"with other mask tables .*another routing.site, number of timesteps"):
        dp.load_checkpoint(steps, path)
    # a file without the record (older checkpoints, bare state dicts) loads as before
    dp.load_checkpoint(other, save_checkpoint(tmp_path / "old.pt", model=trained.state_dict(), step=1))


# ----------------------------------------------------------------------------------- metrics
def test_resume_truncation_drops_records_past_the_checkpoint(tmp_path):
    rd = RunDir(tmp_path / "run")
    for step in (2, 4, 6, 8, 10):
        rd.append_metrics({"step": step, "loss": float(step)})
    rd.append_metrics({"step": 6, "eval": {"fid": 1.0}})
    assert rd.truncate_metrics(6) == 2
    assert [(r["step"], "eval" in r) for r in rd.read_metrics()] == [(2, False), (4, False), (6, False), (6, True)]
    assert rd.truncate_metrics(6, drop_eval_at_step=True) == 1
    assert [(r["step"], "eval" in r) for r in rd.read_metrics()] == [(2, False), (4, False), (6, False)]
    assert not list(rd.path.glob("*.tmp"))


def test_cut_last_line_is_dropped_with_a_warning_and_not_extended(tmp_path):
    rd = RunDir(tmp_path / "run")
    rd.append_metrics({"step": 2, "loss": 1.0})
    with open(rd.metrics_path, "a") as f:
        f.write('{"step": 4, "lo')  # a full disk cut this append
    with pytest.warns(UserWarning, match="dropping a cut last line"):
        assert [r["step"] for r in rd.read_metrics()] == [2]
    with pytest.warns(UserWarning, match="dropping a cut last line"):
        rd.truncate_metrics(2)  # what a resume does
    rd.append_metrics({"step": 4, "loss": 0.5})
    assert rd.metrics_path.read_text() == '{"step": 2, "loss": 1.0}\n{"step": 4, "loss": 0.5}\n'


def test_short_append_is_undone_and_raises(tmp_path, monkeypatch):
    rd = RunDir(tmp_path / "run")
    rd.append_metrics({"step": 2, "loss": 1.0})
    before = rd.metrics_path.read_bytes()
    real_write = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: real_write(fd, data[:5]))  # a disk that fills up mid-line
    with pytest.raises(OSError, match="short write"):
        rd.append_metrics({"step": 4, "loss": 0.5})
    monkeypatch.setattr(os, "write", real_write)
    assert rd.metrics_path.read_bytes() == before


# ----------------------------------------------------------------------------------- outputs
def test_missing_outputs_lists_what_the_config_asks_for(tmp_path):
    rd = RunDir(tmp_path / "run")
    cfg = cfg_with(tmp_path, "eval.at_end=true")
    assert rd.missing_outputs(cfg) == ["checkpoints/0000006.pt", "eval.json", "samples/samples.npz"]
    write(rd.checkpoint_path(6), "x")
    write(rd.samples / "samples.npz", "x")
    assert rd.missing_outputs(cfg) == ["eval.json"]
    assert rd.missing_outputs(cfg_with(tmp_path, "eval.at_end=false")) == []
    assert rd.missing_outputs(cfg_with(tmp_path, "eval.at_end=false", "eval.every=2")) == ["eval.json"]
    write(rd.eval_path, "{}")
    assert rd.missing_outputs(cfg) == []
    assert rd.missing_outputs(cfg_with(tmp_path, "train.steps=9")) == ["checkpoints/0000009.pt"]


# -------------------------------------------------------------------------------------- lock
HOLD = """\
import sys, time
from dtr_plugins.runs.rundir import RunDir
with RunDir(sys.argv[1]).lock():
    print("locked", flush=True)
    time.sleep(120)
"""


def test_second_process_is_refused_and_a_dead_holder_frees_the_lock(tmp_path):
    rd = RunDir(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(rd.path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLocked, match=rf"in use by pid {holder.pid} on "), rd.lock():
            pass
    finally:
        holder.kill()  # a crash: the lock file stays, the OS drops the lock
        holder.wait()
    assert rd.lock_path.exists()  # stale lock file of the dead holder: no obstacle
    with rd.lock():
        assert rd.lock_path.read_text().startswith(f"pid {os.getpid()} on ")


def test_a_held_lock_names_the_run_and_another_dtr_process(tmp_path):
    rd = RunDir(tmp_path / "run")
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(rd.path)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunLocked) as info, rd.lock():
            pass
    finally:
        holder.kill()
        holder.wait()
    line = str(info.value)
    assert "\n" not in line and line.startswith(f"{rd.path}: ") and "another dtr process" in line


def test_a_file_system_without_flock_is_not_reported_as_in_use(tmp_path, monkeypatch):
    """ENOLCK (some NFS mounts) is one line with the errno text, not "in use" (RunLocked)."""
    import errno
    import fcntl

    def no_locks(fd, op):
        raise OSError(errno.ENOLCK, os.strerror(errno.ENOLCK))

    monkeypatch.setattr(fcntl, "flock", no_locks)
    rd = RunDir(tmp_path / "run")
    with pytest.raises(UserError) as info, rd.lock():
        pass
    assert not isinstance(info.value, RunLocked)
    line = str(info.value)
    assert "\n" not in line and line.startswith(f"{rd.path}: cannot lock the run directory")
    assert os.strerror(errno.ENOLCK) in line and "in use" not in line


def test_suite_counts_a_run_done_only_when_its_outputs_exist(tmp_path):
    from dtr_plugins.experiments.suite import run_state

    rd = RunDir(tmp_path / "run")
    cfg = cfg_with(tmp_path, "eval.at_end=true")
    write(rd.checkpoint_path(6), "x")
    rd.write_status({"state": "done"})  # an evaluation interrupted at the end used to leave this
    assert run_state(rd.path, cfg) == "partial"
    write(rd.eval_path, "{}")
    write(rd.samples / "samples.npz", "x")
    assert run_state(rd.path, cfg) == "done"
    assert run_state(rd.path, cfg_with(tmp_path, "eval.at_end=false", "train.steps=9")) == "partial"
