"""The slurm launcher against a real single-node Slurm on this machine (scripts/slurm_localhost.sh starts it).

A two-run suite goes through ``dtr suite --launcher slurm``; one job is cancelled half-way, the rerun
submits only that run again, and it resumes from its checkpoint; then the report is built.
"""
import json
import shutil
import subprocess
import time

import pytest

from dtr_plugins.launchers.slurm import SlurmParams, minutes

from ..conftest import write
from .test_suite import BASE


def slurm_unavailable() -> str | None:
    """Why Slurm cannot be used here (one line), or None when a node of partition debug is up."""
    if shutil.which("sinfo") is None:
        return "sinfo is not installed (scripts/slurm_localhost.sh installs and starts a local Slurm)"
    proc = subprocess.run(["sinfo", "-h", "-p", "debug", "-o", "%T"], capture_output=True, text=True, timeout=30)
    states = proc.stdout.split()
    if proc.returncode != 0 or not states:
        why = (proc.stderr.strip().splitlines() or ["no partition debug"])[-1]
        return f"sinfo failed: {why} (run scripts/slurm_localhost.sh)"
    if not any(s.rstrip("*") in ("idle", "mixed", "allocated") for s in states):
        return f"the debug partition has no usable node (sinfo: {' '.join(states)})"
    return None


def wait_for(predicate, timeout_s: float, what: str, poll_s: float = 0.5):
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(poll_s)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


def test_time_limits_parse():
    assert minutes(90) == 90 and minutes("01:30:00") == 90 and minutes("2-00:00:30") == 2 * 1440 + 1
    with pytest.raises(ValueError, match="HH:MM:SS"):
        minutes("90m")
    with pytest.raises(ValueError, match="not divisible"):
        SlurmParams(gpus_per_run=3, nodes_per_run=2)
    for bad in ("25:99:99", "01:60:00", "00:10:60", "1-24:00:00"):
        with pytest.raises(ValueError, match="must be 00-59"):
            minutes(bad)
    assert minutes("25:00:00") == 1500 and minutes("1-23:59:59") == 2880


def test_a_time_limit_within_the_signal_delay_is_refused(tmp_path, run_cli):
    with pytest.raises(ValueError, match="not longer than signal_delay_s 120 s"):
        SlurmParams(time=2)
    assert SlurmParams(time=2, signal_delay_s=60).time == 2 and SlurmParams(time=3).time == 3
    write(tmp_path / "base.yaml", BASE)
    path = write(tmp_path / "s.yaml",
                 f"output_dir: {tmp_path / 'runs'}\nbase: base.yaml\nname: p\nmatrix: {{seed: [0]}}\n")
    for value, words in (("1", "not longer than signal_delay_s"), ("25:99:99", "must be 00-59")):
        code, _, err = run_cli("suite", str(path), "--dry-run", "--launcher", "slurm",
                               "--launcher-set", f"time={value}")
        assert code == 2 and len(err.strip().splitlines()) == 1 and "launcher" in err and words in err, err


def test_unknown_launcher_and_bad_launcher_key_are_one_line(tmp_path, run_cli):
    write(tmp_path / "base.yaml", BASE)
    path = write(tmp_path / "suite.yaml", f"output_dir: {tmp_path / 'runs'}\nbase: base.yaml\nname: s\n"
                 "launcher: {name: slurm, partitoin: debug}\nmatrix: {seed: [0]}\n")
    code, _, err = run_cli("suite", str(path), "--dry-run")
    assert code == 2 and "suite.yaml: launcher.partitoin: unknown key" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli("suite", str(path), "--dry-run", "--launcher", "ray")
    assert code == 2 and "launcher.name: unknown launcher 'ray' (known: local, slurm)" in err
    plain = f"output_dir: {tmp_path / 'runs'}\nbase: base.yaml\nname: p\nmatrix: {{seed: [0]}}\n"
    path = write(tmp_path / "plain.yaml", plain)
    code, _, err = run_cli("suite", str(path), "--dry-run", "--launcher", "slurm", "--launcher-set", "gpus_per_run=3",
                           "--launcher-set", "nodes_per_run=2")
    assert code == 2 and "launcher: gpus_per_run 3 is not divisible by nodes_per_run 2" in err
    code, _, err = run_cli("suite", str(path), "--dry-run", "--launcher-set", "partition")
    assert code == 2 and "--launcher-set: 'partition' is not of the form KEY=VALUE" in err
    # a raw newline: YAML would fold it into a space (partition 'gpu rm') without a word
    code, out, err = run_cli("suite", str(path), "--dry-run", "--launcher", "slurm",
                             "--launcher-set", "partition=gpu\nrm")
    assert code == 2 and err.strip() == ("dtr: error: --launcher-set: 'partition=gpu\\nrm' holds a control character "
                                         "('\\n'); give one line of printable text (an escape inside YAML quotes, "
                                         "e.g. key=\"a\\nb\", is kept)"), err
    assert "gpu rm" not in out


