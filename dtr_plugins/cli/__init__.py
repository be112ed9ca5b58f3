"""The ``dtr`` command: parses arguments and dispatches to its handlers (:mod:`dtr_plugins.cli.commands`, which
call the public API); nothing else lives here.

Bad input (a :class:`UserError`) prints one line on stderr and exits with status 2; ``--debug`` prints the
traceback before that line (the exit status stays 2).
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import traceback
import warnings
from collections.abc import Callable, Sequence

from dtr_plugins._version import __version__
from dtr_plugins.cli.commands import (
    cmd_cache_latents,
    cmd_ema,
    cmd_eval,
    cmd_export,
    cmd_masks,
    cmd_plugins,
    cmd_push,
    cmd_report,
    cmd_runs,
    cmd_sample,
    cmd_suite,
    cmd_train,
    cmd_validate,
)
from dtr_plugins.core.errors import UserError, os_error_line, user_message
from dtr_plugins.core.log import console_logging
from dtr_plugins.core.metrics import selectable as metric_names
from dtr_plugins.core.seeds import SEED_MAX

logger = logging.getLogger("dtr_plugins.cli")


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # one line, exit 2 (argparse prints usage + message by default)
        self.exit(2, f"{self.prog}: error: {message} (see --help)\n")


def _integer(minimum: int, what: str, maximum: int | None = None) -> Callable[[str], int]:
    """An argparse type: an integer of at least ``minimum``; anything else is one line saying ``what`` it takes
    (``--num-samples 0``, ``--seed -1``)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {what}, got {text!r}") from None
        if value < minimum or (maximum is not None and value > maximum):
            raise argparse.ArgumentTypeError(f"expected {what}, got {value}")
        return value
    return parse


_positive_int = _integer(1, "a positive integer (1 or more)")
# numpy's and the sampler's generators take no negative seed, torch's none above a signed 64-bit integer
_seed = _integer(0, f"a seed (an integer from 0 to {SEED_MAX})", SEED_MAX)


def _unsafe_load_arg(p: argparse.ArgumentParser, help: str) -> None:
    p.add_argument("--allow-unsafe-load", action="store_true", help=help)


def _config_args(p: argparse.ArgumentParser, what: str = "run config (YAML)") -> None:
    p.add_argument("config", help=what)
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config value, e.g. --set routing.beta=0.7 (repeatable)")




def _threads_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--threads", type=int, default=None, help="CPU threads of this process (default: torch's)")


def _device_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default=None, help="cpu, cuda or cuda:N (default: cuda when present)")
    _threads_arg(p)


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
    _unsafe_load_arg(p, "read train.init_from even if it needs arbitrary unpickling (only for files you trust)")
    p.set_defaults(func=cmd_validate)

    p = sub.add_parser(parents=[common], name="masks",
                       help="draw the mask tables of a config, or the learned gates of a run, as heatmaps")
    _config_args(p, "run config (YAML), or a trained run: its directory or a checkpoint (.pt)")
    p.add_argument("--out", default="masks.png", help="image path; its suffix picks the format (default masks.png)")
    p.add_argument("--no-ema", action="store_true", help="with a run directory or checkpoint: the raw weights")
    _unsafe_load_arg(p, "with a checkpoint: allow a full pickle load (only for files you trust)")
    p.set_defaults(func=cmd_masks)

    p = sub.add_parser(parents=[common], name="train",
                       help="train a run (torchrun --nproc_per_node=N -m dtr_plugins train ... for DDP)")
    _config_args(p)
    p.add_argument("--resume", action="store_true", help="continue from the run's last checkpoint")
    p.add_argument("--run-dir", default=None, help="run directory (default: <output_dir>/<name>)")
    _threads_arg(p)
    _unsafe_load_arg(p, "allow checkpoints that need full unpickling (only for files you trust)")
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
    _unsafe_load_arg(p, "allow checkpoints that need full unpickling (only for files you trust)")
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
    _unsafe_load_arg(p, "allow checkpoints that need full unpickling (only for files you trust)")
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
        if args.debug:  # the traceback, then the same line and exit status as without --debug
            traceback.print_exc()
        print(f"dtr: error: {user_message(exc)}", file=sys.stderr)
        return exc.exit_code
    except BrokenPipeError:
        _quiet_stdout()
        return 141  # 128 + SIGPIPE, like a command killed by the closed pipe
    except OSError as exc:
        line = os_error_line(exc)
        if line is None:
            raise
        if args.debug:
            traceback.print_exc()
        print(f"dtr: error: {line}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("dtr: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
