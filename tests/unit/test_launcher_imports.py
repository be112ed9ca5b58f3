"""The launchers import without submitit (an optional extra): only submitting Slurm jobs needs it."""
import importlib
import sys

import pytest

WITHOUT_SUBMITIT = ("dtr_plugins.launchers.slurm", "dtr_plugins.launchers.torchrun", "dtr_plugins.launchers.local")


@pytest.mark.parametrize("name", WITHOUT_SUBMITIT)
def test_module_imports_with_submitit_hidden(monkeypatch, name):
    monkeypatch.setitem(sys.modules, "submitit", None)  # `import submitit` now raises ImportError
    for module in [*WITHOUT_SUBMITIT, "dtr_plugins.launchers.job"]:
        monkeypatch.delitem(sys.modules, module, raising=False)
    with pytest.raises(ImportError):
        importlib.import_module("submitit")
    assert importlib.import_module(name).__name__ == name
    with pytest.raises(ImportError):  # the job itself needs it: it is a submitit Checkpointable
        importlib.import_module("dtr_plugins.launchers.job")


def test_slurm_launch_without_submitit_is_one_line(monkeypatch, tmp_path):
    from dtr_plugins.core.errors import UserError

    monkeypatch.setitem(sys.modules, "submitit", None)
    monkeypatch.delitem(sys.modules, "dtr_plugins.launchers.slurm", raising=False)
    slurm = importlib.import_module("dtr_plugins.launchers.slurm")
    run = type("Run", (), {"id": "a", "run_dir": tmp_path / "a", "config_path": tmp_path / "a.yaml"})()
    with pytest.raises(UserError, match=r"launcher slurm needs submitit: pip install 'dtr-plugins\[slurm\]'"):
        slurm.SlurmLauncher().launch(tmp_path, [run])
    assert not (tmp_path / "a").exists() and not (tmp_path / "slurm").exists()

