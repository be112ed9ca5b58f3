# This file is over 500 lines because it is the single shared module of the benchmarks (by design, see below).
"""The one shared module of the benchmarks: devices, timers and interleaving, FLOP counts, peak FLOP/s,
statistics, plugin lists from the registry, benchmark models by backbone and size, and result files.

Every script in this folder imports this module (and ``_published.py``, the published-style baseline model);
no script imports another script. Benchmarks are scripts, not tests: they measure, they never assert a speed.
Every result they write names what produced it (command, device, torch version, date, git commit, a hash of
the source) and carries a flat ``metrics`` mapping that ``check_targets.py`` compares with ``targets.yaml``.
"""
from __future__ import annotations

import contextlib
import copy
import datetime as _dt
import hashlib
import json
import math
import os
import platform
import random
import resource
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

BENCH_DIR = Path(__file__).resolve().parent
REPO_DIR = BENCH_DIR.parent
#: Backbone parameters per size label (``--size``), one mapping per backbone; see the file's comments.
MODELS_FILE = BENCH_DIR / "models.yaml"

# --------------------------------------------------------------------------------------------- FLOPs
#: DiT forward GMACs per image at 256x256 images (32x32 latents), from the DiT paper's table (MFU uses them;
#: other models and sizes use the count of ``counted_forward_macs``).
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


def interleaved(fns: dict[str, Callable[[], Any]], rounds: int, warmup: int, device: torch.device,
                abba: bool = True) -> dict[str, list[float]]:
    """Seconds per round of each function, run in the same rounds in a rotating order.

    Each round starts one function later than the previous one; with ``abba`` it runs the order forward then
    backward and a function's time for the round is the mean of its two runs, which cancels a linear drift of a
    shared machine's speed within the round. The first ``warmup`` rounds are not kept.
    """
    names = list(fns)
    times: dict[str, list[float]] = {k: [] for k in names}
    for r in range(warmup + rounds):
        order = names[r % len(names):] + names[:r % len(names)]
        runs = order + order[::-1] if abba else order
        acc = dict.fromkeys(names, 0.0)
        for name in runs:
            with Timer(device) as timer:
                fns[name]()
            acc[name] += timer.seconds
        if r >= warmup:
            for k in names:
                times[k].append(acc[k] / (2 if abba else 1))
    return times


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


# ------------------------------------------------------------------------------------------- plugins
def quiet_plugin_warnings() -> None:
    """Other engineers' plugins may be half-written; their import warnings are not the benchmark's business."""
    import warnings

    warnings.filterwarnings("ignore", message=r"plugin entry point .* failed to import")


def plugin_names(kind: str, only: str | None = None) -> list[str]:
    """Registered plugin names of ``kind`` (``strategy``, ``backbone``), in registry order.

    ``only``: a comma list from the command line restricting them; a name not registered stops the script with
    one line naming the known ones.
    """
    from dtr_plugins.core.plugins import default_registry

    known = default_registry().names(kind)
    if not only:
        return known
    wanted = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise SystemExit(f"unknown {kind} {', '.join(map(repr, unknown))} (registered: {', '.join(known)})")
    return wanted


# -------------------------------------------------------------------------------------------- models
def model_sizes() -> dict[str, dict[str, dict[str, Any]]]:
    """``models.yaml``: backbone -> size label -> backbone parameters (the first label is the default)."""
    data = yaml.safe_load(MODELS_FILE.read_text()) or {}
    if not isinstance(data, dict) or not all(isinstance(v, dict) for v in data.values()):
        raise SystemExit(f"{MODELS_FILE}: expected a mapping backbone -> size label -> parameters")
    return data


