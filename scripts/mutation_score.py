"""Print the mutation score per module from the results mutmut left in mutants/ (run by `make mutate`).

    python scripts/mutation_score.py            # markdown table: module, mutants, killed, timeout, survived,
                                                # no tests, not run, score = (killed + timeout) / mutants
    python scripts/mutation_score.py "dtr_plugins.ema*" ...   # only the modules matching these mutmut patterns

Reads ``mutants/**/*.py.meta`` (mutmut 3's per-file results: exit code per mutant; 1 and 3 killed, 0 survived,
33 and 5 no test reached the code, 24/36/152/255/-24 timeout, null not run yet). Writes nothing.
"""
from __future__ import annotations

import json
import sys
from collections import Counter
from fnmatch import fnmatch
from pathlib import Path

KILLED, SURVIVED, NO_TESTS, TIMEOUT = {1, 3}, {0}, {5, 33}, {24, 36, 152, 255, -24}


def status(code: int | None) -> str:
    if code is None:
        return "not run"
    for name, codes in (("killed", KILLED), ("survived", SURVIVED), ("no tests", NO_TESTS), ("timeout", TIMEOUT)):
        if code in codes:
            return name
    return "other"


def module_name(meta: Path, root: Path) -> str:
    """``dtr_plugins.core.flow`` for ``mutants/dtr_plugins/core/flow.py.meta``."""
    return str(meta.relative_to(root))[:-len(".py.meta")].replace("/", ".")


def main(patterns: list[str], root: Path = Path("mutants")) -> int:
    metas = [m for m in sorted(root.rglob("*.py.meta"))
             if not patterns or any(fnmatch(module_name(m, root), p) or fnmatch(module_name(m, root) + ".", p)
                                    for p in patterns)]
    if not metas:
        print(f"mutation_score: no results under {root}/ (run `make mutate` first)", file=sys.stderr)
        return 2
    columns = ["killed", "timeout", "survived", "no tests", "not run", "other"]
    total: Counter[str] = Counter()
    print("| module | mutants | " + " | ".join(columns) + " | score |")
    print("|---|" + "---|" * (len(columns) + 2))
    for meta in metas:
        codes = json.loads(meta.read_text())["exit_code_by_key"].values()
        if not codes:
            continue
        counts = Counter(status(c) for c in codes)
        total.update(counts)
        print(row(str(meta.relative_to(root))[:-len(".meta")], counts, columns))
    print(row("**total**", total, columns))
    return 0


def row(name: str, counts: Counter[str], columns: list[str]) -> str:
    n = sum(counts.values())
    score = 100.0 * (counts["killed"] + counts["timeout"]) / n
    return f"| `{name}` | {n} | " + " | ".join(str(counts[c]) for c in columns) + f" | {score:.1f} % |"


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
