"""The package-root API (``import dtr_plugins as dp``): real signatures, typed, ``generate`` beside ``sample``."""
import inspect
import re

import pytest

import dtr_plugins as dp

from ..conftest import ROOT


def _public_functions():
    return {name: getattr(dp, name) for name in dp.__all__ if inspect.isfunction(getattr(dp, name))}


def test_no_public_function_hides_its_signature_behind_kwargs():
    functions = _public_functions()
    assert {"sample", "generate", "train", "evaluate", "from_pretrained", "load_checkpoint", "run_suite",
            "build_model", "load_config"} <= set(functions)
    hidden = [f"{name}{inspect.signature(fn)}" for name, fn in functions.items()
              if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in inspect.signature(fn).parameters.values())]
    assert not hidden, "public functions with **kwargs (help() shows nothing):\n" + "\n".join(hidden)


def test_public_functions_are_the_implementations_with_their_documented_parameters():
    from dtr_plugins.sampling.sample import generate, sample

    assert dp.sample is sample and dp.generate is generate
    assert {"num", "out", "seed"} <= set(inspect.signature(dp.sample).parameters)
    assert list(inspect.signature(dp.generate).parameters)[:4] == ["model", "diffusion", "cfg", "num"]
    assert all(fn.__doc__ and fn.__module__.startswith("dtr_plugins.") for fn in _public_functions().values())
    assert "generate" in dir(dp)


def test_unknown_attribute_is_an_attribute_error():
    with pytest.raises(AttributeError, match="not_a_function"):
        dp.not_a_function


def test_py_typed_ships_as_package_data():
    assert (ROOT / "dtr_plugins" / "py.typed").is_file()
    section = (ROOT / "pyproject.toml").read_text().partition("[tool.setuptools.package-data]")[2]
    assert re.match(r'\s*dtr_plugins = \[[^]]*"py\.typed"', section), "py.typed is not package data in pyproject"


def test_the_command_parses_its_arguments_before_importing_torch():
    """`dtr --version`, `dtr --help` and a mistyped command answer at once: the package root and the CLI module
    import no torch (the API's names load on first use), so only the commands that need it pay for it."""
    import subprocess
    import sys

    code = "import sys, dtr_plugins, dtr_plugins.cli; print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    assert dp.load_config.__module__ == "dtr_plugins.core.config" and dp.ExperimentConfig.__name__ == "ExperimentConfig"