def size_for(backbone: str, size: str | None) -> str | None:
    """The size label for ``backbone`` from ``--size`` (``LABEL`` or ``backbone=LABEL,...``); None: defaults.

    A backbone listed in ``models.yaml`` gets its first label when none is asked for; a backbone not listed
    (a new plugin) gets None: its plugin's default parameters and any ``--params``.
    """
    labels = model_sizes().get(backbone)
    asked = None
    for part in (size or "").split(","):
        key, sep, value = part.strip().rpartition("=")
        if not sep and value:
            asked = asked or value
        elif key == backbone:
            asked = value
    if labels is None:
        return None
    return asked if asked is not None else next(iter(labels))


@dataclass
class BenchModel:
    """A backbone built for a benchmark with vanilla routing, and what the benchmarks need to drive it.

    ``shape``: one input ``(C, H, W)``; ``num_classes``: labels to feed (None: unconditional); ``num_tasks``:
    training timesteps T (= routing tasks); ``cfg``: the resolved config it was built from.
    """

    name: str
    size: str | None
    cfg: Any
    base: nn.Module
    shape: tuple[int, int, int]
    num_classes: int | None
    num_tasks: int

    @property
    def desc(self) -> dict[str, Any]:
        return {"backbone": self.name, "size": self.size, "params": dict(self.cfg.backbone.params),
                "input_shape": list(self.shape), "num_tasks": self.num_tasks}

    @property
    def label(self) -> str:
        return f"{self.name} {self.size}" if self.size else f"{self.name} (plugin defaults)"


def bench_config(backbone: str, size: str | None, params: Sequence[str] = (), strategy: str = "vanilla",
                 num_tasks: int = 1000):
    """The resolved config of one benchmark model: ``models.yaml`` parameters, then ``--params`` overrides.

    ``params``: ``key=value`` or ``backbone.key=value`` items (values parsed as YAML); items naming another
    backbone are ignored. Raises the project's ConfigError for parameters the plugin rejects.
    """
    from dtr_plugins.core.config import config_from_dict

    labels = model_sizes().get(backbone)
    chosen: dict[str, Any] = {}
    if labels is not None and size is not None:
        if size not in labels:
            raise SystemExit(f"{MODELS_FILE.name}: backbone '{backbone}' has no size '{size}' "
                             f"(listed: {', '.join(labels)})")
        chosen = copy.deepcopy(labels[size] or {})
    for item in params:
        key, sep, raw = item.partition("=")
        if not sep:
            raise SystemExit(f"--params: '{item}' is not of the form [backbone.]key=value")
        owner, dot, name = key.strip().rpartition(".")
        if dot and owner != backbone:
            continue
        chosen[name] = yaml.safe_load(raw) if raw.strip() else None
    data = {"name": "benchmark", "backbone": {"name": backbone, **chosen}, "routing": {"name": strategy},
            "diffusion": {"steps": num_tasks}, "data": {"name": "synthetic"}}
    return config_from_dict(data, source=f"benchmark model {backbone} {size or '(plugin defaults)'}")


def build_bench_model(backbone: str, size: str | None, params: Sequence[str] = (), seed: int = 0,
                      num_tasks: int = 1000) -> BenchModel:
    """Build a backbone through the package (``dtr_plugins.build_model``) with vanilla routing.

    Zero-initialised layers (adaLN-Zero, output layers) get small random weights: an untrained net with them
    zero is degenerate, and weights do not change what a step costs.
    """
    import dtr_plugins as dp

    cfg = bench_config(backbone, size, params, num_tasks=num_tasks)
    torch.manual_seed(seed)
    base = dp.build_model(cfg)
    randomize_zero_init(base, seed)
    p = cfg.backbone.params
    side = p.get("input_size") or p.get("image_size")
    if not p.get("in_channels") or not side:
        raise SystemExit(f"backbone '{backbone}': its resolved parameters name no in_channels and input_size or "
                         f"image_size; give them with --params {backbone}.in_channels=... ")
    classes = p.get("num_classes")
    return BenchModel(backbone, size, cfg, base, (int(p["in_channels"]), int(side), int(side)),
                      int(classes) if classes and int(classes) > 1 else None, cfg.diffusion.steps)


