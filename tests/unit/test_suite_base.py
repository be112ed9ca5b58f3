"""A suite's ``base:`` must be a run config: pointing it at another suite file is one line saying so."""
from ..conftest import write

RUN = """\
name: base
backbone: {name: dit, input_size: 8, patch_size: 2, hidden_size: 32, depth: 2, num_heads: 2, in_channels: 1,
  num_classes: 4}
data: {name: synthetic, num_samples: 32, image_size: 8, num_classes: 4}
train: {steps: 2, batch_size: 8}
"""


def test_base_that_is_a_suite_file_is_refused_in_one_line(tmp_path, run_cli):
    write(tmp_path / "run.yaml", RUN)
    write(tmp_path / "inner.yaml", "name: inner\nbase: run.yaml\nmatrix: {seed: [0, 1]}\n")
    outer = write(tmp_path / "outer.yaml", f"name: outer\noutput_dir: {tmp_path / 'runs'}\nbase: inner.yaml\n"
                                           "matrix: {seed: [0]}\n")
    for command in (("suite", str(outer), "--dry-run"), ("suite", str(outer))):
        code, _, err = run_cli(*command)
        lines = [ln for ln in err.splitlines() if not ln.startswith("dtr: warning")]
        assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
        assert lines[0] == (f"dtr: error: {outer}: base: inner.yaml is a suite file (it has base and matrix); base "
                            f"must be a run config (backbone, data, train ...), e.g. that suite's own base")
    code, out, err = run_cli("suite", str(tmp_path / "inner.yaml"), "--dry-run")  # its own base is fine
    assert code == 0, err
    assert not (tmp_path / "runs").exists()
