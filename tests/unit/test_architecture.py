"""The package's import structure and file sizes, read from the source with ``ast`` (nothing is imported).

Rules (docs/architecture.md: data flows config -> compose -> training/sampling -> experiments and never back):
- every import between parts (the top-level folders and modules of the package) is an arrow of
  :data:`ALLOWED` (or one of the few :data:`EXCEPTIONS`, each with its reason);
- no ``dtr_plugins.core`` module imports a ``dtr_plugins`` module outside ``core``;
- the training and sampling core (``training/``, ``sampling/``, ``compose/``) stays under 35% of the package;
- no module imports the package root ``dtr_plugins`` (its ``__init__``: the public facade, for users only);
- no import cycle among ``dtr_plugins`` modules (imports inside functions count; ``if TYPE_CHECKING:`` ones
  do not run, so they count for the layering rules only);
- no source file over 500 lines unless one of its first 5 lines says why ("over 500 lines because ...").
"""
from __future__ import annotations

import ast
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from ..conftest import ROOT

PACKAGE = "dtr_plugins"
MAX_LINES = 500

#: the plugin kinds' folders (each holds the built-in plugins of one kind)
PLUGIN_KINDS = frozenset({"backbones", "strategies", "codecs", "processes", "weighting", "data", "trackers",
                          "launchers", "extractors", "ema", "timesteps", "conditioners", "token_routers",
                          "regularizers"})
_BELOW_SAMPLING = {"core", "compose", "runs", "sharing", *PLUGIN_KINDS}

#: part -> the parts it may import (``_version``, the package version, any part may read).
#: The order: core < plugin kinds < compose < runs < sharing < evaluation < sampling < training < experiments
#: < cli (and the package root, the users' facade, which nothing inside imports).
ALLOWED: dict[str, frozenset[str]] = {
    "core": frozenset(),
    **{kind: frozenset({"core"}) for kind in PLUGIN_KINDS},
    "launchers": frozenset({"core", "runs"}),  # a launcher reads and writes run directories (RunDir)
    "compose": frozenset({"core", *PLUGIN_KINDS}),
    "runs": frozenset({"core"}),
    "sharing": frozenset({"core", "compose", "runs", *PLUGIN_KINDS}),
    "evaluation": frozenset({"core", "compose", "runs", *PLUGIN_KINDS}),
    "sampling": frozenset(_BELOW_SAMPLING),
    "training": frozenset({*_BELOW_SAMPLING, "evaluation", "sampling"}),
    "experiments": frozenset({*_BELOW_SAMPLING, "evaluation", "sampling", "training"}),
    "cli": frozenset({*_BELOW_SAMPLING, "evaluation", "sampling", "training", "experiments"}),
    "__main__": frozenset({"cli"}),
    "": frozenset({*_BELOW_SAMPLING, "evaluation", "sampling", "training", "experiments"}),  # the package root
}

#: upward arrows of today, each with why it is left; remove an entry when its import goes
EXCEPTIONS: dict[tuple[str, str], str] = {
    ("dtr_plugins.regularizers.encoders", "dtr_plugins.extractors.builtin"):
        "REPA's offline encoder is the digits classifier's conv feature map (one copy of the net and its weights)",
    ("dtr_plugins.regularizers.encoders", "dtr_plugins.extractors.fashion_classifier"):
        "REPA's offline encoder is the Fashion-MNIST classifier's conv feature map (one copy of the net)",
    ("dtr_plugins.compose.build", "dtr_plugins.runs.rundir"):
        "time_experts' measured boundaries are placed, when the model is built, on a trained run's held-out losses "
        "(RunDir is the one reader of its metrics records)",
    ("dtr_plugins.extractors.fashion_classifier", "dtr_plugins.data.fashion_mnist"):
        "the classifier is trained and scored on the data set it measures (one reader of the IDX files)",
    ("dtr_plugins.compose.validate", "dtr_plugins.evaluation.metrics"):
        "the eval section is checked when a config is composed (dtr validate finds what dtr train would)",
    ("dtr_plugins.compose.validate", "dtr_plugins.evaluation.references"):
        "eval.reference is resolved when a config is composed (dtr validate finds what dtr train would)",
    ("dtr_plugins.evaluation.evaluate", "dtr_plugins.experiments.compare"):
        "metric titles come from the comparison's metric table (one table of metric names)",
    ("dtr_plugins.runs.listing", "dtr_plugins.experiments.compare"):
        "`dtr runs` shows the metrics the comparison knows (the same table)",
    ("dtr_plugins.runs.listing", "dtr_plugins.experiments.compare_records"):
        "`dtr runs` shows a view of the run's one record (RunRecord), read as the comparison reads it",
}
#: the training and sampling core may not grow past this share of the package's lines
CORE_SHARE = 0.35
CORE_PARTS = ("training", "sampling", "compose")
SIZE_CHECKED = ("dtr_plugins", "tests", "benchmarks")


