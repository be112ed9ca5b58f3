"""Routing cost at the component level, where a shared machine's noise does not hide it.

A whole training step carries a ~1% routing cost under several % of noise on a shared CPU. This benchmark
isolates what routing adds, at the real activation shape (default DiT-S/2, batch 8, 32x32 latents:
``[8, 256, 384]``), on the same block weights, forward + backward:

1. **blocks**: ``ours plain`` (our block without a mask, what vanilla routing runs), ``ours routed``
   (``x + F(m * x)``), ``official`` (the official DiT block), ``published routed`` (the published-style block,
   including its router's per-block mask re-selection, ``_published.py``). Rounds run the four in
   A B C D D C B A order (rotating the start), and each round's time per block is the mean of its two runs, which
   cancels a linear drift of the machine's speed within the round.
2. **added ops alone**: the elementwise ops each routing adds to its own plain block, at the same shape, with
   autograd: ours ``u = x * m`` (backward ``g * m``); published ``u = x * m``, ``x * (1 - m) + r`` (backward
   ``g * m``, ``g * (1 - m)`` and one more gradient accumulation for ``x``). Cheap, so many rounds.
3. **mask selection per model forward**: our one gather per distinct table against the published global +
   module walk (``model.apply``) that makes every router re-select its float mask.

The per-step routing time of the whole model is then estimated as ``depth x added ops + one selection``.

    python benchmarks/routing_overhead.py --size S/2 --batch 8 --reps 30 --threads 1 --out-dir DIR

The block-level comparison is DiT's (the published-style baseline is a DiT); ``--size`` picks a DiT size from
``models.yaml``.
"""
from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common
import _published as pb
from _common import fmt_pct


def metrics_from_payload(payload: dict) -> dict[str, float]:
    """Flat metrics for ``check_targets.py``: the estimated routing time per step (fractions of the plain
    blocks, and published-style / ours) and the block-level overheads."""
    est = payload["estimated_routing_s_per_step"]
    m = {"ours_fraction": est["ours_fraction"], "published_fraction": est["published_fraction"],
         "published_over_ours": est["ratio"], "ours_routing_ms_per_step": 1e3 * est["ours"],
         "published_routing_ms_per_step": 1e3 * est["published"]}
    for name, o in payload["overhead"].items():
        for stat in ("ratio_of_medians", "paired_median", "ci95_low", "ci95_high"):
            m[f"block_overhead.{name}.{stat}"] = o[stat]
    return m


def ci(o: dict) -> str:
    return f"{fmt_pct(o['paired_median'])} [{fmt_pct(o['ci95_low'])}, {fmt_pct(o['ci95_high'])}]"


