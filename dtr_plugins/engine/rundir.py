"""The run directory (DESIGN.md section 8): one object owns its layout and reading/writing its files.

::

    <run>/
      config.yaml          resolved config, as run
      meta.json            versions, git commit, device, world size, times, routed layer widths
      classes.json         the dataset's label space: {"num_classes", "classes" (name of each label), "labels_used"}
      metrics.jsonl        one line per log step, plus one per evaluation ({"step", "eval"})
      status.json          suite bookkeeping: {"state": running|done|failed, ...}
      train.log            a suite run's captured output
      config.sha256        a suite run's config fingerprint (suites rerun a run whose config changed)
      checkpoints/0002000.pt
      samples/             images/, grid.png, samples.npz, samples.json
      eval.json            the final evaluation
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dtr_plugins.core.errors import CheckpointError
from dtr_plugins.core.io import write_json, write_text

__all__ = ["RunDir"]


class RunDir:
    """Paths and files of one run directory ``path``; nothing is created until something is written."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r})"

    def __fspath__(self) -> str:
        return str(self.path)

    @classmethod
    def of_checkpoint(cls, checkpoint: str | Path) -> "RunDir":
        """The run a checkpoint file ``<run>/checkpoints/N.pt`` belongs to."""
        return cls(Path(checkpoint).parent.parent)

    # ------------------------------------------------------------------------------------ paths
    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    @property
    def meta_path(self) -> Path:
        return self.path / "meta.json"

    @property
    def classes_path(self) -> Path:
        return self.path / "classes.json"

    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    @property
    def status_path(self) -> Path:
        return self.path / "status.json"

    @property
    def log_path(self) -> Path:
        return self.path / "train.log"

    @property
    def fingerprint_path(self) -> Path:
        return self.path / "config.sha256"

    @property
    def eval_path(self) -> Path:
        return self.path / "eval.json"

    @property
    def checkpoints(self) -> Path:
        return self.path / "checkpoints"

    @property
    def samples(self) -> Path:
        return self.path / "samples"

    def checkpoint_path(self, step: int) -> Path:
        return self.checkpoints / f"{int(step):07d}.pt"

    def latest_checkpoint(self) -> Path | None:
        """The checkpoint of the highest step (names are zero-padded steps), or None."""
        ckpts = sorted(self.checkpoints.glob("*.pt"))
        return ckpts[-1] if ckpts else None

    def require_checkpoint(self) -> Path:
        ckpt = self.latest_checkpoint()
        if ckpt is None:
            raise CheckpointError(f"{self.path}: no checkpoint in {self.checkpoints}")
        return ckpt

    def has_checkpoints(self) -> bool:
        return self.latest_checkpoint() is not None

    # ------------------------------------------------------------------------------ read / write
    def write_config(self, yaml_text: str) -> Path:
        return write_text(self.config_path, yaml_text)

    def read_config(self) -> dict[str, Any]:
        """The raw config mapping of config.yaml ({} when there is none)."""
        import yaml

        if not self.config_path.exists():
            return {}
        data = yaml.safe_load(self.config_path.read_text())
        return data if isinstance(data, dict) else {}

    def read_meta(self) -> dict[str, Any]:
        return _read_json(self.meta_path)

    def write_meta(self, meta: dict[str, Any]) -> Path:
        return write_json(self.meta_path, meta)

    def write_classes(self, classes: dict[str, Any]) -> Path:
        """``classes.json`` (:func:`dtr_plugins.core.labels.class_map`)."""
        return write_json(self.classes_path, classes)

    def update_meta(self, **fields: Any) -> Path:
        return self.write_meta({**self.read_meta(), **fields})

    def read_status(self) -> dict[str, Any]:
        return _read_json(self.status_path)

    def write_status(self, status: dict[str, Any]) -> Path:
        return write_json(self.status_path, status)

    def append_metrics(self, record: dict[str, Any]) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.metrics_path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def read_metrics(self) -> list[dict[str, Any]]:
        """Every record of metrics.jsonl; a line cut by a crash is skipped, the rest still counts."""
        if not self.metrics_path.exists():
            return []
        out = []
        for line in self.metrics_path.read_text().splitlines():
            line = line.strip()
            if line:
                try:
                    out.append(json.loads(line))
                except json.JSONDecodeError:
                    continue
        return out

    def write_eval(self, result: dict[str, Any]) -> Path:
        return write_json(self.eval_path, result)


def _read_json(path: Path) -> dict[str, Any]:
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}
