"""safetensors files of an export: written byte-for-byte reproducibly, and their header read before any
weights are allocated (a ``config.json`` from someone else is checked against it first; docs/security.md).

The format: 8 bytes little-endian header length ``n``, ``n`` bytes of JSON (``{name: {dtype, shape,
data_offsets}, "__metadata__": {...}}``) padded with spaces, then the tensor bytes.
"""
from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from dtr_plugins.core.errors import CheckpointError

#: the largest header accepted (the safetensors library's own limit is 100 MB)
MAX_HEADER_BYTES = 100_000_000


def save_reproducible(state: Mapping[str, Any], path: Path, metadata: Mapping[str, str]) -> None:
    """Write ``state`` to ``path`` as safetensors with a canonical header (keys sorted): the same tensors and
    metadata give the same bytes, so the same SHA-256. Mode follows the umask, as every other file."""
    from safetensors.torch import save

    data = save(dict(state), metadata=dict(metadata))
    n = int.from_bytes(data[:8], "little")
    header = json.dumps(json.loads(data[8:8 + n]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)
    with open(path, "wb") as f:
        f.write(len(header).to_bytes(8, "little") + header + data[8 + n:])
        f.flush()
        os.fsync(f.fileno())


def read_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from the header of the safetensors file ``path`` (reads only the header).
    Raises :class:`CheckpointError` (one line) for a missing, truncated or malformed file."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            n = int.from_bytes(f.read(8), "little")
            if size < 8 or n > min(MAX_HEADER_BYTES, size - 8):
                raise CheckpointError(f"{path}: corrupt or not a safetensors file (header of {n} bytes in a file "
                                      f"of {size})")
            header = json.loads(f.read(n))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: weights file not found") from None
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path}: corrupt or not a safetensors file ({exc})") from None
    if not isinstance(header, dict):
        raise CheckpointError(f"{path}: corrupt or not a safetensors file (header is not a JSON object)")
    try:
        return {k: tuple(int(d) for d in v["shape"]) for k, v in header.items() if k != "__metadata__"}
    except (TypeError, KeyError, ValueError):
        raise CheckpointError(f"{path}: corrupt or not a safetensors file (a tensor without a shape)") from None


def check_config_fits_weights(build: Callable[[], Any], weights: Path, config_path: Path) -> None:
    """``build()`` the model of ``config_path`` on the ``meta`` device (no memory for weights) and compare its
    state_dict shapes with the header of ``weights``; a mismatch is one :class:`CheckpointError` line, so a
    config asking for a huge model never allocates it."""
    stored = read_shapes(weights)
    model = build()
    wanted = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    for key, shape in wanted.items():
        if key in stored and stored[key] != shape:
            raise CheckpointError(f"{config_path}: the config asks for {key} of shape {list(shape)} but "
                                  f"{weights.name} holds {list(stored[key])}; config and weights do not belong "
                                  "together")
    if wanted and not set(wanted) & set(stored):
        raise CheckpointError(f"{config_path}: none of the model's {len(wanted)} tensors is in {weights.name}; "
                              "config and weights do not belong together")
