"""The report of ``train_step.py``, from its JSON alone: tables, comparisons, metrics (no measuring here).

``render(payload)`` is the Markdown that ``train_step.py`` prints and writes, and what ``scripts/figures.py``
rebuilds README/docs blocks with (``<!-- figures:bench:results-cpu/train_step_S2 -->``); ``payload`` is the
JSON the script writes. Files written before 2026-12 lack a few fields (input channels, mask tables by size as
numbers): the render says so instead of guessing.
"""
from __future__ import annotations

from typing import Any

import _common as common
from _common import fmt_bytes, fmt_pct

REFERENCES = ("vanilla", "pub_vanilla")
ABBA_NOTE = ": 2 steps per variant per round, step time = their mean"


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


def table(rows: list[dict[str, Any]], on_cuda: bool) -> str:
    headers = ["variant", "precision", "compile", "median step (ms)", "p25-p75 (ms)", "images/s", "peak memory",
               "MFU", "overhead vs own vanilla", "paired [95% CI]"]
    body = []
    for r in rows:
        if "step_s" not in r:
            body.append([r["variant"], r["precision"], str(r["compile"]), f"failed: {r['error']}"] + [""] * 6)
            continue
        s, o = r["step_s"], r.get("overhead")
        mem = fmt_bytes(r.get("peak_memory_bytes")) if on_cuda else "n/a (CPU)"
        body.append([r["variant"], r["precision"], "yes" if r["compile"] else "no", f"{1e3 * s['median']:.1f}",
                     f"{1e3 * s['p25']:.1f}-{1e3 * s['p75']:.1f}", f"{r['images_per_s']:.2f}", mem,
                     "n/a" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%",
                     fmt_pct(o["ratio_of_medians"]) if o else "(reference)" if r["kind"] in REFERENCES
                     else "no vanilla in these settings",
                     "" if o is None else f"{fmt_pct(o['paired_median'])} [{fmt_pct(o['ci95_low'])}, "
                                          f"{fmt_pct(o['ci95_high'])}]"])
    return common.markdown_table(headers, body)


def _bytes_cell(v: Any) -> str:
    """A byte count (files before 2026-12 stored them formatted: those strings are kept as they are)."""
    return v if isinstance(v, str) else fmt_bytes(v)


def render_mask_memory(mem: dict[str, Any]) -> str:
    text = "Mask buffers of the benchmarked model (measured):\n\n" + common.markdown_table(
        ["variant", "tables", "buffer bytes", "bytes in state_dict (x2 with EMA per checkpoint)"],
        [[a, b, _bytes_cell(c), _bytes_cell(d)] for a, b, c, d in mem.get("measured", [])])
    if mem.get("by_size"):
        text += ("\n\nMask buffers by DiT size (T = 1000; dtr shares one table per width, random draws one per "
                 "layer; ours are non-persistent, rebuilt from the config):\n\n" + common.markdown_table(
                     ["model", "depth x width", "ours dtr (bool)", "ours random (bool)", "published (float/block)",
                      "published per checkpoint (model + EMA)", "ours per checkpoint"],
                     [[a, b, *map(_bytes_cell, rest)] for a, b, *rest in mem["by_size"]]))
    return text


def _label(cfg: dict[str, Any]) -> str:
    name, size = cfg.get("backbone", "?"), cfg.get("size") or cfg.get("model")
    return f"{name} {size}" if size else f"{name} (plugin defaults)"


def _inputs(cfg: dict[str, Any]) -> str:
    if cfg.get("input_shape"):
        return "x".join(map(str, cfg["input_shape"])) + " inputs"
    side = cfg.get("input_size")  # files before 2026-12 recorded the latent side only
    return f"{side}x{side} inputs (channels not recorded)" if side else "input shape not recorded"


def render_backbone(data: dict[str, Any], args: dict[str, Any], on_cuda: bool, device: str) -> str:
    """One backbone's section: heading, table, comparisons, compile counts, mask memory."""
    cfg, rows = data["config"], data["results"]
    graphs = data.get("dynamo_graphs") or {}
    order, steps, warmup = args.get("order", "rotate"), cfg.get("steps", args.get("steps")), cfg.get("warmup")
    macs, counted = cfg["forward_macs_per_image"], cfg["counted_forward_macs_per_image"]
    lines, _ = comparisons(rows, int(args.get("seed", 0)))
    compiled = [r for r in rows if r["compile"] and not r.get("error")]
    if compiled and "end" in graphs:
        new = graphs["end"] - graphs.get("after_warmup", graphs["end"])
        first = ", ".join(f"{r['variant']} {r['warmup_times_s'][0]:.1f} s" for r in compiled
                          if r.get("warmup_times_s"))
        lines.append(f"- torch.compile: {graphs.get('after_warmup', 0)} graph(s) compiled in warm-up (first step, "
                     f"compile included: {first}); {new} new graph(s) during the {steps} timed rounds with new "
                     f"timesteps every step")
    if graphs.get("interrupted_after_rounds", -1) >= 0:
        lines.insert(0, f"- **interrupted by a time limit**: {graphs['interrupted_after_rounds']} complete timed "
                        f"rounds of {steps} planned")
    text = (f"### Training step: {_label(cfg)}, {_inputs(cfg)}, batch {cfg['batch']}\n\n"
            f"Forward {macs / 1e9:.3g} GMACs per image (counted: {counted / 1e9:.3g}); {steps} timed "
            f"interleaved rounds ({order}{ABBA_NOTE if order == 'abba' else ''}) after {warmup} "
            f"warm-up; device {device}.\n\n" + table(rows, on_cuda))
    if lines:
        text += "\n\n" + "\n".join(lines)
    return text + "\n\n" + render_mask_memory(data.get("mask_memory") or {})


def render(payload: dict[str, Any]) -> str:
    """The Markdown of a train_step result, from its JSON alone (``scripts/figures.py`` rebuilds docs with it)."""
    info, args = payload["machine"], payload.get("args") or {}
    device = str(info.get("device", "?"))
    on_cuda = (info.get("device_type") or device.split(":")[0]) == "cuda"
    sections = [render_backbone(data, args, on_cuda, device) for data in payload.values()
                if isinstance(data, dict) and "results" in data]
    sections += [f"### Training step: {name} {why}" for name, why in (payload.get("skipped") or {}).items()]
    return "\n".join(common.header_lines(info)) + "\n\n" + "\n\n".join(sections)


