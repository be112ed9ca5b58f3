"""Training-step benchmark: every routing strategy (and a published-style baseline), interleaved in one process.

A step is what ``dtr train`` does per batch: ``GaussianDiffusion.training_losses`` (T = 1000, learned sigma,
hybrid loss) under the chosen autocast, backward, AdamW step (fused on CUDA, as the trainer), zero_grad. Every
variant runs on the *same* parameter tensors: the strategies' variants are views of one model with different
routing plans, the published-style ones wrap the same DiT submodules (``_published.py``); one AdamW per family
(ours fused on CUDA, the published one torch's default) updates them in turn. Weights do not change the cost of a
step, and sharing them keeps the memory of one model. Rounds are interleaved: each round runs one step of every
variant, in a rotating order, so a shared machine's drifts hit all variants alike.

Backbones and strategies come from the plugin registry: by default every registered backbone (sizes from
``models.yaml``; a backbone that cannot be built here, e.g. one that needs VAE weights, is skipped with the
reason) and every registered strategy, plus ``pub_vanilla`` (official DiT forward) and ``pub_dtr``
(published-style routing with the dtr table) on ``dit``. ``--backbones`` and ``--variants`` restrict them. A
variant may carry its own precision / compile: ``dtr@bf16+compile``, ``pub_dtr@fp16``.

Overheads compare each variant with the vanilla of its own family and settings: ours against ``vanilla``,
published-style against ``pub_vanilla``.

    python benchmarks/train_step.py --backbones dit --size S/2 --batch 8 --params input_size=16 --out-dir DIR
"""
from __future__ import annotations

import argparse
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common
import _published as pub
from _train_step_report import comparisons, metrics_from_payload, render

__all__ = ["main", "metrics_from_payload", "render"]

PUBLISHED = ("pub_vanilla", "pub_dtr")


@dataclass
class Variant:
    label: str
    kind: str
    precision: str
    compiled: bool
    family: str
    module: nn.Module
    model: Any
    optimizer: torch.optim.Optimizer
    scaler: Any
    own_buffer_bytes: int = 0
    own_resident: int = 0
    times: list[float] = field(default_factory=list)
    warmup_times: list[float] = field(default_factory=list)
    peaks: list[int] = field(default_factory=list)
    error: str | None = None

    @property
    def settings(self) -> tuple[str, bool]:
        return self.precision, self.compiled


# ------------------------------------------------------------------------------------------- building
def parse_variant(spec: str, precision: str, compiled: bool, strategies: list[str]) -> tuple[str, str, bool]:
    name, *mods = re.split(r"[@+]", spec.strip())
    for part in filter(None, mods):
        if part in ("fp32", "bf16", "fp16"):
            precision = part
        elif part in ("compile", "eager"):
            compiled = part == "compile"
        else:
            raise SystemExit(f"variant {spec!r}: unknown modifier {part!r} (fp32, bf16, fp16, compile, eager)")
    if name not in [*strategies, *PUBLISHED]:
        raise SystemExit(f"variant {spec!r}: unknown (registered strategies: {', '.join(strategies)}; "
                         f"published-style: {', '.join(PUBLISHED)})")
    return name, precision, compiled


def build_variants(bm: common.BenchModel, specs: list[str], args, device: torch.device) -> list[Variant]:
    import dtr_plugins as dp

    strategies = common.plugin_names("strategy")
    params = [p for p in bm.base.parameters() if p.requires_grad]
    optimizers: dict[str, torch.optim.Optimizer] = {}

    def optimizer_for(family: str) -> torch.optim.Optimizer:
        if family not in optimizers:  # ours: fused on CUDA like the trainer; published: torch's default AdamW
            fused = {"fused": True} if family == "ours" and device.type == "cuda" else {}
            optimizers[family] = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0, **fused)
        return optimizers[family]

    variants = []
    for spec in specs:
        kind, precision, compiled = parse_variant(spec, args.precision, args.compile, strategies)
        if kind in PUBLISHED and bm.name != "dit":
            continue  # the published-style baseline is a DiT
        family = "published" if kind in PUBLISHED else "ours"
        if family == "ours":
            module = common.routed_view(bm, kind, device)
            own_buffers = common.tensor_bytes(module.plan.buffers())
        else:
            base = bm.base
            tables = None if kind == "pub_vanilla" else pub.published_tables(
                dp.build_strategy("dtr"), bm.num_tasks, base.hidden_size, base.depth)
            module = pub.PublishedStyleDiT(base, tables).to(device)
            own_buffers = common.tensor_bytes(b for n, b in module.named_buffers() if "unit_mapping" in n)
        module.train()
        model = torch.compile(module, backend=args.compile_backend) if compiled else module
        scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        variants.append(Variant(spec.strip(), kind, precision, compiled, family, module, model,
                                optimizer_for(family), scaler, own_buffer_bytes=own_buffers))
    return variants


