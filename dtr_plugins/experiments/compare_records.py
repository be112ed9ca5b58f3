"""A suite folder -> one :class:`~dtr_plugins.runs.record.RunRecord` per run, for the report and comparisons.

Reads what the runs wrote: ``suite.json`` (run ids and their matrix assignment), and per run
``status.json``, ``config.yaml`` (the applied seed and routing) and ``metrics.jsonl``:

- ``{"step": S, "eval": {"frechet_inception_distance": .., ...}}`` -> curves of the eval metrics;
- ``{"step": S, "heldout": {"band0": .., ..., "total": .., "fingerprint": ..}}`` -> curves
  ``heldout/band<k>`` and ``heldout/total`` (written by :func:`dtr_plugins.evaluation.heldout.heldout_record`);
- training lines (``{"step": S, "loss": ..}``) are not compared (their window and weighting vary).

A later line for the same step replaces an earlier one (a resumed run may log a step twice).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from dtr_plugins.core.config import STRATEGY_SECTIONS
from dtr_plugins.experiments.compare import NO_VALUE, metric_info
from dtr_plugins.experiments.cost_report import run_cost
from dtr_plugins.runs.record import RunRecord
from dtr_plugins.runs.rundir import RunDir, SuiteIndex

_BODY_KEYS = ("eval", "heldout")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)  # NaN: no result


def curves_from_records(records: list[dict[str, Any]]) -> tuple[dict[str, list[tuple[int, float]]], str | None]:
    """Metric curves and the held-out fingerprint (``"inconsistent"`` when a run logged more than one)."""
    points: dict[str, dict[int, float]] = {}
    prints = set()
    for record in records:
        step = record.get("step")
        if not isinstance(step, int):
            continue
        if isinstance(record.get("eval"), dict):
            for key, value in record["eval"].items():
                if metric_info(key) and _number(value):
                    points.setdefault(key, {})[step] = float(value)
        if isinstance(record.get("heldout"), dict):
            body = record["heldout"]
            for key, value in body.items():
                name = f"heldout/{key}"
                if metric_info(name) and _number(value):
                    points.setdefault(name, {})[step] = float(value)
            if body.get("fingerprint"):
                prints.add(str(body["fingerprint"]))
    curves = {k: sorted(v.items()) for k, v in points.items()}
    fingerprint = next(iter(prints)) if len(prints) == 1 else ("inconsistent" if prints else None)
    return curves, fingerprint


def _label(value: Any, id_part: str | None) -> str:
    if value is None:
        return NO_VALUE
    if isinstance(value, dict):
        return id_part or "-".join([str(value.get("name", "?"))] + [f"{k}{v}" for k, v in value.items() if k != "name"])
    return str(value)


def axes_of(run_id: str, assignment: dict[str, Any], config: dict[str, Any]) -> dict[str, str]:
    """Axis -> value label, seed left out. A section value (a mapping) is labelled as in the run id
    (``dtr-a4-b0.8``), a plain value by itself; the one matrix key on the routing section (``routing`` or
    ``routing.name``) becomes the ``routing`` axis, and with none the applied routing is used. An axis of a
    further section of :data:`~dtr_plugins.core.config.STRATEGY_SECTIONS` (``token_routing``) joins the routing
    axis (``dtr-a4-b0.8+tread``; ``none`` adds nothing), so that token routing, alone (``vanilla+tread``) or
    with a channel routing, is a strategy compared with vanilla."""
    keys = list(assignment)
    parts = run_id.split("__")
    ids = parts[:len(keys)] if len(parts) in (len(keys), len(keys) + 1) else [None] * len(keys)
    axes = {k: _label(assignment[k], part) for k, part in zip(keys, ids) if k != "seed"}
    routing_keys = [k for k in axes if k.partition(".")[0] == "routing"]
    if len(routing_keys) == 1 and routing_keys[0] != "routing":
        axes["routing"] = axes.pop(routing_keys[0])
    if not routing_keys and isinstance(config.get("routing"), dict):
        axes["routing"] = _label(config["routing"], None)
    for section in STRATEGY_SECTIONS[1:]:  # a varied token router is part of the strategy: dtr-a4-b0.8+tread
        part = axes.pop(section, None)
        if part is not None and part != NO_VALUE and "routing" in axes:
            axes["routing"] = f"{axes['routing']}+{part}"
    return axes


def _numbers_only(result: dict[str, Any]) -> dict[str, Any]:
    """Values of compared metrics must be numbers; anything else under a metric's name is dropped, not plotted."""
    return {k: v for k, v in result.items() if not metric_info(k) or isinstance(v, (int, float))}


def runs_from_suite(suite_dir: str | Path) -> list[RunRecord]:
    """One record per run listed in ``suite_dir/suite.json`` (runs never started have status ``new``), read
    through :class:`~dtr_plugins.runs.rundir.SuiteIndex` and :class:`~dtr_plugins.runs.rundir.RunDir`."""
    suite = SuiteIndex(suite_dir)
    return [run_record(suite.run(entry["id"]), entry["id"], entry) for entry in suite.entries()]


def run_record(run_dir: RunDir, run_id: str, entry: dict[str, Any] | None = None) -> RunRecord:
    """The :class:`RunRecord` of ``run_dir`` (one reading of each of its files), named ``run_id``; ``entry``:
    its line of a suite's ``suite.json`` (matrix assignment, group, plan fingerprint), None for a lone run."""
    entry = entry or {}
    damaged = run_dir.unreadable()
    config = run_dir.read_config()
    found = entry.get("assignment")
    assignment: dict[str, Any] = found if isinstance(found, dict) else {}
    seed = config.get("seed", assignment.get("seed", 0))
    records = run_dir.read_metrics()
    curves, fingerprint = curves_from_records(records)
    steps = [r for r in records if isinstance(r.get("step"), int)]
    evals = [dict(_numbers_only(r["eval"]), step=r["step"]) for r in steps if isinstance(r.get("eval"), dict)]
    recorded, planned = run_dir.read_fingerprint(), entry.get("fingerprint")
    routing = config.get("routing")
    state = run_dir.read_status()
    status = f"unreadable ({damaged})" if damaged else str(state.get("state", "new"))
    meta = run_dir.read_meta()
    train = [r for r in steps if "loss" in r]  # held-out and eval lines are not training
    return RunRecord(id=run_id, seed=seed if isinstance(seed, int) else 0,
                     axes=axes_of(run_id, assignment, config), curves=curves, status=status,
                     heldout_fingerprint=fingerprint, group=str(entry.get("group", run_id)),
                     routing=str(routing.get("name", "?")) if isinstance(routing, dict) else "?",
                     config=config, meta=meta, evals=evals, train=train,
                     current=None in (recorded, planned) or recorded == planned,  # unknown: not stale
                     error=str(state.get("error", "")), cost=run_cost(meta, evals, train))