@dataclass(frozen=True)
class Edge:
    source: str  # importing module
    target: str  # imported dtr_plugins module (a package means its __init__)
    line: int
    type_checking: bool  # inside ``if TYPE_CHECKING:``: never executed

    def where(self) -> str:
        return f"{self.source}:{self.line}"


def module_files() -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` under dtr_plugins/ (packages by their ``__init__``)."""
    modules = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> list[tuple[ast.Import | ast.ImportFrom, bool]]:
    """Every import statement anywhere in the tree (functions and classes included), with a TYPE_CHECKING flag."""
    found: list[tuple[ast.Import | ast.ImportFrom, bool]] = []

    def visit(node: ast.AST, guarded: bool) -> None:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append((node, guarded))
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, True)
            for child in node.orelse:
                visit(child, guarded)
            return
        for child in ast.iter_child_nodes(node):
            visit(child, guarded)

    visit(tree, False)
    return found


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The longest existing dtr_plugins module that ``name`` names (``a.b.C`` -> ``a.b`` when C is an attribute)."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def import_graph() -> list[Edge]:
    modules = module_files()
    edges = []
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        for node, guarded in _imports(ast.parse(path.read_text(), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:  # relative: from the module's package, one level up per extra dot
                    base = module.split(".") if is_package else module.split(".")[:-1]
                    base = base[: len(base) - (node.level - 1)]
                    prefix = ".".join(base + ([node.module] if node.module else []))
                else:
                    prefix = node.module or ""
                # `from P import n` imports the submodule P.n when there is one, else it reads n from P
                targets = [f"{prefix}.{alias.name}" if f"{prefix}.{alias.name}" in modules else prefix
                           for alias in node.names]
            for name in targets:
                target = _resolve(name, modules) if name.split(".")[0] == PACKAGE else None
                if target is not None and target != module:
                    edges.append(Edge(module, target, node.lineno, guarded))
    return sorted(edges, key=lambda e: (e.source, e.line))


def unique(lines: Iterable[str]) -> list[str]:
    """In order, without repeats (``from x import a, b`` gives one edge per name)."""
    return list(dict.fromkeys(lines))


def find_cycles(edges: list[Edge]) -> list[list[str]]:
    """One concrete cycle per strongly connected component with more than one module (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        if not e.type_checking:
            graph.setdefault(e.source, set()).add(e.target)
            graph.setdefault(e.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)

    cycles = []
    for component in components:  # walk inside the component from its first module back to it
        members, start = set(component), component[0]
        path, seen = [start], {start}
        while True:
            nxt = sorted(w for w in graph[path[-1]] if w in members)
            if start in nxt and len(path) > 1:
                break
            fresh = [w for w in nxt if w not in seen]
            if not fresh:  # every neighbour seen: close the loop at the first one on the path
                back = next(w for w in nxt if w in seen)
                path = path[path.index(back):]
                start = back
                break
            path.append(fresh[0])
            seen.add(fresh[0])
        cycles.append([*path, start])
    return cycles


def test_import_graph_is_read():
    """The walker sees imports (a broken walker would pass every rule below)."""
    edges = import_graph()
    targets = {(e.source, e.target) for e in edges}
    assert ("dtr_plugins.core.diffusion", "dtr_plugins.core.errors") in targets  # relative `from .errors import`
    assert any(e.source.startswith("dtr_plugins.training.") and e.target.startswith("dtr_plugins.core.") for e in edges)
    assert find_cycles([Edge("a", "b", 1, False), Edge("b", "c", 2, False), Edge("c", "a", 3, False),
                        Edge("c", "d", 4, False)]) == [["a", "b", "c", "a"]]
    assert find_cycles([Edge("a", "b", 1, False), Edge("b", "a", 2, True)]) == []


def part_of(module: str) -> str:
    """``dtr_plugins.training.train`` -> ``training``; ``dtr_plugins`` (the root) -> ``""``."""
    return module.split(".")[1] if "." in module else ""


def test_every_part_is_in_the_table():
    parts = {part_of(m) for m in module_files()} - {"_version"}
    assert parts <= set(ALLOWED), f"parts without a row in ALLOWED: {sorted(parts - set(ALLOWED))}"
    assert {"core", "compose", "training", "sampling", "evaluation", "experiments", "runs", "sharing",
            "cli"} <= parts


def test_imports_follow_the_allowed_arrows():
    assert part_of("dtr_plugins.sampling.sample") == "sampling" and part_of(PACKAGE) == ""
    bad = unique(f"{e.where()} imports {e.target} ({part_of(e.source) or 'root'} -> {part_of(e.target)})"
                 for e in import_graph()
                 if part_of(e.source) != part_of(e.target) and part_of(e.target) not in ("_version", "")
                 and part_of(e.target) not in ALLOWED[part_of(e.source)]
                 and (e.source, e.target) not in EXCEPTIONS)
    assert not bad, ("imports against the arrows of ALLOWED (move the code down, or add an EXCEPTIONS entry "
                     "saying why):\n" + "\n".join(bad))


def test_training_and_sampling_core_is_under_a_third_of_the_package():
    lines = {m: len(p.read_text().splitlines()) for m, p in module_files().items()}
    core = sum(n for m, n in lines.items() if part_of(m) in CORE_PARTS)
    total = sum(lines.values())
    assert core > 1000  # the walker sees training/, sampling/ and compose.py
    assert core / total < CORE_SHARE, (f"training/ + sampling/ + compose/ hold {core} of {total} lines "
                                       f"({core / total:.0%}); move what is not training or sampling out")


def test_core_never_imports_engine_or_cli():
    bad = unique(f"{e.where()} imports {e.target}" for e in import_graph()
                 if e.source.startswith(f"{PACKAGE}.core")
                 and not e.target.startswith(f"{PACKAGE}.core"))
    assert not bad, "core/ must import nothing of the package outside core/:\n" + "\n".join(bad)


def test_nothing_imports_the_package_root():
    bad = unique(f"{e.where()} imports {PACKAGE} (its __init__)" for e in import_graph() if e.target == PACKAGE)
    assert not bad, "\n".join(bad)


def test_no_import_cycles():
    edges = import_graph()
    report = []
    for cycle in find_cycles(edges):
        report.append(" -> ".join(cycle))
        members = set(cycle)
        report += unique(f"    {e.where()} imports {e.target}" for e in edges
                         if not e.type_checking and e.source in members and e.target in members)
    assert not report, "import cycles (and every import among their modules):\n" + "\n".join(report)


def test_files_stay_under_500_lines():
    too_long = []
    for folder in SIZE_CHECKED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            lines = path.read_text().splitlines()
            if len(lines) > MAX_LINES and not any("over 500 lines because" in line for line in lines[:5]):
                too_long.append(f"{path.relative_to(ROOT)}: {len(lines)} lines")
    assert not too_long, (f"files over {MAX_LINES} lines (split them, or say why in the first 5 lines: "
                          "'over 500 lines because ...'):\n" + "\n".join(too_long))


#: Settings objects, not long parameter lists: no function of the package takes more than this many parameters
#: (``self`` / ``cls`` not counted; ``*args`` and ``**kwargs`` count one each).
MAX_PARAMS = 10
#: The one exception: a model constructor whose parameters are its config (``__init__`` of a backbone class).
CONSTRUCTOR_FOLDERS = ("backbones",)


def _long_parameter_lists() -> dict[str, int]:
    found = {}
    for path in sorted((ROOT / PACKAGE).rglob("*.py")):
        rel = path.relative_to(ROOT / PACKAGE)
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            for child in ast.iter_child_nodes(node):
                if not isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    continue
                a = child.args
                names = [p.arg for p in (*a.posonlyargs, *a.args, *a.kwonlyargs)]
                count = len(names) + (a.vararg is not None) + (a.kwarg is not None)
                if isinstance(node, ast.ClassDef) and names and names[0] in ("self", "cls"):
                    count -= 1
                if count <= MAX_PARAMS:
                    continue
                if isinstance(node, ast.ClassDef) and child.name == "__init__" and rel.parts[0] in CONSTRUCTOR_FOLDERS:
                    continue  # a model constructor: its parameters are its config
                owner = f"{node.name}." if isinstance(node, ast.ClassDef) else ""
                found[f"{rel.as_posix()}:{owner}{child.name}"] = count
    return found


def test_no_function_takes_more_than_10_parameters():
    found = _long_parameter_lists()
    assert not found, ("functions with more than 10 parameters (group them into a settings object):\n"
                       + "\n".join(f"{k}: {v}" for k, v in sorted(found.items())))


def test_docs_cite_only_files_in_the_repository():
    """The design lives in docs/design.md; no file cites the design or paper notes that are not in the repository."""
    missing = ["".join(("DES", "IGN")), "".join(("PAP", "ER.md"))]  # spelled apart so this file does not match
    hits = []
    for path in [ROOT / "README.md", *[p for folder in (*SIZE_CHECKED, "docs") for p in (ROOT / folder).rglob("*")
                                       if p.suffix in (".py", ".md")]]:
        text = path.read_text()
        hits += [f"{path.relative_to(ROOT)} names {name}" for name in missing if name in text]
    assert not hits, "\n".join(hits)
    assert (ROOT / "docs" / "design.md").is_file() and (ROOT / "docs" / "architecture.md").is_file()
