"""scripts/mutation_score.py: the per-module table of docs/testing.md, from mutmut's result files."""
import json
from pathlib import Path

from ..conftest import load_script


def score_module():
    return load_script("mutation_score")


def _meta(root: Path, rel: str, codes: dict) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"exit_code_by_key": codes}))


def test_rows_count_each_outcome_and_patterns_select_modules(tmp_path, capsys):
    ms = score_module()
    root = tmp_path / "mutants"
    # killed (1, 3), survived (0), timeout (-24), no tests (33), not run (None)
    _meta(root, "dtr_plugins/core/flow.py.meta", {"a": 1, "b": 3, "c": 0, "d": -24, "e": 33, "f": None})
    _meta(root, "dtr_plugins/ema/builtin.py.meta", {"a": 1, "b": 1, "c": 1, "d": 0})
    assert ms.main([], root) == 0
    out = capsys.readouterr().out.splitlines()
    flow = next(line for line in out if "core/flow.py" in line)
    assert flow == "| `dtr_plugins/core/flow.py` | 6 | 2 | 1 | 1 | 1 | 1 | 0 | 50.0 % |"
    assert out[-1] == "| `**total**` | 10 | 5 | 1 | 2 | 1 | 1 | 0 | 60.0 % |"
    assert ms.main(["dtr_plugins.ema*"], root) == 0
    only = capsys.readouterr().out
    assert "ema/builtin.py` | 4 | 3 | 0 | 1 |" in only and "flow.py" not in only and "75.0 %" in only
    assert ms.main([], tmp_path / "nothing") == 2
