"""Does ``torch.compile`` of a routed model recompile across timesteps or batches?

Masks are tensor inputs (rows gathered from a buffer by the timestep tensor), so new timesteps must never
recompile. The check compiles a small DiT (and the ADM ``small`` preset) per routing strategy, runs training
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

import common

STRATEGIES = ("vanilla", "dtr", "random", "task_specific_sharing")


def _counters() -> dict[str, int]:
    from torch._dynamo.utils import counters

    return {"unique_graphs": int(counters["stats"].get("unique_graphs", 0)),
            "calls_captured": int(counters["stats"].get("calls_captured", 0))}


def check(name: str, build, in_shape, num_classes: int, strategy: str, args, device) -> dict:
    import dtr_plugins as dp
    from dtr_plugins.core.diffusion import GaussianDiffusion, get_named_beta_schedule
    from dtr_plugins.core.routing import RoutingPlan

    torch._dynamo.reset()
    model = build().to(device)
    model.attach_routing(RoutingPlan(dp.build_strategy(strategy), model.routed_channels(), 1000).to(device))
    model.train()
    compiled = torch.compile(model, backend=args.backend, dynamic=True if args.dynamic else None)
    diffusion = GaussianDiffusion(get_named_beta_schedule("linear", 1000))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)

    def steps(batch: int, n: int) -> int:
        before = _counters()["unique_graphs"]
        for _ in range(n):
            x = torch.randn(batch, *in_shape, generator=g).to(device)
            t = torch.randint(0, 1000, (batch,), generator=g).to(device)
            y = torch.randint(0, num_classes, (batch,), generator=g).to(device)
            with common.autocast(args.precision, device):
                loss = diffusion.training_losses(compiled, x, t, model_kwargs={"y": y})["loss"].mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
        return _counters()["unique_graphs"] - before

    first = steps(args.batch, 1)
    same_shape = steps(args.batch, args.steps)
    second_size = steps(args.batch + 2, 2)
    third_size = steps(args.batch + 5, 2)
    ok = same_shape == 0 and second_size <= (0 if args.dynamic else 1) and third_size == 0
    return {"backbone": name, "strategy": strategy, "graphs_first_step": first,
            "new_graphs_same_shape": same_shape, "new_graphs_2nd_batch_size": second_size,
            "new_graphs_3rd_batch_size": third_size, "ok": ok}


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="auto")
    ap.add_argument("--backend", default=None, help="dynamo backend (default: inductor on CUDA, aot_eager on CPU)")
    ap.add_argument("--precision", choices=("fp32", "bf16", "fp16"), default="fp32")
    ap.add_argument("--dynamic", action="store_true", help="compile with dynamic=True")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=6, help="steps with fresh timesteps and data at one shape")
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--backbones", default="dit,adm")
    ap.add_argument("--out-dir", default=None)
    ap.add_argument("--smoke", action="store_true", help="fewer steps and strategies")
    args = ap.parse_args(argv)
    if args.smoke:
        args.steps, args.strategies = 2, "vanilla,dtr"
    common.quiet_plugin_warnings()
    device = common.pick_device(args.device)
    common.setup_backends(device, None)
    args.backend = args.backend or ("inductor" if device.type == "cuda" else "aot_eager")

    from dtr_plugins.backbones.dit import DiT

    builds = {"dit": (lambda: DiT(input_size=8, patch_size=2, in_channels=4, hidden_size=64, depth=2, num_heads=4,
                                  num_classes=10), (4, 8, 8), 10)}
    if "adm" in args.backbones:
        try:
            from dtr_plugins.backbones.adm_unet import build_adm_unet

            builds["adm"] = (lambda: build_adm_unet(preset="small"), (1, 8, 8), 10)
        except Exception as exc:  # noqa: BLE001
            print(f"ADM skipped: dtr_plugins.backbones.adm_unet does not import ({exc})", file=sys.stderr)
    rows = []
    for name, (build, shape, classes) in builds.items():
        if name not in args.backbones:
            continue
        for strategy in args.strategies.split(","):
            r = check(name, build, shape, classes, strategy, args, device)
            print(r, file=sys.stderr, flush=True)
            rows.append(r)
    info = common.machine_info(device)
    md = "\n".join(common.header_lines(info)) + (
        f"\n\n### torch.compile recompiles (backend {args.backend}, {args.precision}, "
        f"dynamic={'True' if args.dynamic else 'None (automatic)'}, training steps)\n\n") + common.markdown_table(
        ["backbone", "strategy", "graphs, 1st step", f"new graphs, {args.steps} more steps (new t, new data)",
         f"new graphs, batch {args.batch + 2}", f"new graphs, batch {args.batch + 5}", "as expected"],
        [[r["backbone"], r["strategy"], r["graphs_first_step"], r["new_graphs_same_shape"],
          r["new_graphs_2nd_batch_size"], r["new_graphs_3rd_batch_size"], "yes" if r["ok"] else "NO"] for r in rows])
    common.write_outputs(args.out_dir, "compile_check", md, {"machine": info, "args": vars(args), "results": rows})
    if not all(r["ok"] for r in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
