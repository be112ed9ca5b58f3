"""Launchers: where and how the runs of a suite are started (a plugin kind).

A launcher is built from the suite file's ``launcher:`` section (or ``dtr suite --launcher NAME``) through
the ``dtr_register_launchers`` hook. The suite engine hands it the runs that are neither finished nor
already queued; it starts them, reports which runs have a live job, waits and cancels. Every launcher
keeps the run directory contract: ``<suite>/<run id>/`` holds the run's checkpoints and a ``status.json``
whose ``state`` is ``running``, ``done`` or ``failed``; a run with checkpoints is started with ``--resume``.
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from dtr_plugins.core.contracts import Launcher, RunSpec
from dtr_plugins.core.errors import ConfigError, PluginError
from dtr_plugins.core.overrides import read_assignment
from dtr_plugins.core.text import refuse_control_chars

__all__ = ["Launcher", "RunSpec", "launcher_from_section", "parse_launcher_settings"]


def resolve_launcher(section: dict[str, Any] | None, *, override: str | None, registry, where: str,
                     settings: dict[str, Any] | None = None) -> tuple[str, dict[str, Any], Any]:
    """The launcher's name, its validated options (defaults filled in) and its plugin info.

    The section's parameters are used when it names the same launcher as the override; a launcher chosen
    only on the command line gets its documented defaults. ``settings`` (``--launcher-set KEY=VALUE``)
    override single parameters. Errors name the file and the key; a control character (a newline, an
    escape) in any string, key or value is refused: launcher options end up in job scripts.
    """
    section = dict(section or {})
    file_name = section.pop("name", "local")
    name = override or file_name
    params = {**(section if name == file_name else {}), **(settings or {})}
    refuse_control_chars({"name": name, **params}, f"{where}: launcher")
    try:
        info = registry.get("launcher", name)
    except PluginError as exc:  # unknown launcher (known: ...)
        raise ConfigError(f"{where}: launcher.name: {exc}") from None
    validated = info.validate(params, where=f"{where}: launcher")
    return name, validated.model_dump(), info


def launcher_from_section(section: dict[str, Any] | None, *, override: str | None, registry, where: str,
                          settings: dict[str, Any] | None = None) -> Launcher:
    """Build the launcher named by ``override`` (the CLI) or by the suite file's ``launcher.name``
    (see :func:`resolve_launcher`)."""
    _, options, info = resolve_launcher(section, override=override, registry=registry, where=where,
                                        settings=settings)
    return info.factory(**options)


def describe_launcher(name: str, options: dict[str, Any]) -> list[str]:
    """Lines for ``dtr suite --dry-run``: the launcher, each resolved option, and the ``setup`` shell lines
    (run as given, by design) one per line."""
    lines = [f"launcher {name}"]
    for key, value in options.items():
        if key == "setup" and isinstance(value, list):
            lines.append(f"  setup: {len(value)} shell line(s) run before each job:" if value else "  setup: none")
            lines += [f"    $ {line}" for line in value]
        else:
            lines.append(f"  {key}: {value!r}")
    return lines


def parse_launcher_settings(items: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` pairs of ``dtr suite --launcher-set``, values read as YAML (``gpus_per_run=8``)."""
    out: dict[str, Any] = {}
    for item in items:
        key, value = read_assignment(item, "--launcher-set", "KEY=VALUE, e.g. gpus_per_run=8")
        out[key] = value
    return out
