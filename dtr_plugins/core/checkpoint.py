"""Checkpoints: this project's own files, official DiT releases and official DTR training checkpoints.

Everything is read with ``torch.load(..., weights_only=True)``. A file that needs arbitrary unpickling
is refused with a one-line :class:`CheckpointError` unless the caller allows it for a trusted file
(``allow_unsafe=True``, CLI ``--allow-unsafe-load``).

Formats recognised by :func:`load_checkpoint`:

- this project's checkpoints, ``{"format": "dtr-plugins/1", "model", "ema", "step", "config", ...}``
  (written by :func:`save_checkpoint`);
- bare state dicts (the official DiT release files, guided-diffusion ADM weights);
- training checkpoints ``{"model", "ema", "opt", "args"}`` of the official DiT / DTR code. DTR stores each
  block's float ``[T, C]`` mask as ``blocks.N.routing._unit_mapping``; those buffers are dropped (the
  masks follow from the config) after a check against the model's routing plan, which warns on a mismatch;
- official Switch-DiT (DMoE) state dicts, bare or in such a training checkpoint: their router keys
  (``routers.N.f_gate`` / ``routers.N.experts``) are converted to a ``switch`` model's
  (:func:`dtr_plugins.strategies.switch.from_official_state_dict`).

This project's checkpoints also record the routing they were trained with (``routing``: the strategy and a
SHA-256 of the mask tables, :func:`routing_record`). Loading one into a model whose mask tables differ raises
:class:`CheckpointError` naming both, unless ``allow_routing_mismatch=True`` (a deliberate transfer), which warns.
Files without the record (older checkpoints, bare state dicts) load as before.

``module.`` (DDP) and ``_orig_mod.`` (``torch.compile``) key prefixes are removed.
"""
from __future__ import annotations

import argparse
import contextlib
import errno
import hashlib
import pickle
import re
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from dtr_plugins.core.contracts import SupportsStateDictAdapter
from dtr_plugins.core.errors import CheckpointError, first_line
from dtr_plugins.core.io import save_torch
from dtr_plugins.core.routing import RoutedBackbone

FORMAT = "dtr-plugins/1"
UNIT_MAPPING = "_unit_mapping"
_PREFIXES = ("module.", "_orig_mod.")
_SHOWN_KEYS = 5


class RoutingMismatchWarning(UserWarning):
    """A checkpoint's stored routing masks differ from the routing plan of the model it is loaded into."""


class RouterInitWarning(UserWarning):
    """A checkpoint without a learned strategy's keys (an official DiT/DTR file) was loaded into a model with a
    learned routing strategy: those parameters keep their initialisation (listed in the message and in the
    returned ``initialised_keys``)."""


#: state-dict prefix of a learned routing strategy's parameters and buffers (see RoutingPlan.learned)
LEARNED_PREFIX = "routing.learned."


def routing_record(model: nn.Module) -> dict[str, Any] | None:
    """``{"strategy": repr, "masks_sha256": hex}`` of a routed backbone's plan; None for other modules.

    The hash covers every routed layer in forward order: its channel count and its ``[T, C]`` boolean mask
    table (a dense layer, or a model without a plan, hashes as dense), so two strategies that give the same
    tables have the same hash.
    """
    model = _unwrap(model)
    if not isinstance(model, RoutedBackbone):
        return None
    plan = model.plan
    digest = hashlib.sha256()
    channels = plan.layer_channels if plan is not None else [int(c) for c in model.routed_channels()]
    for layer, width in enumerate(channels):
        index = plan.layer_table[layer] if plan is not None else None
        digest.update(f"layer {layer} channels {width}:".encode())
        if plan is not None and plan.learned is not None:  # gates come from weights: the class names the routing
            digest.update(f"learned {type(plan.learned).__qualname__};".encode())
        elif index is None:
            digest.update(b"dense;")
        else:
            table = plan.table(index).detach().to("cpu", torch.bool).contiguous()  # type: ignore[union-attr]
            digest.update(f"{tuple(table.shape)}".encode())
            digest.update(table.numpy().tobytes())
            digest.update(b";")
    strategy = plan.strategy_repr if plan is not None else "no routing plan"
    return {"strategy": strategy, "masks_sha256": digest.hexdigest()}


def nonfinite_tensors(state: Mapping[str, torch.Tensor]) -> list[str]:
    """Names of the floating-point tensors of a state dict that hold a NaN or an inf."""
    return [name for name, t in state.items()
            if isinstance(t, torch.Tensor) and t.is_floating_point() and not bool(torch.isfinite(t).all())]


