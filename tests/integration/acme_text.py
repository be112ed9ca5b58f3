"""A conditioner and a captioned dataset, each written from its Protocol alone (``Conditioner``,
``SupportsCaptions``, ``SupportsCaptionClasses`` in ``dtr_plugins/core/contracts.py``)."""
import hashlib

import torch
from pydantic import BaseModel, ConfigDict, Field

import dtr_plugins


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


# -- conditioner: each character a fixed vector (a sine of its code point), the pooled embedding their mean
class CharsParams(Strict):
    length: int = Field(6, ge=2)
    width: int = Field(4, ge=1)


class Chars:
    calls = []  # texts of each encode call (the cache must encode a caption once)

    def __init__(self, length, width):
        self.max_length, self.embed_dim = length, width

    def fingerprint(self):
        return hashlib.sha256(f"acme-chars/{self.max_length}/{self.embed_dim}".encode()).hexdigest()

    def encode(self, texts, device=None):
        Chars.calls.append(list(texts))
        n, length, width = len(texts), self.max_length, self.embed_dim
        tokens, mask = torch.zeros(n, length, width), torch.zeros(n, length, dtype=torch.bool)
        for i, text in enumerate(texts):
            codes = [1] + [ord(c) + 2 for c in text[:length - 1]]  # a start token: one real token at least
            freq = torch.arange(1, width + 1, dtype=torch.float32)
            tokens[i, :len(codes)] = torch.sin(torch.tensor(codes, dtype=torch.float32)[:, None] * freq)
            mask[i, :len(codes)] = True
        pooled = (tokens * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        return tokens.to(device), pooled.to(device), mask.to(device)


# -- dataset: dark and light squares; an item's label is its index, its captions those of its class
class SquaresParams(Strict):
    side: int = Field(8, ge=4)
    count: int = Field(16, ge=2)

    def image_shape(self):
        return (1, self.side, self.side)

    def caption_sets(self):
        names = (["a dark square", "dark"], ["a light square", "light"])
        return [list(names[i % 2]) for i in range(self.count)]

    def caption_classes(self):
        return {"a dark square": 0, "dark": 0, "a light square": 1, "light": 1}


class Squares:
    num_classes = 1

    def __init__(self, side, count):
        self.images = torch.stack([torch.full((1, side, side), -0.8 if i % 2 == 0 else 0.8) for i in range(count)])

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        return self.images[index], index


@dtr_plugins.hookimpl
def dtr_register_conditioners(register):
    register("acme_chars", Chars, params=CharsParams, description="a fixed vector per character")


@dtr_plugins.hookimpl
def dtr_register_datasets(register):
    register("acme_squares", Squares, params=SquaresParams, description="dark and light squares, captioned")
