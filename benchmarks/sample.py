"""Sampling benchmark: DDIM-50 images/s with and without classifier-free guidance, variants interleaved.

Each measurement is one full ``GaussianDiffusion.sample`` call (``sampler="ddim"``, ``respacing="ddim50"``,
``cfg_scale`` 1 = no guidance; otherwise the conditional and unconditional halves run as one doubled batch)
for ``--num-images`` images, under ``torch.no_grad`` and the chosen autocast. Variants share one set of weights
(see ``train_step.py``): by default every registered strategy and, on ``dit``, ``pub_dtr``, the published-style
routed model, which re-selects its masks through a module walk at each of the 50 model calls.

    python benchmarks/sample.py --backbone dit --size S/2 --num-images 8 --out-dir DIR
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common
import _published as pb
from _common import fmt_pct


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbone", default="dit", help="a registered backbone plugin")
    ap.add_argument("--size", default=None, help="size label from models.yaml (default: the backbone's first)")
    ap.add_argument("--params", action="append", default=[], metavar="KEY=VALUE",
                    help="override a backbone parameter (YAML value); repeatable")
    ap.add_argument("--num-images", type=int, default=8, help="images per sampling call (the batch)")
    ap.add_argument("--variants", default=None,
                    help="comma list of registered strategies and pub_dtr / pub_vanilla (dit only); default: every "
                         "registered strategy, then pub_dtr on dit")
    ap.add_argument("--cfg-scales", default="1.0,4.0", help="1.0 = no guidance")
    ap.add_argument("--respacing", default="ddim50")
    ap.add_argument("--reps", type=int, default=3, help="timed interleaved rounds")
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    ap.add_argument("--compile", action="store_true", help="torch.compile our variants (published stays eager)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", default=None)
    ap.add_argument("--tag", default=None)
    ap.add_argument("--smoke", action="store_true", help="tiny model, 5 DDIM steps, 1 round")
    ap.add_argument("--add-metrics", nargs="+", metavar="JSON", help="only recompute the metrics of result files")
    args = ap.parse_args(argv)
    if args.add_metrics:
        return common.add_metrics(args.add_metrics, metrics_from_payload)
    if args.smoke:
        args.size, args.num_images, args.respacing, args.reps, args.warmup = "tiny", 2, "ddim5", 1, 1
    common.quiet_plugin_warnings()
    device = common.pick_device(args.device)
    common.setup_backends(device, args.threads)

    import dtr_plugins as dp

    backbone = common.plugin_names("backbone", args.backbone)[0]
    bm = common.build_bench_model(backbone, common.size_for(backbone, args.size), args.params, seed=args.seed)
    bm.base.to(device).eval()
    strategies = sorted(common.plugin_names("strategy"), key=lambda n: n != "vanilla")
    names = ([v.strip() for v in args.variants.split(",") if v.strip()] if args.variants
             else [*strategies, *(["pub_dtr"] if backbone == "dit" else [])])
    models = {}
    for name in names:
        if name in ("pub_dtr", "pub_vanilla"):
            if backbone != "dit":
                raise SystemExit(f"variant {name}: the published-style baseline is a DiT (backbone dit)")
            tables = None if name == "pub_vanilla" else pb.published_tables(
                dp.build_strategy("dtr"), bm.num_tasks, bm.base.hidden_size, bm.base.depth)
            m = pb.PublishedStyleDiT(bm.base, tables).to(device).eval()
        elif name in strategies:
            m = common.routed_view(bm, name, device).eval()
            if args.compile:
                m = torch.compile(m)
        else:
            raise SystemExit(f"variant {name!r}: unknown (registered strategies: {', '.join(strategies)}; pub_dtr)")
        models[name] = m
    diffusion = common.build_diffusion(bm)
    g = torch.Generator().manual_seed(args.seed)
    shape = (args.num_images, *bm.shape)
    noise = torch.randn(shape, generator=g).to(device)
    kwargs = common.model_kwargs(bm, args.num_images, device, g)
    scales = [float(s) for s in args.cfg_scales.split(",")]
    cells = [(name, s) for s in scales for name in models]
    times = {cell: [] for cell in cells}
    print(f"[sample] {bm.desc}: {len(cells)} cells x ({args.warmup} warm-up + {args.reps} timed) rounds, "
          f"{args.respacing}, {args.num_images} images", file=sys.stderr, flush=True)
    interrupted = False
    try:
        for r in range(args.warmup + args.reps):
            order = cells[r % len(cells):] + cells[:r % len(cells)]
            for name, scale in order:
                with common.Timer(device) as timer, common.autocast(args.precision, device):
                    diffusion.sample(models[name], shape, sampler="ddim", respacing=args.respacing, noise=noise,
                                     model_kwargs=kwargs, cfg_scale=scale, progress=False)
                if r >= args.warmup:
                    times[(name, scale)].append(timer.seconds)
    except KeyboardInterrupt:  # a time limit (gpu.sh sends SIGINT): report what was measured
        interrupted = True
        print("interrupted: reporting the calls measured so far", file=sys.stderr, flush=True)

    payload_rows = []
    for name, scale in cells:
        ts = times[(name, scale)]
        if not ts:
            continue
        s = common.summary(ts)
        ref = times.get(("vanilla", scale)) if name != "vanilla" else None
        n = min(len(ts), len(ref)) if ref else 0
        payload_rows.append({"variant": name, "cfg_scale": scale, "seconds": s, "times_s": ts,
                             "images_per_s": args.num_images / s["median"],
                             "overhead_vs_vanilla": common.paired_overhead(ts[:n], ref[:n]) if n else None})
    payload = {"script": "sample", "machine": common.machine_info(device), "args": vars(args), "config": bm.desc,
               "cells": [[name, scale] for name, scale in cells], "interrupted": interrupted, "results": payload_rows}
    common.write_outputs(args.out_dir, "sample" + (f"_{args.tag}" if args.tag else ""), render(payload), payload,
                         metrics_from_payload(payload))


def _planned_cells(payload: dict) -> list[tuple[str, float]]:
    """The (variant, cfg scale) cells the run planned; files before 2026-12 did not record them: from
    ``--variants`` x ``--cfg-scales`` when given, else only the measured ones."""
    if payload.get("cells"):
        return [(str(n), float(s)) for n, s in payload["cells"]]
    args = payload["args"]
    if args.get("variants"):
        return [(n.strip(), float(s)) for s in str(args["cfg_scales"]).split(",")
                for n in str(args["variants"]).split(",") if n.strip()]
    return [(r["variant"], float(r["cfg_scale"])) for r in payload["results"]]


def render(payload: dict) -> str:
    """The Markdown of a sample result, from its JSON alone (``scripts/figures.py`` rebuilds docs with it)."""
    args, cfg = payload["args"], payload.get("config") or {}
    done = {(r["variant"], float(r["cfg_scale"])): r for r in payload["results"]}
    rows = []
    for name, scale in _planned_cells(payload):
        r = done.get((name, scale))
        if r is None:
            rows.append([name, f"{scale:g}", "not measured (time limit)", "", ""])
            continue
        o = r.get("overhead_vs_vanilla")
        rows.append([name, f"{scale:g}" + (" (no guidance)" if scale == 1 else ""), f"{r['seconds']['median']:.3f}",
                     f"{r['images_per_s']:.2f}", "(reference)" if name == "vanilla" else
                     fmt_pct(o["ratio_of_medians"]) if o else "n/a"])
    interrupted = payload.get("interrupted", len(done) < len(rows))
    size = cfg.get("size") or cfg.get("model")
    label = f"{cfg.get('backbone', '?')} {size}" if size else f"{cfg.get('backbone', '?')} (plugin defaults)"
    shape = ("x".join(map(str, cfg["input_shape"])) if cfg.get("input_shape")
             else f"{cfg.get('input_size')}x{cfg.get('input_size')} (channels not recorded)")
    md = "\n".join(common.header_lines(payload["machine"])) + (
        f"\n\n### Sampling: {label}, {shape}, {args['respacing']}, {args['num_images']} images per call, "
        f"{args['precision']}{', compiled (ours)' if args.get('compile') else ''}\n\n"
        + common.markdown_table(["variant", "cfg scale", "median s per call", "images/s", "time vs vanilla"], rows))
    md += (f"\n\n{args['reps']} timed rounds after {args['warmup']} warm-up"
           + (" (**interrupted by a time limit**: fewer calls measured)" if interrupted else "") + "; time vs "
           "vanilla is the ratio of medians (with few rounds on a shared machine, within noise).")
    return md


def metrics_from_payload(payload: dict) -> dict[str, float]:
    """Flat metrics (``<backbone>.<variant>.cfg<scale>.images_per_s`` and ``.overhead``) for check_targets.py."""
    backbone = (payload.get("config") or {}).get("backbone", "dit")
    m = {}
    for r in payload["results"]:
        k = f"{backbone}.{r['variant']}.cfg{r['cfg_scale']:g}"
        m[f"{k}.images_per_s"] = r["images_per_s"]
        if r.get("overhead_vs_vanilla"):
            m[f"{k}.overhead"] = r["overhead_vs_vanilla"]["ratio_of_medians"]
    return m


if __name__ == "__main__":
    main()
