"""Timestep buckets benchmark: the training step of DTR on heads and MLP units with ``train.timestep_buckets``
(K = auto and fixed K) against vanilla, against the masked dense path (K = 0) and against DTR at the block
inputs (the published DTR's site, ``input@beta``), interleaved in one process.

A step is what ``dtr train`` runs per batch: forward, the diffusion loss, backward and an AdamW step, on a batch of
mixed timesteps (uniform over the 1000 tasks). Every round draws a new batch (images, labels, timesteps), runs
every variant on it in a rotating order, one routing plan swapped in per variant (one set of weights, one
optimizer). Speed is vanilla's step time / the variant's in the same round (above 1: faster); the table gives
the median over rounds with a 95% bootstrap interval (``_common.paired_overhead``), also against the masked
path and against ``input@beta`` (both at the same beta), and for the bucketed variants the ``K`` applied and
the mean union width (share of the routed units the buckets ran; core/buckets.py). Speeds use the process
CPU time of each step on the CPU (on cores shared with other processes it leaves out the time they hold the
cores; with 2 threads it is the work of both, so it does not show how well a variant uses the second core) and
wall-clock on a GPU (``_common.Timer``); the JSON keeps both clocks of every step.

CPU default: DiT-S/2 and DiT-B/2 on 16x16x4 latents (64 tokens, a quarter of the 256 tokens of 256px images, so
a run fits minutes on two cores), batch 16, beta 0.8 and 0.5 (alpha 4), K in auto, 2, 4. One process per thread
count, with ``OMP_NUM_THREADS`` equal to ``--threads``; each writes ``train_buckets_t<N>.json`` / ``.md`` and
rewrites them after every model, so ``--resume`` skips the models already measured with the same settings:

    OMP_NUM_THREADS=1 python benchmarks/train_buckets.py --threads 1 --out-dir benchmarks/results-cpu
    OMP_NUM_THREADS=2 python benchmarks/train_buckets.py --threads 2 --out-dir benchmarks/results-cpu
    python benchmarks/train_buckets.py --quick                    # smoke run: tiny shape, one round, no file
    python benchmarks/train_buckets.py --device cuda --input-size 32 --batch 256 --rounds 10 --tag B2 --sizes B/2
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from _common import (
    Timer,
    header_lines,
    machine_info,
    markdown_table,
    paired_overhead,
    pick_device,
    setup_backends,
    write_outputs,
)

import dtr_plugins as dp
from dtr_plugins.backbones.dit import DiT
from dtr_plugins.core.buckets import enable_train_buckets
from dtr_plugins.core.diffusion import GaussianDiffusion, get_named_beta_schedule
from dtr_plugins.core.routing import RoutingPlan

NUM_TASKS = 1000
GOALS = {0.8: 1.15, 0.5: 1.5}  #: the issue's goals: speed vs vanilla at these betas (CPU)


def variant_names(betas: list[float], ks: list[str]) -> list[str]:
    """``vanilla``, then per beta ``input@beta`` (DTR at the block inputs, the published site), ``masked@beta``
    and ``K<k>@beta`` for each bucket setting (DTR at heads_mlp)."""
    names = ["vanilla"]
    for beta in betas:
        names += [f"input@{beta:g}", f"masked@{beta:g}", *[f"K{k}@{beta:g}" for k in ks]]
    return names


def make_plan(model: DiT, name: str, device: torch.device) -> RoutingPlan:
    """The routing plan of one variant (vanilla and ``input@beta`` at the input site; DTR alpha 4 at heads_mlp
    otherwise)."""
    if name == "vanilla":
        return RoutingPlan(dp.build_strategy("vanilla"), model.routed_channels(), NUM_TASKS).to(device)
    label, _, beta = name.partition("@")
    strategy = dp.build_strategy("dtr", {"alpha": 4.0, "beta": float(beta)})
    if label == "input":
        return RoutingPlan(strategy, model.routed_channels(), NUM_TASKS).to(device)
    plan = RoutingPlan(strategy, model.routed_channels("heads_mlp"), NUM_TASKS, site="heads_mlp").to(device)
    if label != "masked":
        setting = label[1:]
        assert enable_train_buckets(plan, setting if setting == "auto" else int(setting)) is None
    return plan


def measure(size: str, args: argparse.Namespace, device: torch.device) -> dict[str, Any]:
    """Interleaved rounds of every variant's training step on one model; times, speeds and bucket stats."""
    torch.manual_seed(args.seed)
    model = DiT(size=size, input_size=args.input_size).to(device).train()
    with torch.no_grad():  # random weights everywhere: DiT's init zeroes adaLN, a trained model does not
        for p in model.parameters():
            p.normal_(0, 0.02)
    names = variant_names(args.betas, args.ks)
    plans = {name: make_plan(model, name, device) for name in names}
    diffusion = GaussianDiffusion(get_named_beta_schedule("linear", NUM_TASKS), learn_sigma=True)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    gen = torch.Generator().manual_seed(args.seed + 1)
    wall: dict[str, list[float]] = {n: [] for n in names}
    cpu: dict[str, list[float]] = {n: [] for n in names}
    started = time.perf_counter()
    for r in range(args.warmup + args.rounds):
        if r > args.warmup and time.perf_counter() > args.deadline:
            print(f"  [{size}] --budget-s reached: {r - args.warmup} timed round(s)", file=sys.stderr, flush=True)
            break
        if r == args.warmup:  # bucket statistics of the timed rounds only
            for plan in plans.values():
                if plan.buckets is not None:
                    plan.buckets.stats = type(plan.buckets.stats)()
        x = torch.randn(args.batch, 4, args.input_size, args.input_size, generator=gen).to(device)
        t = torch.randint(0, NUM_TASKS, (args.batch,), generator=gen).to(device)
        y = torch.randint(0, 1000, (args.batch,), generator=gen).to(device)
        for name in names[r % len(names):] + names[:r % len(names)]:
            model.attach_routing(plans[name])
            c0 = time.process_time()
            with Timer(device) as timer:
                loss = diffusion.training_losses(model, x, t, {"y": y})["loss"].mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            if r >= args.warmup:
                wall[name].append(timer.seconds)
                cpu[name].append(time.process_time() - c0)
        print(f"  [{size}, {torch.get_num_threads()} thread(s)] round {r + 1}/{args.warmup + args.rounds} "
              f"({time.perf_counter() - started:.0f}s)", file=sys.stderr, flush=True)
    primary = wall if device.type == "cuda" else cpu
    return summarize(size, names, plans, {"primary": primary, "wall": wall, "cpu": cpu}, args)


