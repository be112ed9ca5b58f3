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
from _common import fmt_bytes, fmt_pct

PUBLISHED = ("pub_vanilla", "pub_dtr")
ABBA_NOTE = ": 2 steps per variant per round, step time = their mean"


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


def find(rows: list[dict[str, Any]], kind: str, settings: tuple[str, bool]) -> dict[str, Any] | None:
    for r in rows:
        if r["kind"] == kind and (r["precision"], r["compile"]) == settings and "step_s" in r:
            return r
    return None


def _ci(o: dict[str, float]) -> str:
    return (f"{fmt_pct(o['ratio_of_medians'])} (paired median {fmt_pct(o['paired_median'])}, 95% CI "
            f"{fmt_pct(o['ci95_low'])} .. {fmt_pct(o['ci95_high'])})")


def comparisons(rows: list[dict[str, Any]], seed: int) -> tuple[list[str], dict[str, Any]]:
    """Our routing overhead, the published-style overhead, their ratio, our dtr step against the published-style
    dtr step, and the end-to-end speed-up. Numbers only: ``check_targets.py`` compares them with the targets."""
    lines, out = [], {}
    for settings in dict.fromkeys((r["precision"], r["compile"]) for r in rows):
        ours, published = find(rows, "dtr", settings), find(rows, "pub_dtr", settings)
        tag = f"{settings[0]}{'+compile' if settings[1] else ''}"
        entry: dict[str, Any] = {}
        o = ours.get("overhead") if ours else None
        p = published.get("overhead") if published else None
        if o:
            lines.append(f"- [{tag}] our routing overhead (dtr vs vanilla): {_ci(o)}")
        if p:
            lines.append(f"- [{tag}] published-style overhead (pub_dtr vs pub_vanilla): {_ci(p)}")
        if o and p and o["ratio_of_medians"] > 0:
            entry["published_over_ours"] = p["ratio_of_medians"] / o["ratio_of_medians"]
            lines.append(f"- [{tag}] published-style overhead / ours: {entry['published_over_ours']:.2f}x")
        if ours and published:
            n = min(len(ours["times_s"]), len(published["times_s"]))
            entry["dtr_vs_pub_dtr"] = common.paired_overhead(ours["times_s"][:n], published["times_s"][:n], seed=seed)
            lines.append(f"- [{tag}] our dtr step vs published-style dtr step: {_ci(entry['dtr_vs_pub_dtr'])}")
        if entry:
            out[tag] = entry
    # end to end: our compiled dtr against the published-style dtr in fp16 autocast, eager (its recipe)
    fast = [r for r in rows if r["kind"] == "dtr" and r["compile"] and "step_s" in r]
    slow = [r for r in rows if r["kind"] == "pub_dtr" and r["precision"] == "fp16" and not r["compile"]
            and "step_s" in r]
    if fast and slow:
        out["end_to_end_speedup"] = slow[0]["step_s"]["median"] / fast[0]["step_s"]["median"]
        lines.append(f"- end to end: our {fast[0]['variant']} ({fast[0]['precision']}, fused AdamW on CUDA) over the "
                     f"published-style {slow[0]['variant']} (fp16 autocast, eager, default AdamW): "
                     f"{out['end_to_end_speedup']:.2f}x (ratio of median step times)")
    return lines, out


def metrics_from_payload(payload: dict[str, Any]) -> dict[str, Any]:
    """Flat metrics (``<backbone>.<variant>.<metric>``) of a train_step result, for ``check_targets.py``."""
    m: dict[str, Any] = {}
    for backbone, data in payload.items():
        if not isinstance(data, dict) or "results" not in data:
            continue
        name = {"adm": "adm_unet"}.get(backbone, backbone)  # files written before backbones were plugin names
        for r in data["results"]:
            if "step_s" not in r:
                continue
            k = f"{name}.{r['variant']}"
            m[f"{k}.step_s"] = r["step_s"]["median"]
            m[f"{k}.images_per_s"] = r["images_per_s"]
            m[f"{k}.mfu"] = r.get("mfu")
            if r.get("peak_memory_bytes"):
                m[f"{k}.peak_memory_gb"] = r["peak_memory_bytes"] / 1e9
            if r.get("overhead"):
                for stat in ("ratio_of_medians", "paired_median", "ci95_low", "ci95_high"):
                    m[f"{k}.overhead.{stat}"] = r["overhead"][stat]
        for tag, entry in (data.get("comparisons") or data.get("targets") or {}).items():
            if not isinstance(entry, dict):
                m[f"{name}.{tag}"] = entry
                continue
            ratio = entry.get("published_over_ours", entry.get("overhead_ratio"))
            if ratio is not None:
                m[f"{name}.{tag}.published_over_ours"] = ratio
            for stat, value in (entry.get("dtr_vs_pub_dtr") or {}).items():
                m[f"{name}.{tag}.dtr_vs_pub_dtr.{stat}"] = value
        graphs = data.get("dynamo_graphs") or {}
        if "after_warmup" in graphs and any(r.get("compile") and "step_s" in r for r in data["results"]):
            m[f"{name}.new_graphs_timed"] = graphs["end"] - graphs["after_warmup"]
    return m


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


