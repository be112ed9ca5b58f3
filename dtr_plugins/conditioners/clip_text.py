"""``clip_text``: a frozen CLIP text encoder (transformers' ``CLIPTextModel`` + ``CLIPTokenizer``).

U-ViT's MS-COCO protocol (docs/text_to_image.md): CLIP ViT-L/14 (``openai/clip-vit-large-patch14``), texts padded
or truncated to 77 tokens, the last hidden state as the token embeddings ``[B, 77, 768]``. The pooled embedding is
the model's ``pooler_output`` (the final-LayerNorm state at the end-of-text token), ``[B, 768]``; the mask is the
tokenizer's attention mask.

``path``: a local folder (as ``save_pretrained`` writes a ``CLIPTextModel`` or ``CLIPModel`` and its tokenizer; a
diffusers pipeline's ``text_encoder/`` + ``tokenizer/`` folders are read too) or a hub id. The weights load on the
first ``encode`` (``dtr validate`` never loads them). ``fingerprint()`` hashes the weights files, the model and
tokenizer files and ``max_length``: the text-embedding cache is keyed by it, never by the path.
"""
from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel, ConfigDict, Field
from torch import Tensor

from dtr_plugins.core.errors import ConfigError, first_line
from dtr_plugins.core.hookspecs import hookimpl
from dtr_plugins.core.io import file_sha256

__all__ = ["ClipTextParams", "ClipTextConditioner", "resolve_folder"]

_WEIGHTS = ("*.safetensors", "*.bin")
_TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                    "added_tokens.json")


class ClipTextParams(BaseModel):
    """Parameters of ``clip_text``."""

    model_config = ConfigDict(extra="forbid")
    path: str = Field(description="hub id (openai/clip-vit-large-patch14) or a local folder of a CLIP text model "
                                  "and its tokenizer")
    max_length: int = Field(77, ge=2, description="tokens per text (padded or truncated); U-ViT: 77")
    batch_size: int = Field(64, ge=1, description="texts per encoder call")


def resolve_folder(path: str, key: str = "text.path") -> tuple[Path, Path]:
    """``(model folder, tokenizer folder)`` of ``path``: a local folder (or a pipeline's ``text_encoder`` and
    ``tokenizer`` subfolders) as is, a hub id through the hub cache. Raises ConfigError (one line)."""
    local = Path(path).expanduser()
    if not local.exists():
        if path.startswith(("/", ".", "~")) or "\\" in path or path.count("/") > 1:
            raise ConfigError(f"{key}: folder {path!r} does not exist")
        local = _hub_snapshot(path, key)
    if not local.is_dir():
        raise ConfigError(f"{key}: {path} is a file; expected a folder of a CLIP text model or a hub id")
    local = local.resolve()
    if (local / "text_encoder" / "config.json").is_file():
        return local / "text_encoder", local / "tokenizer"
    if not (local / "config.json").is_file():
        raise ConfigError(f"{key}: {path} has no config.json; expected a CLIP text model folder (as "
                          f"CLIPTextModel.save_pretrained and CLIPTokenizer.save_pretrained write it)")
    return local, local


def _hub_snapshot(repo_id: str, key: str) -> Path:
    from dtr_plugins.core.hf_hub import HubUnavailable, snapshot

    try:
        return snapshot(repo_id, ["config.json", "model.safetensors", *_TOKENIZER_FILES])
    except HubUnavailable as why:
        raise ConfigError(f"{key}: cannot load the hub model {repo_id!r}: {why}; copy a save_pretrained folder "
                          "here and give its path") from None


def _text_config(folder: Path) -> dict[str, Any]:
    try:
        config = json.loads((folder / "config.json").read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"text.path: cannot read {folder / 'config.json'}: {first_line(exc, limit=200)}") from None
    text = config.get("text_config", config) if isinstance(config, dict) else None
    if not isinstance(text, dict) or not isinstance(text.get("hidden_size"), int):
        raise ConfigError(f"text.path: {folder / 'config.json'} is not a CLIP (text) model config (no hidden_size)")
    return config


class ClipTextConditioner:
    """A frozen CLIP text encoder; see the module docstring. ``encode`` runs in float32 under ``no_grad``."""

    def __init__(self, path: str, max_length: int = 77, batch_size: int = 64):
        self.source = path
        self.folder, self.tokenizer_folder = resolve_folder(path)
        self.config = _text_config(self.folder)
        self.embed_dim = int(self.config.get("text_config", self.config)["hidden_size"])
        self.max_length = int(max_length)
        self.batch_size = int(batch_size)
        self._model: Any = None
        self._tokenizer: Any = None
        self._fingerprint: str | None = None

    def __repr__(self) -> str:
        return f"clip_text(path={self.source!r}, max_length={self.max_length})"

    def fingerprint(self) -> str:
        """SHA-256 over the weights files, ``config.json``, the tokenizer files and ``max_length``."""
        if self._fingerprint is None:
            digest = hashlib.sha256()
            files = sorted({p for pattern in _WEIGHTS for p in self.folder.glob(pattern)})
            files += [self.tokenizer_folder / n for n in _TOKENIZER_FILES if (self.tokenizer_folder / n).is_file()]
            for path in files:
                digest.update(path.name.encode())
                digest.update(file_sha256(path).encode())
            digest.update(json.dumps(self.config, sort_keys=True).encode())
            digest.update(f"max_length={self.max_length}".encode())
            self._fingerprint = digest.hexdigest()
        return self._fingerprint

    def _load(self) -> tuple[Any, Any]:
        if self._model is None:
            from transformers import CLIPTextModel, CLIPTokenizer

            try:
                self._tokenizer = CLIPTokenizer.from_pretrained(str(self.tokenizer_folder))
                model = CLIPTextModel.from_pretrained(str(self.folder), torch_dtype=torch.float32)
            except (OSError, ValueError) as exc:
                raise ConfigError(f"text.path: cannot load the CLIP text model from {self.folder}: "
                                  f"{first_line(exc, limit=200)}") from None
            self._model = model.eval().requires_grad_(False)
        return self._model, self._tokenizer

    @torch.no_grad()
    def encode(self, texts: Sequence[str], device: Any = None) -> tuple[Tensor, Tensor, Tensor]:
        """``texts`` -> ``(tokens [B, L, D], pooled [B, D], mask [B, L] bool)`` float32 on ``device``."""
        model, tokenizer = self._load()
        device = torch.device(device or "cpu")
        if next(model.parameters()).device != device:
            model.to(device)
        tokens, pooled, masks = [], [], []
        for start in range(0, len(texts), self.batch_size):
            batch = tokenizer(list(texts[start:start + self.batch_size]), padding="max_length", truncation=True,
                              max_length=self.max_length, return_tensors="pt")
            ids, mask = batch["input_ids"].to(device), batch["attention_mask"].to(device)
            out = model(input_ids=ids)  # causal: padding never reaches the real tokens (as U-ViT's encoder)
            tokens.append(out.last_hidden_state.float())
            pooled.append(out.pooler_output.float())
            masks.append(mask.bool())
        if not tokens:
            empty = torch.zeros(0, self.max_length, self.embed_dim, device=device)
            return empty, empty[:, 0], torch.zeros(0, self.max_length, dtype=torch.bool, device=device)
        return torch.cat(tokens), torch.cat(pooled), torch.cat(masks)


@hookimpl
def dtr_register_conditioners(register: Callable[..., None]) -> None:
    register("clip_text", ClipTextConditioner, params=ClipTextParams,
             description="frozen CLIP text encoder (transformers CLIPTextModel), hub id or local folder")
