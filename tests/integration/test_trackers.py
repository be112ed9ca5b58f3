"""Experiment trackers: each tracker's own reader loads what was logged; failures; config errors.

TensorBoard files are read with tensorboard's ``EventAccumulator``; W&B offline runs by decoding the
run's ``.wandb`` transaction log into ``wandb.proto`` records (wandb >= 0.19 ships no Python reader);
MLflow through ``MlflowClient`` on the run's SQLite store. Nothing reaches a network: W&B is offline,
MLflow's store is a local file, telemetry and error reporting are off.
"""
from __future__ import annotations

import json
import struct
import sys
import time
import types
import warnings
from pathlib import Path

import numpy as np
import pytest

from dtr_plugins.core.config import PluginSection, config_from_dict
from dtr_plugins.core.errors import ConfigError, PluginError
from dtr_plugins.core.hookspecs import hookimpl
from dtr_plugins.core.plugins import build_registry
from dtr_plugins.training.tracker_set import (
    TrackerSet,
    TrackerWarning,
    as_rgb_uint8,
    flatten_scalars,
)

from ..conftest import ROOT, write

RECORDS = [
    {"step": 2, "loss": 0.75, "loss_bucket": [0.5, None, 1.25], "lr": 1e-3, "note": "text is skipped"},
    {"step": 4, "loss": 0.5, "loss_bucket": [0.25, 0.125, None], "lr": 1e-3, "compiled": False},
    {"step": 6, "loss": 0.375, "loss_bucket": [None, 0.0625, 1.0], "lr": 5e-4,
     "eval": {"frechet_inception_distance": 12.5, "sampler": "ddim"}},
]
CONFIG = {"name": "trk", "train": {"lr": 1e-3, "steps": 6}, "routing": {"name": "dtr", "beta": 0.8}}


@pytest.fixture(autouse=True)
def _offline(monkeypatch, tmp_path):
    """No network and nothing written outside tmp_path, whatever the developer's environment holds."""
    for key, value in {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "WANDB_CONSOLE": "off",
                       "WANDB_DISABLE_GIT": "true", "WANDB_DISABLE_CODE": "true", "WANDB_ERROR_REPORTING": "false",
                       "WANDB_CONFIG_DIR": str(tmp_path / "home" / "wandb-config"),
                       "WANDB_CACHE_DIR": str(tmp_path / "home" / "wandb-cache"),
                       "WANDB_DATA_DIR": str(tmp_path / "home" / "wandb-data"),
                       "MLFLOW_DISABLE_TELEMETRY": "true", "DO_NOT_TRACK": "true"}.items():
        monkeypatch.setenv(key, value)
    for key in ("MLFLOW_TRACKING_URI", "WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_DIR", "WANDB_PROJECT"):
        monkeypatch.delenv(key, raising=False)


# ------------------------------------------------------------------------------------------ readers
def read_tensorboard(run_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    scalars = {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}
    images = {tag: [(e.step, e.width, e.height) for e in acc.Images(tag)] for tag in acc.Tags()["images"]}
    return scalars, images


def wandb_records(path: Path):
    """The ``wandb.proto`` records of one offline run's ``.wandb`` transaction log.

    The ``.wandb`` file is a LevelDB-style log: a 7-byte header (``:W&B``, magic 0xBEE1, version 0), then
    32 KiB blocks of chunks, each ``crc32 (4) | length (2) | type (1) | data`` (1 full, 2 first, 3 middle,
    4 last); a chunk header never straddles a block (the tail is zero padding).
    """
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert struct.unpack("<4sHB", data[:7]) == (b":W&B", 0xBEE1, 0)
    block, pos, pending = 32768, 7, b""
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if kind == 0:  # zero padding up to the end of the block
            pos += left
            continue
        pending += data[pos + 7:pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def wandb_logs(run_dir: Path) -> list[Path]:
    """The ``.wandb`` files of every offline run folder under ``run_dir/wandb``, oldest first."""
    return sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))


def read_wandb(run_dir: Path) -> list[dict]:
    """History rows of the one offline run under ``run_dir/wandb``, decoded with wandb's protobuf schema."""
    (path,) = wandb_logs(run_dir)
    return [{(item.key or "/".join(item.nested_key)): json.loads(item.value_json) for item in record.history.item}
            for record in wandb_records(path) if record.WhichOneof("record_type") == "history"]


def wandb_run(path: Path):
    """The run record (id, project, group, job_type, tags) of one ``.wandb`` file."""
    return next(r.run for r in wandb_records(path) if r.WhichOneof("record_type") == "run")


