"""Rebuild every measured table and figure of README.md and docs/*.md from committed raw results.

    python scripts/figures.py            # rewrite the blocks between <!-- figures:NAME --> and <!-- /figures:NAME -->
    python scripts/figures.py --check    # exit 1 and name each block that differs from its rebuild

Sources (nothing else, nothing downloaded; seconds; the ``bench:`` blocks import torch through the scripts):

- ``benchmarks/results-<machine>/<suite>/runs.jsonl``: one line per run of a suite (the ``raw_results.jsonl``
  that ``dtr report`` writes, see ``dtr_plugins/experiments/raw_results.py``) -> block ``suite-<machine>-<suite>``:
  the paired comparison recomputed from the per-run values (intervals, multiplicity, verdicts); ``recipe-...``: the
  recipe's sizing (time per run, spread, resolution); ``summary-...``: the primary metric in plain words (per
  strategy mean and SD, the paired difference against the baseline, its interval and verdict); with a
  ``cpu_time.json`` beside it, ``cpu-time-...``: the suite's measured CPU time; where its runs carry their cost,
  the picture ``quality_vs_flops.png`` beside it (not in ``--check``);
- ``benchmarks/results-cpu/routing_overhead.json``, ``benchmarks/results-gpu/routing_overhead_B2.json``
  -> ``routing-overhead-cpu``, ``routing-overhead-gpu``, ``routing-overhead-summary``;
- ``benchmarks/results-gpu/routing_sites_B2.json`` -> ``sampling-sites-gpu``, ``sampling-sites-summary``;
- every benchmark result ``benchmarks/<results-dir>/<stem>.json`` -> block ``bench:<results-dir>/<stem>``: the
  Markdown of the script that wrote it, ``render(payload)`` of ``benchmarks/<script>.py`` (the script named by
  the JSON's ``script`` field, else by the stem's prefix: ``train_step_B2`` -> ``train_step.py``), headings
  turned into bold lines so a block never adds sections to a document;
- ``benchmarks/targets.yaml`` and both results folders -> ``targets`` (all targets), ``targets-gpu``: the
  table ``benchmarks/check_targets.py`` prints;
- the eager GPU ``train_step_{S2,B2,L2}.json`` -> ``train-step-gpu-eager`` (one row per size) and, with the
  GPU targets and the DiT mask sizes, the README's ``speed-summary``;
- ``benchmarks/results-cpu/train_buckets_t*.json`` (``benchmarks/train_buckets.py``) -> ``train-buckets-cpu``.

A block whose name has no source is an error (its numbers could not be rebuilt).
"""
from __future__ import annotations

import argparse
import functools
import importlib.util
import json
import re
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"(<!-- figures:(?P<name>[\w.:/-]+) -->\n)(?P<body>.*?)(<!-- /figures:(?P=name) -->)", re.S)


def _pct(x: float) -> str:
    return f"{x * 100:+.2f}%"


def _load(rel: str) -> dict:
    return json.loads((REPO / rel).read_text())


def _when(machine: dict) -> str:
    where = machine.get("gpu") or machine.get("cpu") or machine.get("device", "?")
    return f"{where}, torch {machine.get('torch', '?')}, {str(machine.get('date', '?'))[:10]}"


def _overhead_text(rel: str) -> str:
    d = _load(rel)
    a, m, est = d["args"], d["machine"], d["estimated_routing_s_per_step"]
    ours, pub = d["overhead"]["ours"], d["overhead"]["published"]
    size = a.get("model") or a.get("size")
    return (f"**Measured** (`{rel}`: DiT-{size} block, batch {a['batch']}, {a['precision']}, {a['reps']} interleaved "
            f"rounds, forward + backward; {_when(m)}): our routed block against its own plain block, paired "
            f"median over rounds **{_pct(ours['paired_median'])}**, 95% bootstrap interval "
            f"[{_pct(ours['ci95_low'])}, {_pct(ours['ci95_high'])}] "
            f"(ratio of medians {_pct(ours['ratio_of_medians'])}); "
            f"the published-style routed block against the official block {_pct(pub['paired_median'])} "
            f"[{_pct(pub['ci95_low'])}, {_pct(pub['ci95_high'])}]. **Estimate**, not a measurement: the added ops "
            f"and the mask selection, each timed alone and summed, come to {_pct(est['ours_fraction'])} of the plain "
            f"blocks (published style {_pct(est['published_fraction'])}, {est['ratio']:.2f}x ours); a sum of parts "
            f"timed apart misses what they cost together, so quote the measured interval.\n")


def routing_overhead_summary() -> str:
    cpu = _load("benchmarks/results-cpu/routing_overhead.json")
    gpu = _load("benchmarks/results-gpu/routing_overhead_B2.json")
    c, g = cpu["overhead"]["ours"], gpu["overhead"]["ours"]
    return (f"Measured routing cost of a block (paired median over interleaved rounds, 95% bootstrap interval): "
            f"DiT-{cpu['args']['model']} on the CPU {_pct(c['paired_median'])} [{_pct(c['ci95_low'])}, "
            f"{_pct(c['ci95_high'])}] ({_when(cpu['machine'])}); DiT-{gpu['args'].get('size', '?')} on the GPU "
            f"{_pct(g['paired_median'])} [{_pct(g['ci95_low'])}, {_pct(g['ci95_high'])}] ({_when(gpu['machine'])}). "
            f"The sum of separately timed parts gives {_pct(cpu['estimated_routing_s_per_step']['ours_fraction'])} "
            f"(CPU) and {_pct(gpu['estimated_routing_s_per_step']['ours_fraction'])} (GPU): an estimate, not a "
            f"measurement.\n")


