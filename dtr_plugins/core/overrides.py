"""``--set key.path=value`` overrides of a config mapping, before it is validated (:mod:`.config`)."""
from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sequence
from typing import Any

import yaml

from dtr_plugins.core.errors import ConfigError
from dtr_plugins.core.text import first_control_char, printable
from dtr_plugins.core.yaml_reader import parse_yaml

__all__ = ["SWITCHABLE_SECTIONS", "apply_overrides", "print_notes", "read_assignment", "set_dotted",
           "split_assignment"]

logger = logging.getLogger("dtr_plugins.core.config")  # the config's notes, under the logger they always had


#: sections that name a plugin: changing their ``name`` by ``--set`` starts from the new plugin's defaults
SWITCHABLE_SECTIONS = ("diffusion", "backbone", "routing", "loss_weighting", "data", "codec", "ema", "timesteps",
                       "text", "token_routing", "regularizer")


def apply_overrides(data: dict[str, Any], overrides: Sequence[str], source: str = "--set",
                    notes: list[str] | None = None) -> dict[str, Any]:
    """Apply ``a.b=c`` overrides; values are parsed as YAML (``1e-4``, ``true``, ``[1, 2]``, ``{name: dtr}``).

    ``--set routing.name=random`` on a config whose routing is ``dtr`` replaces the whole section: the new
    plugin's defaults plus the params given by ``--set``; one line saying what was dropped goes to
    ``notes`` (when given, else to stderr)."""
    original = data
    data = copy.deepcopy(data)
    keys: list[str] = []
    for item in overrides:
        key, value = read_assignment(item, source, "key.path=value")
        set_dotted(data, key, value, source=source)
        keys.append(key)
    said: list[str] = []
    for section in SWITCHABLE_SECTIONS:
        _switch_plugin(original, data, section, keys, source, said)
    if notes is None:
        print_notes(said)
    else:
        notes.extend(said)
    return data


def split_assignment(item: str, source: str, form: str) -> tuple[str, str]:
    """``(key, raw value)`` of one ``KEY=VALUE`` command-line item (``--set``, ``--launcher-set``,
    ``--extractor-param``): the key stripped, the value as typed (each caller parses it its own way).

    Raises :class:`ConfigError` (one line naming ``source`` and the item) when there is no ``=`` or no key
    (``form`` says what is expected), and when the item holds a control character: YAML would fold a newline
    into a space and change the value without a word (an escape inside YAML quotes, ``"a\\nb"``, still works).
    """
    key, sep, raw = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"{source}: '{printable(item)}' is not of the form {form}")
    char = first_control_char(item)
    if char is not None:
        raise ConfigError(f"{source}: '{printable(item)}' holds a control character ({char!r}); give one "
                          f"line of printable text (an escape inside YAML quotes, e.g. key=\"a\\nb\", is kept)")
    return key.strip(), raw


def read_assignment(item: str, source: str, form: str) -> tuple[str, Any]:
    """``(key, value)`` of one ``KEY=VALUE`` command-line item whose value is read as YAML (``--set``,
    ``--launcher-set``): ``1e-4``, ``true``, ``[1, 2]``, ``{name: dtr}``; an empty value is ``None``.

    Raises :class:`ConfigError` as :func:`split_assignment` does, and (one line naming ``source`` and the
    item) when the value is not valid YAML."""
    key, raw = split_assignment(item, source, form)
    try:
        return key, (parse_yaml(raw) if raw.strip() else None)
    except yaml.YAMLError:
        raise ConfigError(f"{source}: '{printable(item)}': the value is not valid YAML") from None


def print_notes(notes: Sequence[str]) -> None:
    if os.environ.get("RANK", "0") == "0":  # once under torchrun
        for note in notes:
            logger.warning(f"dtr: note: {note}")


def _switch_plugin(original: dict[str, Any], data: dict[str, Any], section: str, keys: list[str], source: str,
                   notes: list[str]) -> None:
    before, after = original.get(section), data.get(section)
    if not isinstance(before, dict) or not isinstance(after, dict) or f"{section}.name" not in keys:
        return
    old, new = before.get("name"), after.get("name")
    if old is None or old == new or section in keys:  # the whole section given by --set: taken as is
        return
    explicit = {k.split(".", 2)[1] for k in keys if k.startswith(f"{section}.") and k.count(".") >= 1}
    dropped = [k for k in before if k != "name" and k not in explicit]
    data[section] = {k: v for k, v in after.items() if k == "name" or k in explicit}
    if dropped:
        shown = ", ".join(f"{section}.{k}={before[k]!r}" for k in dropped)
        notes.append(f"{source} {section}.name={new} replaces {old!r}: dropped {shown}; {new!r} starts from its "
                     f"defaults")


def set_dotted(data: dict[str, Any], key: str, value: Any, source: str = "--set") -> None:
    """Set ``data[a][b] = value`` for ``key = "a.b"``, creating sections as needed."""
    parts = key.split(".")
    node = data
    for i, part in enumerate(parts[:-1]):
        child = node.get(part)
        if child is None:
            child = node[part] = {}
        if not isinstance(child, dict):
            raise ConfigError(f"{source}: {'.'.join(parts[:i + 1])} is not a section, cannot set {key}")
        node = child
    node[parts[-1]] = value
