"""The ``dtr`` command: parses arguments and calls the public API; nothing else lives here.

Bad input (a :class:`UserError`) prints one line on stderr and exits with status 2; ``--debug`` shows
the traceback instead.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import warnings
from collections.abc import Sequence

from dtr_plugins._version import __version__
from dtr_plugins.core.errors import UserError, os_error_line, user_message
from dtr_plugins.core.log import console_logging
from dtr_plugins.core.metrics import selectable as metric_names

logger = logging.getLogger("dtr_plugins.cli")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse prints usage + message by default)
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (``--num-samples 0`` is refused with one line)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer (1 or more), got {value}")
    return value


def _seed(text: str) -> int:
    """argparse type: a seed, an integer >= 0 (numpy's and the sampler's generators take no negative seed)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a seed (an integer, 0 or more), got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a seed (an integer, 0 or more), got {value}")
    return value


def _config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="run config (YAML)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set routing.beta=0.7 (repeatable)")


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


def _threads_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=None, help="CPU threads of this process (default: torch's)")


def _device_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when present)")
    _threads_arg(p)


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
    from dtr_plugins.evaluation.evaluate import EvalSettings, evaluate

    _check_out_file(args.out, "JSON file", inputs=[args.samples, args.ref])
    set_threads(args.threads)
    params = {}
    for item in args.extractor_params:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise UserError(f"--extractor-param: expected KEY=VALUE, got {item!r}")
        params[key] = value
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


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="dtr", description="Task routing for diffusion models (DTR and friends).")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    parser.add_argument("--version", action="version", version=f"dtr {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    common = _Parser(add_help=False)  # so that `dtr train ... --debug` works too
    common.add_argument("--debug", action="store_true", default=argparse.SUPPRESS, help="show tracebacks for errors")
    _verbosity_args(parser)
    _verbosity_args(common, default=argparse.SUPPRESS)

    p = sub.add_parser(parents=[common], name="plugins",
                       help="list installed plugins: kind, name, distribution, version")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=cmd_plugins)

    p = sub.add_parser(parents=[common], name="validate",
                       help="check a config as dtr train would before its first step, and print it resolved")
    _config_args(p)
    p.add_argument("--config-only", action="store_true",
                   help="check the config alone, not this machine (devices, weight files, hub VAE, output folders)")
    p.add_argument("--allow-unsafe-load", action="store_true",
                   help="read train.init_from even if it needs arbitrary unpickling (only for files you trust)")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser(parents=[common], name="masks",
                       help="draw the mask tables of a config, or the learned gates of a run, as heatmaps")
    _config_args(p)
    p.add_argument("--out", default="masks.png", help="image path; its suffix picks the format (default masks.png)")
    p.add_argument("--no-ema", action="store_true", help="with a run directory or checkpoint: the raw weights")
    p.add_argument("--allow-unsafe-load", action="store_true",
                   help="with a checkpoint: allow a full pickle load (only for files you trust)")
    p.set_defaults(func=cmd_masks)

    p = sub.add_parser(parents=[common], name="train",
                       help="train a run (torchrun --nproc_per_node=N -m dtr_plugins train ... for DDP)")
    _config_args(p)
    p.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    p.add_argument("--run-dir", default=None, help="run directory (default: <output_dir>/<name>)")
    _threads_arg(p)
    p.add_argument("--allow-unsafe-load", action="store_true",
                   help="allow checkpoints that need full unpickling (only for files you trust)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser(parents=[common], name="sample",
                       help="sample images from a run, checkpoint, exported folder or hub id (hf://ORG/NAME)")
    p.add_argument("source", help="run directory, checkpoint file, folder written by dtr export (or a diffusers DiT "
                   "folder/pipeline) or hub id hf://ORG/NAME[@REVISION]")
    p.add_argument("-n", "--num-samples", type=_positive_int, default=None,
                   help="number of images (default: the config's sample.num_samples, 64 unless set)")
    p.add_argument("--out", default=None, help="new output folder (default <run>/samples/step<N>-<sampler><steps>-"
                   "cfg<s>-seed<k>-n<num>; required for an exported folder or hub id)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out if it holds files (once the new set is complete)")
    _device_args(p)
    p.add_argument("--sampler", default=None,
                   help="gaussian: ddpm, ddim; flow_matching: euler, heun, euler_maruyama, dopri5 (adaptive)")
    p.add_argument("--respacing", default=None, help='timestep respacing, e.g. "250" or "ddim50"; flow: the step count')
    p.add_argument("--cfg-scale", type=float, default=None, help="classifier-free guidance scale")
    p.add_argument("--guidance-interval", type=float, nargs=2, default=None, metavar=("LO", "HI"),
                   help="guide only at noise levels in [LO, HI] (gaussian: sigma; flow_matching: t, 0 noise .. 1 data)")
    p.add_argument("--time-shift", type=float, default=None, help="flow_matching: SD3 shift of the time grid (1: none)")
    p.add_argument("--atol", type=float, default=None, help="dopri5: absolute tolerance (default 1e-6)")
    p.add_argument("--rtol", type=float, default=None, help="dopri5: relative tolerance (default 1e-3)")
    p.add_argument("--labels", type=int, nargs="*", default=None, help="class labels (default: balanced)")
    p.add_argument("--prompt", action="append", default=None, metavar="TEXT",
                   help="text-to-image: a prompt (repeatable; image i gets prompt i mod the number given)")
    p.add_argument("--prompts-file", default=None, metavar="FILE", help="text-to-image: prompts, one per line")
    p.add_argument("--seed", type=_seed, default=0, help="seed of the sampling noise and labels (default 0)")
    p.add_argument("--batch-size", type=_positive_int, default=None)
    p.add_argument("--no-ema", action="store_true", help="use the raw weights instead of the EMA")
    p.add_argument("--allow-unsafe-load", action="store_true",
                   help="allow checkpoints that need full unpickling (only for files you trust)")
    p.set_defaults(func=cmd_sample)

    p = sub.add_parser(parents=[common], name="eval",
                       help="score samples against a reference (FID, IS, KID, precision/recall)")
    p.add_argument("--samples", required=True, help="sample folder or .npz")
    p.add_argument("--ref", required=True, help="reference folder, .npz or dataset:NAME")
    p.add_argument("--metrics", nargs="+", default=["fid"], choices=metric_names())
    p.add_argument("--feature-extractor", default="inception-v3-compat")
    p.add_argument("--weights", default=None, help="local weights file of the feature extractor (offline use)")
    p.add_argument("--extractor-param", dest="extractor_params", action="append", default=[], metavar="KEY=VALUE",
                   help="a parameter of the feature extractor plugin, e.g. data_path=/my/fashion (repeatable)")
    p.add_argument("--out", required=True, help="JSON file to write")
    _device_args(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser(parents=[common], name="suite",
                       help="run an ablation suite (matrix of runs) and build its report")
    p.add_argument("suite", help="suite file (YAML)")
    p.add_argument("--dry-run", action="store_true", help="list the runs without training")
    p.add_argument("--only", default=None, help="run only ids matching this glob pattern")
    p.add_argument("--parallel", type=_positive_int, default=None,
                   help="local launcher: runs at a time (one GPU each, or cpu_count/N threads each without GPUs; "
                   "default 1)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value of every run, after the suite's set: (repeatable)")
    p.add_argument("--rerun-changed", action="store_true",
                   help="runs whose config changed so their checkpoints cannot continue (not train.steps, eval or "
                        "sample settings): move them to <id>.stale-<fp8> and train anew")
    p.add_argument("--progress-every", type=float, default=None, metavar="SECONDS",
                   help="local launcher: print each running run's step every SECONDS (default 30)")
    # launcher options (slurm helper)
    p.add_argument("--launcher", default=None, help="where runs start: local (default), slurm or a plugin's "
                   "(overrides the suite file's launcher.name)")
    p.add_argument("--wait", action="store_true", help="with a scheduler (slurm): wait for the jobs, then report")
    p.add_argument("--cancel", action="store_true", help="cancel the suite's queued and running jobs")
    p.add_argument("--launcher-set", action="append", default=[], metavar="KEY=VALUE",
                   help="set one launcher parameter, e.g. --launcher-set gpus_per_run=8 (repeatable)")
    p.set_defaults(func=cmd_suite)

    p = sub.add_parser(parents=[common], name="report",
                       help="rebuild a suite's report.md, results.csv and plots, or one run's report.md and plots")
    p.add_argument("suite_dir", metavar="DIR", help="suite folder (runs/<suite name>) or run directory")
    p.set_defaults(func=cmd_report)

    p = sub.add_parser(parents=[common], name="runs",
                       help="list the runs below a folder: status, step, loss, metrics, strategy, backbone")
    p.add_argument("folder", nargs="?", default="runs", help="folder to search (default runs/)")
    p.add_argument("--json", action="store_true", help="one JSON list for scripts")
    p.set_defaults(func=cmd_runs)

    p = sub.add_parser(parents=[common], name="cache-latents",
                       help="encode a dataset once with the config's VAE")
    _config_args(p)
    p.set_defaults(func=cmd_cache_latents)

    p = sub.add_parser(parents=[common], name="export",
                       help="export a run's weights in hub layout (safetensors, config, model card)")
    p.add_argument("run", help="run directory (its newest checkpoint) or checkpoint file")
    p.add_argument("--out", required=True, help="new folder to write")
    p.add_argument("--weights", choices=["ema", "model"], default="ema", help="which weights (default ema)")
    p.add_argument("--format", choices=["dtr", "diffusers"], default="dtr",
                   help="dtr: this project's layout (any model); diffusers: DiTTransformer2DModel (vanilla DiT only)")
    p.add_argument("--allow-unsafe-load", action="store_true",
                   help="allow checkpoints that need full unpickling (only for files you trust)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser(parents=[common], name="ema",
                       help="post-hoc EMA: build the power-EMA weights of another width from a run's EMA snapshots")
    p.add_argument("run", help="run directory trained with ema: {name: power, snapshot_every: N}")
    p.add_argument("--sigma-rel", type=float, nargs="+", required=True,
                   help="relative width(s) of the wanted power-function EMA, e.g. 0.05 (EDM2's sigma_rel)")
    p.add_argument("--step", type=int, default=None, help="step of the average (a snapshot step; default the last)")
    p.add_argument("--out", default=None, help="checkpoint to write (one width; default "
                   "<run>/ema/posthoc-<step>-sigma<S>.pt)")
    p.set_defaults(func=cmd_ema)

    p = sub.add_parser(parents=[common], name="push",
                       help="upload an exported folder to the Hugging Face hub")
    p.add_argument("folder", help="folder written by dtr export")
    p.add_argument("repo_id", help="hub repo ORG/NAME (created if missing)")
    p.add_argument("--private", action="store_true", help="create the repo as private")
    p.set_defaults(func=cmd_push)
    return parser


def _verbosity_args(p: argparse.ArgumentParser, default: object = False) -> None:
    """``-q`` / ``-v`` (before or after the command): the console's log level (default INFO)."""
    group = p.add_mutually_exclusive_group()
    group.add_argument("-q", "--quiet", action="store_true", default=default,
                       help="show warnings and errors only (no progress or info lines)")
    group.add_argument("-v", "--verbose", action="store_true", default=default, help="also show debug lines")


def _one_line_warning(message, category, filename, lineno, file=None, line=None):
    # through the log, so a run's train.log holds the warnings its console showed (stderr, one line)
    logger.warning(f"dtr: warning: {message}")


def _quiet_stdout() -> None:
    """stdout's reader went away (``dtr plugins | head``): send the rest to /dev/null, no traceback."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except BrokenPipeError:  # --help / --version into a closed pipe
        _quiet_stdout()
        return 141
    level = logging.WARNING if args.quiet else logging.DEBUG if args.verbose else logging.INFO
    with console_logging(level), warnings.catch_warnings():
        if not args.debug:
            warnings.showwarning = _one_line_warning
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    try:
        result = int(args.func(args) or 0)
        sys.stdout.flush()
        return result
    except UserError as exc:
        if args.debug:
            raise
        print(f"dtr: error: {user_message(exc)}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        _quiet_stdout()
        return 141  # 128 + SIGPIPE, like a command killed by the closed pipe
    except OSError as exc:
        line = os_error_line(exc)
        if args.debug or line is None:
            raise
        print(f"dtr: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dtr: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