def _sites() -> tuple[dict, str]:
    d = _load("benchmarks/results-gpu/routing_sites_B2.json")
    return d, "benchmarks/results-gpu/routing_sites_B2.json"


def sampling_sites_gpu() -> str:
    d, rel = _sites()
    a = d["args"]
    lines = [f"Measured (`{rel}`): {d['setup']}; {a['respacing']}, {a['steps_per_call']} steps per call, "
             f"{a['reps']} interleaved rounds. Speed = vanilla's time / the variant's (above 1: faster); paired: "
             f"per round, median and range over the {a['reps']} rounds.", "",
             "| variant | median s per DDIM step | speed vs vanilla (ratio of medians) | paired speed, median | "
             "paired range |", "|---|---|---|---|---|"]
    for name, v in d["sampling"].items():
        lines.append(f"| `{name}` | {v['median_s']:.4f} | {v['speed_vs_vanilla']:.2f}x | "
                     f"{v['paired_speed_median']:.2f}x | {v['paired_min']:.2f}x-{v['paired_max']:.2f}x |")
    return "\n".join(lines) + "\n"


def sampling_sites_summary() -> str:
    d, rel = _sites()
    s = d["sampling"]
    return (f"DDIM sampling of DiT-{d['args']['size']} on the GPU (`{rel}`, {d['args']['reps']} rounds) runs "
            f"{s['heads_mlp@0.8']['speed_vs_vanilla']:.2f}x vanilla's speed at beta 0.8 and "
            f"{s['heads_mlp@0.5']['speed_vs_vanilla']:.2f}x at 0.5 (ratio of medians; paired range "
            f"{s['heads_mlp@0.8']['paired_min']:.2f}x-{s['heads_mlp@0.8']['paired_max']:.2f}x and "
            f"{s['heads_mlp@0.5']['paired_min']:.2f}x-{s['heads_mlp@0.5']['paired_max']:.2f}x). The CPU sampling run "
            f"of this comparison was not kept; rerun `benchmarks/routing_sites.py` and commit its JSON.\n")


def _speed_ci(s: dict) -> str:
    return f"{s['paired_median']:.2f}x [{s['ci95_low']:.2f}, {s['ci95_high']:.2f}]"


def train_buckets_cpu() -> str:
    """Training speed with timestep buckets, from ``benchmarks/results-cpu/train_buckets_t*.json``."""
    rels = sorted(str(p.relative_to(REPO)) for p in REPO.glob("benchmarks/results-cpu/train_buckets_t*.json"))
    if not rels:
        raise ValueError("no benchmarks/results-cpu/train_buckets_t*.json")
    payloads = {rel: _load(rel) for rel in rels}
    sources = "; ".join(f"`{rel}`, {_when(payloads[rel]['machine'])}" for rel in rels)
    lines = [f"Measured ({sources}): one training step (forward, "
             "loss, backward, AdamW) of DTR (alpha 4) at `heads_mlp`, speed = vanilla's step time / the variant's in "
             "the same round (above 1: faster), paired median over the interleaved rounds with its 95% bootstrap "
             "interval; masked = `train.timestep_buckets: 0`; union width = share of the routed units the buckets "
             "ran; vs DTR at the inputs = against `input@beta` (the published DTR's site) in the same round. The "
             "goals of the issue: 1.15x vanilla at beta 0.8, 1.5x at beta 0.5.", "",
             "| model | threads (load average at start) | rounds | beta | masked | K auto (mean K, union width) | "
             "K auto vs DTR at the inputs | best fixed K | goal |", "|---|---|---|---|---|---|---|---|---|"]
    for payload in payloads.values():
        for g in payload["groups"]:  # a model measured in another sitting (--resume) carries its own machine
            load = g.get("machine", payload["machine"]).get("load_average", ["?"])[0]
            variants = g["variants"]
            for beta, goal in (("0.8", 1.15), ("0.5", 1.5)):
                if f"masked@{beta}" not in variants:
                    continue
                auto = variants.get(f"Kauto@{beta}")
                fixed = [(n, v) for n, v in variants.items()
                         if n.endswith(f"@{beta}") and n[1:].split("@")[0].isdigit()]
                best = max(fixed, key=lambda nv: nv[1]["speed_vs_vanilla"]["paired_median"], default=None)
                top = max([v["speed_vs_vanilla"]["paired_median"] for _, v in fixed]
                          + ([auto["speed_vs_vanilla"]["paired_median"]] if auto else []), default=0.0)
                auto_text = (f"{_speed_ci(auto['speed_vs_vanilla'])} ({auto['buckets']['mean_k']:.1f}, "
                             f"{auto['buckets']['mean_union_width']:.2f})" if auto else "-")
                best_text = f"{best[0].split('@')[0]}: {_speed_ci(best[1]['speed_vs_vanilla'])}" if best else "-"
                verdict = "met" if top >= goal else f"missed by {goal - top:.2f}x"
                lines.append(f"| DiT-{g['size']}, {g['input_size']}x{g['input_size']}x4, batch {g['batch']} | "
                             f"{g['threads']} ({load}) | {g['rounds']} | {beta} | "
                             f"{_speed_ci(variants[f'masked@{beta}']['speed_vs_vanilla'])} "
                             f"| {auto_text} | "
                             f"{_speed_ci(auto['speed_vs_input']) if auto and 'speed_vs_input' in auto else '-'} "
                             f"| {best_text} | {goal}x: {verdict} |")
    return "\n".join(lines) + "\n"


