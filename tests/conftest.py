"""Shared fixtures and paths for tests/unit, tests/parity and tests/integration.

Everything under ``tests/integration/`` is marked ``slow`` here (one place, so a new file cannot forget it):
``pytest -m "not slow"`` is the quick local loop; ``make test`` runs everything.
"""
import os
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
FIXTURES = Path(__file__).resolve().parent / "fixtures"

# OMP_NUM_THREADS, when set, wins (mutation testing forks per mutant and needs torch single-threaded)
torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS") or min(2, os.cpu_count() or 1)))

INTEGRATION = Path(__file__).resolve().parent / "integration"


def pytest_collection_modifyitems(config, items):
    for item in items:
        if INTEGRATION in Path(str(item.fspath)).resolve().parents:
            item.add_marker(pytest.mark.slow)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path_factory, monkeypatch):
    """Caches (digits classifier, reference statistics) go to one temp folder per test session."""
    monkeypatch.setenv("DTR_CACHE_DIR", str(tmp_path_factory.getbasetemp() / "dtr-cache"))


@pytest.fixture
def run_cli(capsys):
    """Run ``dtr`` in-process; returns (exit code, stdout, stderr)."""
    from dtr_plugins.cli import main

    def run(*args: str):
        code = main(list(args))
        out = capsys.readouterr()
        return code, out.out, out.err

    return run


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


PYTHON = sys.executable
