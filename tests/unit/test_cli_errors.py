"""One line on every error path of the CLI, and flags that survive torchrun.

"Trustworthy results" (#12), items 6, 8 and 14."""
import argparse
import errno
import json
import os
import subprocess
import sys
import textwrap
import types

import pytest
from torch.distributed.run import get_args_parser

from dtr_plugins.cli import build_parser
from dtr_plugins.compose import validate_run
from dtr_plugins.core.config import load_config
from dtr_plugins.core.errors import PluginError, os_error_line
from dtr_plugins.core.plugins import PluginLoadWarning, build_registry

from ..conftest import write
from .test_config import GOOD
from .test_plugins import STRIPES, dtr, make_distribution

BAD_HOOK = STRIPES + textwrap.dedent('''
    @dtr_plugins.hookimpl
    def dtr_register_backbones(register):
        raise RuntimeError("registration bug")
''')

BAD_FACTORY = textwrap.dedent('''
    import dtr_plugins

    def boom(**params):
        raise RuntimeError("factory bug")

    @dtr_plugins.hookimpl
    def dtr_register_strategies(register):
        register("boom", boom, description="always raises")
''')


def _module(name: str, source: str) -> types.ModuleType:
    module = types.ModuleType(name)
    exec(source, module.__dict__)
    return module


def _builtin_registry_plus(*extra):
    import dtr_plugins.backbones.dit as dit
    import dtr_plugins.codecs.identity as identity
    import dtr_plugins.data.digits as digits
    import dtr_plugins.extractors.builtin as fx
    import dtr_plugins.processes.gaussian as gaussian
    import dtr_plugins.strategies.dtr as sdtr
    import dtr_plugins.weighting.constant as constant

    return build_registry([dit, identity, digits, fx, gaussian, sdtr, constant, *extra], entry_points=False)


def test_registration_hook_that_raises_is_isolated():
    bad = _module("acme_bad_hook", BAD_HOOK.format(name="stripes"))
    with pytest.warns(PluginLoadWarning) as caught:
        registry = build_registry([(bad, "acme-bad", "1.0")], entry_points=False)
    message = str(caught[0].message)
    assert "plugin module 'acme_bad_hook' from distribution 'acme-bad' failed to register" in message
    assert "RuntimeError: registration bug" in message
    assert registry.names("strategy") == []  # nothing half-registered: its strategy went too
    assert registry.failures == [message]


def test_registration_hook_that_raises_via_entry_point(tmp_path):
    make_distribution(tmp_path, "acme-bad", "acme_bad_hook", BAD_HOOK.format(name="stripes"), ep_name="badhook")
    listed = dtr(tmp_path, "plugins", "--json")
    assert listed.returncode == 0 and "Traceback" not in listed.stderr
    warning = listed.stderr.strip()
    assert warning.startswith("dtr: warning: plugin entry point 'badhook = acme_bad_hook' from distribution "
                              "'acme-bad' failed to register") and len(warning.splitlines()) == 1
    names = {r["name"] for r in json.loads(listed.stdout)}
    assert "dtr" in names and "stripes" not in names
    validated = dtr(tmp_path, "validate", str(write(tmp_path / "c.yaml", GOOD)))
    assert validated.returncode == 0 and "Traceback" not in validated.stderr


def test_strategy_factory_that_raises_names_plugin_and_distribution(tmp_path):
    registry = _builtin_registry_plus((_module("acme_boom", BAD_FACTORY), "acme-boom", "2.0"))
    cfg = load_config(write(tmp_path / "c.yaml", GOOD), overrides=["routing={name: boom}"], registry=registry)
    with pytest.raises(PluginError) as exc:
        validate_run(cfg, registry)
    assert str(exc.value) == ("strategy 'boom' of plugin 'acme_boom' (distribution acme-boom) failed to build: "
                              "RuntimeError: factory bug (a bug in the plugin; --debug shows the traceback)")
    assert isinstance(exc.value.__cause__, RuntimeError)  # --debug shows where it came from


def _flags(parser: argparse.ArgumentParser):
    """(subcommand, flag) of every option string of ``dtr`` and its subcommands."""
    for action in parser._actions:
        for flag in action.option_strings:
            yield "dtr", flag
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                for a in sub._actions:
                    for flag in a.option_strings:
                        yield name, flag


def test_no_dtr_flag_collides_with_torchrun():
    """torchrun parses the whole command line with abbreviations on: a dtr flag that equals or prefixes one
    of torchrun's own (``--num`` -> ``--numa-binding``) is taken by torchrun."""
    torchrun = [s for a in get_args_parser()._actions for s in a.option_strings]
    clashes = [(cmd, flag, theirs) for cmd, flag in _flags(build_parser()) if flag not in ("-h", "--help")
               for theirs in torchrun if theirs.startswith(flag) or (len(flag) == 2 and theirs == flag)]
    assert clashes == []