#: the suites that compare DTR at heads_mlp with vanilla and with DTR at the block inputs: (data set, folder)
SITE_SUITES = (("digits", "routing_sites_digits"), ("Fashion-MNIST", "fashion_routing"))


def _relative_interval(d: Any) -> str:
    """A paired difference (:class:`~dtr_plugins.experiments.compare.PairedDifference`) as a share of its
    baseline's mean, with its interval."""
    base = d.baseline_mean
    if d.interval is None or not base:
        return f"not resolvable ({len(d.seeds)} pair{'s' * (len(d.seeds) != 1)})"
    return (f"{d.mean / base:+.1%} [{d.interval[0] / base:+.1%}, {d.interval[1] / base:+.1%}] "
            f"({d.interval_level * 100:.4g}%)")


def heads_mlp_summary(repo: Path = REPO) -> str:
    """README's speed-section paragraph on DTR at heads_mlp: its training speed (``train_buckets_t1.json``), its
    sampling speed (``routing_sites_B2.json``) and what it costs in quality in the committed site suites, each
    against vanilla and against DTR at the block inputs (the published DTR's site)."""
    from dtr_plugins.experiments.compare import compare_runs
    from dtr_plugins.experiments.raw_results import read_raw_results, records_from_raw

    out = []
    rel = "benchmarks/results-cpu/train_buckets_t1.json"
    d = json.loads((repo / rel).read_text())
    rows = []
    for g in d["groups"]:
        for beta in ("0.8", "0.5"):
            v = g["variants"].get(f"Kauto@{beta}")
            if v is None:
                continue
            versus = f", {_speed_ci(v['speed_vs_input'])} DTR at the inputs" if "speed_vs_input" in v else ""
            rows.append(f"DiT-{g['size']} beta {beta}: {_speed_ci(v['speed_vs_vanilla'])} vanilla{versus}")
    missing = "" if any("speed_vs_input" in v for g in d["groups"] for v in g["variants"].values()) else \
        " (this run had no input-site variant; rerun the benchmark for that ratio)"
    out.append(f"**Training** (`{rel}`; {_when(d['machine'])}; one thread, {d['settings']['input_size']}x"
               f"{d['settings']['input_size']}x4 latents, batch {d['settings']['batch']}; "
               f"`train.timestep_buckets: auto`; speed with its 95% bootstrap interval, above 1 faster): "
               f"{'; '.join(rows)}{missing}.")
    sites, srel = _sites()
    s = sites["sampling"]
    parts = [f"beta {beta}: {s[f'heads_mlp@{beta}']['speed_vs_vanilla']:.2f}x vanilla, "
             f"{s[f'input@{beta}']['median_s'] / s[f'heads_mlp@{beta}']['median_s']:.2f}x DTR at the inputs"
             for beta in ("0.8", "0.5")]
    cpu_rel = "benchmarks/results-cpu/routing_sites_dydit_S2.json"
    cpu = json.loads((repo / cpu_rel).read_text())
    on_cpu = "; ".join(f"beta {n.partition('@')[2]}: {v['speed_vs_vanilla']:.2f}x vanilla"
                       for n, v in cpu["sampling"].items() if n.startswith("heads_mlp@"))
    out.append(f"**Sampling** (`{srel}`; DiT-{sites['args']['size']} on the GPU, ratios of medians): "
               f"{'; '.join(parts)}. On the CPU (`{cpu_rel}`; DiT-S/2, 256 tokens, one thread, no input-site "
               f"variant in that run): {on_cpu}.")
    quality = []
    for name, folder in SITE_SUITES:
        raw = repo / "benchmarks" / "results-cpu" / folder / "runs.jsonl"
        if not raw.is_file():
            quality.append(f"{name}: not yet committed (`configs/suites/{folder}.yaml`)")
            continue
        lines = read_raw_results(raw)
        heads = next((x["axes"]["routing"] for x in lines if str(x["axes"].get("routing", "")).endswith("-sheads_mlp")),
                     None)
        inputs = next((x["axes"]["routing"] for x in lines if str(x["axes"].get("routing", "")).endswith("-sinput")),
                      None)
        if heads is None or inputs is None:
            raise ValueError(f"{raw}: no heads_mlp and input-site DTR runs to compare")
        records = records_from_raw(lines)
        vs_vanilla, vs_input = (
            next(d for d in compare_runs(records, baseline=base, metrics=["heldout/total"]).differences
                 if d.strategy == heads) for base in ("vanilla", inputs))
        quality.append(f"{name} (`{raw.relative_to(repo)}`, {len(vs_vanilla.seeds)} seeds): "
                       f"{_relative_interval(vs_vanilla)} against vanilla, "
                       f"{_relative_interval(vs_input)} against DTR at the inputs")
    out.append("**Quality**, held-out loss of heads_mlp minus the other's, paired by seed, as a share of the "
               "other's mean, with its t-interval at the level the suite's report gives it (the primary metric's "
               "comparisons against one baseline are one Bonferroni family; lower is better; no correction across "
               "the two baselines here, so no verdict word): " + "; ".join(quality) + ".")
    return "\n\n".join(out) + "\n"