# -------------------------------------------------------------------------------------------- running
def train_step(v: Variant, diffusion, x: torch.Tensor, t: torch.Tensor, kwargs: dict[str, Any],
               device: torch.device) -> None:
    with common.autocast(v.precision, device):
        loss = diffusion.training_losses(v.model, x, t, model_kwargs=kwargs)["loss"].mean()
    v.scaler.scale(loss).backward()
    v.scaler.step(v.optimizer)
    v.scaler.update()
    v.optimizer.zero_grad(set_to_none=True)


def optimizer_state_bytes(opt: torch.optim.Optimizer) -> int:
    return common.tensor_bytes(s for state in opt.state.values() for s in state.values() if torch.is_tensor(s))


def run_interleaved(variants: list[Variant], diffusion, bm: common.BenchModel, batch: int, args,
                    device: torch.device) -> dict[str, int]:
    """Warm-up rounds, then timed rounds; returns dynamo's graph count after warm-up and at the end."""
    g = torch.Generator().manual_seed(args.seed)
    x = torch.randn(batch, *bm.shape, generator=g).to(device)
    kwargs = common.model_kwargs(bm, batch, device, g)
    rounds = args.warmup + args.steps
    ts = torch.randint(0, bm.num_tasks, (rounds, batch), generator=g).to(device)
    graphs: dict[str, int] = {"interrupted_after_rounds": -1}
    try:
        _rounds(variants, diffusion, x, kwargs, ts, rounds, args, device, graphs)
    except KeyboardInterrupt:  # a time limit (gpu.sh sends SIGINT): keep and report the rounds done so far
        done = min((len(v.times) for v in variants if not v.error and v.times), default=0)
        for v in variants:
            del v.times[done:]
            if not v.error and not v.times:
                v.error = "time limit reached before its first timed round"
        graphs["interrupted_after_rounds"] = done
        print(f"interrupted: reporting {done} complete timed rounds", file=sys.stderr, flush=True)
    graphs["end"] = dynamo_graphs()
    return graphs


def _rounds(variants, diffusion, x, kwargs, ts, rounds, args, device, graphs) -> None:
    param_bytes = None
    k = len(variants)
    for r in range(rounds):
        if r == args.warmup:
            graphs["after_warmup"] = dynamo_graphs()
        order = variants[r % k:] + variants[:r % k]
        runs = order + order[::-1] if args.order == "abba" else order
        per_round: dict[int, list[float]] = {}
        for v in runs:
            if v.error:
                continue
            if device.type == "cuda":
                common.sync(device)
                before = torch.cuda.memory_allocated(device)
                torch.cuda.reset_peak_memory_stats(device)
            try:
                with common.Timer(device) as timer:
                    train_step(v, diffusion, x, ts[r], kwargs, device)
            except Exception as exc:  # noqa: BLE001 -- one variant failing (compile, out of memory) must not lose the others
                v.error = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160] if str(exc) else ''}"
                print(f"[{v.label}] failed: {v.error}", file=sys.stderr, flush=True)
                v.optimizer.zero_grad(set_to_none=True)
                if device.type == "cuda":
                    torch.cuda.empty_cache()
                continue
            if r < args.warmup:
                v.warmup_times.append(timer.seconds)
                continue
            per_round.setdefault(id(v), []).append(timer.seconds)
            if device.type == "cuda":
                if param_bytes is None:
                    param_bytes = common.tensor_bytes(p for p in variants[0].module.parameters())
                v.own_resident = param_bytes + optimizer_state_bytes(v.optimizer) + v.own_buffer_bytes
                v.peaks.append(torch.cuda.max_memory_allocated(device) - (before - v.own_resident))
        for v in variants:  # one time per variant and round: the mean of its runs in the round (ABBA: two)
            if id(v) in per_round:
                v.times.append(statistics.fmean(per_round[id(v)]))
        if args.verbose or r == 0 or r == args.warmup:
            print(f"round {r + 1}/{rounds}: " + ", ".join(
                f"{v.label} {(v.times or v.warmup_times or [float('nan')])[-1] * 1e3:.1f} ms" for v in variants),
                file=sys.stderr, flush=True)