def weights_in(ckpt: Any, use_ema: bool) -> str:
    """Which weights :func:`apply_checkpoint` takes from ``ckpt``: ``"ema"`` when asked for and the file has
    them, else ``"model"`` (raw weights: a plain state dict, or a checkpoint without an ``ema`` entry)."""
    return "ema" if use_ema and isinstance(ckpt, Mapping) and _is_state_dict(ckpt.get("ema")) else "model"


def refuse_nonfinite(state: Mapping[str, torch.Tensor], where: str) -> None:
    """:class:`CheckpointError` when a floating tensor of ``state`` holds a NaN or inf (``where``: the file and
    which weights); a diverged model would sample black images."""
    bad = nonfinite_tensors(state)
    if bad:
        raise CheckpointError(f"{where} hold NaN or inf ({len(bad)} tensors, first {bad[0]}); refusing to load them "
                              "(a diverged run: use an earlier checkpoint)")


def save_checkpoint(path: str | Path, **fields: Any) -> Path:
    """Write ``{"format": "dtr-plugins/1", **fields}`` atomically (temp file, then rename).

    Usual fields: ``model`` and ``ema`` (state dicts), ``step``, ``config`` (a plain dict),
    ``optimizer``, ``loss_weighting``, ``rng``. Everything must load with ``weights_only=True``:
    tensors, plain Python containers, numbers and strings (no numpy arrays or custom classes).
    """
    if "format" in fields:
        raise ValueError("save_checkpoint sets 'format' itself")
    return save_torch({"format": FORMAT, **fields}, path)


def read_checkpoint(path: str | Path, *, allow_unsafe: bool = False) -> Any:
    """``torch.load`` a file on the CPU with ``weights_only=True``; every failure is one CheckpointError line.

    ``argparse.Namespace`` (the ``args`` of official DiT / DTR training checkpoints) is allowed.
    With ``allow_unsafe`` a file that needs arbitrary unpickling is loaded with ``weights_only=False``;
    only do that for files you trust.
    """
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path}: checkpoint file not found")
    if path.is_dir():
        raise CheckpointError(f"{path}: is a directory, not a checkpoint file")
    try:
        with _allow_namespace():
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        reason = _unsafe_reason(str(exc))
        if reason is None:
            raise CheckpointError(f"{path}: corrupt or not a PyTorch checkpoint ({_pickle_problem(exc)})") from None
        if not allow_unsafe:
            raise CheckpointError(
                f"{path}: refusing to load, the file needs arbitrary unpickling ({reason}); if you trust it, "
                "--allow-unsafe-load (CLI) / allow_unsafe=True (API) loads it") from None
    except OSError as exc:
        if exc.errno in (errno.EINVAL, errno.EIO) or exc.filename is None:  # torch's zip reader on a cut file
            raise CheckpointError(f"{path}: truncated or corrupt checkpoint file (reading it failed: "
                                  f"{exc.strerror or exc}); use another checkpoint") from None
        raise CheckpointError(f"{path}: cannot read checkpoint: {exc.strerror or exc}") from None
    except Exception as exc:  # noqa: BLE001 - torch.load reports damage as RuntimeError, EOFError, KeyError, ...
        raise CheckpointError(f"{path}: corrupt or not a PyTorch checkpoint ({first_line(exc)})") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # noqa: BLE001 - as above
        raise CheckpointError(f"{path}: corrupt or not a PyTorch checkpoint ({first_line(exc)})") from None


def load_checkpoint(model: nn.Module, path: str | Path, *, use_ema: bool = True, allow_unsafe: bool = False,
                    strict: bool = True, allow_routing_mismatch: bool = False) -> dict[str, Any]:
    """Load weights from ``path`` into ``model`` and return the checkpoint's contents.

    ``use_ema``: take the ``ema`` weights when the file has them, else ``model``. ``strict``: missing or
    unexpected keys are an error (shape mismatches always are). Returns the loaded dict (``step``,
    ``config``, ``optimizer``, ``args``, ...); for a bare state dict, ``{"model": state_dict}``.

    Raises :class:`CheckpointError` when the file records a routing (:func:`routing_record`) whose mask tables
    differ from ``model``'s; ``allow_routing_mismatch=True`` loads anyway with a :class:`RoutingMismatchWarning`.
    """
    path = Path(path)
    return apply_checkpoint(model, read_checkpoint(path, allow_unsafe=allow_unsafe), path, use_ema=use_ema,
                            strict=strict, allow_routing_mismatch=allow_routing_mismatch)


