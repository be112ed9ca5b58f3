"""Sampling benchmark: DDIM-50 images/s with and without classifier-free guidance, variants interleaved.

Each measurement is one full ``GaussianDiffusion.sample`` call (``sampler="ddim"``, ``respacing="ddim50"``,
``cfg_scale`` 1 = no guidance; otherwise the conditional and unconditional halves run as one doubled batch)
for ``--num-images`` images, under ``torch.no_grad`` and the chosen autocast. Variants share one set of weights
(see ``train_step.py``); ``pub_dtr`` is the published-style routed model, which re-selects its masks through a
module walk at each of the 50 model calls.

    python benchmarks/sample.py --model S/2 --input-size 32 --num-images 8 --out-dir bench-out
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
from common import fmt_pct


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="S/2", help="DiT size preset or 'tiny'")
    ap.add_argument("--input-size", type=int, default=32)
    ap.add_argument("--num-images", type=int, default=8, help="images per sampling call (the batch)")
    ap.add_argument("--variants", default="vanilla,dtr,pub_dtr")
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
    args = ap.parse_args(argv)
    if args.smoke:
        args.model, args.input_size, args.num_images, args.respacing = "tiny", 8, 2, "ddim5"
        args.reps, args.warmup = 1, 1
    common.quiet_plugin_warnings()
    device = common.pick_device(args.device)
    common.setup_backends(device, args.threads)

    from published_baseline import PublishedStyleDiT, published_tables
    from train_step import NUM_TASKS, build_base, shallow_view

    import dtr_plugins as dp
    from dtr_plugins.core.diffusion import GaussianDiffusion, get_named_beta_schedule
    from dtr_plugins.core.routing import RoutingPlan

    args.adm_preset, args.channels_last = None, False
    base, desc = build_base("dit", args)
    base.to(device).eval()
    models = {}
    for name in [v.strip() for v in args.variants.split(",") if v.strip()]:
        if name == "pub_dtr":
            m = PublishedStyleDiT(base, published_tables(dp.build_strategy("dtr"), NUM_TASKS, base.hidden_size,
                                                         base.depth)).to(device).eval()
        elif name == "pub_vanilla":
            m = PublishedStyleDiT(base, None).to(device).eval()
        else:
            m = shallow_view(base)
            m.attach_routing(RoutingPlan(dp.build_strategy(name), base.routed_channels(), NUM_TASKS).to(device))
            m.eval()
            if args.compile:
                m = torch.compile(m)
        models[name] = m
    diffusion = GaussianDiffusion(get_named_beta_schedule("linear", NUM_TASKS), learn_sigma=True)
    g = torch.Generator().manual_seed(args.seed)
    shape = (args.num_images, 4, args.input_size, args.input_size)
    noise = torch.randn(shape, generator=g).to(device)
    y = torch.randint(0, 1000, (args.num_images,), generator=g).to(device)
    scales = [float(s) for s in args.cfg_scales.split(",")]
    cells = [(name, s) for s in scales for name in models]
    times = {cell: [] for cell in cells}
    print(f"[sample] {desc}: {len(cells)} cells x ({args.warmup} warm-up + {args.reps} timed) rounds, "
          f"{args.respacing}, {args.num_images} images", file=sys.stderr, flush=True)
    interrupted = False
    try:
        for r in range(args.warmup + args.reps):
            order = cells[r % len(cells):] + cells[:r % len(cells)]
            for name, scale in order:
                with common.Timer(device) as timer, common.autocast(args.precision, device):
                    diffusion.sample(models[name], shape, sampler="ddim", respacing=args.respacing, noise=noise,
                                     model_kwargs={"y": y}, cfg_scale=scale, progress=False)
                if r >= args.warmup:
                    times[(name, scale)].append(timer.seconds)
    except KeyboardInterrupt:  # a time limit (gpu.sh sends SIGINT): report what was measured
        interrupted = True
        print("interrupted: reporting the calls measured so far", file=sys.stderr, flush=True)

    rows, payload_rows = [], []
    for name, scale in cells:
        ts = times[(name, scale)]
        if not ts:
            rows.append([name, f"{scale:g}", "not measured (time limit)", "", ""])
            continue
        s = common.summary(ts)
        ref = times.get(("vanilla", scale)) if name != "vanilla" else None
        n = min(len(ts), len(ref)) if ref else 0
        o = common.paired_overhead(ts[:n], ref[:n]) if n else None
        rows.append([name, f"{scale:g}" + (" (no guidance)" if scale == 1 else ""), f"{s['median']:.3f}",
                     f"{args.num_images / s['median']:.2f}", "(reference)" if name == "vanilla" else
                     fmt_pct(o["ratio_of_medians"]) if o else "n/a"])
        payload_rows.append({"variant": name, "cfg_scale": scale, "seconds": s, "times_s": ts,
                             "images_per_s": args.num_images / s["median"], "overhead_vs_vanilla": o})
    info = common.machine_info(device)
    md = "\n".join(common.header_lines(info)) + (
        f"\n\n### Sampling: DiT-{args.model}, {args.input_size}x{args.input_size}x4, {args.respacing}, "
        f"{args.num_images} images per call, {args.precision}{', compiled (ours)' if args.compile else ''}\n\n"
        + common.markdown_table(["variant", "cfg scale", "median s per call", "images/s", "time vs vanilla"], rows))
    md += (f"\n\n{args.reps} timed rounds after {args.warmup} warm-up"
           + (" (**interrupted by a time limit**: fewer calls measured)" if interrupted else "") + "; time vs "
           "vanilla is the ratio of medians (with few rounds on a shared machine, within noise).")
    if args.model == "B/2" and device.type == "cuda" and args.respacing == "ddim50":
        for r in payload_rows:
            if r["variant"] == "dtr" and r["cfg_scale"] == 1.0:
                ok = r["images_per_s"] >= 100
                md += (f"\n\n- DDIM-50, DiT-B/2, no guidance, dtr: {r['images_per_s']:.1f} images/s; target >= 100 on "
                       f"one H100: {'holds' if ok else 'FAILS'}")
    common.write_outputs(args.out_dir, "sample" + (f"_{args.tag}" if args.tag else ""), md,
                         {"machine": info, "args": vars(args), "config": desc, "results": payload_rows})


if __name__ == "__main__":
    main()
