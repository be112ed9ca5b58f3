"""MLflow tracker (extra ``dtr-plugins[mlflow]``): one MLflow run per training run.

Tracking store: ``tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else a SQLite file
``<run_dir>/mlflow.db`` with artifacts (pictures) in ``<run_dir>/mlartifacts`` (MLflow 3 keeps the
plain-folder store in maintenance mode; SQLite is its local default). View with
``mlflow ui --backend-store-uri sqlite:///<run_dir>/mlflow.db``.

Experiment: ``experiment`` when configured, else the suite's name for a suite's run (``log.suite``: one
experiment per suite), else ``$MLFLOW_EXPERIMENT_NAME``, else ``dtr-plugins``. Runs are tagged
``dtr.suite``, ``dtr.strategy``, ``dtr.process``, ``dtr.seed``. On ``--resume`` the run recorded in
``meta.json`` continues under its ``run_id`` (params keep their first values: MLflow params cannot change;
a value changed by the resume, such as a raised ``train.steps``, is recorded as the tag
``dtr.resumed.<key>``).
"""
from __future__ import annotations

import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from dtr_plugins.core.hookspecs import hookimpl
from dtr_plugins.core.tracking import RunLabels, requirement_missing

MAX_PARAM_CHARS = 6000  # MLflow's limit on one param value
DEFAULT_EXPERIMENT = "dtr-plugins"


class MlflowParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    experiment: str | None = Field(None, description="MLflow experiment name (created if missing); default: the "
                                   "suite's name for a suite's run, else $MLFLOW_EXPERIMENT_NAME, else dtr-plugins")
    tracking_uri: str | None = Field(
        None, description="tracking store; default: $MLFLOW_TRACKING_URI, else sqlite:///<run_dir>/mlflow.db")


def resolve_tracking_uri(tracking_uri: str | None, run_dir: Path) -> tuple[str, str | None]:
    """(store URI applied, artifact location for a new experiment or ``None`` for the store's default)."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri, None
    run_dir = Path(run_dir).resolve()
    return f"sqlite:///{run_dir / 'mlflow.db'}", (run_dir / "mlartifacts").as_uri()


def resolve_experiment(experiment: str | None, labels: RunLabels) -> str:
    """The experiment applied: configured, else the suite's name, else ``$MLFLOW_EXPERIMENT_NAME``, else the default."""
    return experiment or labels.suite or os.environ.get("MLFLOW_EXPERIMENT_NAME") or DEFAULT_EXPERIMENT


def run_tags(labels: RunLabels) -> dict[str, str]:
    """``dtr.suite`` / ``dtr.strategy`` / ``dtr.process`` / ``dtr.seed`` tags, each when known."""
    values = {"dtr.suite": labels.suite, "dtr.strategy": labels.strategy, "dtr.process": labels.process,
              "dtr.seed": labels.seed}
    return {k: str(v) for k, v in values.items() if v is not None}


def flatten_params(config: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """The resolved config as MLflow params: ``{"train.lr": "0.002", ...}``."""
    out: dict[str, str] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten_params(value, prefix=f"{name}."))
        else:
            out[name] = str(value)[:MAX_PARAM_CHARS]
    return out


class MlflowTracker:
    """``MlflowClient``: the config as params, scalars via ``log_batch``, pictures via ``log_image``."""

    def __init__(self, experiment: str | None = None, tracking_uri: str | None = None):
        self.experiment, self.tracking_uri = experiment, tracking_uri
        self._client: Any = None
        self.run_id: str | None = None
        self.applied_uri: str | None = None
        self.applied_experiment: str | None = None
        self._resume_id: str | None = None
        self.resumed = False

    @classmethod
    def missing_requirement(cls) -> str | None:
        return requirement_missing("mlflow", "pip install 'dtr-plugins[mlflow]'")

    def resume_from(self, applied: Mapping[str, Any]) -> None:
        """Continue the MLflow run the previous segment recorded (``meta.json`` ``trackers.mlflow.run_id``)."""
        run_id = applied.get("run_id")
        self._resume_id = str(run_id) if run_id else None

    def start(self, run_dir: Path, config: Mapping[str, Any], run_name: str) -> None:
        from mlflow.tracking import MlflowClient

        labels = RunLabels.of(config)
        self.applied_uri, artifacts = resolve_tracking_uri(self.tracking_uri, run_dir)
        self.applied_experiment = resolve_experiment(self.experiment, labels)
        self._client = MlflowClient(tracking_uri=self.applied_uri)
        found = self._client.get_experiment_by_name(self.applied_experiment)
        experiment_id = (found.experiment_id if found is not None
                         else self._client.create_experiment(self.applied_experiment, artifact_location=artifacts))
        logged = self._reopen(experiment_id)
        if logged is None:
            self.run_id = self._client.create_run(experiment_id, run_name=run_name, tags=run_tags(labels)).info.run_id
            logged = {}
        self._log_params(flatten_params(config), logged)

    def _reopen(self, experiment_id: str) -> dict[str, str] | None:
        """The params of the run to resume, reopened (status RUNNING); None when there is none to resume here
        (no recorded id, or the store / experiment no longer holds it: then a new run starts)."""
        from mlflow.exceptions import MlflowException

        if self._resume_id is None:
            return None
        try:
            run = self._client.get_run(self._resume_id)
        except MlflowException:
            return None
        if run.info.experiment_id != experiment_id:
            return None
        self.run_id, self.resumed = self._resume_id, True
        self._client.update_run(self.run_id, status="RUNNING")
        return dict(run.data.params)

    def _log_params(self, params: dict[str, str], logged: Mapping[str, str]) -> None:
        from mlflow.entities import Param, RunTag

        new = [Param(k, v) for k, v in params.items() if k not in logged]
        changed = [RunTag(f"dtr.resumed.{k}", v) for k, v in params.items() if k in logged and logged[k] != v]
        for i in range(0, max(len(new), len(changed)), 100):  # MLflow accepts at most 100 params per batch
            self._client.log_batch(self.run_id, params=new[i:i + 100], tags=changed[i:i + 100])

    def applied(self) -> dict[str, Any]:
        return {"tracking_uri": self.applied_uri, "experiment": self.applied_experiment, "run_id": self.run_id,
                "resumed": self.resumed}

    def log_scalars(self, step: int, values: Mapping[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self._client.log_batch(self.run_id, metrics=[Metric(k, float(v), now, step) for k, v in values.items()])

    def log_image(self, step: int, tag: str, image: np.ndarray) -> None:
        self._client.log_image(self.run_id, image, key=tag, step=step)

    def finish(self) -> None:
        if self._client is not None and self.run_id is not None:
            self._client.set_terminated(self.run_id, "FINISHED")
            self._client = None


@hookimpl
def dtr_register_trackers(register):
    register("mlflow", MlflowTracker, params=MlflowParams,
             description="MLflow run in <run_dir>/mlflow.db (or $MLFLOW_TRACKING_URI): params, metrics, pictures; "
                         "one experiment per suite, resumed runs continue their run id")


__all__ = ["MlflowParams", "MlflowTracker", "dtr_register_trackers", "flatten_params", "resolve_experiment",
           "resolve_tracking_uri", "run_tags"]