def load_init_from(model: nn.Module, path: str | Path, *, allow_unsafe: bool = False) -> None:
    """``train.init_from``: fine-tuning's starting weights (EMA, else model) from ``path`` into ``model``, another
    routing allowed (a deliberate transfer, with its :class:`RoutingMismatchWarning`). On a meta-device model
    nothing is copied, so ``dtr validate`` checks with it what ``dtr train`` will load (the file reads, its keys and
    shapes fit). Raises :class:`CheckpointError`, one line naming ``train.init_from`` and the file."""
    try:
        ckpt = read_checkpoint(path, allow_unsafe=allow_unsafe)
        with warnings.catch_warnings():  # torch: copying into a meta parameter is a no-op (for validate, the point)
            warnings.filterwarnings("ignore", message=".*copying from a non-meta parameter", category=UserWarning)
            apply_checkpoint(model, ckpt, path, use_ema=True, allow_routing_mismatch=True)
    except CheckpointError as exc:
        raise CheckpointError(f"train.init_from: {exc}") from None


def apply_checkpoint(model: nn.Module, ckpt: Any, path: str | Path, *, use_ema: bool = True,
                     strict: bool = True, allow_routing_mismatch: bool = False) -> dict[str, Any]:
    """:func:`load_checkpoint` for contents already read with :func:`read_checkpoint` (``path`` names it in errors)."""
    path = Path(path)
    state, meta = _select_state(ckpt, path, use_ema)
    refuse_nonfinite(state, f"{path}: the {weights_in(ckpt, use_ema)} weights")
    target = _unwrap(model)
    if isinstance(ckpt, Mapping) and isinstance(ckpt.get("routing"), Mapping):
        _check_routing(target, ckpt["routing"], path, allow_routing_mismatch)
    state, unit_mappings = _split_unit_mappings(_strip_prefixes(state))
    for part in target.modules():  # layouts of official releases are known by the plugins that declare them
        if isinstance(part, SupportsStateDictAdapter):
            state = part.adapt_state_dict(state)
    if unit_mappings:
        _check_unit_mappings(target, unit_mappings, path)
    initialised = _load_state(target, state, path, strict)
    if initialised:
        meta = {**meta, "initialised_keys": initialised}
    return meta


#################################################################################
#                                   Helpers                                     #
#################################################################################

def _allow_namespace() -> contextlib.AbstractContextManager[Any]:
    safe_globals = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    return safe_globals([argparse.Namespace]) if safe_globals is not None else contextlib.nullcontext()


def _unsafe_reason(message: str) -> str | None:
    """Why a weights-only load refused the file, if it is a refusal rather than damage."""
    found = re.search(r"GLOBAL (\S+) was not an allowed global", message) or \
        re.search(r"unsupported GLOBAL (\S+) whose module", message)
    if found:
        return f"it references {found.group(1)}"
    if "reduce for unrecognized function" in message or "Can only create new object" in message:
        return "it constructs objects that weights-only loading does not allow"
    return None


def _pickle_problem(exc: BaseException) -> str:
    found = re.search(r"(Unsupported operand \d+|String is too long|invalid load key[^\n]*)", str(exc))
    return found.group(1) if found else first_line(exc)


def _is_state_dict(obj: Any) -> bool:
    return isinstance(obj, Mapping) and len(obj) > 0 and \
        all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())


def _select_state(ckpt: Any, path: Path, use_ema: bool) -> tuple[Mapping[str, torch.Tensor], dict[str, Any]]:
    """The state dict to load and the metadata to return, by format."""
    if not isinstance(ckpt, Mapping):
        raise CheckpointError(f"{path}: not a checkpoint (holds a {type(ckpt).__name__}, expected a dict)")
    fmt = ckpt.get("format")
    if fmt is not None and fmt != FORMAT:
        raise CheckpointError(f"{path}: unsupported checkpoint format {fmt!r} (this version reads {FORMAT!r})")
    if fmt is None and _is_state_dict(ckpt):
        return ckpt, {"model": ckpt}
    keys: tuple[str, ...] = ("ema", "model") if use_ema else ("model",)
    if fmt is None:
        keys += ("state_dict",)
    for key in keys:
        if _is_state_dict(ckpt.get(key)):
            return ckpt[key], dict(ckpt)
    wanted = " or ".join(f"'{k}'" for k in keys)
    top = ", ".join(map(str, list(ckpt)[:8])) or "none"
    raise CheckpointError(f"{path}: no model weights found (expected a state dict under {wanted}; "
                          f"top-level keys: {top})")


def _unwrap(model: nn.Module) -> nn.Module:
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    return getattr(model, "_orig_mod", model)  # torch.compile