def read_mlflow(run_dir: Path, experiment_name: str = "dtr-plugins"):
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{run_dir / 'mlflow.db'}")
    experiment = client.get_experiment_by_name(experiment_name)
    (run,) = client.search_runs([experiment.experiment_id])
    history = {key: [(m.step, m.value) for m in client.get_metric_history(run.info.run_id, key)]
               for key in run.data.metrics}
    images = [a.path for a in client.list_artifacts(run.info.run_id, "images")]
    return run, history, images


def expected(key: str) -> list[tuple[int, float]]:
    return [(r["step"], v) for r in RECORDS if (v := flatten_scalars(r).get(key)) is not None]


# ---------------------------------------------------------------------------------------- behaviour
def test_flatten_scalars_keeps_numbers_only():
    flat = flatten_scalars(RECORDS[2])
    assert flat == {"loss": 0.375, "loss_bucket/1": 0.0625, "loss_bucket/2": 1.0, "lr": 5e-4,
                    "eval/frechet_inception_distance": 12.5}
    assert flatten_scalars({"step": 1, "loss": float("nan"), "ok": True}) == {}


def test_images_become_rgb_uint8(tmp_path):
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8)
    rgb = as_rgb_uint8(gray)
    assert rgb.shape == (8, 8, 3) and (rgb[..., 2] == gray).all()
    from PIL import Image

    Image.fromarray(gray).save(tmp_path / "g.png")
    assert (as_rgb_uint8(tmp_path / "g.png") == rgb).all()
    with pytest.raises(TypeError, match="uint8"):
        as_rgb_uint8(gray.astype(np.float32))


@pytest.mark.parametrize("name", ["tensorboard", "wandb", "mlflow"])
def test_each_tracker_writes_what_its_own_reader_loads(tmp_path, name):
    run_dir = tmp_path / "run"
    picture = np.random.default_rng(0).integers(0, 256, (8, 12, 3), dtype=np.uint8)
    with TrackerSet.open([PluginSection(name=name)], run_dir, CONFIG, "trk") as trackers:
        for record in RECORDS:
            trackers.log_record(record)
        trackers.log_image(6, "samples", picture)
        assert trackers.names == [name]
        applied = trackers.applied()[name]

    if name == "tensorboard":
        scalars, images = read_tensorboard(run_dir)
        for key in ("loss", "loss_bucket/0", "lr", "eval/frechet_inception_distance"):
            assert scalars[key] == [(s, pytest.approx(v, rel=1e-6)) for s, v in expected(key)]
        assert "note" not in scalars and "compiled" not in scalars and "step" not in scalars
        assert images["samples"] == [(6, 12, 8)]
        assert applied == {"log_dir": str(run_dir / "tensorboard")}
    elif name == "wandb":
        rows = read_wandb(run_dir)
        loss = [(r["_step"], r["loss"]) for r in rows if "loss" in r]
        assert loss == expected("loss"), rows
        assert [(r["_step"], r["loss_bucket/2"]) for r in rows if "loss_bucket/2" in r] == expected("loss_bucket/2")
        (image,) = [r for r in rows if "samples/_type" in r]
        assert image["samples/_type"] == "image-file" and (image["samples/width"], image["samples/height"]) == (12, 8)
        assert list(run_dir.glob("wandb/offline-run-*/files/" + image["samples/path"]))
        assert applied["mode"] == "offline" and applied["dir"].startswith(str(run_dir / "wandb" / "offline-run-"))
    else:
        run, history, images = read_mlflow(run_dir)
        assert run.info.status == "FINISHED" and run.info.run_name == "trk"
        assert run.data.params["train.lr"] == "0.001" and run.data.params["routing.name"] == "dtr"
        for key in ("loss", "loss_bucket/0", "lr", "eval/frechet_inception_distance"):
            assert sorted(history[key]) == expected(key)
        assert any(p.endswith(".png") and "samples" in p for p in images)
        assert not (tmp_path / "mlruns").exists() and (run_dir / "mlflow.db").exists()
        assert applied == {"tracking_uri": f"sqlite:///{run_dir.resolve() / 'mlflow.db'}", "experiment": "dtr-plugins",
                           "run_id": run.info.run_id, "resumed": False}


# ------------------------------------------------------------------------- environment, suites, resume
SUITE_CONFIG = {**CONFIG, "seed": 3, "diffusion": {"name": "gaussian"}, "log": {"suite": "ablation"}}


