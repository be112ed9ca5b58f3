"""Ablation suites: a base config times a matrix of changes, each run in its own process, then a report.

Rerunning a suite skips finished runs, resumes interrupted ones from their last checkpoint and retries
failed ones. Everything lives under ``<output_dir>/<suite name>/``.

Each run is keyed by its id *and* by the plan fingerprint of its resolved config
(:func:`~dtr_plugins.core.fingerprint.plan_fingerprint`, recorded in ``<run>/config.sha256``). A run that
exists with another one (the suite's ``set:``, its base config or ``--set`` changed since) is never skipped
silently; the one identity rule of :mod:`dtr_plugins.core.fingerprint` decides:

- a resumable change (``train.steps`` raised, later sampling or evaluation settings: the weights fingerprint is
  unchanged) continues the run from its checkpoint (``dtr train --resume``) and records the new plan;
- any other change is refused before any run starts, with one line naming the run, the key, its old value
  and its new one, unless ``rerun_changed`` (``--rerun-changed``): then the old run folder is moved aside to
  ``<id>.stale-<old fp8>`` and the run trains anew.
"""
from __future__ import annotations

import copy
import fnmatch
import itertools
import json
import logging
import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from dtr_plugins.core.config import (
    PLUGIN_SECTIONS,
    ExperimentConfig,
    apply_overrides,
    check_path_component,
    config_from_dict,
    read_yaml,
    set_dotted,
)
from dtr_plugins.core.errors import ConfigError, UserError
from dtr_plugins.core.fingerprint import changed_keys, plan_fingerprint, resume_refusal
from dtr_plugins.core.io import write_text
from dtr_plugins.core.metrics import compared
from dtr_plugins.core.plugins import default_registry, format_validation_error
from dtr_plugins.experiments.compare import NO_VALUE, metric_info
from dtr_plugins.launchers import RunSpec, describe_launcher, resolve_launcher
from dtr_plugins.runs.rundir import RunDir, SuiteIndex

logger = logging.getLogger(__name__)


class SuiteFile(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1)
    base: str | dict[str, Any]
    set: dict[str, Any] = Field(default_factory=dict)
    matrix: dict[str, list[Any]] = Field(default_factory=dict)
    exclude: list[dict[str, Any]] = Field(default_factory=list)
    eval: dict[str, Any] = Field(default_factory=dict)
    output_dir: str = "runs"
    primary: str = "heldout/total"  # the metric tested without a multiplicity correction (experiments/compare.py)
    launcher: dict[str, Any] = Field(default_factory=lambda: {"name": "local"})  # see dtr_plugins/launchers


@dataclass
class PlannedRun:
    id: str
    assignment: dict[str, Any]
    config: ExperimentConfig
    group: str = ""  # the id without the seed: runs of one group differ only by seed

    @property
    def fingerprint(self) -> str:
        """:func:`~dtr_plugins.core.fingerprint.plan_fingerprint` of the resolved config."""
        return plan_fingerprint(self.config.to_dict())


@dataclass(frozen=True)
class Change:
    """A planned run that exists with another plan fingerprint: ``refusal`` is None when its checkpoints may
    continue under the new config (``resumable``), else ``key: old -> new`` of the first identity key changed."""

    run: PlannedRun
    old_fingerprint: str
    keys: tuple[str, ...]  # every key that changed, resumable or not ([] when the old config is unknown)
    refusal: str | None

    @property
    def resumable(self) -> bool:
        return self.refusal is None


@dataclass
class Suite:
    name: str
    path: Path
    root: Path
    runs: list[PlannedRun] = field(default_factory=list)
    launcher: dict[str, Any] = field(default_factory=lambda: {"name": "local"})
    primary: str = "heldout/total"


# ------------------------------------------------------------------------------------------- ids
def _initials(key: str) -> str:
    return "".join(part[0] for part in key.split("_") if part)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, (list, tuple)):
        return "x".join(_fmt(v) for v in value)
    return str(value)