def build_diffusion(bm: BenchModel):
    """The model's Gaussian diffusion (``dtr_plugins.build_diffusion`` of its config)."""
    import dtr_plugins as dp

    return dp.build_diffusion(bm.cfg)


def routed_view(bm: BenchModel, strategy: str, device: torch.device, **params: Any) -> nn.Module:
    """A view of ``bm.base`` (same parameter tensors) with the routing plan of ``strategy`` attached, at the
    first of the backbone's routing sites (``input`` first) that the strategy and the backbone accept (every
    strategy but ``dydit_width`` routes ``input``; it routes ``heads_mlp``). Raises the ``routing.site``
    :class:`ConfigError` when there is none (e.g. ``dydit_width`` on a U-Net)."""
    import dtr_plugins as dp
    from dtr_plugins.core.errors import ConfigError
    from dtr_plugins.core.routing import RoutingPlan

    refused: ConfigError | None = None
    for site in type(bm.base).routing_sites:
        view = shallow_view(bm.base)
        try:  # a learned strategy binds to the plan (as compose does); the backbone checks the site
            plan = RoutingPlan(dp.build_strategy(strategy, params), bm.base.routed_channels(site), bm.num_tasks,
                               site=site, cond_dim=bm.base.routing_cond_dim())
            view.attach_routing(plan.to(device))
        except ConfigError as exc:
            if not str(exc).startswith("routing.site:"):
                raise
            refused = refused or exc
            continue
        return view
    assert refused is not None
    raise refused


def shallow_view(module: nn.Module) -> nn.Module:
    """A second module object sharing all submodules, parameters and buffers of ``module``."""
    view = copy.copy(module)
    view._modules = dict(module._modules)
    view._parameters = dict(module._parameters)
    view._buffers = dict(module._buffers)
    view._non_persistent_buffers_set = set(module._non_persistent_buffers_set)
    return view


def randomize_zero_init(model: nn.Module, seed: int = 0) -> None:
    """Give every all-zero trainable tensor small random weights (std 0.02)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            if p.requires_grad and not p.any():
                p.copy_(torch.randn(p.shape, generator=g) * 0.02)


def model_kwargs(bm: BenchModel, batch: int, device: torch.device, generator: torch.Generator) -> dict[str, Any]:
    """Labels for a conditional backbone (``{"y": ...}``), nothing for an unconditional one."""
    if bm.num_classes is None:
        return {}
    return {"y": torch.randint(0, bm.num_classes, (batch,), generator=generator).to(device)}


# -------------------------------------------------------------------------------------------- output
def device_name(device: torch.device) -> str:
    """The card (``torch.cuda.get_device_name``) or the CPU model (``/proc/cpuinfo``)."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return cpu


