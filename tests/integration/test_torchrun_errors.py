"""A config error under torchrun: every rank prints the one line and exits 2, before any collective
("Trustworthy results" #12, item 6)."""
import os
import re
import subprocess
import sys

from ..conftest import ROOT, free_port

LINE = (f"dtr: error: {ROOT / 'configs' / 'dit_digits.yaml'}: data.image_size: 16 but backbone 'dit' expects 8px "
        "images (backbone.input_size); make them equal")


def _train_args(tmp_path):
    return ["-m", "dtr_plugins", "train", str(ROOT / "configs" / "dit_digits.yaml"), "--set", "data.image_size=16",
            "--set", f"output_dir={tmp_path / 'runs'}"]


def test_config_error_under_torchrun_is_one_line_on_every_rank(tmp_path):
    logs = tmp_path / "logs"
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone",
           f"--log-dir={logs}", "--redirects=3", *_train_args(tmp_path)]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode != 0
    codes = dict(re.findall(r"rank\s*:\s*(\d+) \(local_rank: \d+\)\s*exitcode\s*:\s*(-?\d+)", result.stderr))
    # a rank exits 2 on its own; torchrun may stop the other (SIGTERM) once the first has failed
    assert set(codes) == {"0", "1"} and "2" in codes.values() and set(codes.values()) <= {"2", "-15"}, result.stderr
    for rank, code in codes.items():
        if code == "2":  # (a rank stopped by torchrun's SIGTERM may print torchrun's own SignalException)
            (err,) = logs.rglob(f"attempt_0/{rank}/stderr.log")
            text = err.read_text()
            assert "Traceback" not in text and "gloo" not in text.lower(), text
            assert text.strip().splitlines() == [LINE]
    assert not (tmp_path / "runs").exists()  # nothing written


def test_every_rank_refuses_the_config_before_the_process_group(tmp_path):
    """The two ranks of a torchrun world, started by hand so that neither is stopped by the other: each one
    exits 2 with the line on its own (none waits in a collective for the other)."""
    procs = []
    port = str(free_port())
    for rank in (0, 1):
        env = dict(os.environ, OMP_NUM_THREADS="1", RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE="2",
                   LOCAL_WORLD_SIZE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=port)
        procs.append(subprocess.Popen([sys.executable, *_train_args(tmp_path)], env=env, stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 2 and "Traceback" not in err, err
        assert err.strip().splitlines() == [LINE] and out == ""
    assert not (tmp_path / "runs").exists()
