"""Training-step benchmark: routing variants and a published-style DTR baseline, interleaved in one process.

A step is what ``dtr train`` does per batch: ``GaussianDiffusion.training_losses`` (T = 1000, learned sigma,
hybrid loss) under the chosen autocast, backward, AdamW step (fused on CUDA, as the trainer), zero_grad. Every
variant runs on the *same* parameter tensors: our variants are views of one DiT/ADM with different routing plans,
the published-style ones wrap the same submodules (``published_baseline.py``); one AdamW per family (ours fused
on CUDA, the published one torch's default) updates them in turn. Weights do not change the cost of a step, and
sharing them keeps the memory of one model. Rounds are interleaved: each round runs one step of every variant,
in a rotating order, so a shared machine's drifts hit all variants alike.

Variants: ``vanilla``, ``dtr``, ``random``, ``task_specific_sharing`` (this project's routing) and, for DiT,
``pub_vanilla`` (official DiT forward, no routing) and ``pub_dtr`` (published-style routing with the dtr table).
A variant may carry its own precision / compile, ``dtr@bf16+compile``, ``pub_dtr@fp16``.

Overheads compare each variant with the vanilla of its own family and settings: ours against ``vanilla``,
published-style against ``pub_vanilla``.

    python benchmarks/train_step.py --model S/2 --batch 8 --input-size 32 --precision fp32 --out-dir bench-out
"""
from __future__ import annotations

import argparse
import copy
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
from common import fmt_bytes, fmt_pct

OURS = ("vanilla", "dtr", "random", "task_specific_sharing")
PUBLISHED = ("pub_vanilla", "pub_dtr")
NUM_TASKS = 1000
ABBA_NOTE = ": 2 steps per variant per round, step time = their mean"
TINY_DIT = dict(depth=2, hidden_size=64, num_heads=4, patch_size=2)  # --model tiny (smoke runs)


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
def parse_variant(spec: str, precision: str, compiled: bool) -> tuple[str, str, bool]:
    name, *mods = re.split(r"[@+]", spec.strip())
    for part in filter(None, mods):
        if part in ("fp32", "bf16", "fp16"):
            precision = part
        elif part in ("compile", "eager"):
            compiled = part == "compile"
        else:
            raise SystemExit(f"variant {spec!r}: unknown modifier {part!r} (fp32, bf16, fp16, compile, eager)")
    if name not in OURS + PUBLISHED:
        raise SystemExit(f"variant {spec!r}: unknown (allowed: {', '.join(OURS + PUBLISHED)})")
    return name, precision, compiled


def shallow_view(module: nn.Module) -> nn.Module:
    """A second module object sharing all submodules, parameters and buffers of ``module``."""
    view = copy.copy(module)
    view._modules = dict(module._modules)
    view._parameters = dict(module._parameters)
    view._buffers = dict(module._buffers)
    view._non_persistent_buffers_set = set(module._non_persistent_buffers_set)
    return view


