"""``dtr push``: upload an exported model folder to a Hugging Face hub repo (token never printed)."""
from __future__ import annotations

import warnings
from pathlib import Path

from dtr_plugins.core.errors import UserError, first_line
from dtr_plugins.sharing.hub import (
    CONFIG_FILE,
    EXPORT_KEY,
    HUB_PREFIX,
    WEIGHTS_FILE,
    _read_config,
    _scrub,
    parse_hub_id,
)
from dtr_plugins.sharing.model_card import absolute_paths


def push(folder: str | Path, repo_id: str, *, private: bool | None = None, token: str | None = None,
         commit_message: str | None = None) -> str:
    """Upload an exported folder to the hub repo ``repo_id`` (created if needed); returns the commit URL.

    The token comes from ``token`` or huggingface_hub's usual places (``HF_TOKEN``, ``hf auth login``);
    it is never printed: error messages are scrubbed of it. Raises :class:`UserError` (one line).
    """
    folder = Path(folder)
    if parse_hub_id(repo_id) is None or "@" in repo_id or repo_id.startswith(HUB_PREFIX):
        raise UserError(f"push: {repo_id!r} is not a hub repo id (expected ORG/NAME)")
    if not folder.is_dir():
        raise UserError(f"push: {folder} is not a folder")
    config = _read_config(folder)
    weights = WEIGHTS_FILE if EXPORT_KEY in config else "diffusion_pytorch_model.safetensors"
    if not (folder / weights).is_file():
        raise UserError(f"push: {folder} has no {weights}; push a folder written by dtr export")
    if local := absolute_paths(config):
        warnings.warn(f"push: {folder / CONFIG_FILE} holds absolute local paths ({', '.join(local)}) and is uploaded "
                      "as it is; edit them out first if they should stay private", stacklevel=2)
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    secrets = [token] if token else []
    try:
        from huggingface_hub import get_token

        secrets.append(get_token() or "")
    except Exception:  # noqa: BLE001 -- no token found is fine: nothing to scrub
        pass
    try:
        api.create_repo(repo_id=repo_id, repo_type="model", private=private, exist_ok=True)
        info = api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                                 commit_message=commit_message or f"Upload {folder.name} with dtr push",
                                 ignore_patterns=[".*", "**/.*"])
    except Exception as exc:  # noqa: BLE001 -- any upload failure becomes one line, token scrubbed
        raise UserError(f"push {repo_id}: upload failed: {_scrub(first_line(exc, limit=300), secrets)}") from None
    return str(getattr(info, "commit_url", None) or info or f"https://huggingface.co/{repo_id}")