#: sections whose labels always carry their parameters (they are what an ablation varies)
_LABEL_PARAMS = ("routing", "loss_weighting")


def value_label(key: str, value: Any, full: bool | None = None) -> str:
    """A short readable label: ``dtr-a4-b0.8`` for a routing, ``dit-S2`` for a backbone, ``seed0`` / ``lr0.001``.

    ``full`` adds every parameter of a section (used when short labels of one axis would collide).
    """
    if value is None:
        return NO_VALUE  # an optional section left unset (``token_routing: null``)
    if isinstance(value, dict):
        head = str(value.get("name", key))
        for tag in ("size", "preset"):
            if tag in value:
                head += "-" + str(value[tag]).replace("/", "")
        if full is None:
            full = key in _LABEL_PARAMS
        skip = ("name", "size", "preset")
        parts = [f"{_initials(k)}{_fmt(v)}" for k, v in value.items() if k not in skip] if full else []
        return _one_component("-".join([head, *parts]))
    leaf = key.split(".")[-1]
    return _one_component(f"{leaf}{_fmt(value)}")


def _one_component(label: str) -> str:
    """``label`` with every run of characters a folder name may not hold (``/``, spaces, ...) as ``-``:
    run ids are built from labels and name folders under the suite's root."""
    return re.sub(r"[^A-Za-z0-9._-]+", "-", label)


def axis_labels(key: str, values: list[Any]) -> list[str]:
    """Labels for one matrix axis: short where that is unambiguous, with all parameters where not."""
    short = [value_label(key, v) for v in values]
    return [value_label(key, v, full=True) if short.count(lbl) > 1 else lbl for v, lbl in zip(values, short)]


# ---------------------------------------------------------------------------------------- expand
def _matches(assignment: dict[str, Any], partial: dict[str, Any]) -> bool:
    """Does ``assignment`` agree with the partial one? ``routing.name: dtr`` matches a routing section."""
    for key, want in partial.items():
        if key in assignment:
            if assignment[key] != want:
                return False
            continue
        section, _, sub = key.partition(".")
        got = assignment.get(section)
        if isinstance(got, dict) and sub:
            if got.get(sub) != want:
                return False
            continue
        return False
    return True


def _apply(data: dict[str, Any], key: str, value: Any) -> None:
    if (key in PLUGIN_SECTIONS or key in ("diffusion", "train", "sample", "eval", "vae")) and isinstance(value, dict):
        data[key] = copy.deepcopy(value)  # a section name with a mapping replaces the section
        return
    set_dotted(data, key, copy.deepcopy(value), source=key)