def git_commit() -> str | None:
    """HEAD of the repository the benchmarks run in, with ``-dirty`` if tracked files differ; None without git."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_DIR, capture_output=True, text=True,
                              timeout=10)
        if head.returncode != 0:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_DIR,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return head.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return None


def source_sha256() -> str:
    """SHA-256 over the package's and the benchmarks' Python sources (path and content): the code measured,
    recorded also where the copy that ran has no git history."""
    h = hashlib.sha256()
    for path in sorted([*(REPO_DIR / "dtr_plugins").rglob("*.py"), *BENCH_DIR.glob("*.py")]):
        h.update(str(path.relative_to(REPO_DIR)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def machine_info(device: torch.device) -> dict[str, Any]:
    """What produced a result: date, device name, torch/CUDA/Python versions, git commit, source hash, command."""
    info = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "device_type": device.type, "device_name": device_name(device), "torch": torch.__version__,
            "cuda": torch.version.cuda if device.type == "cuda" else None, "python": platform.python_version(),
            "git_commit": git_commit(), "source_sha256": source_sha256(), "cpu": device_name(torch.device("cpu")),
            "cpu_cores": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": str(device),
            "command": " ".join(shlex.quote(a) for a in [sys.executable.split("/")[-1], *sys.argv])}
    with contextlib.suppress(OSError):
        info["load_average"] = [round(x, 2) for x in os.getloadavg()]
    if device.type == "cuda":
        info["gpu"] = info["device_name"]
    return info


def header_lines(info: dict[str, Any]) -> list[str]:
    where = info.get("gpu") or f"{info['cpu']}, {info['cpu_cores']} cores, {info['torch_threads']} torch threads"
    load = f", load average {info['load_average'][0]}" if "load_average" in info else ""
    commit = info.get("git_commit") or "no git"
    return [f"- command: `{info['command']}`",
            f"- machine: {where}{load}; torch {info['torch']}; {info['date']}; commit {commit}"]


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    def cell(v: Any) -> str:
        return v if isinstance(v, str) else f"{v:.4g}" if isinstance(v, float) else str(v)
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(cell(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    tmp.replace(path)


def finite_metrics(metrics: dict[str, Any]) -> dict[str, float]:
    """Only the numeric, finite entries (JSON has no NaN/inf; a missing metric reads 'not measured')."""
    out = {}
    for k, v in metrics.items():
        if isinstance(v, bool):
            v = float(v)
        if isinstance(v, (int, float)) and math.isfinite(v):
            out[k] = float(v)
    return out


def write_outputs(out_dir: str | Path | None, stem: str, markdown: str, payload: dict[str, Any],
                  metrics: dict[str, Any]) -> None:
    """Print the Markdown; with ``out_dir``, write ``stem.md`` and ``stem.json`` there (atomically).

    ``metrics``: flat ``key -> number``; stored in the JSON as ``metrics`` with keys prefixed ``stem.``, the keys
    ``targets.yaml`` names.
    """
    print(markdown, flush=True)
    if not out_dir:
        return
    folder = Path(out_dir)
    folder.mkdir(parents=True, exist_ok=True)
    payload = {**payload, "metrics": {f"{stem}.{k}": v for k, v in finite_metrics(metrics).items()}}
    _atomic_write(folder / f"{stem}.md", markdown + "\n")
    _atomic_write(folder / f"{stem}.json", json.dumps(payload, indent=2) + "\n")
    print(f"wrote {folder / (stem + '.md')} and {folder / (stem + '.json')}", file=sys.stderr, flush=True)


def add_metrics(paths: Sequence[str], derive: Callable[[dict[str, Any]], dict[str, Any]]) -> None:
    """Recompute the ``metrics`` of result files written earlier (``--add-metrics``), from their stored times."""
    for name in paths:
        path = Path(name)
        payload = json.loads(path.read_text())
        payload["metrics"] = {f"{path.stem}.{k}": v for k, v in finite_metrics(derive(payload)).items()}
        _atomic_write(path, json.dumps(payload, indent=2) + "\n")
        print(f"{path}: {len(payload['metrics'])} metrics", file=sys.stderr)


def fmt_pct(x: float | None) -> str:
    return "n/a" if x is None or math.isnan(x) else f"{100 * x:+.2f}%"


def fmt_bytes(n: float | None) -> str:
    if n is None:
        return "n/a"
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.3g} {unit}"
    return f"{int(n)} B"


def run_guarded(name: str, fn: Callable[[], Any]) -> tuple[Any, str | None]:
    """Run one benchmark part: ``(result, None)``, or ``(None, one-line error)`` so the other parts still run."""
    print(f"[{name}] start", file=sys.stderr, flush=True)
    try:
        return fn(), None
    except (Exception, SystemExit) as exc:  # noqa: BLE001 - one part failing must not lose the others
        msg = f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"
        print(f"[{name}] FAILED: {msg}", file=sys.stderr, flush=True)
        return None, msg
