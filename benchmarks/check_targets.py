"""Compare the latest benchmark results with the targets in ``targets.yaml``.

Reads every ``*.json`` result file in ``benchmarks/results-cpu/`` and ``benchmarks/results-gpu/`` (or the folders
given with ``--results DEVICE=DIR``), collects their ``metrics`` mappings, and prints one row per target: met,
MISSED, or not measured (no result file holds its metric). Exit status: 0 when no measured target is missed, 1
when one is, 2 for a malformed targets file or results folder (one line naming the file and key).

    python benchmarks/check_targets.py
    python benchmarks/check_targets.py --results gpu=/path/to/gpu-out --device gpu
"""
from __future__ import annotations

import argparse
import json
import math
import operator
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

BENCH_DIR = Path(__file__).resolve().parent
DEVICES = ("cpu", "gpu")
COMPARE = {"<=": operator.le, ">=": operator.ge, "<": operator.lt, ">": operator.gt, "==": operator.eq}
KEYS = ("id", "what", "metric", "compare", "threshold", "device")


class TargetsError(Exception):
    """A malformed targets file or result file: one line naming the file and key."""


@dataclass(frozen=True)
class Target:
    id: str
    what: str
    metric: str
    compare: str
    threshold: float
    device: str


@dataclass(frozen=True)
class Measured:
    value: float
    file: str
    date: str
    device_name: str
    commit: str | None


