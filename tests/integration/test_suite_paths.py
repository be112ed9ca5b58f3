"""Suite names and run ids are single folder names: nothing lands outside the suite's output_dir."""
from dtr_plugins.experiments.suite import load_suite, value_label

from ..conftest import write
from .test_suite import BASE, suite_file


def test_suite_name_with_a_path_is_refused(tmp_path, run_cli):
    # the bug: `name: ../evil` wrote suite.json, report.md, configs/ and the runs next to runs/
    for name in ("../evil", "a/b", "..", "."):
        path = suite_file(tmp_path, f"name: '{name}'\nmatrix: {{seed: [0]}}\n")
        for extra in (["--dry-run"], []):
            code, _, err = run_cli("suite", str(path), *extra)
            assert code == 2, err
            assert len(err.strip().splitlines()) == 1 and "suite.yaml: name:" in err and "not a valid name" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["base.yaml", "suite.yaml"]


def test_run_ids_from_matrix_values_are_one_folder_name(tmp_path):
    assert value_label("sample.respacing", "../../x") == "respacing..-..-x"
    assert value_label("backbone", {"name": "dit", "preset": "a/../b"}) == "dit-a..b"
    # a free-text axis (the respacing is now checked by its process when the suite loads)
    path = suite_file(tmp_path, "name: s\nmatrix: {eval.reference: ['ref', '../../ref', 'a b/c']}\n")
    suite = load_suite(path)
    assert [r.id for r in suite.runs] == ["referenceref", "reference..-..-ref", "referencea-b-c"]
    for run in suite.runs:
        assert (suite.root / run.id).resolve().parent == suite.root.resolve()


def test_a_run_config_given_as_suite_says_so(tmp_path, run_cli):
    path = write(tmp_path / "run.yaml", BASE)
    code, _, err = run_cli("suite", str(path), "--dry-run")
    # the bug: "base: Field required [and 8 more]"
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"{path}: this looks like a run config" in err and "dtr train" in err


def test_a_copied_suite_whose_base_is_missing_names_the_suite_file_and_its_base_key(tmp_path, run_cli):
    """A suite file copied elsewhere keeps ``base: ../dit_digits.yaml``, which now points nowhere: the one line
    names the suite file, the ``base`` key, the value and where it was looked for."""
    (tmp_path / "suites").mkdir()
    path = write(tmp_path / "suites" / "copied.yaml", "name: c\nbase: ../dit_digits.yaml\nmatrix: {seed: [0]}\n")
    code, _, err = run_cli("suite", str(path), "--dry-run")
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert f"{path}: base: '../dit_digits.yaml'" in err and str(tmp_path / "dit_digits.yaml") in err
