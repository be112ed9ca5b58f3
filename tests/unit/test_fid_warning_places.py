"""The rank-deficient FID warning travels with the number: the single-run report shows it."""
from dtr_plugins.runs.rundir import RunDir

from .test_runs_report import make_run


def test_single_run_report_flags_a_rank_deficient_fid(tmp_path, run_cli):
    rd = make_run(tmp_path / "run", fid=40.2)
    RunDir(rd.path).append_metrics({"step": 8, "eval": {"frechet_inception_distance": 38.0, "num_samples": 16,
                                                        "num_reference": 1797, "fid_rank_deficient": True,
                                                        "fid_feature_dim": 128}})
    assert run_cli("report", str(rd.path))[0] == 0
    report = (rd.path / "report.md").read_text()
    assert ("**Warning:** the FID of step(s) 8 is rank-deficient: this FID comes from 16 samples and 1797 reference "
            "images with 128-dimensional features") in report
    clean = make_run(tmp_path / "clean", fid=12.0)
    assert run_cli("report", str(clean.path))[0] == 0
    assert "rank-deficient" not in (clean.path / "report.md").read_text()