def render(payload: dict) -> str:
    """The Markdown of a routing_overhead result, from its JSON alone (``scripts/figures.py`` rebuilds docs with
    it). Files written before 2026-12 lack ``shape``: the depth is then recovered from the stored estimate (the
    plain blocks' time over one block's median), the activation shape is said to be unrecorded."""
    args, bt, ot, st = payload["args"], payload["block_times_s"], payload["op_times_s"], payload["selection_times_s"]
    over, est = payload["overhead"], payload["estimated_routing_s_per_step"]
    shape = payload.get("shape")
    depth = shape["depth"] if shape else round(est["ours"] / est["ours_fraction"] / statistics.median(bt["ours plain"]))
    act = f"[{shape['batch']}, {shape['tokens']}, {shape['width']}] activations" if shape else (
        f"batch {args['batch']} (activation shape not recorded in this file)")
    refs = {"ours routed": over["ours"], "published routed": over["published"]}
    rows = []
    for name, ts in bt.items():
        s = common.summary(ts)
        o = refs.get(name)
        rows.append([name, f"{1e3 * s['median']:.2f}", f"{1e3 * s['p25']:.2f}-{1e3 * s['p75']:.2f}",
                     "(reference)" if o is None else fmt_pct(o["ratio_of_medians"]), "" if o is None else ci(o)])
    op_rows = [[k, f"{1e3 * statistics.median(v):.3f}", f"{1e3 * common.quantile(v, .25):.3f}-"
                f"{1e3 * common.quantile(v, .75):.3f}"] for k, v in ot.items()]
    sel_rows = [[k, f"{1e6 * statistics.median(v):.1f}"] for k, v in st.items()]
    o_cmp, o_plain = over["ours_vs_published"], over["ours_plain_vs_official"]
    md = "\n".join(common.header_lines(payload["machine"]))
    md += (f"\n\n### Routing cost, DiT-{args.get('size') or args.get('model')} block, {act}, "
           f"{args['precision']}, forward + backward ({args['reps']} ABBA rounds)\n\n") + common.markdown_table(
        ["block", "median (ms)", "p25-p75 (ms)", "overhead vs own plain block", "paired [95% CI]"], rows)
    md += (f"\n\n- our routed block vs published-style routed block: {fmt_pct(o_cmp['ratio_of_medians'])} "
           f"(paired {ci(o_cmp)})\n- our plain block vs official block: {fmt_pct(o_plain['ratio_of_medians'])} "
           f"(paired {ci(o_plain)})")
    md += (f"\n\nThe ops each routing adds, alone (forward + backward, same shape, median of {args['op_reps']} "
           f"rounds):\n\n" + common.markdown_table(["added ops", "median (ms)", "p25-p75 (ms)"], op_rows))
    md += (f"\n\nMask selection per model forward ({depth} routed blocks, median of {args['select_reps']} "
           f"rounds):\n\n" + common.markdown_table(["mechanism", "microseconds"], sel_rows))
    md += (f"\n\nRouting time per training step of the whole model ({depth} x added ops + one selection; an "
           f"estimate from parts timed apart, not a measurement): ours {1e3 * est['ours']:.2f} ms = "
           f"{fmt_pct(est['ours_fraction'])} of its {depth} plain blocks; published-style "
           f"{1e3 * est['published']:.2f} ms = {fmt_pct(est['published_fraction'])} of the {depth} official "
           f"blocks; published / ours = **{est['ratio']:.2f}x**")
    return md


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="S/2", help="DiT size label from models.yaml")
    ap.add_argument("--params", action="append", default=[], metavar="KEY=VALUE",
                    help="override a DiT parameter (YAML value), e.g. input_size=16; repeatable")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    ap.add_argument("--reps", type=int, default=30, help="timed rounds of the block variants")
    ap.add_argument("--op-reps", type=int, default=300, help="timed rounds of the added ops")
    ap.add_argument("--select-reps", type=int, default=300, help="timed rounds of the mask selection")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out-dir", default=None)
    ap.add_argument("--tag", default=None)
    ap.add_argument("--smoke", action="store_true", help="tiny DiT, a few rounds: proves the script runs")
    ap.add_argument("--add-metrics", nargs="+", metavar="JSON", help="only recompute the metrics of result files")
    args = ap.parse_args(argv)
    if args.add_metrics:
        return common.add_metrics(args.add_metrics, metrics_from_payload)
    if args.smoke:
        args.size, args.batch, args.reps, args.op_reps, args.select_reps, args.warmup = "tiny", 2, 2, 5, 5, 1
    common.quiet_plugin_warnings()
    device = common.pick_device(args.device)
    common.setup_backends(device, args.threads)

    import dtr_plugins as dp

    bm = common.build_bench_model("dit", args.size, args.params)
    bm.base.to(device)
    model = common.routed_view(bm, "dtr", device)
    plan = model.plan
    T, D, depth = bm.num_tasks, model.hidden_size, model.depth
    tokens = (bm.shape[1] // model.patch_size) ** 2
    pub_model = pb.PublishedStyleDiT(model, pb.published_tables(dp.build_strategy("dtr"), T, D, depth)).to(device)

    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(args.batch, tokens, D, generator=g).to(device)
    c = torch.randn(args.batch, D, generator=g).to(device)
    grad = torch.randn(args.batch, tokens, D, generator=g).to(device)
    t = torch.randint(0, T, (args.batch,), generator=g).to(device)
    mask = plan.gather(t, x0.dtype)[0].unsqueeze(1)  # what every block receives once the forward gathered rows

    block = model.blocks[0]
    official = pb.PublishedStyleBlock(block, None)
    published = pub_model.blocks[0]
    ac = lambda: common.autocast(args.precision, device)  # noqa: E731

    def fwd_bwd(fn):
        def run():
            x = x0.detach().requires_grad_(True)
            with ac():
                out = fn(x)
            out.backward(grad.to(out.dtype))
        return run

    def published_fn(x):  # the router re-selects its mask on every forward (in the walk), then the block runs
        published.routing.set_active_task(t)
        return published(x, c)

    blocks = {"ours plain": fwd_bwd(lambda x: block(x, c, None)),
              "ours routed": fwd_bwd(lambda x: block(x, c, mask)),
              "official": fwd_bwd(lambda x: official(x, c)),
              "published routed": fwd_bwd(published_fn)}
    print(f"[routing_overhead] blocks: {len(blocks)} x {args.warmup + args.reps} ABBA rounds", file=sys.stderr,
          flush=True)
    bt = common.interleaved(blocks, args.reps, args.warmup, device)

    # the ops each routing adds to its own plain block, alone
    r0 = torch.randn(args.batch, tokens, D, generator=g).to(device)

    def ours_ops():
        x = x0.detach().requires_grad_(True)
        (x * mask).backward(grad)

    published.routing.set_active_task(t)
    pub_mask = published.routing.active_mask  # re-selection is timed with the walk below

    def published_ops():
        m = pub_mask
        x, r = x0.detach().requires_grad_(True), r0.detach().requires_grad_(True)
        u = x * m
        out = x * (1 - m) + r
        torch.autograd.backward([u, out], [grad, grad])

    print(f"[routing_overhead] added ops: {args.warmup + args.op_reps} rounds", file=sys.stderr, flush=True)
    ot = common.interleaved({"ours: x * m": ours_ops, "published: x * m, x * (1 - m) + r":
                      published_ops}, args.op_reps, args.warmup, device)

    def ours_select():
        return model.layer_masks(t, x0.dtype)

    def published_select():
        pb._ACTIVE_TASK = t
        pub_model.apply(pb._change_task)

    with torch.no_grad():
        st = common.interleaved({"ours: one gather per distinct table": ours_select,
                          "published: global + model.apply walk (all routers re-select)": published_select},
                         args.select_reps, 10, device)

    # --- results (render() turns them into the tables)
    o_ours = common.paired_overhead(bt["ours routed"], bt["ours plain"])
    o_pub = common.paired_overhead(bt["published routed"], bt["official"])
    ours_op, pub_op = (statistics.median(v) for v in ot.values())
    ours_sel, pub_sel = (statistics.median(v) for v in st.values())
    plain_blocks = depth * statistics.median(bt["ours plain"])
    official_blocks = depth * statistics.median(bt["official"])
    est_ours = depth * ours_op + ours_sel
    est_pub = depth * pub_op + pub_sel
    payload = {"script": "routing_overhead", "machine": common.machine_info(device), "args": vars(args),
               "shape": {"batch": args.batch, "tokens": tokens, "width": D, "depth": depth},
               "block_times_s": bt, "op_times_s": ot, "selection_times_s": st,
               "overhead": {"ours": o_ours, "published": o_pub,
                            "ours_vs_published": common.paired_overhead(bt["ours routed"], bt["published routed"]),
                            "ours_plain_vs_official": common.paired_overhead(bt["ours plain"], bt["official"])},
               "estimated_routing_s_per_step": {"ours": est_ours, "published": est_pub, "ratio": est_pub / est_ours,
                                                "ours_fraction": est_ours / plain_blocks,
                                                "published_fraction": est_pub / official_blocks}}
    common.write_outputs(args.out_dir, "routing_overhead" + (f"_{args.tag}" if args.tag else ""), render(payload),
                         payload,
                         metrics_from_payload(payload))


if __name__ == "__main__":
    main()