def _strip_prefixes(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        stripped = True
        while stripped:
            stripped = False
            for prefix in _PREFIXES:
                if key.startswith(prefix):
                    key, stripped = key[len(prefix):], True
        out[key] = value
    return out


def _split_unit_mappings(
        state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[tuple[str, torch.Tensor]]]:
    """Remove DTR's per-block mask buffers (in the file's order, i.e. forward order) from the state dict."""
    mappings = [(k, v) for k, v in state.items() if k.rsplit(".", 1)[-1] == UNIT_MAPPING]
    rest = {k: v for k, v in state.items() if k.rsplit(".", 1)[-1] != UNIT_MAPPING}
    return rest, mappings


def _check_unit_mappings(model: nn.Module, mappings: list[tuple[str, torch.Tensor]], path: Path) -> None:
    """Warn (one line) if the stored masks are not the tables of the model's routing plan."""
    if not isinstance(model, RoutedBackbone):
        return
    plan = model.plan
    strategy = plan.strategy_repr if plan is not None else "no routing plan"
    num_layers = len(model.routed_channels())
    if len(mappings) != num_layers:
        warnings.warn(f"{path}: the checkpoint stores routing masks ({UNIT_MAPPING}) for {len(mappings)} layers but "
                      f"the model has {num_layers} routed layers; the model's plan ({strategy}) is kept",
                      RoutingMismatchWarning, stacklevel=3)
        return
    differ = []
    for layer, (key, stored) in enumerate(mappings):
        active = stored > 0.5
        index = plan.layer_table[layer] if plan is not None else None
        if plan is None or index is None:
            same = bool(active.all())
        else:
            table = plan.table(index).cpu()
            same = tuple(active.shape) == tuple(table.shape) and torch.equal(active, table)
        if not same:
            differ.append(key)
    if differ:
        warnings.warn(f"{path}: the routing masks stored in the checkpoint ({UNIT_MAPPING}) differ from the model's "
                      f"routing plan ({strategy}) in {len(differ)} of {num_layers} layers ({_few(differ)}); "
                      "the model's plan is kept", RoutingMismatchWarning, stacklevel=3)


def _check_routing(model: nn.Module, stored: Mapping[str, Any], path: Path, allow_mismatch: bool) -> None:
    """The file's recorded routing must be the model's (same mask tables), unless a mismatch is allowed."""
    own = routing_record(model)
    if own is None or stored.get("masks_sha256") in (None, own["masks_sha256"]):
        return
    theirs = stored.get("strategy", "?")
    if theirs == own["strategy"]:  # same settings, other tables: say what else decides them
        message = (f"{path}: the checkpoint was trained with routing {theirs}, as the model's, but with other mask "
                   f"tables (masks sha256 {str(stored.get('masks_sha256'))[:12]}, the model's "
                   f"{own['masks_sha256'][:12]}: another routing.site, number of timesteps or routed layout)")
    else:
        message = (f"{path}: the checkpoint was trained with routing {theirs} "
                   f"(masks sha256 {str(stored.get('masks_sha256'))[:12]}) but the model uses {own['strategy']} "
                   f"(masks sha256 {own['masks_sha256'][:12]})")
    if not allow_mismatch:
        raise CheckpointError(message + "; use the config the checkpoint was trained with (its routing section); "
                              "a deliberate transfer to another routing is a Python API call: "
                              "load_checkpoint(model, path, allow_routing_mismatch=True)")
    warnings.warn(message + "; loading anyway (allow_routing_mismatch)", RoutingMismatchWarning, stacklevel=4)


def _load_state(model: nn.Module, state: dict[str, torch.Tensor], path: Path, strict: bool) -> list[str]:
    """Load ``state`` (shapes checked; ``strict``: no missing or unexpected keys). A learned routing
    strategy's keys absent from a file without any of them keep their init: returned and warned about."""
    own = model.state_dict()
    initialised: list[str] = []
    if not any(k.startswith(LEARNED_PREFIX) for k in state):
        initialised = [k for k in own if k.startswith(LEARNED_PREFIX)]
    missing = [k for k in own if k not in state and k not in initialised]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k} {tuple(v.shape)} in the file vs {tuple(own[k].shape)} in the model"
                  for k, v in state.items() if k in own and tuple(v.shape) != tuple(own[k].shape)]
    if mismatched:
        raise CheckpointError(f"{path}: {len(mismatched)} tensors have the wrong shape for this model: "
                              f"{_few(mismatched, 3)}")
    if strict and (missing or unexpected):
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing keys: {_few(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys: {_few(unexpected)}")
        raise CheckpointError(f"{path}: checkpoint does not match the model ({'; '.join(parts)})")
    model.load_state_dict(state, strict=strict and not initialised)
    if initialised:
        warnings.warn(f"{path}: the checkpoint has no learned routing weights; {len(initialised)} keys keep their "
                      f"initialisation: {_few(initialised)}", RouterInitWarning, stacklevel=3)
    return initialised


def _few(items: list[str], shown: int = _SHOWN_KEYS) -> str:
    more = f" (+{len(items) - shown} more)" if len(items) > shown else ""
    return ", ".join(items[:shown]) + more