def mask_memory(variants: list[Variant], bm: common.BenchModel) -> tuple[str, dict[str, Any]]:
    """Mask buffers: measured on the benchmarked model; for DiT also computed for the published sizes."""
    measured = []
    for v in variants:
        if v.family == "ours":
            persistent = sum(t.numel() * t.element_size() for k, t in v.module.state_dict().items() if "table_" in k)
            measured.append([v.label, f"{v.module.plan.num_tables} bool table(s)", v.own_buffer_bytes, persistent])
        elif v.kind == "pub_dtr":
            persistent = sum(t.numel() * t.element_size() for k, t in v.module.state_dict().items()
                             if "unit_mapping" in k)
            measured.append([v.label, f"{len(v.module.blocks)} float tables", v.own_buffer_bytes, persistent])
    text = "Mask buffers of the benchmarked model (measured):\n\n" + common.markdown_table(
        ["variant", "tables", "buffer bytes", "bytes in state_dict (x2 with EMA per checkpoint)"],
        [[a, b, fmt_bytes(c), fmt_bytes(d)] for a, b, c, d in measured])
    payload: dict[str, Any] = {"measured": measured}
    if bm.name == "dit":
        from dtr_plugins.backbones.dit import DIT_SIZES

        rows = []
        for size in ("S/2", "B/2", "L/2", "XL/2"):
            d, c = DIT_SIZES[size]["depth"], DIT_SIZES[size]["hidden_size"]
            published = pub.published_mask_bytes(d, bm.num_tasks, c)
            rows.append([f"DiT-{size}", f"{d} x {c}", fmt_bytes(bm.num_tasks * c), fmt_bytes(d * bm.num_tasks * c),
                         fmt_bytes(published), fmt_bytes(2 * published), "0 B"])
        text += ("\n\nMask buffers by DiT size (T = 1000; dtr shares one table per width, random draws one per "
                 "layer; ours are non-persistent, rebuilt from the config):\n\n" + common.markdown_table(
                     ["model", "depth x width", "ours dtr (bool)", "ours random (bool)", "published (float/block)",
                      "published per checkpoint (model + EMA)", "ours per checkpoint"], rows))
    return text, payload


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


def bench_backbone(bm: common.BenchModel, args, device: torch.device) -> tuple[str, dict[str, Any]]:
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
    lines, comps = comparisons(rows, args.seed)
    compiled = [v for v in variants if v.compiled and not v.error]
    if compiled:
        new = graphs["end"] - graphs.get("after_warmup", graphs["end"])
        first = ", ".join(f"{v.label} {v.warmup_times[0]:.1f} s" for v in compiled if v.warmup_times)
        lines.append(f"- torch.compile: {graphs.get('after_warmup', 0)} graph(s) compiled in warm-up (first step, "
                     f"compile included: {first}); {new} new graph(s) during the {args.steps} timed rounds with new "
                     f"timesteps every step")
    c, h, w = bm.shape
    text = (f"### Training step: {bm.label}, {c}x{h}x{w} inputs, batch {args.batch}\n\n"
            f"Forward {macs / 1e9:.3g} GMACs per image (counted: {counted / 1e9:.3g}); {args.steps} timed "
            f"interleaved rounds ({args.order}{ABBA_NOTE if args.order == 'abba' else ''}) after {args.warmup} "
            f"warm-up; device {device}.\n\n" + table(rows, device))
    if graphs["interrupted_after_rounds"] >= 0:
        lines.insert(0, f"- **interrupted by a time limit**: {graphs['interrupted_after_rounds']} complete timed "
                        f"rounds of {args.steps} planned")
    if lines:
        text += "\n\n" + "\n".join(lines)
    mem_text, mem_payload = mask_memory(variants, bm)
    text += "\n\n" + mem_text
    payload = {"config": {**bm.desc, "batch": args.batch, "steps": args.steps, "warmup": args.warmup,
                          "forward_macs_per_image": macs, "counted_forward_macs_per_image": counted},
               "results": rows, "comparisons": comps, "mask_memory": mem_payload, "dynamo_graphs": graphs}
    return text, payload


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

    sections, payload = [], {"machine": common.machine_info(device), "args": vars(args)}
    for backbone in common.plugin_names("backbone", args.backbones):
        size = common.size_for(backbone, args.size)
        bm, error = common.run_guarded(f"build {backbone} {size}",
                                       lambda backbone=backbone, size=size: common.build_bench_model(
                                           backbone, size, args.params, seed=args.seed))
        if bm is None:
            sections.append(f"### Training step: {backbone} skipped, it could not be built here: {error}")
            continue
        done, error = common.run_guarded(f"train_step {bm.label}", lambda bm=bm: bench_backbone(bm, args, device))
        bm = None  # free this backbone before building the next
        if device.type == "cuda":
            torch.cuda.empty_cache()
        if done is None:
            sections.append(f"### Training step: {backbone} failed: {error}")
            continue
        sections.append(done[0])
        payload[backbone] = done[1]
    info = payload["machine"]
    info["max_rss_bytes"] = common.rss_bytes()
    markdown = "\n".join(common.header_lines(info)) + "\n\n" + "\n\n".join(sections)
    stem = "train_step" + (f"_{args.tag}" if args.tag else "")
    common.write_outputs(args.out_dir, stem, markdown, payload, metrics_from_payload(payload))


if __name__ == "__main__":
    main()
