"""Routing sites benchmark: DTR on attention heads / MLP hidden units (sliced) vs vanilla vs DTR on the input.

One process, one set of DiT weights, one routing plan per variant swapped in before each timed call,
variants interleaved round by round (the order rotates), ratios against vanilla from the same rounds.

Sampling: DDIM images/s for a ``--respacing`` schedule (default ddim50). On a slow CPU a call times
``--steps-per-call`` of its steps (the rounds start at steps spread over the schedule, so they cover every
timestep window); images/s is then ``num_images / (seconds per step * schedule length)``. With
``--steps-per-call`` equal to the schedule length a call is a whole sampling run. Times are wall-clock
on a GPU and the process's CPU time on the CPU (one torch thread: robust to other processes sharing
the cores); ratios are against vanilla.

Training: one optimizer step (AdamW, forward + backward) on a batch of mixed timesteps, where the unit
sites run the masked dense path.

Variants (``--variants``): ``vanilla``, ``<site>@<beta>`` (DTR, alpha 4, at that site), and
``<site>-masked@<beta>`` (the same plan without sliced execution: what the heads/MLP site costs without
it). ``--profile`` adds per-op profiles of one model call of vanilla and of the sliced heads_mlp variant.

    OMP_NUM_THREADS=1 python benchmarks/routing_sites.py --threads 1            # CPU, DiT-S/2, 32x32, batch 8
    python benchmarks/routing_sites.py --device cuda --steps-per-call 50 --reps 5 --train-reps 20
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

import dtr_plugins as dp
from dtr_plugins.backbones.dit import DiT
from dtr_plugins.core.diffusion import GaussianDiffusion, get_named_beta_schedule
from dtr_plugins.core.routing import RoutingPlan

NUM_TASKS = 1000


def timed(device: torch.device, fn) -> float:
    """Seconds of ``fn()``: wall-clock on a GPU (synchronised before and after); on the CPU the process's
    CPU time (``time.process_time``), which on a shared machine leaves out the time other processes hold
    the cores (run with one torch thread so that CPU time is the work of the call)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize(device)
        return time.perf_counter() - start
    start = time.process_time()
    fn()
    return time.process_time() - start


def parse_variant(spec: str) -> tuple[str, str | None, float, bool]:
    """``vanilla`` | ``site@beta`` | ``site-masked@beta`` -> (label, site, beta, sliced)."""
    if spec == "vanilla":
        return spec, None, 1.0, True
    site, _, beta = spec.partition("@")
    masked = site.endswith("-masked")
    return spec, site.removesuffix("-masked"), float(beta), not masked


def make_plans(model: DiT, specs: list[str], device: torch.device) -> dict[str, RoutingPlan]:
    plans = {}
    for spec in specs:
        label, site, beta, sliced = parse_variant(spec)
        if site is None:
            strategy, site = dp.build_strategy("vanilla"), "input"
        else:
            strategy = dp.build_strategy("dtr", {"alpha": 4.0, "beta": beta})
        plans[label] = RoutingPlan(strategy, model.routed_channels(site), NUM_TASKS, site=site,
                                   slice_shared=sliced).to(device)
    return plans


def block_flops_share(model: DiT, site: str | None, beta: float, tokens: int) -> float:
    """Share of a block's multiply-adds (linears + attention) left at ``site`` and ``beta`` (vs dense)."""
    mlp = model.blocks[0].mlp
    d, h, hidden, groups = model.hidden_size, model.num_heads, mlp.fc1.out_features, mlp.num_units
    attn_dense = 4 * d * d + 2 * tokens * d            # qkv + proj, QK^T + AV (per token)
    mlp_dense = 2 * d * hidden
    heads = int(beta * h) / h if site in ("heads", "heads_mlp") else 1.0
    units = int(beta * groups) / groups if site in ("mlp", "heads_mlp") else 1.0
    return (heads * attn_dense + units * mlp_dense) / (attn_dense + mlp_dense)


