"""Launcher options never become shell: control characters are refused before any job script is written;
``--dry-run`` shows the launcher, its options and the setup lines that will run."""
import os
import stat

import pytest

from ..conftest import write
from ..integration.test_suite import BASE


def fake_sbatch(tmp_path, monkeypatch):
    """A ``sbatch`` on PATH that keeps the job script it is given and answers like Slurm."""
    bin_dir, kept = tmp_path / "bin", tmp_path / "scripts"
    bin_dir.mkdir()
    kept.mkdir()
    sbatch = bin_dir / "sbatch"
    sbatch.write_text(f'#!/bin/sh\nfor last; do :; done\ncp "$last" {kept}/job.sh\necho "Submitted batch job 4242"\n')
    sbatch.chmod(sbatch.stat().st_mode | stat.S_IEXEC)
    srun = bin_dir / "srun"  # submitit looks for it before submitting
    srun.write_text("#!/bin/sh\nexit 0\n")
    srun.chmod(srun.stat().st_mode | stat.S_IEXEC)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    return kept


@pytest.mark.parametrize("launcher, key", [
    ('{name: slurm, partition: "gpu\\ntouch PWNED #"}', "launcher.partition"),
    ('{name: slurm, extra: {constraint: "a100\\rid"}}', "launcher.extra.constraint"),
    ('{name: slurm, extra: {"x\\ny": 1}}', "launcher.extra (a key)"),
    ('{name: slurm, account: "lab\\u001b[2J"}', "launcher.account"),
])
def test_control_characters_in_launcher_strings_are_refused(tmp_path, monkeypatch, run_cli, launcher, key):
    kept = fake_sbatch(tmp_path, monkeypatch)
    write(tmp_path / "base.yaml", BASE)
    path = write(tmp_path / "suite.yaml", f"output_dir: {tmp_path / 'runs'}\nbase: base.yaml\nname: s\n"
                 f"launcher: {launcher}\nmatrix: {{seed: [0]}}\n")
    for args in (("--dry-run",), ()):
        code, _, err = run_cli("suite", str(path), *args)
        assert code == 2 and f"suite.yaml: {key}: " in err and "control character" in err
        assert len(err.strip().splitlines()) == 1
    assert not (kept / "job.sh").exists() and not (tmp_path / "PWNED").exists()


def test_launcher_set_is_checked_too(tmp_path, run_cli):
    write(tmp_path / "base.yaml", BASE)
    path = write(tmp_path / "suite.yaml", f"output_dir: {tmp_path / 'runs'}\nbase: base.yaml\nname: s\n"
                 "matrix: {seed: [0]}\n")
    code, _, err = run_cli("suite", str(path), "--dry-run", "--launcher", "slurm", "--launcher-set", 'qos="a\\tb"')
    assert code == 2 and "launcher.qos: " in err and "control character" in err


def test_job_script_holds_the_options_as_given_and_dry_run_shows_setup(tmp_path, monkeypatch, run_cli):
    kept = fake_sbatch(tmp_path, monkeypatch)
    write(tmp_path / "base.yaml", BASE)
    path = write(tmp_path / "suite.yaml", f"output_dir: {tmp_path / 'runs'}\nbase: base.yaml\nname: s\n"
                 "launcher: {name: slurm, partition: gpu, time: 1:30:00, setup: [module load cuda],\n"
                 "           extra: {constraint: a100}}\nmatrix: {seed: [0]}\n")
    code, out, err = run_cli("suite", str(path), "--dry-run")
    assert code == 0, err
    assert "launcher slurm" in out and "  partition: 'gpu'" in out and "  time: '1:30:00'" in out
    assert "  setup: 1 shell line(s) run before each job:\n    $ module load cuda" in out
    assert not (kept / "job.sh").exists()  # a dry run submits nothing
    code, out, err = run_cli("suite", str(path))
    assert code == 0, err
    script = (kept / "job.sh").read_text()
    assert "#SBATCH --partition=gpu\n" in script and "#SBATCH --time=90\n" in script  # 90 minutes, not 5400
    assert "#SBATCH --constraint=a100\n" in script and "\nmodule load cuda\n" in script
