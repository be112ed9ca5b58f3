"""The ``dtr`` command's handlers: one ``cmd_<name>(args) -> exit status`` per subcommand, each calling the public
API (:mod:`dtr_plugins.cli` parses the arguments and dispatches here).
"""
from __future__ import annotations

import json
import logging
import sys
from collections.abc import Sequence

from dtr_plugins.core.errors import UserError

logger = logging.getLogger("dtr_plugins.cli")


def _load(args):
    from dtr_plugins.compose import check_composition
    from dtr_plugins.core.config import load_config

    cfg = load_config(args.config, overrides=args.overrides)
    try:
        check_composition(cfg)
    except UserError as exc:
        raise type(exc)(f"{args.config}: {exc}") from None
    return cfg


def _check_out_file(out: str, what: str, inputs: Sequence[str] = ()) -> None:
    """``--out`` must name a file (``what``) to write: not a folder, not under a file, not one of the
    command's ``inputs`` (UserError, one line); checked before any work so the mistake costs nothing."""
    from pathlib import Path

    path = Path(out)
    for given in inputs:
        if Path(given).exists() and path.resolve() == Path(given).resolve():
            raise UserError(f"--out {out}: is an input of this command ({given}); choose another file")
    if path.is_dir():
        raise UserError(f"--out {out}: is a folder; give the path of the {what} to write")
    for parent in path.resolve().parents:
        if parent.exists() and not parent.is_dir():
            raise UserError(f"--out {out}: {parent} is a file, not a folder; choose another --out")


def cmd_plugins(args) -> int:
    from dtr_plugins.core.plugins import default_registry

    registry = default_registry()
    rows = [p.as_dict() for p in registry.list()]
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    headers = ["kind", "name", "distribution", "version", "description"]
    table = [[str(r[h] or "-") for h in headers] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in table)) if table else len(h) for i, h in enumerate(headers)]
    print("  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip())
    for r in table:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip())
    return 0


def cmd_validate(args) -> int:
    """Everything ``dtr train`` would find before its first step (:func:`validate_run`), then the resolved config."""
    from dtr_plugins.compose import validate_run

    cfg = _load(args)
    try:
        validate_run(cfg, machine=not args.config_only, allow_unsafe_load=args.allow_unsafe_load)
    except UserError as exc:
        raise type(exc)(f"{args.config}: {exc}") from None
    print(cfg.to_yaml(), end="")
    return 0


def cmd_masks(args) -> int:
    from pathlib import Path

    from dtr_plugins.compose import compose
    from dtr_plugins.core.token_routing import describe_keep_ratios, token_record
    from dtr_plugins.experiments.gate_plots import plot_learned_gates
    from dtr_plugins.experiments.plots import plot_routing_plan

    _check_out_file(args.out, "image", inputs=[args.config])
    source = Path(args.config)
    if source.is_dir() or source.suffix in (".pt", ".pth"):  # a trained run: its learned gates
        from dtr_plugins.sampling.sample import load_run

        if args.overrides:
            raise UserError(f"{source}: --set applies to a config, not to a run directory or checkpoint")
        cfg, model, _, ckpt_path = load_run(source, use_ema=not args.no_ema, allow_unsafe_load=args.allow_unsafe_load,
                                            device="cpu")
        weights = f"{'EMA' if not args.no_ema else 'model'} weights of {ckpt_path.name}"
    else:
        cfg, weights = _load(args), "at initialisation"
        model = compose(cfg, data=False).model
    plan = model.plan
    assert plan is not None  # compose always attaches one
    if (tokens := token_record(model)) is not None:  # token_routing: the share of tokens each block sees
        logger.info(describe_keep_ratios(tokens))
    if plan.learned is not None:
        drawn = plot_learned_gates(plan, args.out, title=f"{cfg.name}: {plan.strategy_repr} ({weights})")
        if drawn is None:
            raise UserError(f"{args.config}: strategy {plan.strategy_repr} reports no per-timestep gates to draw "
                            f"(task_tables() is None and it has no gate_summary())")
        logger.info(f"wrote {drawn} (learned gates of {len(plan.layer_channels)} routed layers, {weights})")
        return 0
    out = plot_routing_plan(plan, args.out, title=f"{cfg.name}: {plan.strategy_repr}")
    logger.info(f"wrote {out} ({plan.num_tables} distinct table(s) over {len(plan.layer_table)} routed layers)")
    return 0


def cmd_train(args) -> int:
    from dtr_plugins.training.train import compose_checked, train

    if args.threads is not None:
        if args.threads < 1:  # a flag, not a key of the config file
            raise UserError(f"--threads: {args.threads} is not a thread count; give an integer of 1 or more")
        args.overrides = [*args.overrides, f"train.threads={args.threads}"]
    cfg = _load(args)
    try:  # every rank, before the process group: the checks and the line of `dtr validate`
        parts = compose_checked(cfg, run_dir=args.run_dir)
    except UserError as exc:  # a config key is named with its file; an option (--run-dir) stands alone
        raise (exc if str(exc).startswith("--") else type(exc)(f"{args.config}: {exc}")) from None
    run_dir = train(cfg, resume=args.resume, run_dir=args.run_dir, allow_unsafe_load=args.allow_unsafe_load,
                    parts=parts)
    if run_dir is not None:
        print(f"run directory: {run_dir}")
    return 0