def _speed(base: list[float], times: list[float]) -> dict[str, float]:
    """Speed of ``times`` against ``base`` (base / times per round): paired median, 95% bootstrap interval."""
    o = paired_overhead(base, times)  # base / times - 1 per round
    return {"paired_median": 1 + o["paired_median"], "ci95_low": 1 + o["ci95_low"],
            "ci95_high": 1 + o["ci95_high"], "ratio_of_medians": 1 + o["ratio_of_medians"]}


def summarize(size: str, names: list[str], plans: dict[str, RoutingPlan], clocks: dict[str, dict[str, list[float]]],
              args: argparse.Namespace) -> dict[str, Any]:
    """Speeds from ``clocks["primary"]`` (CPU time on the CPU, wall-clock on a GPU); both clocks kept."""
    times, wall = clocks["primary"], clocks["wall"]
    rows = {}
    for name in names:
        beta = name.partition("@")[2]
        masked = times.get(f"masked@{beta}") if beta else None
        published = times.get(f"input@{beta}") if beta else None
        row: dict[str, Any] = {"median_s": statistics.median(times[name]),
                               "speed_vs_vanilla": _speed(times["vanilla"], times[name]),
                               "wall_speed_vs_vanilla": _speed(wall["vanilla"], wall[name])}
        if masked is not None and not name.startswith("input@"):
            row["speed_vs_masked"] = _speed(masked, times[name])
        if published is not None and not name.startswith("input@"):
            row["speed_vs_input"] = _speed(published, times[name])
        buckets = plans[name].buckets
        if buckets is not None:
            row["buckets"] = buckets.stats.summary()
        rows[name] = row
    return {"size": size, "threads": torch.get_num_threads(), "input_size": args.input_size, "batch": args.batch,
            "tokens": (args.input_size // 2) ** 2, "rounds": len(wall["vanilla"]), "variants": rows,
            "clock": "wall-clock" if clocks["primary"] is wall else "process CPU time",
            "wall_s": wall, "cpu_s": clocks["cpu"]}


def _ci(s: dict[str, float]) -> str:
    return f"{s['paired_median']:.3f}x [{s['ci95_low']:.3f}, {s['ci95_high']:.3f}]"


def render(payload: dict[str, Any]) -> str:
    lines = ["# Training step with timestep buckets (`benchmarks/train_buckets.py`)", "",
             *header_lines(payload["machine"]), ""]
    for g in payload["groups"]:
        lines += [f"## DiT-{g['size']}, {g['input_size']}x{g['input_size']}x4 latents ({g['tokens']} tokens), batch "
                  f"{g['batch']}, {g['threads']} thread(s), {g['rounds']} interleaved rounds, {g['clock']}", ""]
        if "machine" in g:  # measured in its own sitting (--resume keeps each model's machine state)
            lines += [f"measured {g['machine'].get('date', '?')}, load average "
                      f"{(g['machine'].get('load_average') or ['?'])[0]}, commit {g['machine'].get('git_commit')}",
                      ""]
        table = []
        for name, v in g["variants"].items():
            b = v.get("buckets") or {}
            table.append([f"`{name}`", f"{v['median_s']:.3f}", f"{g['batch'] / v['median_s']:.2f}",
                          _ci(v["speed_vs_vanilla"]), _ci(v["speed_vs_masked"]) if "speed_vs_masked" in v else "-",
                          _ci(v["speed_vs_input"]) if "speed_vs_input" in v else "-",
                          f"{b['mean_k']:.2f}" if b.get("mean_k") is not None else "-",
                          f"{b['mean_union_width']:.3f}" if b.get("mean_union_width") is not None else "-"])
        lines += [markdown_table(["variant", "median s / step", "images/s (that clock)", "speed vs vanilla [95% CI]",
                                  "speed vs masked [95% CI]", "speed vs input site [95% CI]", "mean K",
                                  "union width"], table), ""]
        for beta, goal in GOALS.items():
            best = max(((n, v) for n, v in g["variants"].items() if n.startswith("K") and n.endswith(f"@{beta:g}")),
                       key=lambda nv: nv[1]["speed_vs_vanilla"]["paired_median"], default=None)
            if best is not None:
                s = best[1]["speed_vs_vanilla"]["paired_median"]
                lines.append(f"- beta {beta:g}: best bucketed variant `{best[0]}` {s:.3f}x vanilla; goal {goal}x "
                             f"({'met' if s >= goal else f'missed by {goal - s:.3f}x'})")
        lines.append("")
    return "\n".join(lines).rstrip("\n")


def metrics_of(payload: dict[str, Any]) -> dict[str, float]:
    out = {}
    for g in payload["groups"]:
        for name, v in g["variants"].items():
            key = f"{g['size']}.t{g['threads']}.{name}"
            out[f"{key}.speed_vs_vanilla"] = v["speed_vs_vanilla"]["paired_median"]
            if "speed_vs_masked" in v:
                out[f"{key}.speed_vs_masked"] = v["speed_vs_masked"]["paired_median"]
            if "speed_vs_input" in v:
                out[f"{key}.speed_vs_input"] = v["speed_vs_input"]["paired_median"]
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="S/2,B/2", help="DiT size presets (comma list)")
    ap.add_argument("--input-size", type=int, default=16, help="latent side (4 channels, patch 2)")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--betas", default="0.8,0.5")
    ap.add_argument("--ks", default="auto,2,4", help="train.timestep_buckets settings to time (comma list)")
    ap.add_argument("--rounds", type=int, default=3, help="timed interleaved rounds")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (set OMP_NUM_THREADS alike)")
    ap.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", default=None, help="write train_buckets_<tag>.json / .md here")
    ap.add_argument("--tag", default=None, help="file name tag (default: t<threads> on the CPU, gpu on CUDA)")
    ap.add_argument("--resume", action="store_true", help="keep the models already in the output file")
    ap.add_argument("--budget-s", type=float, default=None,
                    help="wall seconds for this process: no new round or model after it (at least one timed round "
                         "per model started; the table says how many rounds each model got)")
    ap.add_argument("--quick", action="store_true", help="smoke run: S/2 on 4x4 latents, batch 4, one round")
    args = ap.parse_args(argv)
    if args.quick:  # the shape and rounds of a smoke run (variants as given)
        args.sizes, args.input_size, args.batch, args.rounds, args.warmup = "S/2", 4, 4, 1, 0
    device = pick_device(args.device)
    args.deadline = time.perf_counter() + (args.budget_s if args.budget_s is not None else float("inf"))
    setup_backends(device, args.threads)
    args.betas = [float(b) for b in args.betas.split(",")]
    args.ks = [k.strip() for k in args.ks.split(",") if k.strip()]
    omp = os.environ.get("OMP_NUM_THREADS")
    if device.type == "cpu" and args.threads and omp != str(args.threads):
        print(f"[train_buckets] note: OMP_NUM_THREADS={omp} but --threads {args.threads}", file=sys.stderr)
    tag = args.tag or (f"t{torch.get_num_threads()}" if device.type == "cpu" else "gpu")
    stem = f"train_buckets_{tag}"
    settings = {k: getattr(args, k) for k in ("input_size", "batch", "betas", "ks", "rounds", "warmup", "seed")}
    groups: list[dict[str, Any]] = []
    old = Path(args.out_dir or "") / f"{stem}.json"
    if args.resume and args.out_dir and old.exists():
        previous = json.loads(old.read_text())
        if previous.get("settings") == settings:  # each kept model keeps the machine state it was measured in
            groups = [{"machine": previous["machine"], **g} for g in previous["groups"]]
    payload: dict[str, Any] = {"script": "train_buckets", "settings": settings, "machine": machine_info(device),
                               "groups": groups}
    for size in [s.strip() for s in args.sizes.split(",") if s.strip()]:
        if any(g["size"] == size for g in groups):
            print(f"[train_buckets] DiT-{size}: in {old}, kept (--resume)", file=sys.stderr)
            continue
        if time.perf_counter() > args.deadline:
            print(f"[train_buckets] DiT-{size}: not measured, --budget-s reached (rerun with --resume)",
                  file=sys.stderr)
            continue
        groups.append({"machine": machine_info(device), **measure(size, args, device)})
        write_outputs(args.out_dir, stem, render(payload), payload, metrics_of(payload))


if __name__ == "__main__":
    main()
