"""Evaluation benchmark: wall time of FID for N samples with a feature extractor available offline.

Uses ``dtr_plugins.evaluation.evaluate.evaluate`` with the ``digits-classifier`` extractor (a small CNN trained on
the real digits on first use, cached) against ``dataset:digits``; another extractor can be named, e.g.
``inception-v3-compat`` where its weights are on disk. When the extractor is missing the benchmark says so and
exits 0 (it is not a failure of the benchmark).

Samples: N real digits with Gaussian pixel noise (the content does not change the cost; the noise keeps FID
away from zero). Timed: extractor set-up (training or loading the classifier), a cold FID (reference features
computed and cached) and a warm FID (reference statistics read from the cache), each in a fresh cache folder.

    python benchmarks/eval.py --num-samples 1000 --out-dir bench-out
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import _common as common


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--num-samples", type=int, default=1000)
    ap.add_argument("--extractor", default="digits-classifier")
    ap.add_argument("--reference", default="dataset:digits")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out-dir", default=None)
    ap.add_argument("--smoke", action="store_true", help="100 samples")
    ap.add_argument("--add-metrics", nargs="+", metavar="JSON", help="only recompute the metrics of result files")
    args = ap.parse_args(argv)
    if args.add_metrics:
        return common.add_metrics(args.add_metrics, metrics_from_payload)
    if args.smoke:
        args.num_samples = 100
    common.quiet_plugin_warnings()
    device = common.pick_device(args.device)
    common.setup_backends(device, args.threads)

    try:
        from dtr_plugins.core.plugins import default_registry
        from dtr_plugins.evaluation.evaluate import EvalSettings, evaluate

        registry = default_registry()
        spec = registry.build("feature_extractor", args.extractor)
    except Exception as exc:  # noqa: BLE001 -- extractor not written yet, or its weights are not on disk
        print(f"eval benchmark skipped: feature extractor '{args.extractor}' is not available offline "
              f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})")
        return

    t0 = time.perf_counter()
    if args.extractor == "digits-classifier":
        from dtr_plugins.extractors.builtin import ensure_digits_classifier

        ensure_digits_classifier()
    setup_s = time.perf_counter() - t0

    from dtr_plugins.extractors.builtin import digits_training_images

    real, _ = digits_training_images()  # uint8 [N, 3, 8, 8]
    rng = np.random.default_rng(0)
    idx = rng.integers(0, len(real), args.num_samples)
    imgs = real.numpy()[idx].transpose(0, 2, 3, 1).astype(np.float32)
    imgs = np.clip(imgs + rng.normal(0, 20, imgs.shape), 0, 255).round().astype(np.uint8)

    scoring = EvalSettings(metrics=["fid"], feature_extractor=args.extractor, device=str(device),
                           batch_size=args.batch_size)
    with tempfile.TemporaryDirectory() as cache:
        t0 = time.perf_counter()
        cold = evaluate(imgs, args.reference, scoring, cache_dir=cache, registry=registry)
        cold_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        warm = evaluate(imgs, args.reference, scoring, cache_dir=cache, registry=registry)
        warm_s = time.perf_counter() - t0
    fid = warm["frechet_inception_distance"]
    payload = {"script": "eval", "machine": common.machine_info(device), "args": vars(args), "setup_s": setup_s,
               "cold_s": cold_s, "warm_s": warm_s, "fid": fid, "spec": getattr(spec, "name", args.extractor),
               "num_reference": warm["num_reference"], "reference_cache": [cold["reference_cache"],
                                                                          warm["reference_cache"]]}
    common.write_outputs(args.out_dir, "eval", render(payload), payload, metrics_from_payload(payload))


def render(payload: dict) -> str:
    """The Markdown of an eval result, from its JSON alone (``scripts/figures.py`` rebuilds docs with it).
    Files before 2026-12 did not record the reference image count and cache states: said so in the table."""
    args, warm_s, setup_s = payload["args"], payload["warm_s"], payload["setup_s"]
    refs = payload.get("num_reference", "not recorded")
    rows = [[args["extractor"], args["num_samples"], refs, f"{setup_s:.2f}", f"{payload['cold_s']:.2f}",
             f"{warm_s:.2f}", f"{args['num_samples'] / warm_s:.0f}", f"{payload['fid']:.3f}"]]
    md = "\n".join(common.header_lines(payload["machine"])) + (
        f"\n\n### FID time: {args['num_samples']} samples against {args['reference']}\n\n") + common.markdown_table(
        ["extractor", "samples", "reference images", "extractor set-up (s)", "FID, cold cache (s)",
         "FID, warm cache (s)", "samples/s (warm)", "FID"], rows)
    cache = payload.get("reference_cache")
    md += ("\n\nCold: reference features computed and cached" + (f" ({cache[0]})" if cache else "")
           + "; warm: reference statistics from the cache" + (f" ({cache[1]})" if cache else "") + ". Set-up: "
           + ("loading the cached classifier" if setup_s < 1 else "training the classifier (first use)") + ".")
    return md


def metrics_from_payload(payload: dict) -> dict[str, float]:
    """FID wall times (seconds) and warm samples per second, for check_targets.py."""
    n = payload["args"]["num_samples"]
    return {"setup_s": payload["setup_s"], "fid_cold_s": payload["cold_s"], "fid_warm_s": payload["warm_s"],
            "samples_per_s_warm": n / payload["warm_s"]}


if __name__ == "__main__":
    main()