def load_suite(path: str | Path, registry=None, overrides: Sequence[str] = ()) -> Suite:
    """Read and validate a suite file and expand its matrix into planned runs (validated configs).

    ``overrides`` (``--set key=value``) apply to every run, after the suite's ``set:`` and the matrix; a
    key the matrix varies is refused. An ``exclude`` entry that matches no run is refused (ConfigError).
    """
    path = Path(path)
    raw = read_yaml(path)
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with name, base and matrix")
    run_keys = sorted({"backbone", "train", "data"} & set(raw))
    if "base" not in raw and "matrix" not in raw and run_keys:
        raise ConfigError(f"{path}: this looks like a run config (it has {', '.join(run_keys)} and no base or "
                          f"matrix); train it with `dtr train {path}`, or write a suite file with name, base (this "
                          "file) and matrix")
    try:
        spec = SuiteFile.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{path}: {format_validation_error(exc, SuiteFile)}") from None
    if isinstance(spec.base, str):
        base_path = (path.parent / spec.base).resolve()
        if not base_path.is_file():
            raise ConfigError(f"{path}: base: {spec.base!r} (relative to the suite file's folder) is {base_path}, "
                              "which is not a file; give the run config's path from the suite file's folder, or an "
                              "absolute path")
        base = read_yaml(base_path)
        if not isinstance(base, dict):
            raise ConfigError(f"{path}: base: {spec.base} is not a run config mapping")
        if "matrix" in base or "base" in base:
            raise ConfigError(f"{path}: base: {spec.base} is a suite file (it has "
                              f"{' and '.join(k for k in ('base', 'matrix') if k in base)}); base must be a run "
                              f"config (backbone, data, train ...), e.g. that suite's own base")
    else:
        base = copy.deepcopy(spec.base)
    for key, value in spec.set.items():
        _apply(base, key, value)
    if spec.eval:
        base.setdefault("eval", {}).update(copy.deepcopy(spec.eval))
    for key, values in spec.matrix.items():
        if not values:
            raise ConfigError(f"{path}: matrix.{key}: needs at least one value")
        texts = [json.dumps(v, sort_keys=True, default=str) for v in values]
        repeated = sorted({t for t in texts if texts.count(t) > 1})
        if repeated:
            raise ConfigError(f"{path}: matrix.{key}: the value {repeated[0]} is given more than once (each value "
                              "makes its own runs, so a repeat would train the same run twice and count it as "
                              "two); list each value once")
    for i, partial in enumerate(spec.exclude):
        unknown = [k for k in partial if k not in spec.matrix and k.partition(".")[0] not in spec.matrix]
        if unknown:
            raise ConfigError(f"{path}: exclude.{i}: key {unknown[0]!r} is not a matrix key "
                              f"(matrix keys: {', '.join(spec.matrix)})")

    for item in overrides:
        key = item.partition("=")[0].strip()
        if key in spec.matrix:
            raise ConfigError(f"--set {item}: {key} is a matrix key of {path}; it cannot be set for every run")
        if key in ("output_dir", "name"):  # the suite places and names its runs; a run's own value is ignored
            raise ConfigError(f"--set {item}: a suite's runs live in <output_dir>/<suite name>/<run id>; set "
                              f"output_dir (or name) at the top of {path}, or copy the suite file")
    check_path_component(spec.name, f"{path}: name")  # ../evil would write outside output_dir
    root = Path(spec.output_dir) / spec.name
    if metric_info(spec.primary) is None:
        raise ConfigError(f"{path}: primary: {spec.primary!r} is not a compared metric (allowed: "
                          f"{', '.join(compared())}, heldout/band<k>)")
    suite = Suite(name=spec.name, path=path, root=root, launcher=copy.deepcopy(spec.launcher), primary=spec.primary)
    keys = list(spec.matrix)
    seen: dict[str, int] = {}
    labels_of = {k: axis_labels(k, spec.matrix[k]) for k in keys}
    used = [False] * len(spec.exclude)
    contents: dict[str, str] = {}  # the validated config of each run, without its name -> the run's id
    for combo in itertools.product(*(range(len(spec.matrix[k])) for k in keys)):
        assignment = {k: spec.matrix[k][i] for k, i in zip(keys, combo)}
        hits = [i for i, partial in enumerate(spec.exclude) if _matches(assignment, partial)]
        for i in hits:
            used[i] = True
        if hits:
            continue
        labels = [labels_of[k][i] for k, i in zip(keys, combo)]
        run_id = "__".join(labels) or "base"
        if run_id in seen:
            seen[run_id] += 1
            run_id = f"{run_id}__{seen[run_id]}"
        else:
            seen[run_id] = 0
        check_path_component(run_id, f"{path}: run id (from the matrix values)")
        group = "__".join(lbl for k, lbl in zip(keys, labels) if k != "seed") or "base"
        data = copy.deepcopy(base)
        for key, value in assignment.items():
            _apply(data, key, value)
        data["name"] = run_id
        data["output_dir"] = str(root)
        if isinstance(data.setdefault("log", {}), dict):  # recorded in the run's config.yaml; trackers group by it
            data["log"]["suite"] = spec.name
        data = apply_overrides(data, overrides)
        where = f"{path} (run {run_id})"
        cfg = config_from_dict(data, source=where, registry=registry)
        content = json.dumps({k: v for k, v in cfg.to_dict().items() if k != "name"}, sort_keys=True, default=str)
        if content in contents:  # values written differently (4 and 4.0) that validate to the same run
            given = ", ".join(f"{k}: {json.dumps(v, default=str)}" for k, v in assignment.items())
            raise ConfigError(f"{path}: matrix: runs {contents[content]} and {run_id} are the same run once "
                              f"validated ({given}); list each value once")
        contents[content] = run_id
        suite.runs.append(PlannedRun(id=run_id, assignment=assignment, config=cfg, group=group))
    for i, hit in enumerate(used):
        if not hit:
            raise ConfigError(f"{path}: exclude.{i}: {spec.exclude[i]} matches no run of the matrix "
                              f"(check its values against matrix)")
    return suite


