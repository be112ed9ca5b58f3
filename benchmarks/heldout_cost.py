"""Held-out loss cost: one held-out evaluation against one training step, as a ratio from one run.

The model is a run config's (default ``configs/dit_digits.yaml``, the quickstart's DiT on 8x8 digits). Each
round times one training step (``training_losses`` on a batch of ``train.batch_size``, backward, AdamW) and
one :func:`dtr_plugins.evaluation.heldout.heldout_losses` over ``num_bands * per_band`` fixed held-out inputs,
in alternating order. The table gives both medians, their ratio, and what evaluating every ``N`` steps adds
to training time (ratio / N).

    python benchmarks/heldout_cost.py --threads 2 --out-dir bench-out
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--config", default=str(ROOT / "configs" / "dit_digits.yaml"))
    ap.add_argument("--per-band", type=int, default=64)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out-dir", default=None)
    ap.add_argument("--smoke", action="store_true", help="2 rounds, 8 inputs per band")
    args = ap.parse_args(argv)
    if args.smoke:
        args.rounds, args.per_band = 2, 8
    common.quiet_plugin_warnings()
    device = common.pick_device(args.device)
    common.setup_backends(device, args.threads)

    import dtr_plugins as dp
    from dtr_plugins.core.plugins import default_registry
    from dtr_plugins.evaluation.heldout import heldout_losses, heldout_set_for

    cfg = dp.load_config(args.config)
    torch.manual_seed(cfg.seed)
    model = dp.build_model(cfg).to(device)
    diffusion = dp.build_diffusion(cfg)
    heldout = heldout_set_for(default_registry(), cfg.data.name, cfg.data.params, diffusion.num_timesteps,
                              per_band=args.per_band)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)
    batch = cfg.train.batch_size
    x0 = heldout.x0[:1].expand(batch, *heldout.x0.shape[1:]).contiguous().to(device)
    y = torch.zeros(batch, dtype=torch.long, device=device)

    def kwargs(labels):
        return {"y": labels} if getattr(model, "num_classes", 0) > 1 else {}

    def train_step() -> float:
        model.train()
        common.sync(device)
        t0 = time.perf_counter()
        t = torch.randint(0, diffusion.num_timesteps, (batch,), device=device)
        loss = diffusion.training_losses(model, x0, t, model_kwargs=kwargs(y))["loss"].mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        common.sync(device)
        return time.perf_counter() - t0

    def evaluate() -> float:
        common.sync(device)
        t0 = time.perf_counter()
        heldout_losses(model, diffusion, heldout, kwargs)
        common.sync(device)
        return time.perf_counter() - t0

    train_step(), evaluate()  # warm-up
    steps, evals = [], []
    for r in range(args.rounds):
        for job in ((train_step, evaluate) if r % 2 == 0 else (evaluate, train_step)):
            (steps if job is train_step else evals).append(job())
    step_s, eval_s = statistics.median(steps), statistics.median(evals)
    payload = {"script": "heldout_cost", "machine": common.machine_info(device), "args": vars(args), "batch": batch,
               "heldout_inputs": len(heldout), "step_s": steps, "eval_s": evals, "ratio": eval_s / step_s}
    common.write_outputs(args.out_dir, "heldout_cost", render(payload), payload,
                         {"eval_over_step": eval_s / step_s, "step_ms": step_s * 1e3, "eval_ms": eval_s * 1e3})


def render(payload: dict) -> str:
    """The Markdown of a heldout_cost result, from its JSON alone (``scripts/figures.py`` rebuilds docs with it).
    Files before 2026-12 did not record the train batch and the held-out input count: said so in the table."""
    args = payload["args"]
    step_s, eval_s = statistics.median(payload["step_s"]), statistics.median(payload["eval_s"])
    ratio = eval_s / step_s
    rows = [[Path(args["config"]).name, payload.get("batch", "not recorded"), payload.get("heldout_inputs",
             "not recorded"), f"{step_s * 1e3:.1f}", f"{eval_s * 1e3:.1f}", f"{ratio:.2f}",
             *[f"{ratio / every:.1%}" for every in (50, 100, 200, 500)]]]
    return "\n".join(common.header_lines(payload["machine"])) + (
        f"\n\n### Held-out loss cost ({args['rounds']} rounds, medians)\n\n") + common.markdown_table(
        ["config", "train batch", "held-out inputs", "train step (ms)", "held-out eval (ms)", "eval / step",
         "added, every 50", "every 100", "every 200", "every 500"], rows)


if __name__ == "__main__":
    main()