def cmd_ema(args) -> int:
    from dtr_plugins.training.posthoc import reconstruct_ema

    if args.out is not None:
        _check_out_file(args.out, "checkpoint")
    for path in reconstruct_ema(args.run, args.sigma_rel, step=args.step, out=args.out):
        print(f"wrote {path} (post-hoc EMA; sample it with: dtr sample {path})")
    return 0


def cmd_sample(args) -> int:
    from dtr_plugins.core.sampling_settings import SamplingOverrides
    from dtr_plugins.sampling.prompts import read_prompts_file
    from dtr_plugins.sampling.sample import sample

    prompts = list(args.prompt or []) + (read_prompts_file(args.prompts_file) if args.prompts_file else [])
    asked = SamplingOverrides(num=args.num_samples, sampler=args.sampler, respacing=args.respacing,
                              cfg_scale=args.cfg_scale, labels=args.labels, seed=args.seed,
                              batch_size=args.batch_size, use_ema=not args.no_ema, prompts=prompts or None,
                              guidance_interval=args.guidance_interval, time_shift=args.time_shift, atol=args.atol,
                              rtol=args.rtol)
    out = sample(args.source, asked, out=args.out, allow_unsafe_load=args.allow_unsafe_load,
                 overwrite=args.overwrite, device=args.device, threads=args.threads)
    if out is not None:
        print(f"samples: {out}")
    return 0


def cmd_eval(args) -> int:
    from dtr_plugins.core.distributed import set_threads
    from dtr_plugins.core.io import write_json
    from dtr_plugins.core.overrides import split_assignment
    from dtr_plugins.evaluation.evaluate import EvalSettings, evaluate

    _check_out_file(args.out, "JSON file", inputs=[args.samples, args.ref])
    set_threads(args.threads)
    params = {}
    for item in args.extractor_params:
        key, value = split_assignment(item, "--extractor-param", "KEY=VALUE, e.g. data_path=/data/fashion")
        params[key] = value  # a string: the extractor's params model converts it
    settings = EvalSettings(metrics=args.metrics, feature_extractor=args.feature_extractor,
                            weights_path=args.weights, device=args.device, extractor_params=params)
    result = evaluate(args.samples, args.ref, settings)
    write_json(args.out, result)
    print(json.dumps(result, indent=2))
    return 0


def cmd_suite(args) -> int:
    from dtr_plugins.experiments.suite import SuiteOptions, run_suite
    from dtr_plugins.launchers import parse_launcher_settings

    run_suite(args.suite, SuiteOptions(dry_run=args.dry_run, only=args.only, parallel=args.parallel,
                                       launcher=args.launcher, wait=args.wait, cancel=args.cancel,
                                       launcher_settings=parse_launcher_settings(args.launcher_set),
                                       overrides=args.overrides, rerun_changed=args.rerun_changed,
                                       progress_every=args.progress_every))
    return 0


def cmd_report(args) -> int:
    """A suite folder (``suite.json``) gets the suite report, a run directory its own
    (:mod:`dtr_plugins.experiments.run_report`)."""

    from dtr_plugins.experiments.report import build_report
    from dtr_plugins.experiments.run_report import build_run_report
    from dtr_plugins.runs.rundir import is_suite_dir

    suite = is_suite_dir(args.suite_dir)
    path = build_report(args.suite_dir) if suite else build_run_report(args.suite_dir)
    print(f"report: {path}")
    return 0


def cmd_runs(args) -> int:
    """Every run below a folder: status, step, last loss and metrics, strategy, backbone (``--json``: a list)."""
    from dtr_plugins.runs.listing import find_runs, format_runs_table, summarize_run

    runs = [summarize_run(p, args.folder) for p in find_runs(args.folder)]
    if args.json:
        print(json.dumps([r.as_dict() for r in runs], indent=2))
    elif not runs:
        print(f"no run directories below {args.folder}", file=sys.stderr)
    else:
        print(format_runs_table(runs))
    return 0


def cmd_cache_latents(args) -> int:
    from dtr_plugins.compose import cache_latents

    cfg = _load(args)
    try:
        path = cache_latents(cfg)
    except UserError as exc:  # name the config file, as validate does
        raise exc if str(exc).startswith(f"{args.config}:") else type(exc)(f"{args.config}: {exc}") from None
    print(f"latent cache: {path}")
    return 0


def cmd_export(args) -> int:
    from dtr_plugins.sharing.hub import export_run

    out = export_run(args.run, args.out, weights=args.weights, layout=args.format,
                     allow_unsafe_load=args.allow_unsafe_load)
    print(f"exported: {out}")
    return 0


def cmd_push(args) -> int:
    from dtr_plugins.sharing.push import push

    url = push(args.folder, args.repo_id, private=True if args.private else None)
    print(f"pushed: {url}")
    return 0
