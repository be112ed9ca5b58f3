"""Memory and speed of large DiTs at a fixed global batch: gradient accumulation and activation checkpointing.

Each variant is one training step as ``dtr train`` runs it, through the engine's own code
(:func:`dtr_plugins.training.accumulate.forward_backward` and :mod:`dtr_plugins.core.compute`): ``k`` micro-batches
of ``batch / k`` images, optionally with every DiT block checkpointed, then one fused AdamW step (on CUDA). Variants
run one after the other (not interleaved), so each has its own peak memory: ``torch.cuda.max_memory_allocated``
over its timed steps, which includes the weights, their gradients and the AdamW state. A variant that runs out of
memory is reported as such and the others still run. Images/s = batch / median step time.

    python benchmarks/accumulation.py --device cuda --sizes L/2,XL/2 --batch 256 --variants k1,k2,k4,k1+ckpt,k2+ckpt
"""
from __future__ import annotations

import argparse
import re
import statistics
import sys
from functools import partial
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common
from _common import fmt_bytes

VARIANT = re.compile(r"k([0-9]+)(\+ckpt)?")


def parse_variants(text: str, batch: int) -> list[tuple[str, int, bool]]:
    """``k2+ckpt`` -> ``("k2+ckpt", 2, True)``; ``k`` must divide the batch."""
    out = []
    for spec in filter(None, (s.strip() for s in text.split(","))):
        m = VARIANT.fullmatch(spec)
        if not m or int(m.group(1)) < 1:
            raise SystemExit(f"--variants: {spec!r} is not kN or kN+ckpt (N >= 1)")
        k = int(m.group(1))
        if batch % k:
            raise SystemExit(f"--variants: {spec!r}: {k} micro-batches do not divide --batch {batch}")
        out.append((spec, k, bool(m.group(2))))
    return out


