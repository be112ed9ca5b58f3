"""The text-embedding cache and the text stage of a text-to-image run.

:class:`TextEmbeddingCache` keeps each caption's packed condition (:mod:`dtr_plugins.core.text_condition`,
``[L + 1, D + 1]``) in ``<root>/<first 16 hex digits of the conditioner's fingerprint>/<h[:2]>/<h>.pt`` with ``h``
the SHA-256 of the caption (UTF-8): keyed by the encoder's content and the caption, like the latent cache
(``codecs/latent_cache.py``) is keyed by the codec's. A caption is encoded once, on first use (any rank, any
run sharing the folder); every later use reads the file. Each file is written atomically. Values always pass
through the storage dtype, so an embedding read back equals the one used when it was first computed (bit-exact
resumption). ``manifest.json`` beside the files records the conditioner.

:class:`TextStage` is what training and sampling call: item indices (a captioned dataset's labels, see
``SupportsCaptions``) or prompts -> packed conditions on the device; training draws one of each item's captions
and replaces the condition by the empty caption's with probability ``caption_dropout`` (both from the global
generator, re-seeded each step).
"""
from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from dtr_plugins.core.contracts import Conditioner
from dtr_plugins.core.errors import DataError
from dtr_plugins.core.io import save_torch, write_json
from dtr_plugins.core.text_condition import pack

__all__ = ["TextEmbeddingCache", "TextStage", "CACHE_FORMAT"]

CACHE_FORMAT = "dtr-text-cache/1"
_DTYPES = {"float32": torch.float32, "float16": torch.float16}


class TextEmbeddingCache:
    """Packed text conditions of ``conditioner`` on disk under ``root`` (see the module docstring).

    ``memory``: conditions kept in memory as well (least recently used dropped first)."""

    def __init__(self, conditioner: Conditioner, root: str | Path, *, dtype: str = "float32", memory: int = 4096,
                 describe: dict[str, Any] | None = None):
        self.conditioner = conditioner
        self.dtype, self._dtype_name = _DTYPES[dtype], dtype
        self.base = Path(root)
        self.memory = memory
        self._held: OrderedDict[str, Tensor] = OrderedDict()
        self._extra = dict(describe or {})
        self._root: Path | None = None
        self.encoded = 0  #: captions this object ran the encoder on (the rest were read)

    @property
    def root(self) -> Path:
        """``<root>/<first 16 hex digits of the conditioner's fingerprint>`` (hashed on first use)."""
        if self._root is None:
            self._root = self.base / self.conditioner.fingerprint()[:16]
        return self._root

    def file(self, text: str) -> Path:
        digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
        return self.root / digest[:2] / f"{digest}.pt"

    def get(self, texts: Sequence[str], device: Any = None) -> Tensor:
        """The packed conditions ``[B, L + 1, D + 1]`` (float32, on ``device``) of ``texts``; captions met for
        the first time are encoded in one call and written. Raises DataError for an unreadable cache file."""
        found: dict[str, Tensor] = {}
        missing: list[str] = []
        for text in dict.fromkeys(texts):
            held = self._held.get(text)
            if held is None:
                held = self._read(text)
            if held is None:
                missing.append(text)
            else:
                found[text] = held
        if missing:
            found.update(self._encode(missing, device))
        for text, value in found.items():
            self._remember(text, value)
        return torch.stack([found[t] for t in texts]).float().to(device or "cpu")

    def _read(self, text: str) -> Tensor | None:
        path = self.file(text)
        if not path.is_file():
            return None
        try:
            value = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # noqa: BLE001 -- a truncated or foreign file: one line naming it
            raise DataError(f"{path}: unreadable text-embedding cache file ({type(exc).__name__}); delete it to "
                            f"encode the caption again") from None
        shape = (self.conditioner.max_length + 1, self.conditioner.embed_dim + 1)
        if not isinstance(value, Tensor) or tuple(value.shape) != shape:
            raise DataError(f"{path}: a text-embedding cache file of another shape (expected {list(shape)}); "
                            f"delete it to encode the caption again")
        return value.to(self.dtype)

    def _encode(self, texts: list[str], device: Any = None) -> dict[str, Tensor]:
        """Run the conditioner on ``device`` (where the conditions are wanted), store on the CPU."""
        if not (self.root / "manifest.json").is_file():
            self.root.mkdir(parents=True, exist_ok=True)
            c = self.conditioner
            write_json(self.root / "manifest.json", {"format": CACHE_FORMAT, "fingerprint": c.fingerprint(),
                                                     "dtype": self._dtype_name, "max_length": c.max_length,
                                                     "embed_dim": c.embed_dim, **self._extra})
        tokens, pooled, mask = self.conditioner.encode(texts, device)
        packed = pack(tokens.cpu(), pooled.cpu(), mask.cpu()).to(self.dtype)
        self.encoded += len(texts)
        out: dict[str, Tensor] = {}
        for text, value in zip(texts, packed):
            value = value.clone()
            path = self.file(text)
            path.parent.mkdir(parents=True, exist_ok=True)
            save_torch(value, path)
            out[text] = value
        return out

    def _remember(self, text: str, value: Tensor) -> None:
        self._held[text] = value
        self._held.move_to_end(text)
        while len(self._held) > self.memory:
            self._held.popitem(last=False)