def test_suite_through_slurm_with_a_cancelled_job_that_resumes(tmp_path, run_cli, capsys):
    reason = slurm_unavailable()
    if reason:
        pytest.skip(f"slurm: {reason}")
    write(tmp_path / "base.yaml", BASE)
    path = write(tmp_path / "suite.yaml", f"""\
output_dir: {tmp_path / 'runs'}
base: base.yaml
name: cluster
set: {{train.steps: 300, train.ckpt_every: 50, train.log_every: 50}}
launcher: {{name: slurm, partition: debug, cpus_per_run: 1, time: 10, poll_s: 1}}
matrix:
  seed: [0, 1]
""")
    root = tmp_path / "runs" / "cluster"
    code, out, err = run_cli("suite", str(path), "--launcher", "slurm")  # submits and returns
    assert code == 0, err
    assert "submit   seed0 (slurm job" in out and "submit   seed1 (slurm job" in out
    jobs = json.loads((root / "slurm" / "jobs.json").read_text())
    victim = jobs["seed1"]["job_id"]

    # cancel seed1's job once it has written a checkpoint, before it finishes
    wait_for(lambda: (root / "seed1" / "checkpoints" / "0000050.pt").exists(), 240, "seed1's first checkpoint", 0.2)
    subprocess.run(["scancel", victim], check=True)
    wait_for(lambda: victim not in subprocess.run(["squeue", "-h", "-r", "-o", "%i"], capture_output=True,
                                                  text=True).stdout.split(), 60, "the cancelled job to leave the queue")
    killed = json.loads((root / "seed1" / "status.json").read_text())
    assert killed["state"] in ("running", "failed") and "signal: 15" in killed.get("error", "signal: 15")
    assert not (root / "seed1" / "checkpoints" / "0000300.pt").exists()
    code, out, _ = run_cli("report", str(root))  # the report works while jobs run or died
    assert code == 0 and (root / "report.md").exists()

    # rerun: seed0 is finished or still queued/running, so only seed1 is submitted again; wait for both
    code, out, err = run_cli("suite", str(path), "--launcher", "slurm", "--wait")
    assert code == 0, err
    assert "submit   seed1" in out and "submit   seed0" not in out
    assert "skip     seed0" in out
    status = {run: json.loads((root / run / "status.json").read_text()) for run in ("seed0", "seed1")}
    assert status["seed0"]["state"] == "done" and status["seed0"]["resumed"] is False
    assert status["seed1"]["state"] == "done" and status["seed1"]["resumed"] is True
    assert status["seed1"]["job_id"] != victim
    meta = json.loads((root / "seed1" / "meta.json").read_text())
    assert meta["resumed_from_step"] >= 50
    steps = [json.loads(line)["step"] for line in (root / "seed1" / "metrics.jsonl").read_text().splitlines()]
    assert steps[-1] == 300 and steps[steps.index(meta["resumed_from_step"]) + 1] == meta["resumed_from_step"] + 50
    assert (root / "seed1" / "checkpoints" / "0000300.pt").exists()
    assert "report: " in out
    assert "2 of 2 runs finished" in (root / "report.md").read_text()
    rows = (root / "results.csv").read_text()
    assert "seed0" in rows and "seed1" in rows
    assert "failed" not in out
