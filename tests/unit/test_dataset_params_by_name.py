"""Only a dataset plugin reads its own params by name: everywhere else the dataset's declared capabilities
(``SupportsImageShape``, ``SupportsImageSize``, ``SupportsAugmentation``, ``SupportsHeldoutSplit``,
``SupportsContentKey`` in ``dtr_plugins/core/contracts.py``) are used. Read from the source with ``ast``
(nothing is imported)."""
from __future__ import annotations

import ast

from ..conftest import ROOT

PACKAGE = ROOT / "dtr_plugins"
#: parameter names of the built-in datasets that other code used to read
DATASET_KEYS = frozenset({"image_size", "random_flip", "channels", "heldout_fraction", "class_cond", "path"})
#: plugin folders whose modules own params of these names (a backbone's own ``image_size``)
OWNERS = ("data", "backbones")


def _key(node: ast.AST) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _section(node: ast.AST) -> bool:
    text = ast.unparse(node)
    return "params" in text or "data" in text


def _reads(tree: ast.AST) -> list[tuple[int, str]]:
    """``x["KEY"]``, ``x.get("KEY")`` / ``x.pop("KEY")`` with ``x`` a dataset section (its source mentions
    ``params`` or ``data``: ``cfg.data.params``, ``data_params``), ``k != "KEY"`` / ``k == "KEY"`` /
    ``"KEY" in x``, with KEY a dataset parameter name, and any ``.random_flip`` attribute (a record's own
    ``meta["image_size"]`` is not a dataset section)."""
    found = []
    for node in ast.walk(tree):
        keys: list[str | None] = []
        if isinstance(node, ast.Subscript) and _section(node.value):
            keys = [_key(node.slice)]
        elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("get", "pop")
              and _section(node.func.value)):
            keys = [_key(node.args[0])] if node.args else []
        elif isinstance(node, ast.Compare):
            keys = [_key(node.left), *(_key(c) for c in node.comparators)]
        elif isinstance(node, ast.Attribute) and node.attr == "random_flip":
            keys = ["random_flip"]
        found += [(node.lineno, k) for k in keys if k in DATASET_KEYS]
    return found


def test_no_module_outside_the_dataset_plugins_reads_dataset_params_by_name():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        relative = path.relative_to(PACKAGE)
        if relative.parts[0] in OWNERS:
            continue
        offenders += [f"{relative}:{line}: {key}" for line, key in _reads(ast.parse(path.read_text()))]
    assert offenders == []


def test_the_check_finds_such_reads():
    source = ('size = cfg.data.params.get("image_size")\nflip = params["random_flip"]\n'
              'kept = {k: v for k, v in p.items() if k != "random_flip"}\nds.random_flip = True\n'
              'meta["image_size"]\n')
    assert sorted(_reads(ast.parse(source))) == [(1, "image_size"), (2, "random_flip"), (3, "random_flip"),
                                                 (4, "random_flip")]
