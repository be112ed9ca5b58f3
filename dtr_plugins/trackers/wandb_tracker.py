"""Weights & Biases tracker (extra ``dtr-plugins[wandb]``): one W&B run per training run.

Files go under ``<run_dir>/wandb/``. ``mode`` ``offline`` (the default unless ``$WANDB_MODE`` says
otherwise) writes a local run that ``wandb sync <run_dir>/wandb/offline-run-*`` uploads later; nothing
touches the network until then.

Only what the config sets is passed to ``wandb.init`` (its arguments win over the environment), so
``$WANDB_PROJECT``, ``$WANDB_ENTITY``, ``$WANDB_NAME``, ``$WANDB_RUN_GROUP`` and wandb's own defaults apply
to what the config leaves unset. The run's name defaults to the experiment's ``name`` unless ``$WANDB_NAME``
is set. A suite's runs share ``group`` = the suite's name (``log.suite``); every run has ``job_type``
``train`` and the tags strategy, process and ``seed=N``. On ``--resume`` the run continues under its
recorded id (``wandb.init(id=..., resume="allow")``; offline, the segments are separate folders that
``wandb sync`` uploads into that one run).
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from dtr_plugins.core.hookspecs import hookimpl
from dtr_plugins.core.tracking import JOB_TYPE, RunLabels, requirement_missing


class WandbParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    project: str | None = Field(None, description="W&B project; default: $WANDB_PROJECT, else wandb's default")
    entity: str | None = Field(None, description="W&B team or user; default: $WANDB_ENTITY, else the account's")
    run_name: str | None = Field(None, description="W&B run name; default: $WANDB_NAME, else the experiment's name")
    group: str | None = Field(None, description="W&B group; default: the suite's name (log.suite) for a suite's "
                              "run, else $WANDB_RUN_GROUP")
    tags: list[str] = Field(default_factory=list, description="extra tags, after strategy, process and seed=N")
    mode: Literal["offline", "online"] | None = Field(
        None, description="offline (local files, sync later) or online; default: $WANDB_MODE, else offline")


WandbMode = Literal["online", "offline", "disabled", "shared"]  # what wandb.init checks at run time


def resolve_mode(mode: str | None) -> str:
    """The mode applied: the configured one, else ``$WANDB_MODE`` (offline/online/disabled), else offline."""
    return mode or os.environ.get("WANDB_MODE") or "offline"


def init_arguments(params: WandbParams, config: Mapping[str, Any], run_name: str,
                   resume_id: str | None = None) -> dict[str, Any]:
    """The identity arguments of ``wandb.init``: only what is set (unset keys are left to ``$WANDB_*``).

    ``project``/``entity``/``group`` when configured (``group`` else the suite's name), ``name`` (``run_name``) when
    configured or when ``$WANDB_NAME`` is unset (then the experiment's name), ``job_type`` ``train``,
    ``tags`` (:attr:`RunLabels.tags` + configured ones), and ``id``/``resume="allow"`` to continue a run.
    """
    labels = RunLabels.of(config)
    out: dict[str, Any] = {"job_type": JOB_TYPE, "tags": list(dict.fromkeys([*labels.tags, *params.tags]))}
    for key, value in (("project", params.project), ("entity", params.entity),
                       ("group", params.group or labels.suite)):
        if value:
            out[key] = value
    if params.run_name or not os.environ.get("WANDB_NAME"):
        out["name"] = params.run_name or run_name
    if resume_id:
        out.update(id=resume_id, resume="allow")
    return out


class WandbTracker:
    """``wandb.init(dir=run_dir)``; scalars and ``wandb.Image`` pictures through ``run.log(..., step=)``."""

    def __init__(self, project: str | None = None, entity: str | None = None, mode: str | None = None,
                 run_name: str | None = None, group: str | None = None, tags: list[str] | None = None):
        self.params = WandbParams(project=project, entity=entity, mode=cast(Any, mode), run_name=run_name, group=group,
                                  tags=list(tags or []))
        self.mode = mode
        self._run: Any = None
        self._resume_id: str | None = None

    @classmethod
    def missing_requirement(cls) -> str | None:
        return requirement_missing("wandb", "pip install 'dtr-plugins[wandb]'")

    def resume_from(self, applied: Mapping[str, Any]) -> None:
        """Continue the W&B run whose id the previous segment recorded (``meta.json`` ``trackers.wandb.run_id``)."""
        run_id = applied.get("run_id")
        self._resume_id = str(run_id) if run_id else None

    def start(self, run_dir: Path, config: Mapping[str, Any], run_name: str) -> None:
        import wandb

        self._wandb = wandb
        self.applied_mode = resolve_mode(self.mode)
        self._run = wandb.init(**init_arguments(self.params, config, run_name, self._resume_id),
                               config=dict(config), dir=str(run_dir), mode=cast(WandbMode, self.applied_mode),
                               reinit="create_new", settings=wandb.Settings(console="off", save_code=False))

    def applied(self) -> dict[str, Any]:
        run = self._run
        return {"mode": self.applied_mode, "project": run.project, "entity": run.entity or None, "name": run.name,
                "group": run.group or None, "job_type": run.job_type, "tags": list(run.tags), "run_id": run.id,
                "resumed": self._resume_id is not None, "dir": str(run.dir)}

    def log_scalars(self, step: int, values: Mapping[str, float]) -> None:
        self._run.log(dict(values), step=step)

    def log_image(self, step: int, tag: str, image: np.ndarray) -> None:
        self._run.log({tag: self._wandb.Image(image)}, step=step)

    def finish(self) -> None:
        if self._run is not None:
            self._run.finish()
            self._run = None
            # finish() returns before wandb's service has flushed the run's .wandb transaction log (under
            # load the file can still be a bare header); teardown waits for the service, so the files are
            # complete when the training run ends. It also ends runs this process started elsewhere.
            self._wandb.teardown()


@hookimpl
def dtr_register_trackers(register):
    register("wandb", WandbTracker, params=WandbParams,
             description="Weights & Biases run under <run_dir>/wandb (offline unless mode/$WANDB_MODE says online); "
                         "a suite's runs grouped by the suite's name, resumed runs continue their run id")


__all__ = ["WandbParams", "WandbTracker", "dtr_register_trackers", "init_arguments", "resolve_mode"]