def randomize_zero_init(model: nn.Module, seed: int = 0) -> None:
    """adaLN-Zero and zeroed output layers make an untrained net degenerate; give them small weights."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad and not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)


def build_base(backbone: str, args) -> tuple[nn.Module, dict[str, Any]]:
    if backbone == "dit":
        from dtr_plugins.backbones.dit import DiT

        kw = dict(TINY_DIT) if args.model == "tiny" else {"size": args.model}
        base = DiT(input_size=args.input_size, in_channels=4, num_classes=1000, **kw)
        desc = {"backbone": "dit", "model": args.model, "input_size": args.input_size, "depth": base.depth,
                "hidden_size": base.hidden_size, "patch_size": base.patch_size}
    else:
        from dtr_plugins.backbones.adm_unet import build_adm_unet

        kw: dict[str, Any] = {"preset": args.adm_preset}
        if args.channels_last:
            kw["channels_last"] = True
        base = build_adm_unet(**kw)
        desc = {"backbone": "adm_unet", "preset": args.adm_preset, "image_size": base.image_size,
                "channels_last": bool(args.channels_last)}
    randomize_zero_init(base, args.seed)
    return base, desc


def build_variants(backbone: str, base: nn.Module, specs: list[str], args, device: torch.device) -> list[Variant]:
    from published_baseline import PublishedStyleDiT, published_tables

    import dtr_plugins as dp
    from dtr_plugins.core.routing import RoutingPlan

    params = [p for p in base.parameters() if p.requires_grad]
    optimizers: dict[str, torch.optim.Optimizer] = {}

    def optimizer_for(family: str) -> torch.optim.Optimizer:
        if family not in optimizers:  # ours: fused on CUDA like the trainer; published: torch's default AdamW
            fused = {"fused": True} if family == "ours" and device.type == "cuda" else {}
            optimizers[family] = torch.optim.AdamW(params, lr=1e-4, weight_decay=0.0, **fused)
        return optimizers[family]

    variants = []
    for spec in specs:
        kind, precision, compiled = parse_variant(spec, args.precision, args.compile)
        if kind in PUBLISHED and backbone != "dit":
            continue
        family = "published" if kind in PUBLISHED else "ours"
        if family == "ours":
            module = shallow_view(base)
            module.attach_routing(RoutingPlan(dp.build_strategy(kind), base.routed_channels(), NUM_TASKS).to(device))
            own_buffers = common.tensor_bytes(module.plan.buffers())
        else:
            tables = None if kind == "pub_vanilla" else published_tables(
                dp.build_strategy("dtr"), NUM_TASKS, base.hidden_size, base.depth)
            module = PublishedStyleDiT(base, tables).to(device)
            own_buffers = common.tensor_bytes(b for n, b in module.named_buffers() if "unit_mapping" in n)
        module.train()
        model = torch.compile(module, backend=args.compile_backend) if compiled else module
        scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        label = spec.strip()
        variants.append(Variant(label, kind, precision, compiled, family, module, model, optimizer_for(family),
                                scaler, own_buffer_bytes=own_buffers))
    return variants


# -------------------------------------------------------------------------------------------- running
def train_step(v: Variant, diffusion, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor,
               device: torch.device) -> None:
    with common.autocast(v.precision, device):
        loss = diffusion.training_losses(v.model, x, t, model_kwargs={"y": y})["loss"].mean()
    v.scaler.scale(loss).backward()
    v.scaler.step(v.optimizer)
    v.scaler.update()
    v.optimizer.zero_grad(set_to_none=True)


def optimizer_state_bytes(opt: torch.optim.Optimizer) -> int:
    return common.tensor_bytes(s for state in opt.state.values() for s in state.values() if torch.is_tensor(s))


def run_interleaved(variants: list[Variant], diffusion, batch: int, in_shape: tuple[int, ...], num_classes: int,
                    args, device: torch.device) -> dict[str, int]:
    """Warm-up rounds, then timed rounds; returns dynamo's graph count after warm-up and at the end."""
    g = torch.Generator().manual_seed(args.seed)
    x = torch.randn(batch, *in_shape, generator=g).to(device)
    y = torch.randint(0, num_classes, (batch,), generator=g).to(device)
    rounds = args.warmup + args.steps
    ts = torch.randint(0, NUM_TASKS, (rounds, batch), generator=g).to(device)
    graphs: dict[str, int] = {"interrupted_after_rounds": -1}
    try:
        _rounds(variants, diffusion, x, y, ts, rounds, args, device, graphs)
    except KeyboardInterrupt:  # a time limit (gpu.sh sends SIGINT): keep and report the rounds done so far
        done = min((len(v.times) for v in variants if not v.error), default=0)
        for v in variants:
            del v.times[done:]
        graphs["interrupted_after_rounds"] = done
        print(f"interrupted: reporting {done} complete timed rounds", file=sys.stderr, flush=True)
    graphs["end"] = dynamo_graphs()
    return graphs