# ------------------------------------------------------------------------------------------ state
def run_state(run_dir: Path, cfg: ExperimentConfig | None = None) -> str:
    """``done``, ``failed``, ``partial`` (has checkpoints) or ``new``. With ``cfg``, a run is ``done`` only when
    every output it asks for exists (:meth:`RunDir.missing_outputs`); otherwise it is resumed to redo them."""
    run = RunDir(run_dir)
    state = run.read_status().get("state")
    if state == "done" and cfg is not None and run.missing_outputs(cfg):
        return "partial"
    if state in ("done", "failed"):
        return state
    return "partial" if run.has_checkpoints() else "new"


def _trained_config(run: RunDir) -> dict[str, Any] | None:
    """The resolved config the run was trained with (its ``config.yaml``), None when absent or not loadable."""
    if not run.config_path.exists():
        return None
    try:
        return config_from_dict(read_yaml(run.config_path), source=str(run.config_path)).to_dict()
    except UserError:
        return None


def recorded_fingerprint(run_dir: Path) -> str | None:
    """The plan fingerprint a run was started with (``<run>/config.sha256``), else that of its ``config.yaml``."""
    run = RunDir(run_dir)
    recorded = run.read_fingerprint()
    if recorded is not None:
        return recorded
    if run.config_path.exists():
        trained = _trained_config(run)
        return "unreadable" if trained is None else plan_fingerprint(trained)
    return None


def changed_runs(suite: Suite, runs: list[PlannedRun]) -> list[Change]:
    """Runs that were finished (or have checkpoints to resume) with another plan, each judged by the identity
    rule against the config it was trained with (``<run>/config.yaml``)."""
    out = []
    for r in runs:
        run_dir = suite.root / r.id
        if run_state(run_dir) not in ("done", "partial") and not RunDir(run_dir).has_checkpoints():
            continue
        old = recorded_fingerprint(run_dir)
        if old is None or old == r.fingerprint:
            continue
        trained, new = _trained_config(RunDir(run_dir)), r.config.to_dict()
        if trained is None:
            out.append(Change(r, old, (), f"{RunDir(run_dir).config_path} does not load, so the change cannot be "
                                          "judged"))
            continue
        out.append(Change(r, old, tuple(changed_keys(trained, new)), resume_refusal(trained, new)))
    return out


def _move_aside(run_dir: Path, old_fp: str) -> Path:
    stale = run_dir.with_name(f"{run_dir.name}.stale-{old_fp[:8]}")
    n = 1
    while stale.exists():
        n += 1
        stale = run_dir.with_name(f"{run_dir.name}.stale-{old_fp[:8]}-{n}")
    run_dir.rename(stale)
    return stale


