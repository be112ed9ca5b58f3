"""TensorBoard tracker (extra ``dtr-plugins[tensorboard]``): scalars and images in event files under
``<run_dir>/tensorboard/``.

Written with ``torch.utils.tensorboard.SummaryWriter``; read with ``tensorboard --logdir <run_dir>``.
"""
from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, field_validator

from dtr_plugins.core.config import check_inside_path
from dtr_plugins.core.hookspecs import hookimpl
from dtr_plugins.core.tracking import requirement_missing


class TensorBoardParams(BaseModel):
    model_config = ConfigDict(extra="forbid")
    subdir: str = Field("tensorboard", description="event-file folder, relative to the run directory (stays "
                        "inside it: no absolute path, no '..')")

    @field_validator("subdir")
    @classmethod
    def _inside_run_dir(cls, value: str) -> str:
        return check_inside_path(value)


class TensorBoardTracker:
    """Scalars via ``add_scalar``, pictures via ``add_image`` (HWC), the resolved config as text."""

    def __init__(self, subdir: str = "tensorboard"):
        self.subdir = subdir
        self._writer: Any = None

    @classmethod
    def missing_requirement(cls) -> str | None:
        # torch.utils.tensorboard's SummaryWriter imports the tensorboard package
        return requirement_missing("tensorboard", "pip install 'dtr-plugins[tensorboard]'")

    def start(self, run_dir: Path, config: Mapping[str, Any], run_name: str) -> None:
        from torch.utils.tensorboard import SummaryWriter

        self._writer = SummaryWriter(log_dir=str(Path(run_dir) / self.subdir))
        self._writer.add_text("config", "```\n" + json.dumps(dict(config), indent=2) + "\n```", global_step=0)

    def applied(self) -> dict[str, Any]:
        return {"log_dir": str(self._writer.log_dir)}

    def log_scalars(self, step: int, values: Mapping[str, float]) -> None:
        for name, value in values.items():
            self._writer.add_scalar(name, value, global_step=step)
        self._writer.flush()

    def log_image(self, step: int, tag: str, image: np.ndarray) -> None:
        self._writer.add_image(tag, image, global_step=step, dataformats="HWC")
        self._writer.flush()

    def finish(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


@hookimpl
def dtr_register_trackers(register):
    register("tensorboard", TensorBoardTracker, params=TensorBoardParams,
             description="TensorBoard event files under <run_dir>/tensorboard (scalars, sample grids, mask heatmaps)")


__all__ = ["TensorBoardParams", "TensorBoardTracker", "dtr_register_trackers"]
