"""Launchers are a plugin kind: a site's own launcher registered through the hook runs a suite."""
import json
import sys
import types

from pydantic import BaseModel, ConfigDict

import dtr_plugins
from dtr_plugins.core.plugins import build_registry
from dtr_plugins.experiments.suite import run_suite
from dtr_plugins.launchers import Launcher
from dtr_plugins.launchers.local import LocalLauncher, run_training

from ..conftest import write
from .test_suite import BASE


class RecordingParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tag: str


class RecordingLauncher:
    """Trains in this process's children one after another and remembers what it was asked to do."""

    blocking = True

    def __init__(self, tag: str):
        self.tag, self.launched = tag, []

    def launch(self, suite_root, runs):
        self.launched += [r.id for r in runs]
        return {r.id: run_training(r, gpu=None) for r in runs}

    def active(self, suite_root, runs):
        return {}

    def wait(self, suite_root, runs, timeout_s=None):
        return None

    def cancel(self, suite_root, runs):
        return []


def test_site_launcher_plugin_runs_a_suite(tmp_path, log_text):
    made = []
    module = types.ModuleType("site_launcher")

    @dtr_plugins.hookimpl
    def dtr_register_launchers(register):
        register("recording", lambda tag: made.append(RecordingLauncher(tag)) or made[-1], params=RecordingParams)

    module.dtr_register_launchers = dtr_register_launchers
    sys.modules["site_launcher"] = module
    try:
        registry = build_registry([module])
    finally:
        del sys.modules["site_launcher"]
    assert {"local", "slurm", "recording"} <= set(registry.names("launcher"))
    write(tmp_path / "base.yaml", BASE)
    path = write(tmp_path / "suite.yaml", f"output_dir: {tmp_path / 'runs'}\nbase: base.yaml\nname: site\n"
                 "launcher: {name: recording, tag: lab}\nmatrix: {seed: [0]}\n")
    root = run_suite(path, registry=registry, report=False)
    assert isinstance(made[0], Launcher) and made[0].tag == "lab" and made[0].launched == ["seed0"]
    assert json.loads((root / "seed0" / "status.json").read_text())["state"] == "done"
    run_suite(path, registry=registry, report=False)  # finished: nothing launched again
    assert made[1].launched == [] and "skip     seed0 (finished)" in log_text()


def test_local_launcher_is_the_default_and_a_launcher():
    assert isinstance(LocalLauncher(), Launcher) and LocalLauncher().blocking