@dataclass(frozen=True)
class SuiteOptions:
    """How ``dtr suite`` runs a suite (its command-line options; see :func:`run_suite`)."""

    dry_run: bool = False  #: print each run's state, start nothing
    only: str | None = None  #: a glob of run ids to consider (``--only``)
    parallel: int | None = None  #: runs at once (local launcher)
    report: bool = True  #: build the report at the end
    launcher: str | None = None  #: overrides the suite file's ``launcher.name``
    wait: bool = False  #: a scheduler launcher: wait for the jobs
    cancel: bool = False  #: cancel the suite's live jobs instead
    wait_timeout_s: float | None = None  #: with ``wait``: give up after this many seconds
    launcher_settings: dict[str, Any] | None = None  #: override parameters of the launcher section
    overrides: Sequence[str] = ()  #: ``--set`` KEY=VALUE for every run
    rerun_changed: bool = False  #: move runs whose config changed aside and train them anew
    progress_every: float | None = None  #: local launcher: seconds between progress lines


def run_suite(path: str | Path, options: SuiteOptions | None = None, *, registry=None, dry_run: bool | None = None,
              only: str | None = None, parallel: int | None = None, report: bool | None = None,
              overrides: Sequence[str] | None = None, rerun_changed: bool | None = None,
              progress_every: float | None = None) -> Path:
    """Start every planned run that is neither finished nor queued, then build the report; returns the suite folder.

    ``options``: :class:`SuiteOptions` (the launcher ones, ``launcher``, ``wait``, ``cancel``, ``wait_timeout_s``
    and ``launcher_settings``, only there); the other fields, given as keywords, replace those of ``options``.
    ``launcher`` overrides the suite file's ``launcher.name`` (``local`` by default). A blocking launcher
    (``local``) returns when the runs ended; a scheduler (``slurm``) returns after submitting, unless
    ``wait``. ``launcher_settings`` override parameters of the launcher section. ``cancel`` cancels the
    suite's live jobs instead of starting anything. ``overrides`` (``--set``) apply to every run.

    Refuses (ConfigError, before any run starts) when a finished or resumable run's recorded config
    plan fingerprint (``<run>/config.sha256``) differs from the planned one by a change its checkpoints cannot
    continue (:func:`~dtr_plugins.core.fingerprint.resume_refusal`), unless ``rerun_changed``: then the old
    folder is moved to ``<id>.stale-<fp8>`` and the run trains anew. A resumable change continues the run.
    ``progress_every`` (local launcher): seconds between the progress lines of each running run.
    """
    given: dict[str, Any] = {"dry_run": dry_run, "only": only, "parallel": parallel, "report": report,
                             "overrides": overrides, "rerun_changed": rerun_changed, "progress_every": progress_every}
    o = replace(options or SuiteOptions(), **{k: v for k, v in given.items() if v is not None})
    dry_run, only, parallel, launcher, wait, cancel = o.dry_run, o.only, o.parallel, o.launcher, o.wait, o.cancel
    launcher_settings, rerun_changed = o.launcher_settings, o.rerun_changed
    suite = load_suite(path, registry=registry, overrides=o.overrides)
    runs = [r for r in suite.runs if only is None or fnmatch.fnmatch(r.id, only)]
    if only is not None and not runs:
        raise UserError(f"--only {only!r} matches none of: {', '.join(r.id for r in suite.runs)}")
    section = dict(suite.launcher)
    if parallel is not None and (launcher or section.get("name", "local")) == "local":
        own = section if section.get("name", "local") == "local" else {}
        section = {"name": "local", **own, "parallel": parallel}
    if o.progress_every is not None and (launcher or section.get("name", "local")) == "local":
        section = {**section, "progress_every": o.progress_every}
    launchers = registry if registry is not None and registry.names("launcher") else default_registry()
    launcher_name, launcher_options, info = resolve_launcher(section, override=launcher, registry=launchers,
                                                             where=str(suite.path), settings=launcher_settings)
    runner = info.factory(**launcher_options)
    if runner.blocking and (wait or cancel):
        flag = "--cancel" if cancel else "--wait"
        name = launcher or section.get("name", "local")
        raise UserError(f"{flag}: applies to a scheduler launcher (slurm) only; the {name} launcher runs the runs "
                        f"in the foreground (set the launcher in {suite.path}, or pass --launcher slurm)")
    specs = {r.id: RunSpec(r.id, suite.root / r.id, suite.root / "configs" / f"{r.id}.yaml") for r in runs}
    changed = changed_runs(suite, runs)
    if dry_run:
        print("\n".join(describe_launcher(launcher_name, launcher_options)))
        live = runner.active(suite.root, list(specs.values())) if suite.root.exists() else {}
        kind = {c.run.id: "resume" if c.resumable else "changed" for c in changed}
        for r in runs:
            state = kind.get(r.id) or run_state(suite.root / r.id, r.config)
            print(f"{state:8s} {r.id}" + (f" ({live[r.id]})" if r.id in live else ""))
        return suite.root
    if cancel:
        cancelled = runner.cancel(suite.root, list(specs.values()))
        logger.info(f"cancelled {len(cancelled)} run(s)" + (f": {', '.join(cancelled)}" if cancelled else ""))
        return suite.root
    live = runner.active(suite.root, list(specs.values())) if suite.root.exists() else {}
    changed = [c for c in changed if c.run.id not in live]  # a queued job is not moved under its feet
    refused = [c for c in changed if not c.resumable]
    if refused and not rerun_changed:
        rest = ", ".join(c.run.id for c in refused[1:])
        more = f" (and {len(refused) - 1} more run(s): {rest})" if rest else ""
        raise ConfigError(f"{suite.path}: run {refused[0].run.id}: {refused[0].refusal}; its checkpoints cannot "
                          f"continue with that change{more}; restore the old value, or pass --rerun-changed to move "
                          "the run aside (<id>.stale-<fp8>) and train it anew")
    for c in refused:
        aside = _move_aside(suite.root / c.run.id, c.old_fingerprint).name
        logger.info(f"stale    {c.run.id} -> {aside} (config changed)")
    for c in changed:
        if c.resumable:
            what = ", ".join(c.keys) or "config"
            logger.info(f"continue {c.run.id} ({what} changed; continues from its checkpoints)")
            write_text(specs[c.run.id].config_path, c.run.config.to_yaml())
            RunDir(specs[c.run.id].run_dir).write_fingerprint(c.run.fingerprint)
    suite.root.mkdir(parents=True, exist_ok=True)
    SuiteIndex(suite.root).write({"name": suite.name, "file": str(suite.path), "primary": suite.primary,
                                  "runs": [{"id": r.id, "group": r.group, "assignment": r.assignment,
                                            "fingerprint": r.fingerprint} for r in suite.runs]})
    todo = []
    for r in runs:
        if run_state(suite.root / r.id, r.config) == "done":
            logger.info(f"skip     {r.id} (finished)")
        elif r.id in live:
            logger.info(f"skip     {r.id} ({live[r.id]})")
        else:
            todo.append(r)
    for r in todo:
        write_text(specs[r.id].config_path, r.config.to_yaml())
        RunDir(specs[r.id].run_dir).write_fingerprint(r.fingerprint)
    results = runner.launch(suite.root, [specs[r.id] for r in todo])
    if not runner.blocking:
        if not wait:
            logger.info(f"{len(results)} run(s) submitted, {len(live)} still queued or running; rerun `dtr suite` to "
                        f"see their states and resubmit failed ones, `dtr report {suite.root}` to report what has "
                        "finished")
            return suite.root
        runner.wait(suite.root, list(specs.values()), timeout_s=o.wait_timeout_s)
    states = {r.id: run_state(suite.root / r.id, r.config) for r in runs}
    for r in runs:
        if not runner.blocking:
            logger.info(f"{states[r.id]:8s} {r.id}")
    failed = [rid for rid, state in states.items() if state != "done"]
    if o.report:
        from dtr_plugins.experiments.report import build_report

        out = build_report(suite.root)
        logger.info(f"report: {out}")
    if failed:
        logger.warning(f"{len(failed)} run(s) failed: {', '.join(failed)} (see their train.log; rerun the suite to "
                       "retry)")
    return suite.root