def suite_table(path: Path) -> str:
    """The paired comparison of one committed suite, recomputed from its per-run lines."""
    from dtr_plugins.experiments.compare import compare_runs
    from dtr_plugins.experiments.compare_markdown import render_comparison_markdown
    from dtr_plugins.experiments.cost_report import cost_table
    from dtr_plugins.experiments.raw_results import primary_of, read_raw_results, records_from_raw

    lines = read_raw_results(path)
    primary = primary_of(lines)
    records = records_from_raw(lines)
    result = compare_runs(records, primary=primary)
    text = render_comparison_markdown(result).split("\n", 2)[2]  # without the section heading
    costs = cost_table(records, result)
    if costs:  # the cost section one heading level down, inside the block
        text = text.rstrip("\n") + "\n\n#" + costs
    machines = sorted({f"{x['machine']}, torch {x['torch']}" for x in lines})
    dates = sorted(str(x["date"])[:10] for x in lines if x.get("date"))
    rel = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    head = (f"From `{rel}` ({len(lines)} runs; {'; '.join(machines)}; "
            f"{dates[0] + ' to ' + dates[-1] if dates else 'date unknown'}).\n\n")
    return head + text.rstrip("\n") + "\n"


#: Result stems written before the JSONs named their script: the stem's prefix names it.
SCRIPT_BY_PREFIX = (("train_step", "train_step"), ("routing_overhead", "routing_overhead"),
                    ("routing_sites", "routing_sites"), ("sample", "sample"), ("eval", "eval"),
                    ("compile_check", "compile_check"), ("heldout_cost", "heldout_cost"), ("pooled", "pool"),
                    ("accumulation", "accumulation"), ("train_buckets", "train_buckets"))


@functools.cache
def bench_module(bench: Path, script: str) -> ModuleType:
    """``benchmarks/<script>.py`` imported without running it (its ``main`` sits under ``__main__``)."""
    if str(bench) not in sys.path:
        sys.path.insert(0, str(bench))  # the scripts import _common / _published as top-level modules
    spec = importlib.util.spec_from_file_location(f"bench_{script}", bench / f"{script}.py")
    if spec is None or spec.loader is None:
        raise ValueError(f"benchmarks/{script}.py: not found")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


def script_of(payload: dict[str, Any], stem: str) -> str | None:
    """The benchmark script that wrote a result: its ``script`` field, else the stem's prefix (older files)."""
    if isinstance(payload.get("script"), str):
        return payload["script"]
    return next((script for prefix, script in SCRIPT_BY_PREFIX if stem.startswith(prefix)), None)


def bench_block(path: Path, bench: Path) -> str:
    """The rebuilt Markdown of one committed benchmark result (see the module docstring)."""
    payload = json.loads(path.read_text())
    script = script_of(payload, path.stem)
    if script is None:
        raise ValueError(f"{path}: no benchmark script renders it (no 'script' field, unknown stem prefix)")
    text = bench_module(bench, script).render(payload)
    text = re.sub(r"^#{1,6} (.+)$", r"**\1**", text.strip("\n"), flags=re.M)
    rel = path.relative_to(bench.parent) if path.is_relative_to(bench.parent) else path
    return f"From `{rel}`, rendered by `benchmarks/{script}.py`:\n\n{text}\n"


def targets_table(repo: Path, device: str | None = None) -> str:
    """``check_targets.py``'s table over the committed results folders (``device``: only its targets)."""
    ct = bench_module(repo / "benchmarks", "check_targets")
    targets = [t for t in ct.load_targets(repo / "benchmarks" / "targets.yaml") if device in (None, t.device)]
    metrics = {d: ct.load_metrics(repo / "benchmarks" / f"results-{d}", d) for d in ct.DEVICES}
    return ct.report(targets, metrics)[0] + "\n"


def _eager_gpu(repo: Path) -> list[tuple[str, dict, dict]]:
    """(size, dit section, rows by variant) of the committed eager GPU train_step results."""
    out = []
    for tag in ("S2", "B2", "L2"):
        path = repo / "benchmarks" / "results-gpu" / f"train_step_{tag}.json"
        data = json.loads(path.read_text())["dit"]
        out.append((data["config"]["size"], data, {r["variant"]: r for r in data["results"] if "step_s" in r}))
    return out


def _paired(o: dict) -> str:
    return f"{_pct(o['paired_median'])} [{_pct(o['ci95_low'])}, {_pct(o['ci95_high'])}]"


