"""Where the Hugging Face hub cache is and whether it may be reached, read from the environment at call time.

huggingface_hub reads ``HF_HUB_OFFLINE`` and its cache variables once, at import; tests and users change them
later, so these helpers read the environment each time. Shared by the VAE codec and model loading (sharing/hub).
"""
from __future__ import annotations

import os

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
