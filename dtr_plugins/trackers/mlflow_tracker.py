"""MLflow tracker (extra ``dtr-plugins[mlflow]``): one MLflow run per training run.

Tracking store: ``tracking_uri``, else ``$MLFLOW_TRACKING_URI``, else a SQLite file
``<run_dir>/mlflow.db`` with artifacts (pictures) in ``<run_dir>/mlartifacts`` (MLflow 3 keeps the
plain-folder store in maintenance mode; SQLite is its local default). View with
``mlflow ui --backend-store-uri sqlite:///<run_dir>/mlflow.db``.
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
from dtr_plugins.core.tracking import requirement_missing

MAX_PARAM_CHARS = 6000  # MLflow's limit on one param value


class MlflowParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    experiment: str = Field("dtr-plugins", description="MLflow experiment name (created if missing)")
    tracking_uri: str | None = Field(
        None, description="tracking store; default: $MLFLOW_TRACKING_URI, else sqlite:///<run_dir>/mlflow.db")


def resolve_tracking_uri(tracking_uri: str | None, run_dir: Path) -> tuple[str, str | None]:
    """(store URI applied, artifact location for a new experiment or ``None`` for the store's default)."""
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if uri:
        return uri, None
    run_dir = Path(run_dir).resolve()
    return f"sqlite:///{run_dir / 'mlflow.db'}", (run_dir / "mlartifacts").as_uri()


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

    def __init__(self, experiment: str = "dtr-plugins", tracking_uri: str | None = None):
        self.experiment, self.tracking_uri = experiment, tracking_uri
        self._client: Any = None
        self.run_id: str | None = None
        self.applied_uri: str | None = None

    @classmethod
    def missing_requirement(cls) -> str | None:
        return requirement_missing("mlflow", "pip install 'dtr-plugins[mlflow]'")

    def start(self, run_dir: Path, config: Mapping[str, Any], run_name: str) -> None:
        from mlflow.entities import Param
        from mlflow.tracking import MlflowClient

        self.applied_uri, artifacts = resolve_tracking_uri(self.tracking_uri, run_dir)
        self._client = MlflowClient(tracking_uri=self.applied_uri)
        found = self._client.get_experiment_by_name(self.experiment)
        experiment_id = (found.experiment_id if found is not None
                         else self._client.create_experiment(self.experiment, artifact_location=artifacts))
        self.run_id = self._client.create_run(experiment_id, run_name=run_name).info.run_id
        params = [Param(k, v) for k, v in flatten_params(config).items()]
        for i in range(0, len(params), 100):  # MLflow accepts at most 100 params per batch
            self._client.log_batch(self.run_id, params=params[i:i + 100])

    def applied(self) -> dict[str, Any]:
        return {"tracking_uri": self.applied_uri, "experiment": self.experiment, "run_id": self.run_id}

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
             description="MLflow run in <run_dir>/mlflow.db (or $MLFLOW_TRACKING_URI): params, metrics, pictures")


__all__ = ["MlflowParams", "MlflowTracker", "dtr_register_trackers", "flatten_params", "resolve_tracking_uri"]
