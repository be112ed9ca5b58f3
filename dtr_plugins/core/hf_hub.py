"""Where the Hugging Face hub cache is and whether it may be reached, read from the environment at call time.

huggingface_hub reads ``HF_HUB_OFFLINE`` and its cache variables once, at import; tests and users change them
later, so these helpers read the environment each time. :func:`snapshot` is the one way a hub folder is fetched
(VAE codec, model loading in sharing/hub, the CLIP text encoder, REPA's DINOv2 encoder).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path

_TRUE = {"1", "ON", "YES", "TRUE"}


def hub_offline() -> bool:
    """HF_HUB_OFFLINE as it is now (huggingface_hub reads it only once, at import)."""
    value = os.environ.get("HF_HUB_OFFLINE")
    if value is not None:
        return value.strip().upper() in _TRUE
    try:
        from huggingface_hub import constants
    except ImportError:
        return False
    return bool(constants.HF_HUB_OFFLINE)


def hub_cache_dir() -> str | None:
    """The hub cache as the environment says now (HF_HUB_CACHE, else HF_HOME/hub); None: the library default."""
    for name in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(name):
            return os.environ[name]
    if os.environ.get("HF_HOME"):
        return os.path.join(os.environ["HF_HOME"], "hub")
    return None


class HubUnavailable(Exception):
    """A hub snapshot that could not be had; ``str(exc)`` is the reason, a phrase for the caller's one line."""


def snapshot(repo_id: str, patterns: Sequence[str], *, revision: str | None = None,
             complete: Callable[[Path], bool] | None = None) -> Path:
    """The local folder of ``repo_id`` (files matching ``patterns``): the local cache first, then the network
    unless HF_HUB_OFFLINE is set. ``complete`` judges a cached folder (default: any). Raises
    :class:`HubUnavailable` with why not (offline and not cached, or the download's own first line); callers
    turn it into their one-line error naming their key."""
    from huggingface_hub import snapshot_download

    from dtr_plugins.core.errors import first_line

    def download(local_only: bool) -> Path:
        return Path(snapshot_download(repo_id=repo_id, revision=revision, allow_patterns=list(patterns),
                                      cache_dir=hub_cache_dir(), local_files_only=local_only))

    try:
        folder = download(local_only=True)
        if complete is None or complete(folder):
            return folder
    except Exception:  # noqa: BLE001 -- huggingface_hub raises many kinds for "not cached"; then the network
        pass
    if hub_offline():
        raise HubUnavailable("it is not in the local Hugging Face cache and HF_HUB_OFFLINE is set")
    try:
        return download(local_only=False)
    except Exception as exc:  # noqa: BLE001 -- any download failure becomes the caller's one line
        raise HubUnavailable(f"it is not in the local Hugging Face cache and the download failed "
                             f"({first_line(exc, limit=200)})") from None
