"""What a lab checks before depending on the package: a licence, a citation, one version."""
from __future__ import annotations

from importlib.metadata import metadata

import tomllib
import yaml

from dtr_plugins._version import __version__

from ..conftest import ROOT


def test_version_is_written_once():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"]
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "dtr_plugins._version.__version__"}
    assert metadata("dtr-plugins")["Version"] == __version__
    assert "version" not in yaml.safe_load((ROOT / "CITATION.cff").read_text())


def test_licence_file_matches_the_declared_licence():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["license"] == "MIT"
    assert (ROOT / "LICENSE").read_text().startswith("MIT License")
    assert metadata("dtr-plugins")["License-Expression"] == "MIT"


def test_citation_names_the_software_and_the_paper():
    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["license"] == "MIT"
    paper = cff["preferred-citation"]
    assert paper["title"] == "Denoising Task Routing for Diffusion Models" and paper["year"] == 2024
    assert (ROOT / "CHANGELOG.md").read_text().startswith("# Changelog")
