"""Reading YAML as written: YAML 1.2 scalars, duplicate keys refused, merge keys accepted, and hostile
input (huge, endless, alias bombs, deep nesting) refused in one line. See docs/security.md."""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from dtr_plugins.core.errors import ConfigError

#: the most bytes a YAML file may have, the most values it may expand to (aliases counted at each use) and
#: the deepest nesting: a config is a few kB; an alias bomb or /dev/zero is refused in a fraction of a second
YAML_MAX_BYTES = 1 << 20
YAML_MAX_VALUES = 100_000
YAML_MAX_DEPTH = 64
_BOOL, _INT, _FLOAT = "tag:yaml.org,2002:bool", "tag:yaml.org,2002:int", "tag:yaml.org,2002:float"
_MERGE = "tag:yaml.org,2002:merge"


class YamlLimitError(yaml.YAMLError):
    """A YAML text over :data:`YAML_MAX_BYTES`, :data:`YAML_MAX_VALUES` or :data:`YAML_MAX_DEPTH`."""


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` reading scalars as YAML 1.2 does and refusing duplicate keys.

    YAML 1.1's surprises are gone: ``off``/``yes``/``n`` stay text (only ``true``/``false`` are booleans),
    ``1:30:00`` stays text (no base-60 numbers), ``010`` is ten, and ``1e-4`` is a float. Merge keys
    (``<<: *base``) work."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, int] = {}
        for key_node, _ in node.value:
            if key_node.tag == _MERGE:
                continue
            key = self.construct_object(key_node, deep=True)
            try:
                first = seen.get(key)
            except TypeError:  # an unhashable key: let PyYAML report it
                break
            if first is not None:
                raise yaml.constructor.ConstructorError(
                    None, None, f"duplicate key {key!r} (first given on line {first})", key_node.start_mark)
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node: yaml.ScalarNode) -> int:
        text = str(self.construct_scalar(node)).replace("_", "")
        sign, digits = (-1, text[1:]) if text[:1] == "-" else (1, text.lstrip("+"))
        base = {"0b": 2, "0o": 8, "0x": 16}.get(digits[:2].lower(), 10)
        return sign * int(digits[2:] if base != 10 else digits, base)


_Loader.yaml_implicit_resolvers = {
    first: [(tag, regex) for tag, regex in resolvers if tag not in (_BOOL, _INT, _FLOAT)]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()}
_Loader.add_implicit_resolver(_BOOL, re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF"))
_Loader.add_implicit_resolver(
    _INT, re.compile(r"^[-+]?(?:0b[01_]+|0o[0-7_]+|0x[0-9a-fA-F_]+|[0-9][0-9_]*)$"), list("-+0123456789"))
_Loader.add_implicit_resolver(
    _FLOAT, re.compile(r"""^(?:[-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
                       |[-+]?(?:[0-9][0-9_]*)[eE][-+]?[0-9]+
                       |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
                       |[-+]?\.(?:inf|Inf|INF)
                       |\.(?:nan|NaN|NAN))$""", re.X), list("-+0123456789."))
_Loader.add_constructor(_INT, _Loader.construct_yaml_int)


def _check_expansion(root: yaml.Node) -> None:
    """Raise :class:`YamlLimitError` when ``root`` nests deeper than :data:`YAML_MAX_DEPTH` or expands
    (every alias counted at each use) to more than :data:`YAML_MAX_VALUES` values; linear in the nodes."""
    sizes: dict[int, int] = {}
    stack: list[tuple[yaml.Node, int, bool]] = [(root, 0, False)]
    while stack:
        node, depth, done = stack.pop()
        if depth > YAML_MAX_DEPTH:
            raise YamlLimitError(f"values nested deeper than {YAML_MAX_DEPTH} levels")
        value = node.value if isinstance(node, yaml.CollectionNode) else []
        children = [c for pair in value for c in pair] if isinstance(node, yaml.MappingNode) else list(value)
        if done:
            sizes[id(node)] = 1 + sum(sizes.get(id(c), 0) for c in children)
            if sizes[id(node)] > YAML_MAX_VALUES:
                raise YamlLimitError(f"expands to more than {YAML_MAX_VALUES} values (aliases counted at each use)")
        elif id(node) not in sizes:
            stack.append((node, depth, True))
            stack.extend((c, depth + 1, False) for c in children if id(c) not in sizes)


def parse_yaml(text: str) -> Any:
    """Read YAML text as YAML 1.2 scalars (see :class:`_Loader`), duplicate keys refused; raises
    ``yaml.YAMLError`` (a :class:`YamlLimitError` past the size, alias-expansion and depth caps)."""
    if len(text) > YAML_MAX_BYTES:
        raise YamlLimitError(f"larger than {YAML_MAX_BYTES >> 20} MiB")
    loader = _Loader(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise YamlLimitError(f"values nested deeper than {YAML_MAX_DEPTH} levels") from None
        if node is None:
            return None
        _check_expansion(node)
        return loader.construct_document(node)
    finally:
        loader.dispose()


def read_yaml(path: str | Path) -> Any:
    """Parse a YAML file; a missing file, non-UTF-8 bytes, a file over :data:`YAML_MAX_BYTES`, malformed
    YAML, a duplicate key or an alias bomb is one line naming the file (and the line)."""
    path = Path(path)
    try:
        with open(path, "rb") as f:
            raw = f.read(YAML_MAX_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    if len(raw) > YAML_MAX_BYTES:
        raise ConfigError(f"{path}: larger than {YAML_MAX_BYTES >> 20} MiB; not a config file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x} at offset "
                          f"{exc.start}); save the file as UTF-8") from None
    try:
        return parse_yaml(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}{where}: malformed YAML: {problem}") from None
