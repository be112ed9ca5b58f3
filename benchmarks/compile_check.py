"""Does ``torch.compile`` of a routed model recompile across timesteps or batches?

Masks are tensor inputs (rows gathered from a buffer by the timestep tensor), so new timesteps must never
recompile. The check compiles every registered backbone (its ``tiny`` size from ``models.yaml``, or its plugin
defaults) with every registered routing strategy (``--backbones`` / ``--strategies`` restrict them), runs training
steps (forward + backward) on fresh timesteps and data, then on a second and a third batch size, and reads
dynamo's counters:

- timesteps / data with the same shape: 0 recompiles expected;
- a new batch size: at most 1 recompile (dynamo's automatic dynamic shapes turn the batch dimension symbolic),
  then 0 for further sizes; with ``--dynamic`` the first compile is already dynamic.

The guards and recompiles are decided by dynamo, before the backend: ``--backend aot_eager`` (the default on CPU)
checks the same thing as ``inductor`` in seconds; ``gpu.sh`` runs it with ``inductor`` on the card.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common


def _counters() -> dict[str, int]:
    from torch._dynamo.utils import counters

    return {"unique_graphs": int(counters["stats"].get("unique_graphs", 0)),
            "calls_captured": int(counters["stats"].get("calls_captured", 0))}


def check(bm: common.BenchModel, strategy: str, args, device) -> dict:
    torch._dynamo.reset()
    model = common.routed_view(bm, strategy, device)
    model.train()
    compiled = torch.compile(model, backend=args.backend, dynamic=True if args.dynamic else None)
    diffusion = common.build_diffusion(bm)
    opt = torch.optim.AdamW(bm.base.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)

    def steps(batch: int, n: int) -> int:
        before = _counters()["unique_graphs"]
        for _ in range(n):
            x = torch.randn(batch, *bm.shape, generator=g).to(device)
            t = torch.randint(0, bm.num_tasks, (batch,), generator=g).to(device)
            kwargs = common.model_kwargs(bm, batch, device, g)
            with common.autocast(args.precision, device):
                loss = diffusion.training_losses(compiled, x, t, model_kwargs=kwargs)["loss"].mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return _counters()["unique_graphs"] - before

    first = steps(args.batch, 1)
    same_shape = steps(args.batch, args.steps)
    second_size = steps(args.batch + 2, 2)
    third_size = steps(args.batch + 5, 2)
    ok = same_shape == 0 and second_size <= (0 if args.dynamic else 1) and third_size == 0
    return {"backbone": bm.name, "strategy": strategy, "graphs_first_step": first,
            "new_graphs_same_shape": same_shape, "new_graphs_2nd_batch_size": second_size,
            "new_graphs_3rd_batch_size": third_size, "ok": ok}


def metrics_from_payload(payload: dict) -> dict[str, float]:
    """``all_ok`` (1 when every pair was checked and behaved as expected), ``checked`` and per-pair recompiles."""
    rows = payload["results"]
    m: dict[str, float] = {"checked": len(rows)}
    if not payload.get("interrupted"):  # a run stopped by a time limit did not check every pair
        m["all_ok"] = float(bool(rows) and all(r["ok"] for r in rows))
    for r in rows:
        m[f"{r['backbone']}.{r['strategy']}.new_graphs_same_shape"] = r["new_graphs_same_shape"]
    return m


def render(payload: dict) -> str:
    """The Markdown of a compile_check result, from its JSON alone (``scripts/figures.py`` rebuilds docs with it)."""
    args, rows = payload["args"], payload["results"]
    dynamic = "True" if args.get("dynamic") else "None (automatic)"
    md = "\n".join(common.header_lines(payload["machine"])) + (
        f"\n\n### torch.compile recompiles (backend {args['backend']}, {args['precision']}, "
        f"dynamic={dynamic}, training steps)\n\n") + common.markdown_table(
        ["backbone", "strategy", "graphs, 1st step", f"new graphs, {args['steps']} more steps (new t, new data)",
         f"new graphs, batch {args['batch'] + 2}", f"new graphs, batch {args['batch'] + 5}", "as expected"],
        [[r["backbone"], r["strategy"], r["graphs_first_step"], r["new_graphs_same_shape"],
          r["new_graphs_2nd_batch_size"], r["new_graphs_3rd_batch_size"], "yes" if r["ok"] else "NO"] for r in rows])
    if payload.get("skipped"):
        md += "\n\nNot checked: " + "; ".join(payload["skipped"])
    return md


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--backend", default=None, help="dynamo backend (default: inductor on CUDA, aot_eager on CPU)")
    ap.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    ap.add_argument("--dynamic", action="store_true", help="compile with dynamic=True")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=6, help="steps with fresh timesteps and data at one shape")
    ap.add_argument("--strategies", default=None, help="comma list (default: every registered strategy)")
    ap.add_argument("--backbones", default=None, help="comma list (default: every registered backbone)")
    ap.add_argument("--size", default="tiny", help="size label from models.yaml (or backbone=LABEL,...)")
    ap.add_argument("--out-dir", default=None)
    ap.add_argument("--smoke", action="store_true", help="fewer steps")
    ap.add_argument("--add-metrics", nargs="+", metavar="JSON", help="only recompute the metrics of result files")
    args = ap.parse_args(argv)
    if args.add_metrics:
        return common.add_metrics(args.add_metrics, metrics_from_payload)
    if args.smoke:
        args.steps = 2
    common.quiet_plugin_warnings()
    device = common.pick_device(args.device)
    common.setup_backends(device, None)
    args.backend = args.backend or ("inductor" if device.type == "cuda" else "aot_eager")

    rows, skipped, interrupted = [], [], False
    strategies = common.plugin_names("strategy", args.strategies)
    try:
        for backbone in common.plugin_names("backbone", args.backbones):
            bm, error = common.run_guarded(f"build {backbone}", lambda backbone=backbone: common.build_bench_model(
                backbone, common.size_for(backbone, args.size)))
            if bm is None:
                skipped.append(f"{backbone} (could not be built here: {error})")
                continue
            bm.base.to(device)
            for strategy in strategies:
                r, error = common.run_guarded(f"compile {backbone} {strategy}",
                                              lambda bm=bm, strategy=strategy: check(bm, strategy, args, device))
                if r is None:
                    r = {"backbone": backbone, "strategy": strategy, "error": error, "ok": False,
                         **dict.fromkeys(("graphs_first_step", "new_graphs_same_shape", "new_graphs_2nd_batch_size",
                                          "new_graphs_3rd_batch_size"), "")}
                print(r, file=sys.stderr, flush=True)
                rows.append(r)
    except KeyboardInterrupt:  # a time limit (gpu.sh sends SIGINT): report the pairs checked so far
        skipped.append("the rest: interrupted by a time limit")
        interrupted = True
        print("interrupted: reporting the pairs checked so far", file=sys.stderr, flush=True)
    payload = {"script": "compile_check", "machine": common.machine_info(device), "args": vars(args), "results": rows,
               "skipped": skipped, "interrupted": interrupted}
    common.write_outputs(args.out_dir, "compile_check", render(payload), payload, metrics_from_payload(payload))
    if not all(r["ok"] for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