def summarize(times: dict[str, list[float]], reference: str = "vanilla") -> dict[str, dict[str, float]]:
    """Median seconds per variant and speed vs the reference: ratio of medians and the median paired ratio."""
    out = {}
    for label, ts in times.items():
        ref = times[reference]
        paired = [r / t for r, t in zip(ref, ts)]
        out[label] = {"median_s": statistics.median(ts),
                      "speed_vs_vanilla": statistics.median(ref) / statistics.median(ts),
                      "paired_speed_median": statistics.median(paired), "paired_min": min(paired),
                      "paired_max": max(paired), "n": len(ts)}
    return out


def run_sampling(model, plans, diffusion, args, device):
    process = diffusion.respaced(args.respacing)
    schedule = list(range(process.num_timesteps - 1, -1, -1))
    gen = torch.Generator().manual_seed(args.seed)
    shape = (args.num_images, model.in_channels, model.input_size, model.input_size)
    x0 = torch.randn(shape, generator=gen).to(device)
    y = {"y": torch.randint(0, model.num_classes, (args.num_images,), generator=gen).to(device)}
    labels = list(plans)
    times = {label: [] for label in labels}
    k = args.steps_per_call
    stride = max(k, len(schedule) // (args.warmup + args.reps))  # rounds spread over the whole schedule
    for r in range(args.warmup + args.reps):
        first = (r * stride) % len(schedule)
        steps = [schedule[(first + j) % len(schedule)] for j in range(k)]
        for label in labels[r % len(labels):] + labels[:r % len(labels)]:
            model.attach_routing(plans[label])

            def call(steps=steps):
                x = x0
                with torch.no_grad():
                    for i in steps:
                        t = torch.full((x.shape[0],), i, device=device, dtype=torch.long)
                        x = process.ddim_step(model, x, t, y)
            seconds = timed(device, call)
            if r >= args.warmup:
                times[label].append(seconds / k)   # seconds per DDIM step
        print(f"  sampling round {r + 1}/{args.warmup + args.reps} (steps {steps})", file=sys.stderr, flush=True)
    return times, len(schedule)


def run_training(model, plans, diffusion, args, device):
    labels = [label for label in plans if not label.endswith("-masked") and "-masked@" not in label]
    gen = torch.Generator().manual_seed(args.seed + 1)
    shape = (args.num_images, model.in_channels, model.input_size, model.input_size)
    x = torch.randn(shape, generator=gen).to(device)
    y = torch.randint(0, model.num_classes, (args.num_images,), generator=gen).to(device)
    t = torch.randint(0, NUM_TASKS, (args.num_images,), generator=gen).to(device)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    times = {label: [] for label in labels}
    for r in range(1 + args.train_reps):
        for label in labels[r % len(labels):] + labels[:r % len(labels)]:
            model.attach_routing(plans[label])

            def step():
                loss = diffusion.training_losses(model, x, t, {"y": y})["loss"].mean()
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
            seconds = timed(device, step)
            if r >= 1:
                times[label].append(seconds)
        print(f"  training round {r + 1}/{1 + args.train_reps}", file=sys.stderr, flush=True)
    model.eval()
    return times


def profile_components(model, plans, args, device, label: str, repeats: int = 5) -> list[dict[str, float]]:
    """Best-of-``repeats`` seconds of block 0's attention and MLP, all units vs the active units of ``label``
    at t=700 (sliced), with the multiply-add ratio each should reach."""
    from dtr_plugins.core.routing import ActiveUnits

    plan = plans[label]
    routes = plan.active_units(700, device)
    per_block = len(routes) // model.depth
    heads = routes[0] if plan.site in ("heads", "heads_mlp") else None
    mlp = routes[per_block - 1] if plan.site in ("mlp", "heads_mlp") else None
    tokens = (args.input_size // model.patch_size) ** 2
    x = torch.randn(args.num_images, tokens, model.hidden_size, device=device)
    block = model.blocks[0]
    d, h, hidden = model.hidden_size, model.num_heads, block.mlp.num_units
    rows = []
    for part, module, route, total, macs in (
            ("attention", block.attn, heads, h, lambda k: (4 * d * d * k / h + 2 * tokens * d * k / h)),
            ("mlp", block.mlp, mlp, hidden, lambda k: 2 * d * k * block.mlp.unit_width)):
        if not isinstance(route, ActiveUnits):
            continue
        best = {}
        with torch.no_grad():
            for name, arg in (("dense", None), ("sliced", route)):
                module(x, arg)
                best[name] = min(timed(device, lambda module=module, arg=arg: module(x, arg)) for _ in range(repeats))
        rows.append({"part": part, "units": f"{route.count}/{total}", "dense_ms": 1e3 * best["dense"],
                     "sliced_ms": 1e3 * best["sliced"], "time_ratio": best["sliced"] / best["dense"],
                     "mac_ratio": macs(route.count) / macs(total)})
    return rows


def profile_ops(model, plans, args, device, labels) -> dict[str, list[tuple[str, float, int]]]:
    """Self time (ms) of the top ops in one model call with a shared timestep, per variant."""
    from torch.profiler import ProfilerActivity, profile

    x = torch.randn(args.num_images, model.in_channels, model.input_size, model.input_size, device=device)
    t = torch.full((args.num_images,), 700, device=device, dtype=torch.long)
    y = torch.zeros(args.num_images, dtype=torch.long, device=device)
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    out = {}
    for label in labels:
        model.attach_routing(plans[label])
        with torch.no_grad():
            model(x, t, y)
            with profile(activities=activities) as prof:
                model(x, t, y)
        key = "self_device_time_total" if device.type == "cuda" else "self_cpu_time_total"
        events = sorted(prof.key_averages(), key=lambda e: getattr(e, key), reverse=True)[:8]
        out[label] = [(e.key, getattr(e, key) / 1000.0, e.count) for e in events]
    return out


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="S/2", help="DiT size preset")
    ap.add_argument("--input-size", type=int, default=32, help="latent side")
    ap.add_argument("--num-images", type=int, default=8, help="batch per sampling call and per training step")
    ap.add_argument("--variants",
                    default="vanilla,input@0.8,heads_mlp@0.8,heads_mlp-masked@0.8,input@0.5,heads_mlp@0.5")
    ap.add_argument("--respacing", default="ddim50")
    ap.add_argument("--steps-per-call", type=int, default=2, help="DDIM steps per timed call (schedule length: all)")
    ap.add_argument("--reps", type=int, default=5, help="timed sampling rounds")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--train-reps", type=int, default=3, help="timed training rounds (0: skip training)")
    ap.add_argument("--profile", action="store_true", help="per-op profile of vanilla and heads_mlp@0.8")
    ap.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args(argv)
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    model = DiT(size=args.size, input_size=args.input_size).to(device).eval()
    with torch.no_grad():  # random weights everywhere: DiT's init zeroes adaLN, a trained model does not
        for p in model.parameters():
            p.normal_(0, 0.02)
    specs = [s.strip() for s in args.variants.split(",") if s.strip()]
    if "vanilla" not in specs:
        specs.insert(0, "vanilla")
    plans = make_plans(model, specs, device)
    diffusion = GaussianDiffusion(get_named_beta_schedule("linear", NUM_TASKS), learn_sigma=True)
    tokens = (args.input_size // model.patch_size) ** 2
    clock = "wall-clock" if device.type == "cuda" else "process CPU time"
    threads = '' if device.type == 'cuda' else f', {torch.get_num_threads()} thread(s)'
    where = (f"DiT-{args.size}, {args.input_size}x{args.input_size}x4 latent ({tokens} tokens), "
             f"batch {args.num_images}, {device}{threads}, torch {torch.__version__}, "
             f"{platform.processor() or platform.machine()}, {clock}")
    print(f"[routing_sites] {where}", file=sys.stderr, flush=True)

    sample_times, schedule_len = run_sampling(model, plans, diffusion, args, device)
    sampling = summarize(sample_times)
    shares = {label: block_flops_share(model, parse_variant(label)[1] if parse_variant(label)[1] != "input" else None,
                                       parse_variant(label)[2], tokens) for label in plans}
    result = {"script": "routing_sites", "setup": where, "args": vars(args), "schedule_len": schedule_len,
              "block_macs_share": shares, "sampling": sampling, "sampling_times_s_per_step": sample_times}
    if args.train_reps:
        train_times = run_training(model, plans, diffusion, args, device)
        result.update(training=summarize(train_times), training_times_s=train_times)
    if args.profile:
        wanted = [label for label in ("vanilla", "heads_mlp@0.8") if label in plans]
        if "heads_mlp@0.8" in plans:
            result["components"] = profile_components(model, plans, args, device, "heads_mlp@0.8")
        result["profile"] = profile_ops(model, plans, args, device, wanted)
    print(render(result))
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2))