def load_targets(path: Path) -> list[Target]:
    """Parse and check ``targets.yaml``; raises :class:`TargetsError` naming the file and the bad key."""
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise TargetsError(f"{path}: cannot read: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise TargetsError(f"{path}: malformed YAML: {str(exc).splitlines()[0]}") from None
    items = data.get("targets") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise TargetsError(f"{path}: expected a top-level 'targets:' list")
    targets, seen = [], set()
    for i, item in enumerate(items):
        where = f"{path}: targets[{i}]"
        if not isinstance(item, dict):
            raise TargetsError(f"{where}: expected a mapping with keys {', '.join(KEYS)}")
        missing = [k for k in KEYS if k not in item]
        extra = [k for k in item if k not in KEYS]
        if missing or extra:
            bad = f"missing {', '.join(missing)}" if missing else f"unknown key {', '.join(extra)}"
            raise TargetsError(f"{where}: {bad} (keys: {', '.join(KEYS)})")
        where = f"{path}: targets[{i}] ({item['id']})"
        if item["compare"] not in COMPARE:
            raise TargetsError(f"{where}.compare: {item['compare']!r} is not one of {', '.join(COMPARE)}")
        if item["device"] not in DEVICES:
            raise TargetsError(f"{where}.device: {item['device']!r} is not one of {', '.join(DEVICES)}")
        threshold = item["threshold"]
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not math.isfinite(threshold):
            raise TargetsError(f"{where}.threshold: {threshold!r} is not a finite number")
        if item["id"] in seen:
            raise TargetsError(f"{where}.id: duplicate id")
        seen.add(item["id"])
        targets.append(Target(str(item["id"]), str(item["what"]), str(item["metric"]), item["compare"],
                              float(threshold), item["device"]))
    return targets


#: the ``machine.device_type`` a result file must have to count for a target's device
DEVICE_TYPE = {"cpu": "cpu", "gpu": "cuda"}


def load_metrics(folder: Path, device: str, ignored: list[str] | None = None) -> dict[str, Measured]:
    """Every metric of the result files in ``folder`` (none if it does not exist); the newest file wins a key.

    A file measured on another kind of device than ``device`` (a CPU smoke run in a GPU folder) is left out and
    named in ``ignored``.
    """
    found: dict[str, Measured] = {}
    if not folder.is_dir():
        return found
    for path in sorted(folder.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            raise TargetsError(f"{path}: not a readable JSON result file ({type(exc).__name__})") from None
        metrics = data.get("metrics") if isinstance(data, dict) else None
        if not isinstance(metrics, dict):
            continue  # not a result file of these benchmarks (or one written before metrics were recorded)
        machine = data.get("machine") or {}
        measured_on = machine.get("device_type")
        if measured_on is not None and measured_on != DEVICE_TYPE[device]:
            if ignored is not None:
                ignored.append(f"{path}: measured on {measured_on}, not counted for {device} targets")
            continue
        date = str(machine.get("date", ""))
        name = machine.get("device_name") or machine.get("gpu") or machine.get("cpu") or "unknown device"
        for key, value in metrics.items():
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise TargetsError(f"{path}: metrics.{key}: {value!r} is not a number")
            known = found.get(key)
            if known is None or date > known.date:
                found[key] = Measured(float(value), path.name, date, name, machine.get("git_commit"))
    return found


def verdict(target: Target, measured: Measured | None) -> str:
    if measured is None:
        return "not measured"
    return "met" if COMPARE[target.compare](measured.value, target.threshold) else "MISSED"


def fmt(x: float) -> str:
    return f"{x:.4g}"


def report(targets: list[Target], metrics: dict[str, dict[str, Measured]]) -> tuple[str, list[dict[str, Any]]]:
    """The Markdown table and one record per target."""
    rows, records = [], []
    for t in targets:
        m = metrics[t.device].get(t.metric)
        v = verdict(t, m)
        source = "" if m is None else f"{m.file}, {m.device_name}, {m.date[:10]}" + (
            f", {m.commit[:10]}" if m.commit else "")
        rows.append(f"| {t.id} | {t.device} | {t.what} | `{t.metric}` {t.compare} {fmt(t.threshold)} | "
                    f"{'' if m is None else fmt(m.value)} | **{v}** | {source} |")
        records.append({"id": t.id, "device": t.device, "metric": t.metric, "compare": t.compare,
                        "threshold": t.threshold, "measured": None if m is None else m.value, "verdict": v,
                        "file": None if m is None else m.file})
    head = ["| target | device | what | target value | measured | verdict | measured in |",
            "|---|---|---|---|---|---|---|"]
    counts = {k: sum(r["verdict"] == k for r in records) for k in ("met", "MISSED", "not measured")}
    summary = f"{counts['met']} met, {counts['MISSED']} missed, {counts['not measured']} not measured"
    return "\n".join(head + rows) + f"\n\n{summary}", records


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--targets", default=str(BENCH_DIR / "targets.yaml"))
    ap.add_argument("--results", action="append", default=[], metavar="DEVICE=DIR",
                    help="results folder of cpu or gpu (default: benchmarks/results-cpu, benchmarks/results-gpu)")
    ap.add_argument("--device", choices=DEVICES, default=None, help="check only this device's targets")
    ap.add_argument("--json", default=None, help="also write the verdicts to this JSON file")
    args = ap.parse_args(argv)
    folders = {d: BENCH_DIR / f"results-{d}" for d in DEVICES}
    for item in args.results:
        device, sep, folder = item.partition("=")
        if not sep or device not in DEVICES:
            print(f"--results: '{item}' is not DEVICE=DIR with DEVICE one of {', '.join(DEVICES)}", file=sys.stderr)
            return 2
        folders[device] = Path(folder)
    try:
        targets = [t for t in load_targets(Path(args.targets)) if args.device in (None, t.device)]
        ignored: list[str] = []
        metrics = {d: load_metrics(folders[d], d, ignored) for d in DEVICES}
    except TargetsError as exc:
        print(exc, file=sys.stderr)
        return 2
    text, records = report(targets, metrics)
    print(text)
    for line in ignored:
        print(f"\nignored {line}")
    if args.json:
        Path(args.json).write_text(json.dumps({"targets": records}, indent=2) + "\n")
    return 1 if any(r["verdict"] == "MISSED" for r in records) else 0


if __name__ == "__main__":
    sys.exit(main())