def train_step_gpu_eager(repo: Path = REPO) -> str:
    """One row per DiT size of the eager GPU training-step results."""
    lines = ["From `benchmarks/results-gpu/train_step_{S2,B2,L2}.json` (full tables: the `bench:` blocks of each).",
             "", "| model | vanilla step (ms) | dtr step (ms) | dtr overhead, paired [95% CI] | published-style "
             "overhead, paired [95% CI] | published / ours | our dtr step vs published dtr step | random, "
             "task_specific_sharing overhead (paired) | dtr MFU | dtr peak memory | timed rounds |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for size, data, rows in _eager_gpu(repo):
        comp = next(iter(data["comparisons"].values()))
        others = ", ".join(_pct(rows[v]["overhead"]["paired_median"]) if v in rows else "not run"
                           for v in ("random", "task_specific_sharing"))
        dtr = rows["dtr"]
        lines.append(f"| DiT-{size} | {1e3 * rows['vanilla']['step_s']['median']:.1f} | "
                     f"{1e3 * dtr['step_s']['median']:.1f} | {_paired(dtr['overhead'])} | "
                     f"{_paired(rows['pub_dtr']['overhead'])} | {comp['published_over_ours']:.2f}x | "
                     f"{_pct(comp['dtr_vs_pub_dtr']['ratio_of_medians'])} | {others} | {100 * dtr['mfu']:.1f}% | "
                     f"{dtr['peak_memory_bytes'] / 1e9:.1f} GB | {dtr['step_s']['n']} of {data['config']['steps']} |")
    return "\n".join(lines) + "\n"


def speed_summary(repo: Path = REPO) -> str:
    """README's GPU sentence: eager overheads, the compiled end-to-end speed-up, the missed GPU targets."""
    eager = _eager_gpu(repo)
    ours = [rows["dtr"]["overhead"]["paired_median"] for _, _, rows in eager]
    pub = [rows["pub_dtr"]["overhead"]["paired_median"] for _, _, rows in eager]
    comp = json.loads((repo / "benchmarks" / "results-gpu" / "train_step_B2_compile.json").read_text())["dit"]
    dtr = next(r for r in comp["results"] if r["variant"] == "dtr+compile")
    ct = bench_module(repo / "benchmarks", "check_targets")
    gpu = [t for t in ct.load_targets(repo / "benchmarks" / "targets.yaml") if t.device == "gpu"]
    _, records = ct.report(gpu, {d: ct.load_metrics(repo / "benchmarks" / f"results-{d}", d) for d in ct.DEVICES})
    missed = [r["id"] for r in records if r["verdict"] == "MISSED"]
    mask = {row[0]: row for row in json.loads((repo / "benchmarks" / "results-cpu" / "train_step_S2.json")
                                                .read_text())["dit"]["mask_memory"]["by_size"]}["DiT-L/2"]
    when = _when(json.loads((repo / "benchmarks" / "results-gpu" / "train_step_B2.json").read_text())["machine"])
    sizes = ", ".join(f"DiT-{size}" for size, _, _ in eager)
    return (f"The mask tables of a DiT-L/2 take {mask[2]} (ours, bool, not in checkpoints) instead of {mask[4]} "
            f"(published style, float). On the GPU ({when}; bf16, batch 256, `bash benchmarks/gpu.sh`) DTR adds "
            f"{100 * min(ours):.1f}-{100 * max(ours):.1f}% (paired medians) to an eager training step of {sizes} "
            f"(the published style {100 * min(pub):.1f}-{100 * max(pub):.1f}%), a compiled DiT-B/2 step runs "
            f"{comp['comparisons']['end_to_end_speedup']:.2f}x faster than the published fp16 eager recipe at "
            f"{100 * dtr['mfu']:.1f}% MFU, and {len(missed)} of the {len(records)} GPU targets are missed "
            f"({', '.join(f'`{m}`' for m in missed)}).\n")


def heldout_cost_summary(repo: Path = REPO) -> str:
    """docs/comparisons.md's sentence on what held-out evaluation adds to training."""
    rel = "benchmarks/results-cpu/heldout_cost.json"
    d = json.loads((repo / rel).read_text())
    ratio = statistics.median(d["eval_s"]) / statistics.median(d["step_s"])
    return (f"on the quickstart model (`{Path(d['args']['config']).name}`) on one CPU thread one held-out "
            f"evaluation takes {ratio:.1f} training steps (medians of {d['args']['rounds']} interleaved rounds, "
            f"`{rel}`), so evaluating every 200 steps adds {ratio / 200:.1%} to training.\n")


#: the Fashion-MNIST suite on one GPU: ``dtr suite configs/suites/fashion_routing.yaml`` with these ``--set``s
#: (a DiT-S/2-shaped model: 196 tokens of 384 channels, 12 blocks; 50k steps of 256 images, bf16)
FASHION_GPU_SETS = ("backbone.patch_size=2", "backbone.hidden_size=384", "backbone.depth=12", "backbone.num_heads=6",
                    "train.steps=50000", "train.batch_size=256", "train.precision=bf16", "train.ckpt_every=5000",
                    "eval.heldout_every=2500", "eval.num_samples=10000", "sample.batch_size=500")


def _fashion_macs(sets: tuple[str, ...]) -> tuple[float, int]:
    """(forward multiply-adds per image, parameters) of the Fashion-MNIST recipe's DiT with ``sets`` applied,
    counted by torch's FlopCounterMode on the built model (the suite's base config)."""
    import torch

    sys.path.insert(0, str(REPO / "benchmarks"))
    from _common import counted_forward_macs  # type: ignore[import-not-found]

    from dtr_plugins.compose import build_model
    from dtr_plugins.core.config import load_config

    cfg = load_config(REPO / "configs" / "fashion_dit.yaml", overrides=list(sets))
    model = build_model(cfg).eval()
    b = cfg.backbone.params
    x = torch.zeros(1, b["in_channels"], b["input_size"], b["input_size"])
    macs = counted_forward_macs(model, (x, torch.zeros(1, dtype=torch.long), torch.zeros(1, dtype=torch.long)))
    return macs, sum(p.numel() for p in model.parameters())


def fashion_gpu_estimate(repo: Path = REPO) -> str:
    """The Fashion-MNIST suite's GPU recipe and its estimated time per run: the measured DiT-B/2 training
    throughput on the H200 (committed) scaled by the ratio of counted forward multiply-adds. An estimate."""
    rel = "benchmarks/results-gpu/train_step_B2.json"
    d = json.loads((repo / rel).read_text())
    b2 = d["dit"]["config"]
    vanilla = next(r for r in d["dit"]["results"] if r["variant"] == "vanilla")
    macs, params = _fashion_macs(FASHION_GPU_SETS)
    cpu_macs, cpu_params = _fashion_macs(())
    sets = dict(s.partition("=")[::2] for s in FASHION_GPU_SETS)
    steps, batch = int(sets["train.steps"]), int(sets["train.batch_size"])
    images_per_s = vanilla["images_per_s"] * b2["counted_forward_macs_per_image"] / macs
    hours = steps * batch / images_per_s / 3600
    command = "dtr suite configs/suites/fashion_routing.yaml " + " ".join(f"--set {s}" for s in FASHION_GPU_SETS)
    return (f"```bash\n{command}\n```\n\n"
            f"A DiT-S/2-shaped model: {params / 1e6:.1f}M parameters, {macs / 1e9:.2f} GMACs per image forward "
            f"(the CPU recipe: {cpu_params / 1e6:.1f}M, {cpu_macs / 1e9:.3f} GMACs). **Estimate, not a measurement**: "
            f"DiT-B/2 trained at {vanilla['images_per_s']:.0f} images/s on the {d['machine']['gpu']} "
            f"({b2['counted_forward_macs_per_image'] / 1e9:.1f} GMACs per image, {vanilla['precision']}, MFU "
            f"{vanilla['mfu']:.0%}; `{rel}`); scaled by multiply-adds that is {images_per_s:.0f} images/s, so "
            f"{steps:,} steps of {batch} images take about {hours:.1f} h per run, training only. A smaller model "
            f"keeps a GPU less busy than DiT-B/2 does, so read it as a lower bound; sampling "
            f"{sets['eval.num_samples']} images for the final evaluation adds minutes.\n")


def fashion_sizing(repo: Path = REPO) -> str:
    """The measurements that chose the Fashion-MNIST recipe (``benchmarks/results-cpu/fashion_routing/sizing.json``)."""
    rel = "benchmarks/results-cpu/fashion_routing/sizing.json"
    d = json.loads((repo / rel).read_text())
    lines = [f"From `{rel}` ({d['date']}; {d['machine']}): {d['what']}.", "",
             "| model | steps x batch | weights | guidance | samples | class accuracy | FID | precision | recall "
             "| held-out loss |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in d["rows"]:
        model = r["model"] + (f", seed {r['seed']}" if r.get("seed", 0) else "")
        held = "—" if r["heldout_total"] is None else f"{r['heldout_total']:.4f}"  # None: not scored in that run
        lines.append(f"| {model} | {r['train_steps']} x {r['batch_size']} | {r['weights']} | {r['cfg_scale']:g} "
                     f"| {r['num_samples']} | {r['class_accuracy']:.3f} | {r['frechet_inception_distance']:.1f} "
                     f"| {r['precision']:.3f} | {r['recall']:.3f} | {held} |")
    for t in d.get("timings", []):
        lines += ["", f"Time, {t['model']}: {t['what']} took {t['seconds']:.0f} s with {t['parallel']} runs at a time, "
                      f"{t['sampling_seconds']:.0f} s of it sampling, so "
                      f"{(t['seconds'] - t['sampling_seconds']) / t['steps']:.2f} s per training step with its "
                      f"held-out passes ({t['source']}; the machine was not otherwise idle)."]
    lines += ["", f"Chosen: {d['chosen']}."]
    return "\n".join(lines) + "\n"


def recipe_table(path: Path, planned: dict[str, int] | None = None) -> str:
    """What a suite's recipe measured, from its committed per-run lines: run time, the seed-to-seed spread of
    the primary metric, the smallest paired difference it resolves, and the class accuracy of the samples.

    Per strategy (runs grouped by their axes): runs, median wall time per run (the launcher's, with its threads),
    mean and SD over seeds of the primary metric and of ``class_accuracy``; per strategy but vanilla, the SD of the
    paired differences against vanilla (same seed and other axes) and the half-width of the t-interval of
    their mean with that many pairs, at the level of the primary family (Bonferroni over the strategies and
    settings compared, as the report tests them), as a share of vanilla's mean: the smallest relative difference
    that resolves at that spread. ``planned``: runs per group that the suite file plans (:func:`planned_runs`),
    for the whole suite's time when fewer have finished."""
    from scipy import stats

    from dtr_plugins.experiments.raw_results import primary_of, read_raw_results

    lines = [x for x in read_raw_results(path) if x["status"] == "done"]
    primary = primary_of(lines)

    def setting(x: dict[str, Any]) -> tuple[tuple[str, str], ...]:  # every axis but the strategy
        return tuple(sorted((k, str(v)) for k, v in x["axes"].items() if k != "routing"))

    groups: dict[tuple[str, tuple[tuple[str, str], ...]], list[dict[str, Any]]] = {}
    for x in lines:
        groups.setdefault((str(x["axes"].get("routing", "base")), setting(x)), []).append(x)
    reference = {(set_, x["seed"]): x["final"].get(primary) for (name, set_), runs in groups.items()
                 if name == "vanilla" for x in runs}

    def mean_sd(values: list[float]) -> str:
        if not values:
            return "n/a"
        return f"{statistics.fmean(values):.4g} ± {statistics.stdev(values):.2g}" if len(values) > 1 else \
            f"{values[0]:.4g}"

    compared = sum(name != "vanilla" for name, _ in groups)  # the primary family: one comparison per group
    level = 1 - 0.05 / max(compared, 1)
    rows = [f"| strategy | runs | wall time per run (median) | {primary} (mean ± SD over seeds) | SD of paired "
            f"differences | smallest resolvable paired difference ({level * 100:.4g}%) | class accuracy of samples |",
            "|---|---|---|---|---|---|---|"]
    for (name, set_), runs in groups.items():
        seconds = [x["seconds"] for x in runs if x.get("seconds") is not None and not x.get("resumed")]
        threads = sorted({str(x.get("threads")) for x in runs if x.get("seconds") is not None})
        wall = (f"{statistics.median(seconds) / 60:.1f} min ({len(seconds)} unresumed runs, threads "
                f"{'/'.join(threads)})" if seconds else "not recorded")
        values = [x["final"][primary] for x in runs if x["final"].get(primary) is not None]
        accuracy = [x["final"]["class_accuracy"] for x in runs if x["final"].get("class_accuracy") is not None]
        spread = resolvable = "(reference)" if name == "vanilla" else "n/a"
        base = [v for (s_, _), v in reference.items() if s_ == set_ and v is not None]
        diffs = [x["final"][primary] - reference[(set_, x["seed"])] for x in runs if name != "vanilla"
                 and reference.get((set_, x["seed"])) is not None and x["final"].get(primary) is not None]
        if len(diffs) > 1 and base:
            sd = statistics.stdev(diffs)
            half = float(stats.t.ppf(1 - (1 - level) / 2, len(diffs) - 1)) * sd / len(diffs) ** 0.5
            spread = f"{sd:.2g}"
            resolvable = f"±{half / statistics.fmean(base):.2%} of vanilla's mean ({len(diffs)} pairs)"
        label = name + (f" ({', '.join(f'{k}={v}' for k, v in set_)})" if set_ else "")
        rows.append(f"| {label} | {len(runs)} | {wall} | {mean_sd(values)} | {spread} | {resolvable} | "
                    f"{mean_sd(accuracy)} |")
    rel = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    return f"From `{rel}` ({len(lines)} finished runs).\n\n" + "\n".join(rows) + "\n" + _suite_hours(groups, planned)


def planned_runs(suite_file: Path) -> dict[str, int]:
    """Runs per group (the run id without its seed) that ``suite_file`` plans; empty when there is no such file."""
    if not suite_file.is_file():
        return {}
    from dtr_plugins.experiments.suite import load_suite

    counts: dict[str, int] = {}
    for run in load_suite(suite_file).runs:
        counts[run.group] = counts.get(run.group, 0) + 1
    return counts


def _suite_hours(groups: dict[Any, list[dict[str, Any]]], planned: dict[str, int] | None = None) -> str:
    """The whole suite's time estimated from the recipe table: per strategy its median unresumed wall time times
    its runs (the suite file's planned runs of that group when ``planned`` names it, so that a suite committed part
    way is still estimated whole), summed, over the runs that trained side by side (one thread each, so one per
    core). Empty when a strategy has no timed run or the runs did not all use one thread."""
    total = 0.0
    counted = finished = 0
    for runs in groups.values():
        seconds = [x["seconds"] for x in runs if x.get("seconds") is not None and not x.get("resumed")]
        if not seconds or any(x.get("threads") != 1 for x in runs if x.get("seconds") is not None):
            return ""
        n = max((planned or {}).get(str(runs[0].get("group")), 0), len(runs))
        total += statistics.median(seconds) * n
        counted, finished = counted + n, finished + len(runs)
    part = f" ({counted} planned runs, {finished} of them finished)" if counted > finished else ""
    return (f"\nThe whole suite{part}, estimated from these medians (median x runs, summed): {total / 3600:.2g} "
            f"run-hours of one thread each, so about {total / 7200:.2g} h on 2 cores with `--parallel 2`.\n")


def suite_summary(path: Path) -> str:
    """A committed suite's primary metric in plain words (``dtr_plugins/experiments/compare_summary.py``)."""
    from dtr_plugins.experiments.compare_summary import primary_summary
    from dtr_plugins.experiments.raw_results import read_raw_results

    rel = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    return primary_summary(read_raw_results(path), str(rel))


def suite_cpu_time(path: Path) -> str:
    """The CPU time a suite took (``cpu_time.json`` beside its ``runs.jsonl``: per pass, user and system CPU
    seconds of the suite and all its runs as ``/usr/bin/time`` measured them, wall seconds, runs at a time)."""
    d = json.loads(path.read_text())
    rows = [f"{p['pass']} {(p['cpu_user_s'] + p['cpu_sys_s']) / 60:.1f} CPU-min ({p['wall_s'] / 60:.0f} min wall, "
            f"{p['parallel']} runs at a time)" for p in d["passes"]]
    total = sum(p["cpu_user_s"] + p["cpu_sys_s"] for p in d["passes"]) / 60
    return (f"CPU time of the whole suite (`{path.relative_to(REPO) if path.is_relative_to(REPO) else path}`, "
            f"user + system of every run, `/usr/bin/time`; {d['machine']}): **{total:.1f} CPU-minutes**, the time "
            f"it takes on one free core: {'; '.join(rows)}.\n")


def builders(repo: Path = REPO) -> dict[str, Callable[[], str]]:
    out: dict[str, Callable[[], str]] = {
        "routing-overhead-cpu": lambda: _overhead_text("benchmarks/results-cpu/routing_overhead.json"),
        "routing-overhead-gpu": lambda: _overhead_text("benchmarks/results-gpu/routing_overhead_B2.json"),
        "routing-overhead-summary": routing_overhead_summary,
        "sampling-sites-gpu": sampling_sites_gpu,
        "sampling-sites-summary": sampling_sites_summary,
        "targets": lambda: targets_table(repo),
        "targets-gpu": lambda: targets_table(repo, "gpu"),
        "train-step-gpu-eager": lambda: train_step_gpu_eager(repo),
        "speed-summary": lambda: speed_summary(repo),
        "heldout-cost-summary": lambda: heldout_cost_summary(repo),
        "fashion-gpu-estimate": lambda: fashion_gpu_estimate(repo),
        "fashion-sizing": lambda: fashion_sizing(repo),
        "train-buckets-cpu": train_buckets_cpu,
        "heads-mlp-summary": lambda: heads_mlp_summary(repo),
    }
    bench = repo / "benchmarks"
    for path in sorted(bench.glob("results-*/*.json")):
        if path.stem != "check_targets":  # check_targets.json is the targets' verdicts: block ``targets``
            out[f"bench:{path.parent.name}/{path.stem}"] = (lambda p=path: bench_block(p, bench))
    for raw in sorted(repo.glob("benchmarks/results-*/*/runs.jsonl")):
        machine = raw.parent.parent.name.removeprefix("results-")
        out[f"suite-{machine}-{raw.parent.name}"] = (lambda p=raw: suite_table(p))
        out[f"recipe-{machine}-{raw.parent.name}"] = (lambda p=raw: recipe_table(
            p, planned_runs(repo / "configs" / "suites" / f"{p.parent.name}.yaml")))
        out[f"summary-{machine}-{raw.parent.name}"] = (lambda p=raw: suite_summary(p))
        if (raw.parent / "cpu_time.json").is_file():
            out[f"cpu-time-{machine}-{raw.parent.name}"] = (lambda p=raw.parent / "cpu_time.json": suite_cpu_time(p))
    return out


def rebuild(text: str, source: str, table: dict[str, Callable[[], str]]) -> str:
    """``text`` with every marked block replaced by its rebuild; ``ValueError`` for a block with no source."""
    def one(match: re.Match) -> str:
        name = match["name"]
        if name not in table:
            raise ValueError(f"{source}: block figures:{name} has no committed source (known: {', '.join(table)})")
        return match.group(1) + table[name]() + match.group(4)

    return MARKER.sub(one, text)


def suite_figures(repo: Path = REPO) -> list[Path]:
    """Beside each committed ``runs.jsonl``, drawn from that file alone: ``quality_vs_flops.png`` (the suite's
    primary metric against sampling FLOPs per image, one point per run; only when the runs carry their cost),
    ``paired_differences.png`` (forest plot of the paired differences against the baseline with their
    intervals, as the ``suite-*`` block's table) and ``heldout_loss_bands.png`` (held-out loss per noise band
    over training, mean over seeds with the seeds' range), each only when there is something to draw."""
    from dtr_plugins.experiments.compare import compare_runs
    from dtr_plugins.experiments.compare_plots import group_curves, plot_forest, plot_heldout_bands
    from dtr_plugins.experiments.cost_report import plot_quality_vs_flops
    from dtr_plugins.experiments.raw_results import primary_of, read_raw_results, records_from_raw

    drawn = []
    for raw in sorted(repo.glob("benchmarks/results-*/*/runs.jsonl")):
        lines = read_raw_results(raw)
        records = records_from_raw(lines)
        done = [r for r in records if r.status == "done"]
        path = plot_quality_vs_flops(done, primary_of(lines), raw.parent / "quality_vs_flops.png")
        drawn += [path] if path is not None else []
        result = compare_runs(records, primary=primary_of(lines))
        if any(d.mean is not None for d in result.differences):
            drawn.append(plot_forest(result, raw.parent / "paired_differences.png"))
        groups = group_curves(done)
        if any(m.startswith("heldout/") for cs in groups.values() for c in cs for m in c):
            drawn.append(plot_heldout_bands(groups, raw.parent / "heldout_loss_bands.png"))
    return drawn


def documents(repo: Path = REPO) -> list[Path]:
    return [repo / "README.md", *sorted((repo / "docs").glob("*.md"))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="change nothing; exit 1 when a block is out of date")
    args = parser.parse_args(argv)
    table = builders()
    stale = []
    for doc in documents():
        text = doc.read_text()
        try:
            new = rebuild(text, str(doc.relative_to(REPO)), table)
        except ValueError as exc:
            print(f"figures: {exc}", file=sys.stderr)
            return 2
        if new != text:
            stale.append(doc.relative_to(REPO))
            if not args.check:
                doc.write_text(new)
    pictures = [] if args.check else suite_figures()
    blocks = sum(len(MARKER.findall(d.read_text())) for d in documents())
    if args.check and stale:
        print(f"figures: out of date in {', '.join(map(str, stale))}; run `make figures`", file=sys.stderr)
        return 1
    print(f"figures: {blocks} blocks {'checked' if args.check else 'rebuilt'}"
          + (f", rewrote {', '.join(map(str, stale))}" if stale and not args.check else "")
          + (f"; drew {', '.join(str(p.relative_to(REPO)) for p in pictures)}" if pictures else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
