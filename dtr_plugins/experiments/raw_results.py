"""A suite's raw per-run results as one portable file, and the comparison rebuilt from it.

``raw_results.jsonl`` (written by ``dtr report`` beside ``report.md``; commit it as
``benchmarks/results-<machine>/<suite>/runs.jsonl``) has one JSON object per run, keys sorted:

- ``suite``, ``run_id``, ``status``, ``seed``, ``axes`` (axis -> value label, seed left out), ``group`` (the run id
  without the seed; optional, older files lack it);
- ``config_fingerprint``: sha256 of the run's resolved config (``status.json``/``fingerprint`` of the run);
- ``primary``: the suite's primary metric (see :mod:`.compare`);
- ``final``: metric -> value at the run's last logged step of that metric (every eval metric,
  ``heldout/total`` and every ``heldout/band<k>``); ``curves``: metric -> ``[[step, value], ...]``;
- ``heldout_fingerprint``: the held-out inputs the run was scored on;
- ``machine`` (device), ``torch``, ``dtr_plugins``, ``git_commit``, ``date`` (training start, UTC ISO 8601),
  from the run's ``meta.json``;
- ``seconds`` (wall time of the run's last launch, training and evaluation, as the launcher recorded it in
  ``status.json``; with ``resumed`` true, earlier sittings are not included) and ``threads`` (CPU threads of
  that launch; None: torch's default): optional, older files lack them;
- ``cost``: parameters, active parameters, training and sampling FLOPs per image, seconds per training step and
  per sample (:func:`dtr_plugins.experiments.cost_report.run_cost`; None where the run did not record it):
  optional, older files lack it.

:func:`records_from_raw` turns the lines back into :class:`~dtr_plugins.runs.record.RunRecord` s, so every table of the
report can be recomputed from the committed file alone (``make figures``, ``scripts/figures.py``).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from dtr_plugins.core.errors import UserError
from dtr_plugins.core.io import write_text
from dtr_plugins.experiments.compare import DEFAULT_PRIMARY
from dtr_plugins.experiments.compare_records import runs_from_suite
from dtr_plugins.runs.record import RunRecord
from dtr_plugins.runs.rundir import SuiteIndex

RAW_FILE = "raw_results.jsonl"
REQUIRED = ("suite", "run_id", "status", "seed", "axes", "config_fingerprint", "final", "curves", "machine",
            "torch", "date")


def raw_lines(suite_dir: str | Path) -> list[dict[str, Any]]:
    """One mapping per run of the suite in ``suite_dir`` (see the module docstring for the keys)."""
    suite_dir = Path(suite_dir)
    suite = SuiteIndex(suite_dir)
    index = suite.read()
    planned = {e["id"]: e.get("fingerprint") for e in suite.entries()}
    out = []
    for run in runs_from_suite(suite_dir):
        run_dir = suite.run(run.id)
        meta = run_dir.read_meta()
        status = run_dir.read_status()
        recorded = run_dir.read_fingerprint()
        out.append({
            "suite": index.get("name", suite_dir.name), "run_id": run.id, "status": run.status, "seed": run.seed,
            "axes": dict(run.axes), "config_fingerprint": recorded or planned.get(run.id),
            "primary": index.get("primary") or DEFAULT_PRIMARY,
            "final": {m: points[-1][1] for m, points in run.curves.items() if points},
            "curves": {m: [[int(s), float(v)] for s, v in points] for m, points in run.curves.items()},
            "heldout_fingerprint": run.heldout_fingerprint,
            "machine": meta.get("device"), "torch": meta.get("torch"), "dtr_plugins": meta.get("dtr_plugins"),
            "git_commit": meta.get("git_commit"), "date": meta.get("started"),
            "seconds": status.get("seconds"), "resumed": status.get("resumed"), "threads": status.get("threads"),
            "cost": dict(run.cost), "group": run.group,
        })
    return out


def export_raw_results(suite_dir: str | Path) -> Path:
    """Write ``suite_dir/raw_results.jsonl`` (atomically) and return its path."""
    lines = raw_lines(suite_dir)
    return write_text(Path(suite_dir) / RAW_FILE, "".join(json.dumps(x, sort_keys=True) + "\n" for x in lines))


def read_raw_results(path: str | Path) -> list[dict[str, Any]]:
    """The lines of a raw-results file. Raises :class:`UserError` naming the file, line and missing key."""
    path = Path(path)
    out = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            item = json.loads(line)
        except json.JSONDecodeError as exc:
            raise UserError(f"{path}: line {i}: not JSON ({exc.msg})") from None
        missing = [k for k in REQUIRED if not isinstance(item, dict) or k not in item]
        if missing:
            raise UserError(f"{path}: line {i}: missing key {missing[0]!r} (required: {', '.join(REQUIRED)})")
        out.append(item)
    return out


def primary_of(lines: list[dict[str, Any]]) -> str:
    """The suite's primary metric as its raw-results lines record it (the default where none does)."""
    return next((str(x["primary"]) for x in lines if x.get("primary")), DEFAULT_PRIMARY)


def records_from_raw(lines: list[dict[str, Any]]) -> list[RunRecord]:
    """The comparison's input, rebuilt from raw-results lines."""
    return [RunRecord(id=x["run_id"], seed=int(x["seed"]), axes=dict(x["axes"]), status=str(x["status"]),
                      curves={m: [(int(s), float(v)) for s, v in pts] for m, pts in x["curves"].items()},
                      heldout_fingerprint=x.get("heldout_fingerprint"),
                      group=str(x.get("group") or x["run_id"]),
                      cost=dict(x["cost"]) if isinstance(x.get("cost"), dict) else {}) for x in lines]

