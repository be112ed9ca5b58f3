"""The benchmark folder's structure and its tooling (not speed: benchmarks measure, tests never time).

- no benchmark script imports another script (shared code lives in ``_common.py`` / ``_published.py``);
- plugin lists come from the registry: a strategy registered by a new plugin is benchmarked with no edit;
- ``check_targets.py`` gives met / MISSED / not measured and the exit status from ``targets.yaml``;
- the published-style baseline computes exactly what our DiT computes (vanilla and dtr).
"""
from __future__ import annotations

import ast
import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
sys.path.insert(0, str(BENCH))

import _common as common  # noqa: E402
import _published as pub  # noqa: E402
import check_targets  # noqa: E402

from ..conftest import registry_with  # noqa: E402


def test_no_script_imports_another_script():
    scripts = {p.stem for p in BENCH.glob("*.py") if not p.stem.startswith("_")}
    assert {"train_step", "sample", "routing_overhead", "check_targets"} <= scripts
    for path in BENCH.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import)
                     else [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            for name in names:
                assert name.split(".")[0] not in scripts, f"{path.name} imports the script {name}"


# ------------------------------------------------------------------------------------ check_targets
def _targets(tmp_path: Path, items: list[dict]) -> Path:
    path = tmp_path / "targets.yaml"
    path.write_text(yaml.safe_dump({"targets": items}))
    return path


def _target(id_: str, metric: str, compare: str, threshold: float, device: str = "cpu") -> dict:
    return {"id": id_, "what": "a test target", "metric": metric, "compare": compare, "threshold": threshold,
            "device": device}


def _result(folder: Path, stem: str, metrics: dict[str, float], date: str = "2026-11-30T00:00:00+00:00",
            device_type: str = "cpu") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    payload = {"machine": {"date": date, "device_name": "Test CPU", "git_commit": "abc", "device_type": device_type},
               "metrics": {f"{stem}.{k}": v for k, v in metrics.items()}}
    (folder / f"{stem}.json").write_text(json.dumps(payload))


def test_check_targets_verdicts_and_exit_status(tmp_path, capsys):
    targets = _targets(tmp_path, [
        _target("overhead", "routing_overhead.ours_fraction", "<=", 0.03),
        _target("ratio", "routing_overhead.published_over_ours", ">=", 3.0),
        _target("sampling", "sample_B2.dit.dtr.cfg1.images_per_s", ">=", 100, device="gpu"),
    ])
    cpu, gpu = tmp_path / "cpu", tmp_path / "gpu"
    _result(cpu, "routing_overhead", {"ours_fraction": 0.0026, "published_over_ours": 2.5})
    rc = check_targets.main(["--targets", str(targets), "--results", f"cpu={cpu}", "--results", f"gpu={gpu}",
                             "--json", str(tmp_path / "v.json")])
    verdicts = {r["id"]: r["verdict"] for r in json.loads((tmp_path / "v.json").read_text())["targets"]}
    assert verdicts == {"overhead": "met", "ratio": "MISSED", "sampling": "not measured"}
    assert rc == 1
    assert "1 met, 1 missed, 1 not measured" in capsys.readouterr().out

    _result(cpu, "routing_overhead", {"ours_fraction": 0.0026, "published_over_ours": 3.31})
    _result(gpu, "sample_B2", {"dit.dtr.cfg1.images_per_s": 50.0})  # a CPU smoke run in the GPU folder
    assert check_targets.main(["--targets", str(targets), "--results", f"cpu={cpu}",
                               "--results", f"gpu={gpu}"]) == 0  # nothing measured is missed
    out = capsys.readouterr().out
    assert "2 met, 0 missed, 1 not measured" in out and "sample_B2.json: measured on cpu" in out

    _result(gpu, "sample_B2", {"dit.dtr.cfg1.images_per_s": 50.0}, device_type="cuda")
    assert check_targets.main(["--targets", str(targets), "--results", f"cpu={cpu}",
                               "--results", f"gpu={gpu}"]) == 1  # 50 images/s on a GPU misses >= 100


def test_check_targets_rejects_a_malformed_target(tmp_path, capsys):
    targets = _targets(tmp_path, [_target("bad", "x.y", "=>", 1.0)])
    assert check_targets.main(["--targets", str(targets)]) == 2
    err = capsys.readouterr().err.strip()
    assert "targets[0] (bad).compare" in err and "'=>'" in err and "<=" in err and "\n" not in err


def test_project_targets_file_is_valid():
    targets = check_targets.load_targets(BENCH / "targets.yaml")
    assert {t.device for t in targets} == {"cpu", "gpu"}
    assert all(t.metric.split(".")[0] for t in targets)


# ---------------------------------------------------------------------------------- registry lists
def test_plugin_names_restrict_and_reject():
    from dtr_plugins.core.plugins import default_registry

    assert common.plugin_names("strategy") == default_registry().names("strategy")
    assert common.plugin_names("strategy", "dtr, vanilla") == ["dtr", "vanilla"]
    with pytest.raises(SystemExit, match="unknown strategy 'nope'.*registered: .*dtr"):
        common.plugin_names("strategy", "dtr,nope")


def test_a_new_strategy_plugin_is_benchmarked_without_edits(tmp_path, monkeypatch):
    """A strategy that only a (fake) third-party plugin registers shows up in train_step's results."""
    import dtr_plugins.core.plugins as plugins

    class EvenChannels:
        def mask_table(self, num_tasks, channels, *, layer=0, num_layers=1):
            table = torch.zeros(num_tasks, channels, dtype=torch.bool)
            table[:, ::2] = True
            return table

    registry = registry_with("strategy", "even_channels", EvenChannels, description="even channels only")
    monkeypatch.setattr(plugins, "default_registry", lambda: registry)

    import train_step

    train_step.main(["--smoke", "--backbones", "dit", "--threads", "1", "--out-dir", str(tmp_path)])
    payload = json.loads((tmp_path / "train_step.json").read_text())
    variants = [r["variant"] for r in payload["dit"]["results"]]
    assert variants[0] == "vanilla" and "even_channels" in variants and "pub_dtr" in variants
    assert "train_step.dit.even_channels.overhead.ratio_of_medians" in payload["metrics"]
    machine = payload["machine"]
    assert machine["device_name"] and machine["torch"] == torch.__version__ and machine["date"]
    assert len(machine["source_sha256"]) == 64 and "git_commit" in machine
    # the written Markdown is the render of the written JSON: a committed result rebuilds its table exactly
    assert payload["script"] == "train_step"
    assert (tmp_path / "train_step.md").read_text() == train_step.render(payload) + "\n"


def test_bench_config_sizes_and_overrides():
    cfg = common.bench_config("dit", "tiny", ["input_size=4", "adm_unet.preset=adm-64"])
    p = cfg.backbone.params
    assert (p["depth"], p["hidden_size"], p["input_size"]) == (2, 64, 4)  # the adm_unet override is ignored
    assert common.size_for("dit", None) == next(iter(common.model_sizes()["dit"]))
    assert common.size_for("adm_unet", "dit=B/2,adm_unet=adm-64") == "adm-64"
    with pytest.raises(SystemExit, match="no size 'Z/9'.*listed: S/2"):
        common.bench_config("dit", "Z/9")


# ------------------------------------------------------------------------------ published baseline
def test_published_style_dit_matches_ours():
    import dtr_plugins as dp
    from dtr_plugins.backbones.dit import DiT
    from dtr_plugins.core.routing import RoutingPlan

    torch.manual_seed(0)
    base = DiT(input_size=8, patch_size=2, in_channels=4, hidden_size=64, depth=3, num_heads=4, num_classes=10)
    common.randomize_zero_init(base)
    strategy = dp.build_strategy("dtr")
    published = pub.PublishedStyleDiT(base, pub.published_tables(strategy, 1000, 64, 3)).eval()
    official = pub.PublishedStyleDiT(base, None).eval()
    base.eval()
    x, t, y = torch.randn(4, 4, 8, 8), torch.tensor([0, 300, 700, 999]), torch.tensor([1, 2, 3, 4])
    with torch.no_grad():
        torch.testing.assert_close(official(x, t, y), base(x, t, y), atol=1e-5, rtol=0)
        base.attach_routing(RoutingPlan(strategy, base.routed_channels(), 1000))
        routed = base(x, t, y)
        torch.testing.assert_close(published(x, t, y), routed, atol=1e-5, rtol=0)
    assert not torch.allclose(routed, official(x, t, y), atol=1e-3)  # routing changed the output


def test_accumulation_benchmark_runs_every_variant_through_the_engine(tmp_path):
    """The smoke run measures each kN[+ckpt] variant; a variant spec that does not divide the batch is refused."""
    import accumulation

    accumulation.main(["--smoke", "--threads", "1", "--variants", "k1,k4,k2+ckpt", "--out-dir", str(tmp_path)])
    payload = json.loads((tmp_path / "accumulation.json").read_text())
    rows = {r["variant"]: r for r in payload["rows"]}
    assert set(rows) == {"k1", "k4", "k2+ckpt"} and not any(r["error"] for r in rows.values())
    assert (rows["k4"]["k"], rows["k4"]["micro_batch"], rows["k2+ckpt"]["activation_checkpointing"]) == (4, 2, True)
    assert rows["k1"]["activation_checkpointing"] is False and len(rows["k1"]["step_times_s"]) == 2
    assert payload["metrics"]["accumulation.tiny.k4.images_per_s"] > 0
    assert (tmp_path / "accumulation.md").read_text() == accumulation.render(payload) + "\n"
    with pytest.raises(SystemExit, match="3 micro-batches do not divide --batch 8"):
        accumulation.parse_variants("k1,k3", 8)


def test_dydit_width_is_benchmarked_at_its_site_and_at_its_target_width():
    """``routed_view`` routes ``dydit_width`` at ``heads_mlp`` (the first site it takes) and refuses a U-Net
    in one line; ``routing_sites.py``'s ``dydit_width@0.5`` plan reaches a mean width of 0.5 with tables that
    change along the timesteps, and samples through the sliced path."""
    import routing_sites

    from dtr_plugins.backbones.dit import DiT
    from dtr_plugins.core.errors import ConfigError
    from dtr_plugins.core.routing import ActiveUnits

    bm = common.build_bench_model("dit", "tiny")
    assert common.routed_view(bm, "dydit_width", torch.device("cpu")).plan.site == "heads_mlp"
    assert common.routed_view(bm, "dtr", torch.device("cpu")).plan.site == "input"
    with pytest.raises(ConfigError, match="routing.site: 'input' is not supported by dydit_width"):
        common.routed_view(common.build_bench_model("adm_unet", "tiny"), "dydit_width", torch.device("cpu"))
    model = DiT(input_size=8, patch_size=2, in_channels=4, hidden_size=48, depth=2, num_heads=6).eval()
    plan = routing_sites.fit_dydit(model, 0.5, torch.device("cpu"))
    assert routing_sites.dydit_share(model, plan, 16) == pytest.approx(0.5, abs=0.03)
    rows = torch.cat(plan.learned.task_tables(routing_sites.NUM_TASKS), dim=1)
    assert len({tuple(r.tolist()) for r in rows}) > 10
    model.attach_routing(plan)
    units = plan.learned_active_units(torch.full((2,), 500))
    assert units is not None and any(isinstance(u, ActiveUnits) for u in units)


def test_train_buckets_quick_run_writes_every_variant_and_resumes(tmp_path, capsys):
    """The smoke run of benchmarks/train_buckets.py (tiny shape, one round; not a timing): every variant has a
    speed with its interval, the bucketed ones their K and union width; --resume keeps a measured model."""
    import train_buckets

    args = ["--quick", "--threads", "1", "--betas", "0.5", "--ks", "auto,2", "--out-dir", str(tmp_path)]
    train_buckets.main(args)
    payload = json.loads((tmp_path / "train_buckets_t1.json").read_text())
    (group,) = payload["groups"]
    assert list(group["variants"]) == ["vanilla", "input@0.5", "masked@0.5", "Kauto@0.5", "K2@0.5"]
    k2 = group["variants"]["K2@0.5"]
    assert k2["buckets"]["k_counts"] == {"2": 1} and 0 < k2["buckets"]["mean_union_width"] < 1
    assert {"paired_median", "ci95_low", "ci95_high"} <= set(k2["speed_vs_masked"])
    assert {"paired_median", "ci95_low", "ci95_high"} <= set(k2["speed_vs_input"])  # the published DTR's site
    assert "speed_vs_input" not in group["variants"]["input@0.5"] and "buckets" not in group["variants"]["input@0.5"]
    assert payload["metrics"]["train_buckets_t1.S/2.t1.K2@0.5.speed_vs_vanilla"] > 0
    assert "goal 1.5x" in (tmp_path / "train_buckets_t1.md").read_text()
    assert group["machine"]["device_name"] == payload["machine"]["device_name"]  # each model records its sitting
    train_buckets.main([*args, "--resume"])
    assert "kept (--resume)" in capsys.readouterr().err
    again = json.loads((tmp_path / "train_buckets_t1.json").read_text())
    assert again["groups"][0]["machine"] == group["machine"]  # the kept model keeps the machine it was measured on
    assert f"measured {group['machine']['date']}" in (tmp_path / "train_buckets_t1.md").read_text()
