"""Rebuild every measured table and figure of README.md and docs/*.md from committed raw results.

    python scripts/figures.py            # rewrite the blocks between <!-- figures:NAME --> and <!-- /figures:NAME -->
    python scripts/figures.py --check    # exit 1 and name each block that differs from its rebuild

Sources (nothing else, nothing downloaded, no torch needed; seconds):

- ``benchmarks/results-<machine>/<suite>/runs.jsonl``: one line per run of a suite (the ``raw_results.jsonl``
  that ``dtr report`` writes, see ``dtr_plugins/experiments/raw_results.py``) -> block ``suite-<machine>-<suite>``:
  the paired comparison recomputed from the per-run values (intervals, multiplicity, verdicts);
- ``benchmarks/results-cpu/routing_overhead.json``, ``benchmarks/results-gpu/routing_overhead_B2.json``
  -> ``routing-overhead-cpu``, ``routing-overhead-gpu``, ``routing-overhead-summary``;
- ``benchmarks/results-gpu/routing_sites_B2.json`` -> ``sampling-sites-gpu``, ``sampling-sites-summary``;
- ``benchmarks/results-cpu/train_buckets_t*.json`` (``benchmarks/train_buckets.py``) -> ``train-buckets-cpu``.

A block whose name has no source is an error (its numbers could not be rebuilt).
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"(<!-- figures:(?P<name>[\w.-]+) -->\n)(?P<body>.*?)(<!-- /figures:(?P=name) -->)", re.S)


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
             "| variant | median s per call | speed vs vanilla (ratio of medians) | paired speed, median | "
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
    lines = [f"Measured (`{'`, `'.join(rels)}`; {_when(_load(rels[0])['machine'])}): one training step (forward, "
             "loss, backward, AdamW) of DTR (alpha 4) at `heads_mlp`, speed = vanilla's step time / the variant's in "
             "the same round (above 1: faster), paired median over the interleaved rounds with its 95% bootstrap "
             "interval; masked = `train.timestep_buckets: 0`; union width = share of the routed units the buckets "
             "ran. The goals of the issue: 1.15x vanilla at beta 0.8, 1.5x at beta 0.5.", "",
             "| model | threads (load average at start) | rounds | beta | masked | K auto (mean K, union width) | "
             "best fixed K | goal |", "|---|---|---|---|---|---|---|---|"]
    for rel in rels:
        load = _load(rel)["machine"].get("load_average", ["?"])[0]
        for g in _load(rel)["groups"]:
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
                             f"| {auto_text} | {best_text} | {goal}x: {verdict} |")
    return "\n".join(lines) + "\n"


def suite_table(path: Path) -> str:
    """The paired comparison of one committed suite, recomputed from its per-run lines."""
    from dtr_plugins.experiments.compare import DEFAULT_PRIMARY, compare_runs
    from dtr_plugins.experiments.compare_markdown import render_comparison_markdown
    from dtr_plugins.experiments.raw_results import read_raw_results, records_from_raw

    lines = read_raw_results(path)
    primary = next((str(x["primary"]) for x in lines if x.get("primary")), DEFAULT_PRIMARY)
    result = compare_runs(records_from_raw(lines), primary=primary)
    text = render_comparison_markdown(result).split("\n", 2)[2]  # without the section heading
    machines = sorted({f"{x['machine']}, torch {x['torch']}" for x in lines})
    dates = sorted(str(x["date"])[:10] for x in lines if x.get("date"))
    rel = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    head = (f"From `{rel}` ({len(lines)} runs; {'; '.join(machines)}; "
            f"{dates[0] + ' to ' + dates[-1] if dates else 'date unknown'}).\n\n")
    return head + text.rstrip("\n") + "\n"


def builders(repo: Path = REPO) -> dict[str, Callable[[], str]]:
    out: dict[str, Callable[[], str]] = {
        "routing-overhead-cpu": lambda: _overhead_text("benchmarks/results-cpu/routing_overhead.json"),
        "routing-overhead-gpu": lambda: _overhead_text("benchmarks/results-gpu/routing_overhead_B2.json"),
        "routing-overhead-summary": routing_overhead_summary,
        "sampling-sites-gpu": sampling_sites_gpu,
        "sampling-sites-summary": sampling_sites_summary,
        "train-buckets-cpu": train_buckets_cpu,
    }
    for raw in sorted(repo.glob("benchmarks/results-*/*/runs.jsonl")):
        machine = raw.parent.parent.name.removeprefix("results-")
        out[f"suite-{machine}-{raw.parent.name}"] = (lambda p=raw: suite_table(p))
    return out


def rebuild(text: str, source: str, table: dict[str, Callable[[], str]]) -> str:
    """``text`` with every marked block replaced by its rebuild; ``ValueError`` for a block with no source."""
    def one(match: re.Match) -> str:
        name = match["name"]
        if name not in table:
            raise ValueError(f"{source}: block figures:{name} has no committed source (known: {', '.join(table)})")
        return match.group(1) + table[name]() + match.group(4)

    return MARKER.sub(one, text)


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
    blocks = sum(len(MARKER.findall(d.read_text())) for d in documents())
    if args.check and stale:
        print(f"figures: out of date in {', '.join(map(str, stale))}; run `make figures`", file=sys.stderr)
        return 1
    print(f"figures: {blocks} blocks {'checked' if args.check else 'rebuilt'}"
          + (f", rewrote {', '.join(map(str, stale))}" if stale and not args.check else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
