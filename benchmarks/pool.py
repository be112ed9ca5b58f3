"""Pool the per-round paired ratios of several ``train_step.py`` runs of the same configuration.

On a shared machine one run's 95% interval can be wider than the effect; runs of the same configuration (same
model, batch, input size, precision) can be pooled: every round of every run gives one paired ratio per
comparison (``dtr`` vs ``vanilla``, ``pub_dtr`` vs ``pub_vanilla``, ``dtr`` vs ``pub_dtr``), and the pooled median
gets a bootstrap interval over all rounds.

    python benchmarks/pool.py benchmarks/results-cpu/train_step_S2*.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common
from _common import fmt_pct

PAIRS = (("dtr", "vanilla", "our routing overhead (dtr vs vanilla)"),
         ("pub_dtr", "pub_vanilla", "published-style overhead (pub_dtr vs pub_vanilla)"),
         ("dtr", "pub_dtr", "our dtr step vs published-style dtr step"))


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+", help="train_step JSON files")
    ap.add_argument("--backbone", default="dit")
    ap.add_argument("--out-dir", default=None)
    args = ap.parse_args(argv)
    configs, pooled = set(), {p: ([], []) for p in PAIRS}
    rounds = []
    for path in args.runs:
        data = json.loads(Path(path).read_text())[args.backbone]
        cfg = data["config"]
        configs.add(json.dumps({k: v for k, v in cfg.items() if k not in ("steps", "warmup")}, sort_keys=True))
        by = {(r["kind"], r["precision"], r["compile"]): r for r in data["results"] if "times_s" in r}
        rounds.append(f"{Path(path).name}: {cfg['steps']} rounds")
        for pair in PAIRS:
            for (kind, prec, comp), r in by.items():
                ref = by.get((pair[1], prec, comp))
                if kind == pair[0] and ref is not None:
                    n = min(len(r["times_s"]), len(ref["times_s"]))
                    pooled[pair][0].extend(r["times_s"][:n])
                    pooled[pair][1].extend(ref["times_s"][:n])
    if len(configs) != 1:
        raise SystemExit("runs differ in configuration (model, batch, input size...); pool only like with like")
    out = {}
    for pair, (a, b) in pooled.items():
        if a:
            out[pair[2]] = {**common.paired_overhead(a, b), "rounds": len(a)}
    metrics = {f"{k}.{stat}": v[stat] for k, v in zip(("dtr_vs_vanilla", "pub_dtr_vs_pub_vanilla", "dtr_vs_pub_dtr"),
                                                      (out.get(p[2]) for p in PAIRS)) if v
               for stat in ("paired_median", "ci95_low", "ci95_high")}
    payload = {"script": "pool", "machine": common.machine_info(torch.device("cpu")), "runs": args.runs,
               "run_rounds": rounds, "pooled": out}
    common.write_outputs(args.out_dir, "pooled", render(payload), payload, metrics)


def render(payload: dict) -> str:
    """The Markdown of a pool result, from its JSON alone (``scripts/figures.py`` rebuilds docs with it).
    Files before 2026-12 did not record each run's round count: the runs are then named without it."""
    out = payload["pooled"]
    rows = [[name, o["rounds"], fmt_pct(o["paired_median"]), f"{fmt_pct(o['ci95_low'])} .. {fmt_pct(o['ci95_high'])}"]
            for name, o in out.items()]
    runs = payload.get("run_rounds") or [f"{Path(p).name} (rounds not recorded)" for p in payload["runs"]]
    md = (f"### Pooled paired ratios ({'; '.join(runs)})\n\n"
          + common.markdown_table(["comparison", "rounds", "pooled paired median", "95% CI (bootstrap)"], rows))
    ours, pub = out.get(PAIRS[0][2]), out.get(PAIRS[1][2])
    if ours and pub and ours["paired_median"] > 0:
        md += f"\n\npublished-style / ours (pooled paired medians): {pub['paired_median'] / ours['paired_median']:.2f}x"
    return md

if __name__ == "__main__":
    main()