def _segment(run_dir: Path, name: str, config: dict, steps: list[int], previous: dict | None = None) -> dict:
    """One training segment's trackers: open (resuming ``previous``), log ``loss`` at ``steps``, finish."""
    with TrackerSet.open([PluginSection(name=name)], run_dir, config, "trk", previous=previous) as trackers:
        for step in steps:
            trackers.log_record({"step": step, "loss": 1.0 / step})
        return trackers.applied()


def test_wandb_leaves_unset_identity_to_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("WANDB_PROJECT", "from-env")
    monkeypatch.setenv("WANDB_RUN_GROUP", "env-group")
    applied = _segment(tmp_path / "run", "wandb", CONFIG, [1])["wandb"]
    (path,) = wandb_logs(tmp_path / "run")
    run = wandb_run(path)
    assert run.project == "from-env" and applied["project"] == "from-env"  # no project in the config
    assert run.run_group == "env-group" and run.display_name == "trk" and run.job_type == "train"
    assert list(run.tags) == ["dtr"]  # a lone run's strategy; no process or seed in CONFIG

    explicit = PluginSection(name="wandb", project="from-config", run_name="shown")
    with TrackerSet.open([explicit], tmp_path / "run2", CONFIG, "trk"):
        pass
    (path,) = wandb_logs(tmp_path / "run2")
    assert (wandb_run(path).project, wandb_run(path).display_name) == ("from-config", "shown")  # config wins


def test_a_suite_run_is_grouped_and_tagged_in_wandb_and_in_its_suites_mlflow_experiment(tmp_path):
    applied = _segment(tmp_path / "run", "wandb", SUITE_CONFIG, [1])["wandb"]
    (path,) = wandb_logs(tmp_path / "run")
    run = wandb_run(path)
    assert (run.run_group, run.job_type, list(run.tags)) == ("ablation", "train", ["dtr", "gaussian", "seed=3"])
    assert (applied["group"], applied["job_type"], applied["tags"]) == ("ablation", "train",
                                                                        ["dtr", "gaussian", "seed=3"])

    applied = _segment(tmp_path / "run", "mlflow", SUITE_CONFIG, [1])["mlflow"]
    mlrun, history, _ = read_mlflow(tmp_path / "run", experiment_name="ablation")  # one experiment per suite
    assert applied["experiment"] == "ablation" and mlrun.info.run_id == applied["run_id"]
    assert {k: v for k, v in mlrun.data.tags.items() if k.startswith("dtr.")} == {
        "dtr.suite": "ablation", "dtr.strategy": "dtr", "dtr.process": "gaussian", "dtr.seed": "3"}
    assert history["loss"] == [(1, 1.0)]


def test_a_resumed_run_continues_the_same_wandb_run(tmp_path):
    first = _segment(tmp_path, "wandb", CONFIG, [1, 2])
    time.sleep(1.1)  # offline run folders are named by the second they start
    second = _segment(tmp_path, "wandb", CONFIG, [3, 4], previous=first)["wandb"]
    assert second["run_id"] == first["wandb"]["run_id"] and second["resumed"] and not first["wandb"]["resumed"]
    logs = wandb_logs(tmp_path)
    assert len(logs) == 2 and {wandb_run(p).run_id for p in logs} == {first["wandb"]["run_id"]}  # wandb sync: one run
    fresh = _segment(tmp_path / "other", "wandb", CONFIG, [1])["wandb"]  # no record: a new run
    assert fresh["run_id"] != second["run_id"]


def test_a_resumed_run_continues_the_same_mlflow_run(tmp_path):
    first = _segment(tmp_path, "mlflow", CONFIG, [1, 2])
    raised = {**CONFIG, "train": {**CONFIG["train"], "steps": 12}}  # a resumable change
    second = _segment(tmp_path, "mlflow", raised, [3, 4], previous=first)["mlflow"]
    assert second["run_id"] == first["mlflow"]["run_id"] and second["resumed"]
    run, history, _ = read_mlflow(tmp_path)  # (run,): still one run in the experiment
    assert run.info.status == "FINISHED" and sorted(history["loss"]) == [(s, 1.0 / s) for s in (1, 2, 3, 4)]
    assert run.data.params["train.steps"] == "6" and run.data.tags["dtr.resumed.train.steps"] == "12"
    gone = {"mlflow": {**first["mlflow"], "run_id": "0" * 32}}  # a record the store does not hold: a new run
    assert _segment(tmp_path / "other", "mlflow", CONFIG, [1], previous=gone)["mlflow"]["resumed"] is False


def test_a_suite_records_its_name_in_each_runs_config(tmp_path):
    from dtr_plugins.experiments.suite import load_suite

    path = write(tmp_path / "suite.yaml", json.dumps({"name": "abl", "base": BASE, "matrix": {"seed": [0, 1]},
                                                     "output_dir": str(tmp_path / "runs")}))
    suite = load_suite(path)
    assert [r.config.to_dict()["log"]["suite"] for r in suite.runs] == ["abl", "abl"]
    assert config_from_dict(BASE).log.suite is None