def render(payload: dict) -> str:
    """The Markdown of a routing_sites result, from its JSON alone (``scripts/figures.py`` rebuilds docs with
    it). Files before 2026-12 did not record the block MACs share nor the schedule length: the share reads
    "not recorded", the length comes from a ``ddimN`` respacing."""
    args, where, sampling = payload["args"], payload["setup"], payload["sampling"]
    schedule_len = payload.get("schedule_len")
    if schedule_len is None and str(args["respacing"]).startswith("ddim"):
        schedule_len = int(str(args["respacing"])[4:])
    shares = payload.get("block_macs_share") or {}
    lines = [f"### Sampling, {args['respacing']} ({where})", "",
             f"{args['reps']} interleaved rounds after {args['warmup']} warm-up; each call {args['steps_per_call']} "
             f"DDIM steps of the {schedule_len}-step schedule (starts spread over it); images/s = batch / "
             f"(median s per step x {schedule_len}).", "",
             "| variant | block MACs vs dense | median s / step | images/s | speed vs vanilla (ratio of medians) "
             "| paired ratio median [min, max] |", "|---|---|---|---|---|---|"]
    for label, s in sampling.items():
        share = f"{shares[label]:.3f}" if label in shares else "not recorded"
        per_step = args["num_images"] / (s["median_s"] * schedule_len)
        lines.append(f"| {label} | {share} | {s['median_s']:.3f} | {per_step:.3f} "
                     f"| {s['speed_vs_vanilla']:.3f}x | {s['paired_speed_median']:.3f}x "
                     f"[{s['paired_min']:.3f}, {s['paired_max']:.3f}] |")
    if payload.get("training"):
        lines += ["", f"### Training step, mixed timesteps ({where})", "",
                  f"{args['train_reps']} interleaved rounds after 1 warm-up; AdamW, forward + backward.", "",
                  "| variant | median s / step | speed vs vanilla | paired ratio median [min, max] |",
                  "|---|---|---|---|"]
        for label, s in payload["training"].items():
            lines.append(f"| {label} | {s['median_s']:.3f} | {s['speed_vs_vanilla']:.3f}x | "
                         f"{s['paired_speed_median']:.3f}x [{s['paired_min']:.3f}, {s['paired_max']:.3f}] |")
    if payload.get("components"):
        lines += ["", "### Profile: block 0, all units vs heads_mlp@0.8 at t=700 (best of 5)", "",
                  "| part | active units | dense ms | sliced ms | time ratio | multiply-add ratio |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {r['part']} | {r['units']} | {r['dense_ms']:.1f} | {r['sliced_ms']:.1f} | "
                  f"{r['time_ratio']:.3f} | {r['mac_ratio']:.3f} |" for r in payload["components"]]
    if payload.get("profile"):
        lines += ["", "### Profile: one model call at t=700 (self time, top ops; wall-clock)", ""]
        for label, rows in payload["profile"].items():
            lines += [f"{label}:", "", "| op | ms | calls |", "|---|---|---|"]
            lines += [f"| {name} | {ms:.1f} | {count} |" for name, ms, count in rows] + [""]
    return "\n".join(lines).rstrip("\n")

if __name__ == "__main__":
    main()
