"""Weights & Biases tracker (extra ``dtr-plugins[wandb]``): one W&B run per training run.

Files go under ``<run_dir>/wandb/``. ``mode`` ``offline`` (the default unless ``$WANDB_MODE`` says
otherwise) writes a local run that ``wandb sync <run_dir>/wandb/offline-run-*`` uploads later; nothing
touches the network until then.
"""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, cast

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from dtr_plugins.core.hookspecs import hookimpl
from dtr_plugins.core.tracking import requirement_missing


class WandbParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    project: str = Field("dtr-plugins", description="W&B project")
    entity: str | None = Field(None, description="W&B team or user; default: the account's default entity")
    mode: Literal["offline", "online"] | None = Field(
        None, description="offline (local files, sync later) or online; default: $WANDB_MODE, else offline")


WandbMode = Literal["online", "offline", "disabled", "shared"]  # what wandb.init checks at run time


def resolve_mode(mode: str | None) -> str:
    """The mode applied: the configured one, else ``$WANDB_MODE`` (offline/online/disabled), else offline."""
    return mode or os.environ.get("WANDB_MODE") or "offline"


class WandbTracker:
    """``wandb.init(dir=run_dir)``; scalars and ``wandb.Image`` pictures through ``run.log(..., step=)``."""

    def __init__(self, project: str = "dtr-plugins", entity: str | None = None, mode: str | None = None):
        self.project, self.entity, self.mode = project, entity, mode
        self._run: Any = None

    @classmethod
    def missing_requirement(cls) -> str | None:
        return requirement_missing("wandb", "pip install 'dtr-plugins[wandb]'")

    def start(self, run_dir: Path, config: Mapping[str, Any], run_name: str) -> None:
        import wandb

        self._wandb = wandb
        self.applied_mode = resolve_mode(self.mode)
        self._run = wandb.init(project=self.project, entity=self.entity, name=run_name, config=dict(config),
                               dir=str(run_dir), mode=cast(WandbMode, self.applied_mode), reinit="create_new",
                               settings=wandb.Settings(console="off", save_code=False))

    def applied(self) -> dict[str, Any]:
        return {"mode": self.applied_mode, "project": self.project, "run_id": self._run.id,
                "dir": str(self._run.dir)}

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
             description="Weights & Biases run under <run_dir>/wandb (offline unless mode/$WANDB_MODE says online)")


__all__ = ["WandbParams", "WandbTracker", "dtr_register_trackers", "resolve_mode"]