def run_variant(bm: common.BenchModel, model: torch.nn.Module, optimizer: torch.optim.Optimizer, diffusion: Any,
                k: int, ckpt: bool, args, device: torch.device) -> dict[str, Any]:
    from dtr_plugins.core.compute import apply_activation_checkpointing
    from dtr_plugins.core.plugins import default_registry
    from dtr_plugins.training.accumulate import forward_backward

    applied = apply_activation_checkpointing(model, ckpt, bm.name)
    weighting = default_registry().build("loss_weighting", "constant")
    gen = torch.Generator().manual_seed(args.seed)
    x0 = torch.randn((args.batch, *bm.shape), generator=gen).to(device)
    kwargs = common.model_kwargs(bm, args.batch, device, gen)
    times: list[float] = []
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    try:
        for step in range(args.warmup + args.steps):
            t = torch.randint(0, bm.num_tasks, (args.batch,), generator=gen).to(device)
            with common.Timer(device) as timer:
                optimizer.zero_grad(set_to_none=True)
                forward_backward(model, diffusion, weighting, x0, t, kwargs, k=k,
                                 autocast=lambda: common.autocast(args.precision, device),
                                 backward=lambda loss: loss.backward())
                optimizer.step()
            if step >= args.warmup:
                times.append(timer.seconds)
    except KeyboardInterrupt:  # gpu.sh's time limit: keep the steps measured so far
        print(f"interrupted after {len(times)} timed steps", file=sys.stderr, flush=True)
        if not times:
            raise
    finally:
        apply_activation_checkpointing(model, False, bm.name)
        optimizer.zero_grad(set_to_none=True)
    median = statistics.median(times)
    return {"k": k, "micro_batch": args.batch // k, "activation_checkpointing": applied["applied"],
            "step_times_s": times, "median_step_s": median, "images_per_s": args.batch / median,
            "peak_memory_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None}


def bench_size(size: str, variants: list[tuple[str, int, bool]], args, device: torch.device,
               rows: list[dict[str, Any]]) -> None:
    bm = common.build_bench_model("dit", size, args.params, seed=args.seed)
    model = common.routed_view(bm, args.strategy, device) if args.strategy != "vanilla" else bm.base
    model.to(device).train()
    diffusion = common.build_diffusion(bm)
    optimizer = torch.optim.AdamW(bm.base.parameters(), lr=1e-4, fused=device.type == "cuda")
    for spec, k, ckpt in variants:
        result, error = common.run_guarded(f"{size} {spec}", partial(run_variant, bm, model, optimizer, diffusion, k,
                                                                     ckpt, args, device))
        if error is not None and "OutOfMemoryError" in error:
            error = "out of memory"
        rows.append({"size": size, "variant": spec, **(result or {"k": k, "activation_checkpointing": ckpt}),
                     "error": error})
        if device.type == "cuda":
            torch.cuda.empty_cache()


def table(rows: list[dict[str, Any]], device_type: str) -> str:
    base = {r["size"]: r for r in rows if r["variant"] == "k1" and not r.get("error")}
    out = []
    for r in rows:
        if r.get("error"):
            out.append([f"DiT-{r['size']}", r["variant"], r["k"], "-", "yes" if r["activation_checkpointing"] else "no",
                        r["error"], "-", "-", "-", "-"])
            continue
        ref = base.get(r["size"])
        mem = fmt_bytes(r["peak_memory_bytes"]) if r["peak_memory_bytes"] is not None else f"n/a ({device_type})"
        rel_mem = (f"{r['peak_memory_bytes'] / ref['peak_memory_bytes']:.2f}x"
                   if ref and r["peak_memory_bytes"] and ref["peak_memory_bytes"] else "-")
        rel_speed = f"{r['images_per_s'] / ref['images_per_s']:.3f}x" if ref else "-"
        out.append([f"DiT-{r['size']}", r["variant"], r["k"], r["micro_batch"],
                    "yes" if r["activation_checkpointing"] else "no", f"{1000 * r['median_step_s']:.1f}",
                    f"{r['images_per_s']:.1f}", mem, rel_mem, rel_speed])
    return common.markdown_table(["model", "variant", "k", "micro-batch", "checkpointing", "median step (ms)",
                                  "images/s", "peak memory", "memory vs k1", "speed vs k1"], out)


def render(payload: dict[str, Any]) -> str:
    """The Markdown of an accumulation result, from its JSON alone (``scripts/figures.py`` rebuilds docs with it)."""
    args, info = payload["args"], payload["machine"]
    return "\n".join([f"# Gradient accumulation and activation checkpointing, global batch {args['batch']}, "
                      f"{args['precision']}, {args['strategy']}", "", *common.header_lines(info), "",
                      table(payload["rows"], str(info.get("device_type", "cpu")))])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="L/2,XL/2", help="DiT size labels from models.yaml")
    ap.add_argument("--params", action="append", default=[], metavar="KEY=VALUE", help="backbone overrides")
    ap.add_argument("--batch", type=int, default=256, help="global batch: images per optimizer step")
    ap.add_argument("--variants", default="k1,k2,k4,k1+ckpt,k2+ckpt", help="comma list of kN or kN+ckpt")
    ap.add_argument("--strategy", default="dtr", help="routing strategy of the model (registered name)")
    ap.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="bf16")
    ap.add_argument("--steps", type=int, default=5, help="timed steps per variant")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", default=None)
    ap.add_argument("--tag", default=None)
    ap.add_argument("--smoke", action="store_true", help="tiny DiT, batch 8, fp32, 2 steps: proves the script runs")
    args = ap.parse_args(argv)
    if args.smoke:
        args.sizes, args.batch, args.precision, args.steps, args.warmup = "tiny", 8, "fp32", 2, 1
    common.quiet_plugin_warnings()
    device = common.pick_device(args.device)
    common.setup_backends(device, args.threads)
    variants = parse_variants(args.variants, args.batch)
    stem = "accumulation" + (f"_{args.tag}" if args.tag else "")
    info = common.machine_info(device)
    rows: list[dict[str, Any]] = []

    def emit() -> None:
        metrics = {f"{r['size']}.{r['variant']}.{key}": r[key] for r in rows if not r.get("error")
                   for key in ("images_per_s", "peak_memory_bytes") if r.get(key) is not None}
        payload = {"script": "accumulation", "machine": info, "args": vars(args), "rows": rows}
        common.write_outputs(args.out_dir, stem, render(payload), payload, metrics)

    try:
        for size in filter(None, (s.strip() for s in args.sizes.split(","))):
            bench_size(size, variants, args, device, rows)
            emit()
    except KeyboardInterrupt:
        print("interrupted: writing what was measured", file=sys.stderr, flush=True)
        emit()
        raise SystemExit(124) from None


if __name__ == "__main__":
    main()