def _rounds(variants, diffusion, x, y, ts, rounds, args, device, graphs) -> None:
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
                    train_step(v, diffusion, x, ts[r], y, device)
            except Exception as exc:  # noqa: BLE001 - one variant failing (compile, out of memory) must not lose the others
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
        if args.verbose or r == 0:
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
            ref = reference_for(v, variants)
            if ref is not None and ref is not v:
                n = min(len(v.times), len(ref.times))
                row["reference"] = ref.label
                row["overhead"] = common.paired_overhead(v.times[:n], ref.times[:n], seed=args.seed)
        rows.append(row)
    return rows


def find(rows: list[dict[str, Any]], kind: str, settings: tuple[str, bool]) -> dict[str, Any] | None:
    for r in rows:
        if r["kind"] == kind and (r["precision"], r["compile"]) == settings and "step_s" in r:
            return r
    return None


def _ci(o: dict[str, float]) -> str:
    return (f"{fmt_pct(o['ratio_of_medians'])} (paired median {fmt_pct(o['paired_median'])}, 95% CI "
            f"{fmt_pct(o['ci95_low'])} .. {fmt_pct(o['ci95_high'])})")


def target_lines(rows: list[dict[str, Any]], args) -> tuple[list[str], dict[str, Any]]:
    """Our routing overhead, the published-style overhead, their ratio and DTR step against DTR step.

    Verdicts use the paired 95% interval: a target holds or fails only when the whole interval says so; otherwise
    the run's noise does not resolve it, and the line says that.
    """
    lines, out = [], {}
    unresolved = "not resolved by this run (the 95% CI straddles the target)"
    if min((len(r["times_s"]) for r in rows if "times_s" in r), default=0) < 10:
        few = "n/a (fewer than 10 timed rounds: no verdict)"
        unresolved = few
    for settings in dict.fromkeys((r["precision"], r["compile"]) for r in rows):
        ours, pub = find(rows, "dtr", settings), find(rows, "pub_dtr", settings)
        tag = f"{settings[0]}{' + compile' if settings[1] else ''}"
        entry: dict[str, Any] = {}
        o = ours.get("overhead") if ours else None
        p = pub.get("overhead") if pub else None
        if o:
            entry["ours_overhead"] = o
            verdict = ("holds" if o["ci95_high"] <= 0.03 else "FAILS" if o["ci95_low"] > 0.03 else unresolved)
            verdict = unresolved if unresolved.startswith("n/a") else verdict
            lines.append(f"- [{tag}] our routing overhead (dtr vs vanilla): {_ci(o)}; target <= +3%: {verdict}")
        if p:
            entry["published_overhead"] = p
            lines.append(f"- [{tag}] published-style overhead (pub_dtr vs pub_vanilla): {_ci(p)}")
        if o and p:
            a, b = o["ratio_of_medians"], p["ratio_of_medians"]
            ratio = b / a if a > 0 else float("inf")
            entry["overhead_ratio"] = ratio
            if (o["ci95_high"] <= 0 < p["ci95_low"]) or (o["ci95_high"] > 0 and p["ci95_low"] >= 3 * o["ci95_high"]):
                verdict = "holds"
            elif o["ci95_low"] > 0 and p["ci95_high"] < 3 * o["ci95_low"]:
                verdict = "FAILS"
            else:
                verdict = "not resolved by this run (the overheads' 95% CIs overlap too much)"
            verdict = unresolved if unresolved.startswith("n/a") else verdict
            lines.append(f"- [{tag}] published-style overhead / ours (ratio of medians): "
                         f"{'unbounded (ours <= 0)' if a <= 0 else f'{ratio:.2f}x'}; target >= 3x: {verdict}")
        if ours and pub:
            n = min(len(ours["times_s"]), len(pub["times_s"]))
            cmp = common.paired_overhead(ours["times_s"][:n], pub["times_s"][:n], seed=args.seed)
            entry["dtr_vs_pub_dtr"] = cmp
            verdict = ("holds" if cmp["ci95_high"] <= 0 else "FAILS" if cmp["ci95_low"] > 0 else
                       "no difference resolved by this run (the 95% CI straddles 0)")
            verdict = unresolved if unresolved.startswith("n/a") else verdict
            lines.append(f"- [{tag}] our dtr step vs published-style dtr step: {_ci(cmp)}; target: ours at least as "
                         f"fast: {verdict}")
        if entry:
            out[tag] = entry
    # end to end: our dtr with compile against the published-style dtr in fp16 autocast, eager (its recipe)
    ours_fast = [r for r in rows if r["kind"] == "dtr" and r["compile"] and "step_s" in r]
    pub_fp16 = [r for r in rows if r["kind"] == "pub_dtr" and r["precision"] == "fp16" and not r["compile"]
                and "step_s" in r]
    if ours_fast and pub_fp16:
        a, b = ours_fast[0], pub_fp16[0]
        speedup = b["step_s"]["median"] / a["step_s"]["median"]
        out["end_to_end_speedup"] = speedup
        lines.append(f"- end to end: speed-up of our {a['variant']} ({a['precision']}, fused AdamW on CUDA) over the "
                     f"published-style {b['variant']} (fp16 autocast, eager, default AdamW): {speedup:.2f}x "
                     f"(ratio of median step times); GPU target (DiT-B/2, H100) >= 2x: "
                     f"{'holds' if speedup >= 2 else 'FAILS'}")
    goals = {"B/2": (0.35, 30e9), "L/2": (0.45, 70e9)}
    if args.model in goals and args.batch == 256 and any(r.get("peak_memory_bytes") for r in rows):
        mfu_goal, mem_goal = goals[args.model]
        for r in rows:
            if r["kind"] == "dtr" and r["precision"] == "bf16" and "step_s" in r and r.get("mfu") is not None:
                mem = r.get("peak_memory_bytes")
                lines.append(f"- {r['variant']}: MFU {100 * r['mfu']:.1f}% (target >= {100 * mfu_goal:.0f}% at batch "
                             f"256: {'holds' if r['mfu'] >= mfu_goal else 'FAILS'}); peak memory {fmt_bytes(mem)} "
                             f"(target <= {fmt_bytes(mem_goal)}: {'holds' if mem and mem <= mem_goal else 'FAILS'})")
    return lines, out