# ---------------------------------------------------------------------------------- failure handling
class _Recorder:
    def __init__(self, fail_at: int | None = None, fail_start: bool = False):
        self.fail_at, self.fail_start = fail_at, fail_start
        self.steps: list[int] = []
        self.finished = 0

    def start(self, run_dir, config, run_name):
        if self.fail_start:
            raise RuntimeError("cannot reach the tracking server\nsecond line")

    def log_scalars(self, step, values):
        if step == self.fail_at:
            raise ConnectionError("upload failed")
        self.steps.append(step)

    def log_image(self, step, tag, image):
        self.steps.append(step)

    def finish(self):
        self.finished += 1

    def applied(self):
        return {"fail_at": self.fail_at}


def _registry_with(**trackers: _Recorder):
    module = types.ModuleType("fake_trackers")

    @hookimpl
    def dtr_register_trackers(register):
        for name, tracker in trackers.items():
            register(name, lambda tracker=tracker: tracker)

    module.dtr_register_trackers = dtr_register_trackers
    return build_registry([module], entry_points=False)


def test_a_tracker_failing_at_log_time_warns_once_and_is_switched_off(tmp_path):
    good, flaky = _Recorder(), _Recorder(fail_at=4)
    registry = _registry_with(good=good, flaky=flaky)
    sections = [PluginSection(name="flaky"), PluginSection(name="good")]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with TrackerSet.open(sections, tmp_path, CONFIG, "trk", registry) as trackers:
            for record in RECORDS:
                trackers.log_record(record)
            trackers.log_image(6, "samples", np.zeros((4, 4), np.uint8))
            assert trackers.names == ["good"] and "upload failed" in trackers.disabled["flaky"]
    messages = [str(w.message) for w in caught if issubclass(w.category, TrackerWarning)]
    assert len(messages) == 1 and "'flaky'" in messages[0] and "step 4" in messages[0]
    assert good.steps == [2, 4, 6, 6] and flaky.steps == [2]  # the others keep every record
    assert good.finished == 1 and flaky.finished == 1


def test_a_tracker_failing_at_start_is_one_error_line_and_closes_the_started_ones(tmp_path):
    good, broken = _Recorder(), _Recorder(fail_start=True)
    registry = _registry_with(good=good, broken=broken)
    with pytest.raises(PluginError) as info:
        TrackerSet.open([PluginSection(name="good"), PluginSection(name="broken")], tmp_path, CONFIG, "trk", registry)
    assert str(info.value) == ("log.trackers.1: tracker 'broken' could not start: "
                               "RuntimeError: cannot reach the tracking server")
    assert good.finished == 1


# ------------------------------------------------------------------------------------------- config
BASE = {"name": "t", "backbone": {"name": "dit", "input_size": 8, "patch_size": 2, "hidden_size": 32, "depth": 1,
                                  "num_heads": 2, "in_channels": 1, "num_classes": 4},
        "data": {"name": "synthetic", "num_samples": 8, "image_size": 8, "num_classes": 4}}


def test_log_trackers_resolve_with_their_params():
    cfg = config_from_dict({**BASE, "log": {"trackers": ["tensorboard", {"name": "wandb", "project": "p"}]}})
    assert cfg.to_dict()["log"]["trackers"] == [
        {"name": "tensorboard", "subdir": "tensorboard"},
        {"name": "wandb", "project": "p", "entity": None, "run_name": None, "group": None, "tags": [], "mode": None}]
    assert config_from_dict(BASE).log.trackers == []


@pytest.mark.parametrize("trackers, message", [
    (["tensorbord"], "log.trackers.0: unknown tracker 'tensorbord' (known: mlflow, tensorboard, wandb)"),
    (["wandb", "wandb"], "log.trackers.1: tracker 'wandb' is listed twice"),
    ([{"name": "wandb", "projekt": "p"}], "log.trackers.0.projekt: unknown key (allowed: entity, group, mode, project, "
                                                "run_name, tags)"),
])
def test_bad_log_trackers_are_one_config_error_line(trackers, message):
    with pytest.raises(ConfigError) as info:
        config_from_dict({**BASE, "log": {"trackers": trackers}}, source="run.yaml")
    assert str(info.value) == f"run.yaml: {message}"


@pytest.mark.parametrize("package, other", [("wandb", "tensorboard"), ("mlflow", "tensorboard"),
                                            ("tensorboard", "wandb")])
