"""`dtr report` and `dtr runs` read a damaged suite the same way (Trust v3, item 12): one line naming a corrupt
suite.json; a run with a corrupt status.json, config.yaml or metrics.jsonl line is `unreadable (<file>)` and the
report is still written."""
import json

import pytest

from dtr_plugins.experiments.compare_records import runs_from_suite

from .test_compare import crafted_suite


@pytest.mark.parametrize("text", ["{not json", "[1, 2]", '{"runs": [{"no": "id"}]}'])
def test_a_corrupt_suite_json_is_one_line_naming_it(tmp_path, run_cli, text):
    root = crafted_suite(tmp_path / "s", seeds=[0], extra=False)
    (root / "suite.json").write_text(text)
    code, _, err = run_cli("report", str(root))
    assert code == 2 and len(err.strip().splitlines()) == 1 and str(root / "suite.json") in err, err


def test_runs_with_damaged_files_are_shown_unreadable_and_the_report_is_written(tmp_path, run_cli):
    root = crafted_suite(tmp_path / "s", seeds=[0, 1], extra=False)
    (root / "vanilla__constant__seed0" / "status.json").write_text('{"state": "do')
    (root / "dtr-a4-b0.8__constant__seed0" / "status.json").write_text("[]")
    metrics = root / "random-b0.8-s0__constant__seed1" / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join([lines[0], "7", "{cut", *lines[1:]]) + "\n")
    (root / "vanilla__min_snr__seed1" / "config.yaml").write_text("routing: [unclosed\n")
    code, _, err = run_cli("report", str(root))
    assert code == 0, err
    report = (root / "report.md").read_text()
    for rid, name in (("vanilla__constant__seed0", "status.json"), ("dtr-a4-b0.8__constant__seed0", "status.json"),
                      ("random-b0.8-s0__constant__seed1", "metrics.jsonl"), ("vanilla__min_snr__seed1", "config.yaml")):
        assert f"- run `{rid}`: unreadable ({name})" in report
    csv = (root / "results.csv").read_text()
    assert "unreadable (metrics.jsonl)" in csv
    statuses = {r.id: r.status for r in runs_from_suite(root)}
    assert statuses["random-b0.8-s0__constant__seed1"] == "unreadable (metrics.jsonl)"
    assert statuses["vanilla__constant__seed1"] == "done"
    code, out, err = run_cli("runs", str(root))
    assert code == 0, err
    assert json.loads((root / "suite.json").read_text())["name"] == "crafted"
