"""Text from files someone else wrote: refuse control characters where they would act (job scripts),
make them harmless where text is only shown (terminal output).

A control character is any character of Unicode category ``Cc``: newline, carriage return, tab, ESC
(terminal escape sequences), DEL and the C1 range. See docs/security.md.
"""
from __future__ import annotations

import re
import unicodedata
from typing import Any

from dtr_plugins.core.errors import ConfigError

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")  # exactly the characters of category Cc


def first_control_char(text: str) -> str | None:
    """The first control character of ``text``, or None."""
    match = _CONTROL.search(text)
    return match.group(0) if match else None


def refuse_control_chars(value: Any, key: str) -> None:
    """Raise one :class:`ConfigError` line naming the key path (``launcher.partition``,
    ``launcher.extra.constraint``, ``launcher.setup.0``) when a string in ``value`` (nested dicts, lists,
    dict keys included) holds a control character."""
    if isinstance(value, str):
        char = first_control_char(value)
        if char is not None:
            name = unicodedata.name(char, f"U+{ord(char):04X}")
            raise ConfigError(f"{key}: {value!r} holds a control character ({char!r}, {name}); give one line "
                              f"of printable text")
    elif isinstance(value, dict):
        for k, v in value.items():
            refuse_control_chars(k, f"{key} (a key)")
            refuse_control_chars(v, f"{key}.{k}")
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            refuse_control_chars(v, f"{key}.{i}")


def printable(text: str) -> str:
    """``text`` with every control character shown as its escape (``\\x1b``, ``\\n``): safe to print."""
    return _CONTROL.sub(lambda m: repr(m.group(0))[1:-1], text)


def check_inside_path(value: str) -> str:
    """``value`` if it is a relative path that stays inside the folder it is joined to (no absolute path,
    no ``..`` component, no control character), else ``ValueError`` saying what is allowed (for a pydantic
    field validator: the message gets the key). Output folders a config names go through it."""
    from pathlib import PurePosixPath, PureWindowsPath

    parts = PurePosixPath(value.replace("\\", "/")).parts
    if (not value.strip() or PurePosixPath(value).is_absolute() or PureWindowsPath(value).is_absolute()
            or PureWindowsPath(value).drive or ".." in parts or first_control_char(value) is not None):
        raise ValueError(f"{value!r} must be a relative path inside the run directory (no leading '/', no '..')")
    return value
