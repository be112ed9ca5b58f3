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


@pytest.fixture
def log_text(caplog):
    """The package's log messages (INFO and up: what `dtr` shows) since the last call, one per line; a library
    call logs through ``logging`` (silent unless configured), so its progress lines are read here, not on stdout."""
    import logging

    caplog.set_level(logging.INFO, logger="dtr_plugins")

    def read() -> str:
        text = "".join(r.getMessage() + "\n" for r in caplog.records if r.name.startswith("dtr_plugins"))
        caplog.clear()
        return text

    return read


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


PYTHON = sys.executable


#: The tiny DiT run the training tests share: 8x8 grayscale, 2 blocks, 6 steps, DTR routing, no final evaluation.
TINY_DIT: dict = {
    "name": "tiny",
    "seed": 3,
    "backbone": {"name": "dit", "input_size": 8, "patch_size": 2, "hidden_size": 32, "depth": 2, "num_heads": 2,
                 "in_channels": 1, "num_classes": 4},
    "routing": {"name": "dtr", "alpha": 4.0, "beta": 0.8},
    "diffusion": {"steps": 100, "schedule": "linear", "learn_sigma": True},
    "data": {"name": "synthetic", "num_samples": 64, "image_size": 8, "num_classes": 4},
    "train": {"steps": 6, "batch_size": 8, "lr": 1.0e-3, "log_every": 2, "ckpt_every": 3, "ema_warmup": True},
    "sample": {"sampler": "ddim", "respacing": "ddim5", "num_samples": 8, "batch_size": 8},
    "eval": {"at_end": False},
}


def _merged(base: dict, changes: dict) -> dict:
    """``base`` with ``changes`` applied: a dict merges into a dict section (one naming another plugin ``name``
    replaces it: another plugin's params), ``None`` removes the key."""
    out = dict(base)
    for key, value in changes.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict) and isinstance(out.get(key), dict) and value.get("name", out[key].get("name")) \
                == out[key].get("name"):
            out[key] = _merged(out[key], value)
        elif isinstance(value, dict):
            out[key] = _merged({}, value)  # a new section: its None values say "not set"
        else:
            out[key] = value
    return out


def tiny_dit_config(folder: Path, filename: str = "tiny.yaml", **changes) -> Path:
    """Write the tiny DiT config (:data:`TINY_DIT`) with ``changes`` to ``folder/filename``; returns the path.

    ``tiny_dit_config(tmp_path, train={"steps": 8}, sample=None)`` changes one train key and drops the
    sample section (see :func:`_merged`).
    """
    import yaml

    return write(folder / filename, yaml.safe_dump(_merged(TINY_DIT, changes), sort_keys=False))


def venv_with_example(tmp_path: Path, example: Path) -> Path:
    """A fresh venv that sees this environment's packages (torch, dtr-plugins: every site-packages folder on
    sys.path, then the checkout, through a .pth file) with the example package ``example`` installed into a
    target folder of its own (no network, no build isolation). Returns the venv's python."""
    import subprocess

    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python*/site-packages"))
    outer = [p for p in sys.path if p.endswith("site-packages")] + [str(ROOT)]
    (site / "outer.pth").write_text("\n".join(outer) + "\n")
    install = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation", "--no-index", "-q",
         "--target", str(tmp_path / "target"), str(example)], capture_output=True, text=True, timeout=300)
    assert install.returncode == 0, install.stderr
    (site / "example.pth").write_text(str(tmp_path / "target") + "\n")
    return venv / "bin" / "python"


def load_script(name: str):
    """The module of ``scripts/<name>.py`` (scripts are not a package), loaded afresh."""
    import importlib.util

    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now (for a torchrun rendezvous)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def registry_with(kind: str, name: str, factory, *, params=None, description: str = "",
                  distribution: tuple[str, str] | None = None, module: str | None = None,
                  entry_points: bool = True):
    """A plugin registry: the installed plugins (``entry_points``) plus ``factory`` registered as the ``kind``
    (``strategy``, ``loss_weighting``, ``state_dict_adapter``, ...) ``name`` by an in-memory plugin module
    (named ``module``; ``distribution``: its ``(name, version)``)."""
    import types

    from dtr_plugins.core.hookspecs import hookimpl
    from dtr_plugins.core.plugins import KINDS, build_registry

    hook_name = KINDS[kind]
    plugin = types.ModuleType(module or f"test_plugin_{kind}_{name}")

    def hook(register):
        register(name, factory, params=params, description=description)

    hook.__name__ = hook_name
    setattr(plugin, hook_name, hookimpl(hook))
    return build_registry([(plugin, *distribution) if distribution else plugin], entry_points=entry_points)


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    """A tiny, randomly initialised CLIP text model and tokenizer (tests/t2i_helpers.py), made once per session."""
    from .t2i_helpers import tiny_clip_folder

    return tiny_clip_folder(tmp_path_factory.mktemp("tiny-clip"))