def table(rows: list[dict[str, Any]], device: torch.device) -> str:
    headers = ["variant", "precision", "compile", "median step (ms)", "p25-p75 (ms)", "images/s", "peak memory",
               "MFU", "overhead vs own vanilla", "paired [95% CI]"]
    body = []
    for r in rows:
        if "step_s" not in r:
            body.append([r["variant"], r["precision"], str(r["compile"]), f"failed: {r['error']}"] + [""] * 6)
            continue
        s, o = r["step_s"], r.get("overhead")
        mem = fmt_bytes(r["peak_memory_bytes"]) if device.type == "cuda" else "n/a (CPU)"
        body.append([r["variant"], r["precision"], "yes" if r["compile"] else "no", f"{1e3 * s['median']:.1f}",
                     f"{1e3 * s['p25']:.1f}-{1e3 * s['p75']:.1f}", f"{r['images_per_s']:.2f}", mem,
                     "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%",
                     "(reference)" if o is None else fmt_pct(o["ratio_of_medians"]),
                     "" if o is None else f"{fmt_pct(o['paired_median'])} [{fmt_pct(o['ci95_low'])}, "
                                          f"{fmt_pct(o['ci95_high'])}]"])
    return common.markdown_table(headers, body)


def mask_memory(variants: list[Variant], base: nn.Module, backbone: str) -> tuple[str, dict[str, Any]]:
    """Mask buffers: measured on the benchmarked model, and computed for the DiT sizes."""
    from published_baseline import published_mask_bytes

    measured = []
    for v in variants:
        if v.family == "ours":
            plan = v.module.plan
            persistent = sum(t.numel() * t.element_size() for k, t in v.module.state_dict().items() if "table_" in k)
            measured.append([v.label, f"{plan.num_tables} bool table(s)", fmt_bytes(v.own_buffer_bytes),
                             fmt_bytes(persistent)])
        elif v.kind == "pub_dtr":
            persistent = sum(t.numel() * t.element_size() for k, t in v.module.state_dict().items()
                             if "unit_mapping" in k)
            measured.append([v.label, f"{len(v.module.blocks)} float tables", fmt_bytes(v.own_buffer_bytes),
                             fmt_bytes(persistent)])
    text = "Mask buffers of the benchmarked model (measured):\n\n" + common.markdown_table(
        ["variant", "tables", "buffer bytes", "bytes in state_dict (x2 with EMA per checkpoint)"], measured)
    payload: dict[str, Any] = {"measured": measured}
    if backbone == "dit":
        from dtr_plugins.backbones.dit import DIT_SIZES

        rows = []
        for size in ("S/2", "B/2", "L/2", "XL/2"):
            d, c = DIT_SIZES[size]["depth"], DIT_SIZES[size]["hidden_size"]
            pub = published_mask_bytes(d, NUM_TASKS, c)
            rows.append([f"DiT-{size}", f"{d} x {c}", fmt_bytes(NUM_TASKS * c), fmt_bytes(d * NUM_TASKS * c),
                         fmt_bytes(pub), fmt_bytes(2 * pub), "0 B"])
        text += ("\n\nMask buffers by DiT size (T = 1000; dtr shares one table per width, random draws one per "
                 "layer; ours are non-persistent, rebuilt from the config):\n\n" + common.markdown_table(
                     ["model", "depth x width", "ours dtr (bool)", "ours random (bool)", "published (float/block)",
                      "published per checkpoint (model + EMA)", "ours per checkpoint"], rows))
        payload["by_size"] = rows
    return text, payload