def test_documented_sample_command_parses_under_torchrun():
    args = get_args_parser().parse_args(["--nproc_per_node=2", "-m", "dtr_plugins", "sample", "RUN",
                                         "--num-samples", "10", "-n", "10", "--batch-size", "5", "--seed", "1"])
    assert args.training_script == "dtr_plugins" and args.numa_binding is None
    assert args.training_script_args == ["sample", "RUN", "--num-samples", "10", "-n", "10", "--batch-size", "5",
                                         "--seed", "1"]
    assert build_parser().parse_args(args.training_script_args).num_samples == 10


def test_docs_use_the_new_flag():
    from ..conftest import ROOT

    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for line in path.read_text().splitlines():
            assert not ("dtr sample" in line and "--num " in line), f"{path.name}: {line}"


@pytest.mark.parametrize("value", ["0", "-3", "x"])
def test_sample_count_must_be_positive(run_cli, value):
    with pytest.raises(SystemExit) as exc:
        run_cli("sample", "RUN", "--num-samples", value)
    assert exc.value.code == 2


def test_version(capsys):
    from dtr_plugins._version import __version__
    from dtr_plugins.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0 and capsys.readouterr().out.strip() == f"dtr {__version__}"


def test_plugins_into_a_closed_pipe_has_no_traceback():
    proc = subprocess.Popen([sys.executable, "-m", "dtr_plugins", "plugins"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    proc.stdout.close()  # like `dtr plugins | head -0`: the reader is gone before anything is written
    err = proc.stderr.read().decode()
    proc.wait(timeout=120)
    assert "Traceback" not in err and "BrokenPipe" not in err and proc.returncode == 141


@pytest.mark.parametrize("code,expected", [
    (errno.ENOSPC, "/out/x.pt: no space left on the device"),
    (errno.ENOTDIR, "/out/x.pt: a part of this path is a file, not a folder"),
    (errno.EEXIST, "/out/x.pt: already exists"),
    (errno.EACCES, "/out/x.pt: permission denied"),
])
def test_os_errors_become_one_line(code, expected):
    line = os_error_line(OSError(code, os.strerror(code), "/out/x.pt"))
    assert line is not None and line.startswith(expected) and "\n" not in line
    assert os_error_line(OSError(errno.EIO, "I/O error", "/x")) is None  # not the user's to fix: traceback


def test_full_disk_while_training_is_one_line(tmp_path, run_cli, monkeypatch):
    from dtr_plugins.runs import rundir

    def full(self, text):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.path / "config.yaml"))

    monkeypatch.setattr(rundir.RunDir, "write_config", full)
    config = write(tmp_path / "c.yaml", GOOD.replace("name: tiny", f"name: tiny\noutput_dir: {tmp_path / 'runs'}"))
    code, _, err = run_cli("train", str(config), "--set", "train.steps=1")
    assert code == 2 and "Traceback" not in err
    assert err.strip().startswith(f"dtr: error: {tmp_path / 'runs' / 'tiny' / 'config.yaml'}: no space left on the "
                                  f"device")


def test_run_dir_that_is_a_file(tmp_path, run_cli):
    target = write(tmp_path / "taken", "a file")
    code, _, err = run_cli("train", str(write(tmp_path / "c.yaml", GOOD)), "--run-dir", str(target))
    assert code == 2
    assert err.strip() == f"dtr: error: --run-dir: '{target}' is a file, not a folder; choose another --run-dir"


@pytest.mark.parametrize(("flag", "value", "line"), [
    ("--seed", "-1", "argument --seed: expected a seed (an integer from 0 to 9223372036854775807), got -1"),
    ("--seed", "x", "argument --seed: expected a seed (an integer from 0 to 9223372036854775807), got 'x'"),
    ("--seed", "9223372036854775808",
     "argument --seed: expected a seed (an integer from 0 to 9223372036854775807), got 9223372036854775808"),
    ("--num-samples", "0", "argument -n/--num-samples: expected a positive integer (1 or more), got 0"),
])
def test_sample_flags_are_refused_in_one_line_before_anything_loads(capsys, tmp_path, flag, value, line):
    from dtr_plugins.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["sample", str(tmp_path / "no-run"), flag, value])
    err = capsys.readouterr().err
    assert exited.value.code == 2 and err.strip() == f"dtr sample: error: {line} (see --help)", err
