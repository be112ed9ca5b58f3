"""Shared helpers of the benchmarks: devices, timers, FLOP counts, peak FLOP/s, statistics, output.

Benchmarks are scripts, not tests: they measure, they never assert a speed. Every table they write names
what produced it (command, machine, torch version, date).
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import math
import os
import platform
import random
import resource
import shlex
import statistics
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import torch

# --------------------------------------------------------------------------------------------- FLOPs
#: DiT forward GMACs per image at 256x256 images (32x32 latents), from the DiT paper's table.
DIT_GMACS_32 = {"S/2": 6.06, "B/2": 23.01, "L/2": 80.71, "XL/2": 118.64}

#: Dense (no sparsity) tensor-core peak TFLOP/s by card, per precision; matched by substring of
#: ``torch.cuda.get_device_name`` (first match wins, so the specific names come first). fp32 means TF32, which
#: the benchmarks enable for fp32 on CUDA (as DiT's training script does).
PEAK_TFLOPS: list[tuple[str, dict[str, float]]] = [
    ("H200", {"bf16": 989.4, "fp16": 989.4, "fp32": 494.7}),
    ("H100 NVL", {"bf16": 835.0, "fp16": 835.0, "fp32": 417.5}),
    ("H100 PCIe", {"bf16": 756.0, "fp16": 756.0, "fp32": 378.0}),
    ("H100", {"bf16": 989.4, "fp16": 989.4, "fp32": 494.7}),
    ("A100", {"bf16": 312.0, "fp16": 312.0, "fp32": 156.0}),
    ("L40S", {"bf16": 362.1, "fp16": 362.1, "fp32": 183.0}),
]


def dit_forward_macs(size: str, input_size: int, patch_size: int, hidden: int, depth: int, in_channels: int = 4,
                     learn_sigma: bool = True, freq_dim: int = 256) -> float:
    """Forward multiply-adds of one image through DiT (linear layers, patch embedding, attention).

    The paper's numbers (``DIT_GMACS_32``) are used for 32x32 latents; this count reproduces them within 0.1%
    and serves other sizes.
    """
    if input_size == 32 and size in DIT_GMACS_32:
        return DIT_GMACS_32[size] * 1e9
    tokens = (input_size // patch_size) ** 2
    out_ch = in_channels * (2 if learn_sigma else 1)
    d = hidden
    block = tokens * 12 * d * d + 2 * tokens * tokens * d + 6 * d * d   # qkv+proj+mlp, QK^T and AV, adaLN
    final = tokens * d * patch_size * patch_size * out_ch + 2 * d * d
    embed = tokens * patch_size * patch_size * in_channels * d + freq_dim * d + d * d
    return float(depth * block + final + embed)


def _sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    b, h, s_q, d = query_shape
    return 2 * b * h * s_q * key_shape[-2] * (d + value_shape[-1])


def counted_forward_macs(model: torch.nn.Module, example: Sequence[Any]) -> float:
    """Multiply-adds of one forward call, counted by torch's FlopCounterMode (plus CPU SDPA, which it misses)."""
    from torch.utils.flop_counter import FlopCounterMode

    mapping = {}
    op = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is not None:
        mapping[op] = _sdpa_flops
    with torch.no_grad(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        model(*example)
    return counter.get_total_flops() / 2


def peak_tflops(device: torch.device, precision: str, override: float | None) -> tuple[float | None, str]:
    """Peak FLOP/s (in TFLOP/s) for MFU and where the number came from; None on CPU without ``--peak-tflops``."""
    if override is not None:
        return override, "--peak-tflops"
    if device.type != "cuda":
        return None, "unknown on CPU (pass --peak-tflops)"
    name = torch.cuda.get_device_name(device)
    for key, peaks in PEAK_TFLOPS:
        if key in name:
            return peaks[precision], f"table: {key} {precision} dense"
    return None, f"unknown card '{name}' (pass --peak-tflops)"


# ------------------------------------------------------------------------------------------- devices
def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def setup_backends(device: torch.device, threads: int | None) -> None:
    if threads:
        torch.set_num_threads(threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True   # fp32 runs use TF32, like DiT's training script
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = True


def autocast(precision: str, device: torch.device):
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16 if precision == "bf16" else torch.float16)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Timer:
    """Seconds of one region: CUDA events on GPU (the region's device time), perf_counter on CPU."""

    def __init__(self, device: torch.device):
        self.device = device

    def __enter__(self) -> Timer:
        if self.device.type == "cuda":
            self._start = torch.cuda.Event(enable_timing=True)
            self._end = torch.cuda.Event(enable_timing=True)
            self._start.record()
        else:
            self._t0 = time.perf_counter()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.device.type == "cuda":
            self._end.record()
            self._end.synchronize()
            self.seconds = self._start.elapsed_time(self._end) / 1000.0
        else:
            self.seconds = time.perf_counter() - self._t0


def rss_bytes() -> int:
    """The process's peak resident set size so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def tensor_bytes(tensors: Iterable[torch.Tensor]) -> int:
    seen: set[int] = set()
    total = 0
    for t in tensors:
        if t is None:
            continue
        key = t.untyped_storage().data_ptr()
        if key in seen:
            continue
        seen.add(key)
        total += t.untyped_storage().nbytes()
    return total


# ---------------------------------------------------------------------------------------- statistics
def quantile(xs: Sequence[float], q: float) -> float:
    s = sorted(xs)
    if not s:
        return float("nan")
    pos = (len(s) - 1) * q
    lo, hi = math.floor(pos), math.ceil(pos)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


def summary(xs: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(xs), "p25": quantile(xs, 0.25), "p75": quantile(xs, 0.75),
            "min": min(xs), "n": len(xs)}


def paired_overhead(times: Sequence[float], base: Sequence[float], seed: int = 0,
                    resamples: int = 2000) -> dict[str, float]:
    """Overhead of ``times`` over ``base`` measured in the same rounds.

    ``ratio_of_medians``: median(times) / median(base) - 1 (the headline number). ``paired_median``: the median
    over rounds of times[r] / base[r] - 1 (robust to slow drifts of a shared machine), with a bootstrap 95%
    interval over rounds.
    """
    ratios = [a / b - 1 for a, b in zip(times, base)]
    rng = random.Random(seed)
    boots = sorted(statistics.median(rng.choices(ratios, k=len(ratios))) for _ in range(resamples))
    return {"ratio_of_medians": statistics.median(times) / statistics.median(base) - 1,
            "paired_median": statistics.median(ratios),
            "ci95_low": boots[int(0.025 * resamples)], "ci95_high": boots[int(0.975 * resamples) - 1]}


# -------------------------------------------------------------------------------------------- output
def machine_info(device: torch.device) -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__, "python": platform.python_version(), "cpu": cpu,
            "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": str(device),
            "command": " ".join(shlex.quote(a) for a in [sys.executable.split("/")[-1], *sys.argv])}
    with contextlib.suppress(OSError):
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def header_lines(info: dict[str, Any]) -> list[str]:
    where = info.get("gpu") or f"{info['cpu']}, {info['cpu_cores']} cores, {info['torch_threads']} torch threads"
    load = f", load average {info['load_average'][0]}" if "load_average" in info else ""
    return [f"- command: `{info['command']}`",
            f"- machine: {where}{load}; torch {info['torch']}; {info['date']}"]


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        return v if isinstance(v, str) else f"{v:.4g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def write_outputs(out_dir: str | None, stem: str, markdown: str, payload: dict[str, Any]) -> None:
    """Print the Markdown; with ``out_dir``, also write ``stem.md`` and ``stem.json`` there (atomically)."""
    print(markdown, flush=True)
    if not out_dir:
        return
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    for name, text in ((f"{stem}.md", markdown + "\n"), (f"{stem}.json", json.dumps(payload, indent=2) + "\n")):
        tmp = folder / f".{name}.tmp"
        tmp.write_text(text)
        tmp.replace(folder / name)
    print(f"wrote {folder / (stem + '.md')} and {folder / (stem + '.json')}", file=sys.stderr)


def fmt_pct(x: float | None) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{100 * x:+.2f}%"


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "n/a"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} B"


def quiet_plugin_warnings() -> None:
    """Other engineers' plugins may be half-written; their import warnings are not the benchmark's business."""
    import warnings

    warnings.filterwarnings("ignore", message=r"plugin entry point .* failed to import")