class TextStage:
    """Item indices or prompts -> packed text conditions ``[B, L + 1, D + 1]`` (float32) on a device.

    ``caption_sets``: the training data's captions per item (``SupportsCaptions.caption_sets()``; an item's label is
    its index; None when sampling only); ``caption_dropout``: probability that training replaces a sample's
    condition by the empty caption's (classifier-free guidance, the null ``y``)."""

    def __init__(self, cache: TextEmbeddingCache, caption_sets: Sequence[Sequence[str]] | None = None,
                 caption_dropout: float = 0.1):
        self.cache = cache
        self.caption_sets = caption_sets
        self.caption_dropout = float(caption_dropout)

    @property
    def captions(self) -> list[str]:
        """Every caption of the training data, item by item (empty when sampling only)."""
        return [c for captions in self.caption_sets or () for c in captions]

    def prompts(self, texts: Sequence[str], device: Any = None) -> Tensor:
        """The conditions of ``texts`` (no dropout)."""
        return self.cache.get(texts, device)

    def null(self, device: Any = None) -> Tensor:
        """The empty caption's condition ``[1, L + 1, D + 1]``: the null ``y`` of classifier-free guidance."""
        return self.cache.get([""], device)

    def _sets(self, labels: Tensor) -> list[Sequence[str]]:
        if self.caption_sets is None:
            raise DataError("text: this run's text stage holds no captions (sampling only)")
        n = len(self.caption_sets)
        out = []
        for i in labels.tolist():
            if not 0 <= int(i) < n:
                raise DataError(f"data: item index {i} outside the dataset's {n} captioned items")
            out.append(self.caption_sets[int(i)])
        return out

    def drawn_captions(self, labels: Tensor) -> list[str]:
        """One caption per item index of ``labels`` ``[N]``, drawn uniformly among the item's captions with one
        ``torch.rand`` per sample from the global generator of ``labels``' device (re-seeded every training step
        from the run's seed, rank and step: resumption draws the same captions)."""
        sets = self._sets(labels)
        u = torch.rand(len(sets), device=labels.device).cpu().tolist()
        return [captions[min(int(x * len(captions)), len(captions) - 1)] for x, captions in zip(u, sets)]

    def condition(self, labels: Tensor) -> Tensor:
        """Conditions of the first caption of each item of ``labels`` ``[N]`` (no draw, no dropout)."""
        return self.prompts([captions[0] for captions in self._sets(labels)], labels.device)

    def training_condition(self, labels: Tensor) -> Tensor:
        """A drawn caption per item (:meth:`drawn_captions`), then caption dropout: each sample is the empty
        caption's condition with probability ``caption_dropout`` (``torch.rand`` from the same generator)."""
        y = self.prompts(self.drawn_captions(labels), labels.device)
        if self.caption_dropout <= 0:
            return y
        drop = torch.rand(y.shape[0], device=labels.device) < self.caption_dropout
        return torch.where(drop[:, None, None], self.null(labels.device).expand_as(y), y)