def test_dtr_validate_finds_a_missing_tracker_package(tmp_path, run_cli, monkeypatch, package, other):
    monkeypatch.setitem(sys.modules, package, None)  # what find_spec reports for an uninstalled package
    cfg = write(tmp_path / "run.yaml", json.dumps(BASE))
    code, out, err = run_cli("validate", str(cfg), "--set", f"log.trackers=[{other}, {package}]")
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [
        (f"dtr: error: {cfg}: log.trackers.1: tracker '{package}' needs a package that is not installed; "
         f"install it with: pip install 'dtr-plugins[{package}]'")]


# --------------------------------------------------------------------------------------- end to end
def test_training_run_writes_all_three_trackers(tmp_path, run_cli):
    """``dtr train configs/dit_digits.yaml --set log.trackers=[tensorboard, wandb, mlflow]``, shortened."""
    code, _, err = run_cli(
        "train", str(ROOT / "configs" / "dit_digits.yaml"), "--set", f"output_dir={tmp_path}",
        "--set", "train={steps: 4, batch_size: 8, log_every: 2, ckpt_every: 0, lr: 2.0e-3}",
        "--set", "backbone.depth=1", "--set", "sample={respacing: ddim5, batch_size: 16}",
        "--set", "eval={at_end: true, num_samples: 16, metrics: [fid], feature_extractor: digits-classifier}",
        "--set", "log.trackers=[tensorboard, wandb, mlflow]")
    assert code == 0, err
    run_dir = tmp_path / "dit-digits-dtr"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    records = [r for r in records if "heldout" not in r]  # the held-out line (tests/integration/test_heldout_training)
    loss = [(r["step"], r.get("loss")) for r in records]
    assert [s for s, _ in loss if s is not None] == [2, 4, 4]  # the last record is the final evaluation
    fid = records[-1]["eval"]["frechet_inception_distance"]
    loss = loss[:2]

    scalars, images = read_tensorboard(run_dir)
    assert scalars["loss"] == [(s, pytest.approx(v, rel=1e-6)) for s, v in loss]
    assert images["routing/masks"][0][0] == 0  # the DTR mask heatmap, logged before the first step
    assert images["samples"] == [(4, 4 * 9 + 1, 4 * 9 + 1)]  # 16 samples of 8x8 in a 4x4 grid, 1px gaps
    assert scalars["eval/frechet_inception_distance"] == [(4, pytest.approx(fid, rel=1e-6))]
    assert [(r["_step"], r["loss"]) for r in read_wandb(run_dir) if "loss" in r] == loss
    _, history, _ = read_mlflow(run_dir)
    assert sorted(history["loss"]) == loss and history["eval/frechet_inception_distance"] == [(4, fid)]
    assert not (Path.cwd() / "mlruns").exists() and not (Path.cwd() / "wandb").exists()
    applied = json.loads((run_dir / "meta.json").read_text())["trackers"]  # what was applied, not what was asked
    assert sorted(applied) == ["mlflow", "tensorboard", "wandb"] and applied["wandb"]["mode"] == "offline"


def test_dtr_train_resume_continues_the_wandb_and_mlflow_runs(tmp_path, run_cli):
    """``dtr train`` to step 2, then ``--resume`` to step 4: one W&B run id, one MLflow run, recorded in meta.json."""
    from ..conftest import tiny_dit_config

    cfg = tiny_dit_config(tmp_path, name="resumed", output_dir=str(tmp_path / "runs"),
                          train={"steps": 2, "log_every": 1, "ckpt_every": 2}, log={"trackers": ["wandb", "mlflow"]})
    assert run_cli("train", str(cfg))[0] == 0
    run_dir = tmp_path / "runs" / "resumed"
    first = json.loads((run_dir / "meta.json").read_text())["trackers"]
    time.sleep(1.1)  # offline run folders are named by the second they start
    code, _, err = run_cli("train", str(cfg), "--resume", "--set", "train.steps=4")
    assert code == 0, err
    second = json.loads((run_dir / "meta.json").read_text())["trackers"]
    for name in ("wandb", "mlflow"):
        assert second[name]["run_id"] == first[name]["run_id"] and second[name]["resumed"], name
    logs = wandb_logs(run_dir)
    assert len(logs) == 2 and {wandb_run(p).run_id for p in logs} == {first["wandb"]["run_id"]}
    run, history, _ = read_mlflow(run_dir)  # one run in the experiment
    assert run.info.run_id == first["mlflow"]["run_id"] and [s for s, _ in sorted(history["loss"])] == [1, 2, 3, 4]
