"""YAML is read as written (YAML 1.2 scalars), merge keys work, and hostile YAML is refused in one line."""
import time

import pytest

from dtr_plugins.core.config import YAML_MAX_BYTES, parse_yaml, read_yaml
from dtr_plugins.core.errors import ConfigError
from dtr_plugins.launchers.slurm import SlurmParams, minutes

from ..conftest import write

CONFIG = """\
name: x
seed: 0
backbone: {name: dit, input_size: 8, patch_size: 2, hidden_size: 32, depth: 2, num_heads: 2, in_channels: 1,
  num_classes: 4}
diffusion: {steps: 100}
data: {name: synthetic, num_samples: 32, image_size: 8, num_classes: 4}
eval: {at_end: false}
"""


def test_scalars_are_read_as_written():
    data = parse_yaml("time: 1:30:00\nseed: 1:20\nname: off\nyes_: yes\nn: 010\nlr: 1e-4\nhex: 0x1F\nflag: true\n"
                      "big: 1_000\nneg: -3\nf: 2.5\ninf: -.inf\n")
    assert data == {"time": "1:30:00", "seed": "1:20", "name": "off", "yes_": "yes", "n": 10, "lr": 0.0001,
                    "hex": 31, "flag": True, "big": 1000, "neg": -3, "f": 2.5, "inf": float("-inf")}
    assert minutes(SlurmParams(time=parse_yaml("t: 1:30:00")["t"]).time) == 90  # not 5400 minutes


def test_merge_keys_are_accepted_and_duplicates_still_refused():
    data = parse_yaml("base: &b {lr: 1, steps: 2}\nrun:\n  <<: *b\n  steps: 5\n")
    assert data["run"] == {"lr": 1, "steps": 5}
    with pytest.raises(Exception, match="duplicate key 'a'"):
        parse_yaml("a: 1\na: 2\n")


@pytest.mark.parametrize("line, message", [
    ("seed: 1:20", "seed: expected an integer, got '1:20' (str)"),
    ("name: true", "name: expected text, got true (read by YAML as a boolean); quote it to mean the text: "
                   "name: 'true'"),
    ("train: {compile: on}", "train.compile: expected a boolean, got 'on' (str); write true or false"),
])
def test_typed_text_and_fix_in_the_message(tmp_path, run_cli, line, message):
    key = line.split(":")[0]
    text = "\n".join(ln for ln in CONFIG.splitlines() if not ln.startswith(f"{key}:")) + f"\n{line}\n"
    code, _, err = run_cli("validate", str(write(tmp_path / "c.yaml", text)))
    assert code == 2 and err.strip().endswith(message) and len(err.strip().splitlines()) == 1


def test_name_off_is_the_text_off(tmp_path, run_cli):
    code, out, err = run_cli("validate", str(write(tmp_path / "c.yaml", CONFIG.replace("name: x", "name: off"))))
    assert code == 0, err


def test_alias_bomb_is_refused_quickly(tmp_path, run_cli):
    bomb = "a: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(8))
    started = time.monotonic()
    code, _, err = run_cli("validate", str(write(tmp_path / "bomb.yaml", bomb)))
    assert time.monotonic() - started < 5
    assert code == 2 and "bomb.yaml: malformed YAML: expands to more than 100000 values" in err
    assert len(err.strip().splitlines()) == 1


def test_deep_nesting_and_recursive_alias_are_one_line(tmp_path, run_cli):
    for name, text in (("deep", "a: " + "[" * 5000 + "]" * 5000 + "\n"), ("loop", "a: &a [*a]\n")):
        code, _, err = run_cli("validate", str(write(tmp_path / f"{name}.yaml", text)))
        assert code == 2 and "nested deeper than 64 levels" in err and "Traceback" not in err


def test_endless_or_huge_input_is_refused_after_the_cap(tmp_path):
    started = time.monotonic()
    with pytest.raises(ConfigError, match=r"/dev/zero: larger than 1 MiB; not a config file"):
        read_yaml("/dev/zero")  # endless: read until killed before the cap
    assert time.monotonic() - started < 5
    big = tmp_path / "big.yaml"
    big.write_text("a: " + "x" * YAML_MAX_BYTES)
    with pytest.raises(ConfigError, match="big.yaml: larger than 1 MiB"):
        read_yaml(big)