def dynamo_graphs() -> int:
    """Graphs compiled so far by torch.compile in this process (dynamo's unique_graphs counter)."""
    from torch._dynamo.utils import counters

    return int(counters["stats"].get("unique_graphs", 0))


# -------------------------------------------------------------------------------------------- results
def reference_for(v: Variant, variants: list[Variant]) -> Variant | None:
    want = "pub_vanilla" if v.family == "published" else "vanilla"
    for w in variants:
        if w.kind == want and w.settings == v.settings and w.times and not w.error:
            return w
    return None


def results(variants: list[Variant], batch: int, macs: float, device: torch.device, args) -> list[dict[str, Any]]:
    rows = []
    for v in variants:
        row: dict[str, Any] = {"variant": v.label, "kind": v.kind, "family": v.family, "precision": v.precision,
                               "compile": v.compiled, "error": v.error, "warmup_times_s": v.warmup_times}
        if v.times:
            s = common.summary(v.times)
            row.update({"step_s": s, "images_per_s": batch / s["median"], "times_s": v.times})
            peak, source = common.peak_tflops(device, v.precision, args.peak_tflops)
            row["mfu"] = 6 * macs * row["images_per_s"] / (peak * 1e12) if peak else None
            row["peak_tflops"], row["peak_tflops_source"] = peak, source
            row["peak_memory_bytes"] = max(v.peaks) if v.peaks else None
            row["mask_buffer_bytes"] = v.own_buffer_bytes
            ref = reference_for(v, variants)
            if ref is not None and ref is not v:
                n = min(len(v.times), len(ref.times))
                row["reference"] = ref.label
                row["overhead"] = common.paired_overhead(v.times[:n], ref.times[:n], seed=args.seed)
        rows.append(row)
    return rows


def mask_memory(variants: list[Variant], bm: common.BenchModel) -> dict[str, Any]:
    """Mask buffers: measured on the benchmarked model; for DiT also computed for the published sizes (bytes)."""
    measured: list[list[Any]] = []
    for v in variants:
        if v.family == "ours":
            persistent = sum(t.numel() * t.element_size() for k, t in v.module.state_dict().items() if "table_" in k)
            measured.append([v.label, f"{v.module.plan.num_tables} bool table(s)", v.own_buffer_bytes, persistent])
        elif v.kind == "pub_dtr":
            persistent = sum(t.numel() * t.element_size() for k, t in v.module.state_dict().items()
                             if "unit_mapping" in k)
            measured.append([v.label, f"{len(v.module.blocks)} float tables", v.own_buffer_bytes, persistent])
    payload: dict[str, Any] = {"measured": measured}
    if bm.name == "dit":
        from dtr_plugins.backbones.dit import DIT_SIZES

        rows = []
        for size in ("S/2", "B/2", "L/2", "XL/2"):
            d, c = DIT_SIZES[size]["depth"], DIT_SIZES[size]["hidden_size"]
            published = pub.published_mask_bytes(d, bm.num_tasks, c)
            rows.append([f"DiT-{size}", f"{d} x {c}", bm.num_tasks * c, d * bm.num_tasks * c, published,
                         2 * published, 0])
        payload["by_size"] = rows
    return payload


# ----------------------------------------------------------------------------------------------- main
def forward_macs(bm: common.BenchModel, device: torch.device) -> tuple[float, float]:
    """(MACs used for MFU, MACs counted by FlopCounterMode) of one image's forward pass.

    DiT at 32x32 latents uses the DiT paper's GMACs (``DIT_GMACS_32``); everything else the counted number.
    """
    g = torch.Generator().manual_seed(0)
    example = (torch.randn(1, *bm.shape, generator=g).to(device), torch.tensor([10], device=device))
    kwargs = common.model_kwargs(bm, 1, device, g)
    counted = common.counted_forward_macs(bm.base.eval(), (*example, *kwargs.values()))
    params = bm.cfg.backbone.params
    paper = common.DIT_GMACS_32.get(params.get("size")) if bm.name == "dit" and params.get("input_size") == 32 else None
    return (paper * 1e9 if paper else counted), counted


