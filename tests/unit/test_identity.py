"""One identity rule (two named fingerprints), one reader of a run's files, one metric registry."""
import re
from pathlib import Path

import pytest
import torch
import yaml

import dtr_plugins
from dtr_plugins.core import metrics as registry
from dtr_plugins.core.config import config_from_dict
from dtr_plugins.core.errors import ConfigError, UserError
from dtr_plugins.core.fingerprint import plan_fingerprint, resume_refusal, weights_fingerprint
from dtr_plugins.evaluation import metrics as metric_code
from dtr_plugins.runs.rundir import SuiteIndex

from ..conftest import tiny_dit_config

PACKAGE = Path(dtr_plugins.__file__).parent


def tiny(tmp_path, **changes):
    return config_from_dict(yaml.safe_load(tiny_dit_config(tmp_path, **changes).read_text()))


def test_two_fingerprints_and_the_rule(tmp_path):
    base = tiny(tmp_path).to_dict()
    longer = {**base, "train": {**base["train"], "steps": base["train"]["steps"] + 10}}
    other_beta = {**base, "routing": {"name": "dtr", "alpha": 4.0, "beta": 0.5}}
    routed = {**base, "routing": {"name": "dtr", "alpha": 4.0, "beta": 0.8}}
    assert weights_fingerprint(base) == weights_fingerprint(longer)
    assert plan_fingerprint(base) != plan_fingerprint(longer)
    assert resume_refusal(base, longer) is None  # more steps: the same weights continue
    assert resume_refusal(routed, other_beta) == "routing.beta: 0.8 -> 0.5"
    assert weights_fingerprint(routed) != weights_fingerprint(other_beta)


def test_no_module_but_rundir_names_the_run_files():
    # readers of suite.json / status.json / metrics.jsonl go through runs/rundir.py, so a fix there reaches all
    literal = re.compile(r"""["'](suite\.json|status\.json|metrics\.jsonl)["']""")
    offenders = [f"{p.relative_to(PACKAGE)}:{n}" for p in sorted(PACKAGE.rglob("*.py")) if p.name != "rundir.py"
                 for n, line in enumerate(p.read_text().splitlines(), 1) if literal.search(line)]
    assert offenders == []
    assert literal.search((PACKAGE / "runs" / "rundir.py").read_text())  # the test can see a literal


def test_suite_index_problems_are_one_line(tmp_path):
    with pytest.raises(UserError, match="not a suite folder"):
        SuiteIndex(tmp_path).read()
    (tmp_path / "suite.json").write_text('{"runs": [')
    with pytest.raises(UserError, match="suite.json: unreadable"):
        SuiteIndex(tmp_path).read()
    (tmp_path / "suite.json").write_text('{"name": "s", "runs": [{"id": "a"}, 3, {"group": "x"}]}')
    with pytest.raises(UserError, match="suite.json: not a suite index"):
        SuiteIndex(tmp_path).entries()
    (tmp_path / "suite.json").write_text('{"name": "s", "runs": [{"id": "a"}, {"id": "b", "group": "x"}]}')
    assert [e["id"] for e in SuiteIndex(tmp_path).entries()] == ["a", "b"]


@pytest.fixture
def extra_metric(monkeypatch):
    """A metric registered for the test only: one entry, and everything that names metrics knows it."""
    entry = registry.Metric("sharpness", (registry.Value("sharpness_mean", "sharpness", registry.HIGHER,
                                                         "Sharpness (mean)"),), feature_layer=None)
    monkeypatch.setitem(registry.REGISTRY, "sharpness", entry)
    monkeypatch.setattr(metric_code, "FUNCTIONS", dict(metric_code.FUNCTIONS))

    @metric_code.metric_function("sharpness", lambda options: (3, "sharpness (three images)"))
    def sharpness(inputs):
        feats = inputs.samples[inputs.layer]
        return {"sharpness_mean": float(feats.abs().mean()), "ignored": 1.0}, {"sharpness_images": len(feats)}
    return entry


def test_a_registered_metric_is_computed_and_sized_by_its_one_function(extra_metric):
    """Its registry entry plus one registered function: evaluation computes it (only the registry's values are
    kept, in registry order, then the function's extra fields) and refuses too few images with its minimum."""
    feats = torch.tensor([[1.0, -2.0], [3.0, -4.0], [0.0, 2.0]])
    settings = metric_code.metric_settings(["sharpness"], 3, None, None)
    out = metric_code.compute_metrics(["sharpness"], {"features": feats}, None, {"sharpness": "features"}, settings)
    assert out == {"sharpness_mean": pytest.approx(2.0), "sharpness_images": 3}
    assert metric_code.settings_problem(["sharpness"], 2) == \
        "2 image(s) are too few for sharpness (three images); at least 3 needed"
    assert metric_code.check_metric_names(["sharpness", "fid"]) == ["sharpness", "fid"]


def test_every_selectable_registry_metric_has_exactly_one_function():
    assert set(metric_code.FUNCTIONS) == set(registry.selectable())
    with pytest.raises(ValueError, match="'nope' is not a selectable metric"):
        metric_code.metric_function("nope", lambda options: (1, "x"))


def test_a_registered_metric_reaches_cli_config_report_runs_and_card(extra_metric, tmp_path):
    from dtr_plugins.cli import build_parser
    from dtr_plugins.experiments.compare import metric_info
    from dtr_plugins.experiments.report import metric_table, write_csv
    from dtr_plugins.runs.listing import RunSummary, format_runs_table
    from dtr_plugins.runs.record import RunRecord
    from dtr_plugins.sharing.model_card import metrics_of

    args = build_parser().parse_args(["eval", "--samples", "s", "--ref", "r", "--out", "o", "--metrics", "sharpness"])
    assert args.metrics == ["sharpness"]
    cfg = tiny(tmp_path, eval={"at_end": False, "metrics": ["fid", "sharpness"]})
    assert cfg.eval.metrics == ["fid", "sharpness"]
    assert metric_info("sharpness_mean") == ("sharpness", "higher")
    runs = [RunRecord(id=f"a__seed{s}", group="a", seed=s, status="done", routing="dtr", config={}, meta={},
                      evals=[{"step": 4, "sharpness_mean": v}]) for s, v in ((0, 0.5), (1, 0.7))]
    assert "### sharpness (higher is better)" in metric_table("sharpness_mean", runs)
    assert write_csv(runs, tmp_path / "results.csv") == ["sharpness_mean"]
    assert "sharpness_mean" in (tmp_path / "results.csv").read_text().splitlines()[0]
    table = format_runs_table([RunSummary(run="a", status="done", step=4, steps=4, loss=0.1,
                                          metrics={"sharpness_mean": 0.5}, metrics_step={"sharpness_mean": 4})])
    assert "sharpness" in table.splitlines()[0]
    assert metrics_of({"sharpness_mean": 0.5, "step": 4}) == {"sharpness_mean": 0.5}
    assert registry.card_titles()["sharpness_mean"] == "Sharpness (mean)"


def test_unregistered_metric_is_refused_by_config_and_cli(tmp_path, capsys):
    from dtr_plugins.cli import main

    with pytest.raises(ConfigError, match="unknown metric 'sharpness'.*allowed: fid, sfid, kid, isc, prc"):
        tiny(tmp_path, eval={"metrics": ["sharpness"]})
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--samples", "s", "--ref", "r", "--out", "o", "--metrics", "sharpness"])
    assert exc.value.code == 2 and "invalid choice: 'sharpness'" in capsys.readouterr().err