# ----------------------------------------------------------------------------------------------- main
def bench_backbone(backbone: str, args, device: torch.device) -> tuple[str, dict[str, Any]]:
    from dtr_plugins.core.diffusion import GaussianDiffusion, get_named_beta_schedule

    base, desc = build_base(backbone, args)
    base.to(device)
    if backbone == "dit":
        batch = args.batch
        in_shape = (4, args.input_size, args.input_size)
        macs = common.dit_forward_macs(args.model, args.input_size, base.patch_size, base.hidden_size, base.depth)
        specs = args.variants
    else:
        batch = args.adm_batch
        in_shape = (base.in_channels, base.image_size, base.image_size)
        macs = None
        specs = [s for s in args.variants if re.split(r"[@+]", s.strip())[0] in OURS]
    num_classes = getattr(base, "num_classes", None) or 1000
    example = (torch.randn(1, *in_shape, device=device), torch.tensor([10], device=device),
               torch.tensor([1], device=device))
    counted = common.counted_forward_macs(base.eval(), example)
    macs = macs or counted
    diffusion = GaussianDiffusion(get_named_beta_schedule("linear", NUM_TASKS), learn_sigma=True)
    variants = build_variants(backbone, base, specs, args, device)
    print(f"[{backbone}] {desc}: batch {batch}, {len(variants)} variants x ({args.warmup} warm-up + {args.steps} "
          f"timed) interleaved rounds", file=sys.stderr, flush=True)
    graphs = run_interleaved(variants, diffusion, batch, in_shape, num_classes, args, device)
    rows = results(variants, batch, macs, device, args)
    lines, targets = target_lines(rows, args)
    compiled = [v for v in variants if v.compiled and not v.error]
    if compiled:
        new = graphs["end"] - graphs.get("after_warmup", graphs["end"])
        first = ", ".join(f"{v.label} {v.warmup_times[0]:.1f} s" for v in compiled if v.warmup_times)
        lines.append(f"- torch.compile: {graphs.get('after_warmup', 0)} graph(s) compiled in warm-up (first step, "
                     f"compile included: {first}); {new} new graph(s) during the {args.steps} timed rounds with new "
                     f"timesteps every step: {'no recompiles' if new == 0 else 'RECOMPILED'}")
    where = (f"DiT-{args.model}, {args.input_size}x{args.input_size}x4 inputs" if backbone == "dit"
             else f"ADM U-Net preset {args.adm_preset} ({base.image_size}x{base.image_size}x{base.in_channels})")
    text = (f"### Training step: {where}, batch {batch}\n\n"
            f"Forward {macs / 1e9:.3g} GMACs per image (counted: {counted / 1e9:.3g}); {args.steps} timed interleaved "
            f"rounds ({args.order}{ABBA_NOTE if args.order == 'abba' else ''}) "
            f"after {args.warmup} warm-up; device {device}.\n\n" + table(rows, device))
    if graphs["interrupted_after_rounds"] >= 0:
        done = graphs["interrupted_after_rounds"]
        lines.insert(0, f"- **interrupted by a time limit**: {done} complete timed rounds of {args.steps} planned")
    if lines:
        text += "\n\n" + "\n".join(lines)
    mem_text, mem_payload = mask_memory(variants, base, backbone)
    text += "\n\n" + mem_text
    payload = {"config": {**desc, "batch": batch, "steps": args.steps, "warmup": args.warmup,
                          "forward_macs_per_image": macs, "counted_forward_macs_per_image": counted},
               "results": rows, "targets": targets, "mask_memory": mem_payload, "dynamo_graphs": graphs}
    return text, payload


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--backbone", choices=("dit", "adm", "both"), default="both",
                    help="both: DiT, then ADM if dtr_plugins.backbones.adm_unet imports")
    ap.add_argument("--model", default="S/2", help="DiT size preset (S/2, B/2, L/2, XL/2, ...) or 'tiny'")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--input-size", type=int, default=32, help="latent side (32 = 256x256 images)")
    ap.add_argument("--adm-preset", default="small", help="ADM preset (small, adm-64, adm-128, adm-256)")
    ap.add_argument("--adm-batch", type=int, default=None, help="ADM batch (default: --batch)")
    ap.add_argument("--channels-last", action="store_true", help="ADM in channels_last memory format")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    ap.add_argument("--compile", action="store_true", help="torch.compile every variant (unless it says @eager)")
    ap.add_argument("--compile-backend", default="inductor", help="torch.compile backend (aot_eager: quick checks)")
    ap.add_argument("--variants", default=",".join(OURS + PUBLISHED),
                    help="comma list; name[@fp32|bf16|fp16][+compile|+eager]")
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
    ap.add_argument("--smoke", action="store_true", help="tiny model, 2 rounds: proves the script runs")
    ap.add_argument("--verbose", action="store_true", help="print every round's times")
    args = ap.parse_args(argv)
    args.variants = [s for s in args.variants.split(",") if s.strip()]
    if args.smoke:
        args.model, args.input_size, args.batch, args.steps, args.warmup = "tiny", 8, 2, 2, 1
        args.adm_preset, args.adm_batch = "small", 2
    args.adm_batch = args.adm_batch or args.batch

    common.quiet_plugin_warnings()
    device = common.pick_device(args.device)
    common.setup_backends(device, args.threads)
    torch.manual_seed(args.seed)

    backbones = ["dit", "adm"] if args.backbone == "both" else [args.backbone]
    sections, payload = [], {"machine": common.machine_info(device), "args": vars(args)}
    for backbone in backbones:
        if backbone == "adm":
            try:
                import dtr_plugins.backbones.adm_unet  # noqa: F401
            except Exception as exc:  # noqa: BLE001 - being written by someone else: skip, say why
                msg = f"ADM skipped: dtr_plugins.backbones.adm_unet does not import ({type(exc).__name__}: {exc})"
                print(msg, file=sys.stderr)
                sections.append(msg)
                continue
        text, data = bench_backbone(backbone, args, device)
        sections.append(text)
        payload[backbone] = data
    info = payload["machine"]
    info["max_rss_bytes"] = common.rss_bytes()
    markdown = "\n".join(common.header_lines(info)) + "\n\n" + "\n\n".join(sections)
    stem = "train_step" + (f"_{args.tag}" if args.tag else "")
    common.write_outputs(args.out_dir, stem, markdown, payload)


if __name__ == "__main__":
    main()
