"""Log output: the package logger is silent in a library, `dtr` shows it (-q / -v), each run keeps train.log."""
import logging

import pytest

import dtr_plugins as dp
from dtr_plugins.core.log import CAPTURED_ENV, run_log

from ..conftest import ROOT, tiny_dit_config

PACKAGE = logging.getLogger("dtr_plugins")


@pytest.fixture
def package_level():
    """Restore the package logger's level after a test sets it."""
    old = PACKAGE.level
    yield PACKAGE
    PACKAGE.setLevel(old)


def _train(tmp_path, **changes):
    cfg = dp.load_config(tiny_dit_config(tmp_path, **changes), overrides=[f"output_dir={tmp_path / 'runs'}"])
    return dp.train(cfg, progress=False)


def test_the_package_logger_at_error_silences_a_python_training_run(tmp_path, caplog, capsys, package_level):
    caplog.set_level(logging.DEBUG)  # the root logger shows everything that reaches it
    package_level.setLevel(logging.INFO)  # control: the run does log informational lines
    run_dir = _train(tmp_path / "a")
    assert any(r.name.startswith("dtr_plugins") and r.levelno == logging.INFO
               and r.getMessage() == f"dtr: run directory: {run_dir} (new run)" for r in caplog.records)
    caplog.clear()
    capsys.readouterr()
    package_level.setLevel(logging.ERROR)
    _train(tmp_path / "b")
    assert [r.getMessage() for r in caplog.records if r.name.startswith("dtr_plugins")] == []
    out, err = capsys.readouterr()
    assert "dtr:" not in out and "dtr:" not in err


def test_a_plain_python_program_prints_nothing_and_still_gets_train_log(tmp_path):
    """No logging configured (a fresh interpreter): the console stays empty, train.log has the INFO lines."""
    import subprocess
    import sys

    cfg = tiny_dit_config(tmp_path)
    code = (f"import dtr_plugins as dp; cfg = dp.load_config({str(cfg)!r}, overrides=['output_dir={tmp_path}/runs']); "
            "print(dp.train(cfg, progress=False))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr
    run_dir = tmp_path / "runs" / "tiny"
    assert done.stdout.strip() == str(run_dir) and "dtr:" not in done.stderr
    assert (run_dir / "train.log").read_text().splitlines()[0] == f"dtr: run directory: {run_dir} (new run)"


def test_cli_train_says_its_run_directory_first_and_train_log_holds_the_console_lines(tmp_path, run_cli):
    cfg = tiny_dit_config(tmp_path, eval={"every": 3, "num_samples": 8, "metrics": ["fid"],
                                          "feature_extractor": "digits-classifier"},
                          data={"name": "digits", "image_size": 8}, backbone={"num_classes": 10})
    code, out, err = run_cli("train", str(cfg), "--set", f"output_dir={tmp_path / 'runs'}")
    assert code == 0, err
    run_dir = tmp_path / "runs" / "tiny"
    lines = out.splitlines()
    assert lines[0] == f"dtr: run directory: {run_dir} (new run)"  # where the run writes, before anything else
    assert lines[-1] == f"run directory: {run_dir}"  # the result line (stdout, also with -q)
    assert any("evaluating" in line for line in lines)
    logged = (run_dir / "train.log").read_text().splitlines()
    # the console's log lines (stdout: info; stderr: warnings, between progress bars) and nothing else, each once
    warned = [ln for ln in err.replace("\r", "\n").splitlines() if ln.startswith("dtr: ")]
    assert any(ln.startswith("dtr: warning: FID from 8 samples") for ln in warned)
    assert sorted(logged) == sorted(lines[:-1] + warned) and len(set(logged)) == len(logged)
    # a resume appends to the same file
    code, out, err = run_cli("train", str(cfg), "--set", f"output_dir={tmp_path / 'runs'}", "--set",
                             "train.steps=9", "--resume")
    assert code == 0, err
    again = (run_dir / "train.log").read_text().splitlines()
    assert again[:len(logged)] == logged
    assert again[len(logged)] == f"dtr: run directory: {run_dir} (resuming from checkpoints/0000006.pt)"


def test_quiet_cli_train_shows_no_info_lines(tmp_path, run_cli):
    cfg = tiny_dit_config(tmp_path)
    code, out, err = run_cli("-q", "train", str(cfg), "--set", f"output_dir={tmp_path / 'runs'}")
    assert code == 0, err
    run_dir = tmp_path / "runs" / "tiny"
    assert out.splitlines() == [f"run directory: {run_dir}"] and "dtr: run directory" not in err
    assert "%|" not in err  # -q: no progress bar either (training, sampling at the end)
    log = run_dir / "train.log"  # what the console showed: no info line (a file only for a warning)
    assert not log.exists() or "dtr: run directory" not in log.read_text()
    # the flag after the command works too; the logger is as before afterwards
    code, out, _ = run_cli("train", str(cfg), "--set", f"output_dir={tmp_path / 'runs2'}", "--quiet")
    assert code == 0 and out.splitlines() == [f"run directory: {tmp_path / 'runs2' / 'tiny'}"]
    code, out, err = run_cli("train", str(cfg), "--set", f"output_dir={tmp_path / 'runs3'}")
    assert code == 0 and "dtr: device cpu" not in out and "tiny: 100%|" in err  # the training bar
    code, out, _ = run_cli("-v", "train", str(cfg), "--set", f"output_dir={tmp_path / 'runs4'}")
    assert code == 0 and out.splitlines()[1].startswith("dtr: device cpu, world size 1, compute {")  # debug
    assert PACKAGE.level == logging.NOTSET and not [h for h in PACKAGE.handlers
                                                    if not isinstance(h, logging.NullHandler)]  # restored


def test_run_log_writes_nothing_when_the_launcher_captures_the_same_file(tmp_path, monkeypatch, package_level):
    package_level.setLevel(logging.INFO)
    path = tmp_path / "train.log"
    monkeypatch.setenv(CAPTURED_ENV, str(path))
    with run_log(path):
        logging.getLogger("dtr_plugins.x").info("one line")
    assert not path.exists()
    monkeypatch.setenv(CAPTURED_ENV, str(tmp_path / "other.log"))
    with run_log(path):
        logging.getLogger("dtr_plugins.x").info("one line")
    logging.getLogger("dtr_plugins.x").info("after the run")
    assert path.read_text() == "one line\n"


@pytest.mark.parametrize("command", ["train", "validate"])
def test_a_suite_file_is_named_as_one(command, run_cli):
    suite = ROOT / "configs" / "suites" / "quickstart.yaml"
    code, out, err = run_cli(command, str(suite))
    assert code == 2 and out == ""
    assert err.strip() == (f"dtr: error: {suite}: is a suite file (it has base / matrix), not a run config; run it "
                           f"with `dtr suite {suite}`")


def test_a_fresh_run_refused_after_its_first_log_line_leaves_no_folder(tmp_path, monkeypatch, package_level):
    from dtr_plugins.core.errors import ConfigError
    from dtr_plugins.training import train as train_module

    def refuse(*args, **kwargs):
        raise ConfigError("train.x: refused")

    package_level.setLevel(logging.INFO)  # train.log gets its first line
    monkeypatch.setattr(train_module, "_initial_state", refuse)
    cfg = dp.load_config(tiny_dit_config(tmp_path), overrides=[f"output_dir={tmp_path / 'runs'}"])
    with pytest.raises(ConfigError, match="refused"):
        dp.train(cfg, progress=False)
    assert not (tmp_path / "runs").exists()