def bench_backbone(bm: common.BenchModel, args, device: torch.device) -> dict[str, Any]:
    bm.base.to(device)
    strategies = sorted(common.plugin_names("strategy"), key=lambda n: n != "vanilla")  # the reference first
    specs = args.variants or [*strategies, *PUBLISHED]
    macs, counted = forward_macs(bm, device)
    diffusion = common.build_diffusion(bm)
    variants = build_variants(bm, specs, args, device)
    print(f"[{bm.label}] {bm.desc['params']}: batch {args.batch}, {len(variants)} variants x ({args.warmup} warm-up "
          f"+ {args.steps} timed) interleaved rounds", file=sys.stderr, flush=True)
    graphs = run_interleaved(variants, diffusion, bm, args.batch, args, device)
    rows = results(variants, args.batch, macs, device, args)
    _, comps = comparisons(rows, args.seed)
    return {"config": {**bm.desc, "batch": args.batch, "steps": args.steps, "warmup": args.warmup,
                       "forward_macs_per_image": macs, "counted_forward_macs_per_image": counted},
            "results": rows, "comparisons": comps, "mask_memory": mask_memory(variants, bm), "dynamo_graphs": graphs}


# ----------------------------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbones", default=None, help="comma list of backbone plugins (default: every registered)")
    ap.add_argument("--size", default=None, help="size label from models.yaml, or backbone=LABEL,... "
                                                 "(default: each backbone's first label)")
    ap.add_argument("--params", action="append", default=[], metavar="[BACKBONE.]KEY=VALUE",
                    help="override a backbone parameter (YAML value); repeatable")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    ap.add_argument("--compile", action="store_true", help="torch.compile every variant (unless it says +eager)")
    ap.add_argument("--compile-backend", default="inductor", help="torch.compile backend (aot_eager: quick checks)")
    ap.add_argument("--variants", default=None,
                    help="comma list, name[@fp32|bf16|fp16][+compile|+eager]; names: registered strategies, "
                         "pub_vanilla, pub_dtr (default: every registered strategy, then pub_vanilla, pub_dtr)")
    ap.add_argument("--steps", type=int, default=30, help="timed rounds (one step of every variant each)")
    ap.add_argument("--order", choices=("rotate", "abba"), default="rotate",
                    help="rotate: one step per variant per round, rotating the start; abba: each round runs the "
                         "rotated order forward then backward (two steps per variant, their mean is the round's "
                         "time), which cancels a linear drift of a shared machine's speed")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--peak-tflops", type=float, default=None, help="peak TFLOP/s for MFU (default: known GPUs)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", default=None, help="write train_step[_TAG].md and .json here")
    ap.add_argument("--tag", default=None, help="suffix of the output file names")
    ap.add_argument("--smoke", action="store_true", help="tiny models, batch 2, 2 rounds: proves the script runs")
    ap.add_argument("--verbose", action="store_true", help="print every round's times")
    ap.add_argument("--add-metrics", nargs="+", metavar="JSON", help="only recompute the metrics of result files")
    args = ap.parse_args(argv)
    if args.add_metrics:
        return common.add_metrics(args.add_metrics, metrics_from_payload)
    args.variants = [s.strip() for s in args.variants.split(",") if s.strip()] if args.variants else None
    if args.smoke:
        args.size, args.batch, args.steps, args.warmup = "tiny", 2, 2, 1

    common.quiet_plugin_warnings()
    device = common.pick_device(args.device)
    common.setup_backends(device, args.threads)

    skipped: dict[str, str] = {}
    payload: dict[str, Any] = {"script": "train_step", "machine": common.machine_info(device), "args": vars(args),
                               "skipped": skipped}
    for backbone in common.plugin_names("backbone", args.backbones):
        size = common.size_for(backbone, args.size)
        bm, error = common.run_guarded(f"build {backbone} {size}",
                                       lambda backbone=backbone, size=size: common.build_bench_model(
                                           backbone, size, args.params, seed=args.seed))
        if bm is None:
            skipped[backbone] = f"skipped, it could not be built here: {error}"
            continue
        done, error = common.run_guarded(f"train_step {bm.label}", lambda bm=bm: bench_backbone(bm, args, device))
        bm = None  # free this backbone before building the next
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if done is None:
            skipped[backbone] = f"failed: {error}"
            continue
        payload[backbone] = done
    info = payload["machine"]
    info["max_rss_bytes"] = common.rss_bytes()
    stem = "train_step" + (f"_{args.tag}" if args.tag else "")
    common.write_outputs(args.out_dir, stem, render(payload), payload, metrics_from_payload(payload))


if __name__ == "__main__":
    main()
