"""Plugin discovery through real distribution entry points, duplicates, broken plugins, `dtr plugins`."""
import json
import os
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import pytest

import dtr_plugins
from dtr_plugins.core.errors import PluginError
from dtr_plugins.core.plugins import build_registry

from ..conftest import ROOT, venv_with_example, write

STRIPES = textwrap.dedent('''
    import torch
    from pydantic import BaseModel
    import dtr_plugins

    class Params(BaseModel):
        period: int = 2

    class Stripes:
        def __init__(self, period=2):
            self.period = period
        def mask_table(self, num_tasks, channels, *, layer=0, num_layers=1):
            t = torch.arange(num_tasks)[:, None]
            return (torch.arange(channels)[None, :] + t) % self.period == 0

    @dtr_plugins.hookimpl
    def dtr_register_strategies(register):
        register("{name}", Stripes, params=Params, description="every period-th channel")
''')


def make_distribution(site: Path, dist: str, module: str, source: str, ep_name: str = "plug") -> None:
    """A minimal installed distribution: ``<dist>-1.2.dist-info`` with METADATA and entry_points.txt."""
    info = site / f"{dist.replace('-', '_')}-1.2.dist-info"
    write(info / "METADATA", f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2\n")
    write(info / "entry_points.txt", f"[dtr_plugins]\n{ep_name} = {module}\n")
    write(site / f"{module}.py", source)


def dtr(site: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(site))
    return subprocess.run([sys.executable, "-m", "dtr_plugins", *args], capture_output=True, text=True, env=env,
                          timeout=120)


def test_builtin_plugins_listed_with_distribution(run_cli):
    code, out, _ = run_cli("plugins", "--json")
    assert code == 0
    rows = {(r["kind"], r["name"]): r for r in json.loads(out)}
    for name in ("vanilla", "dtr", "random", "task_specific_sharing"):
        assert rows[("strategy", name)]["distribution"] == "dtr-plugins"
        assert rows[("strategy", name)]["description"]
    code, out, _ = run_cli("plugins")
    assert code == 0 and "task_specific_sharing" in out and "dtr-plugins" in out


def test_third_party_distribution_is_discovered(tmp_path):
    make_distribution(tmp_path, "acme-routing", "acme_stripes", STRIPES.format(name="stripes"))
    result = dtr(tmp_path, "plugins", "--json")
    assert result.returncode == 0, result.stderr
    rows = {(r["kind"], r["name"]): r for r in json.loads(result.stdout)}
    assert rows[("strategy", "stripes")]["distribution"] == "acme-routing"
    assert rows[("strategy", "stripes")]["version"] == "1.2"
    assert ("strategy", "dtr") in rows


def test_duplicate_name_names_both_plugins_and_distributions(tmp_path):
    make_distribution(tmp_path, "acme-routing", "acme_dtr", STRIPES.format(name="dtr"))
    result = dtr(tmp_path, "plugins")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    errors = [ln for ln in result.stderr.splitlines() if not ln.startswith("dtr: warning:")]
    assert len(errors) == 1
    err = errors[0]
    assert "duplicate strategy name 'dtr'" in err
    assert "dtr_plugins.strategies.dtr" in err and "acme_dtr" in err
    assert "dtr-plugins" in err and "acme-routing" in err


def test_plugin_that_fails_to_import_is_reported_and_others_load(tmp_path):
    make_distribution(tmp_path, "broken-plugin", "broken_mod", "raise ImportError('needs libfoo')\n", ep_name="broken")
    result = dtr(tmp_path, "plugins", "--json")
    assert result.returncode == 0
    assert "broken = broken_mod" in result.stderr and "broken-plugin" in result.stderr and "libfoo" in result.stderr
    assert any(r["name"] == "dtr" for r in json.loads(result.stdout))


def test_registry_with_only_named_modules():
    module = types.ModuleType("inline_plugin")
    exec(STRIPES.format(name="stripes"), module.__dict__)
    registry = build_registry([(module, "inline", "0.0")], entry_points=False)
    assert registry.names("strategy") == ["stripes"]
    assert registry.get("strategy", "stripes").distribution == "inline"
    table = registry.build("strategy", "stripes", period=3).mask_table(4, 6)
    assert table[0].tolist() == [True, False, False, True, False, False]
    with pytest.raises(PluginError, match="known: stripes"):
        registry.get("strategy", "dtr")


def test_duplicate_in_registry_raises():
    a, b = types.ModuleType("plug_a"), types.ModuleType("plug_b")
    exec(STRIPES.format(name="same"), a.__dict__)
    exec(STRIPES.format(name="same"), b.__dict__)
    with pytest.raises(PluginError, match="plug_a.*dist-a.*plug_b.*dist-b"):
        build_registry([(a, "dist-a", "1"), (b, "dist-b", "1")], entry_points=False)


def test_example_package_installs_into_a_venv_and_is_used_by_name(tmp_path):
    py = venv_with_example(tmp_path, ROOT / "examples" / "dtr-strategy-example")
    listed = subprocess.run([str(py), "-m", "dtr_plugins", "plugins"], capture_output=True, text=True, timeout=120)
    assert listed.returncode == 0, listed.stderr
    line = next(ln for ln in listed.stdout.splitlines() if " stripes " in ln)
    assert "dtr-strategy-example" in line and "0.1.0" in line
    config = ROOT / "examples" / "dtr-strategy-example" / "stripes_digits.yaml"
    validated = subprocess.run([str(py), "-m", "dtr_plugins", "validate", str(config)], capture_output=True,
                               text=True, timeout=120)
    assert validated.returncode == 0, validated.stderr
    assert "name: stripes" in validated.stdout and "period: 2" in validated.stdout


def test_hookimpl_is_exported():
    assert dtr_plugins.hookimpl.project_name == "dtr_plugins"
