"""A small, randomly initialised CLIP text encoder and tokenizer written to a local folder; nothing downloads.

For offline trials of the text-to-image path (docs/text_to_image.md, ``configs/t2i_digits.yaml``) and for the
tests. The folder is what ``CLIPTextModel.save_pretrained`` and ``CLIPTokenizer.save_pretrained`` write, so the
``clip_text`` conditioner reads it as ``text.path``.

- Tokenizer: transformers' ``CLIPTokenizer`` (byte-level BPE) with the 256 byte symbols, each also with the
  end-of-word mark, the start- and end-of-text tokens, and **no merges**: words split at whitespace, then one
  token per character, so a caption of ``n`` characters besides spaces takes ``n + 2`` tokens (with the two
  special tokens); captions that differ in one character get different token sequences.
- Model: ``CLIPTextModel`` (causal transformer, final LayerNorm, pooled output at the end-of-text token) with
  ``TinyClipSpec``'s width, depth and heads, weights drawn by transformers' own initialisation after
  ``torch.manual_seed(seed)``. Untrained: its embeddings carry no meaning, only identity (equal texts give equal
  embeddings, different texts different ones), which is enough for a diffusion model to learn prompts that
  name classes.

Run as ``python -m dtr_plugins.conditioners.tiny_clip OUT_DIR`` or ``python scripts/make_tiny_clip.py OUT_DIR``.
"""
from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from dtr_plugins.core.errors import UserError

__all__ = ["TinyClipSpec", "write_tiny_clip", "main"]


@dataclass(frozen=True)
class TinyClipSpec:
    """Shape of the tiny text encoder. ``width`` is the ``backbone.text_dim`` a config must declare;
    ``max_positions`` bounds ``text.max_length`` (tokens per caption, two of them special)."""

    width: int = 512
    layers: int = 2
    heads: int = 8
    intermediate: int | None = None  #: MLP width; None: 4 x width
    max_positions: int = 77
    seed: int = 0


def _byte_symbols() -> list[str]:
    """The 256 printable symbols byte-level BPE uses for the bytes 0..255 (printable bytes map to themselves,
    the others, in byte order, to the code points from 256 on)."""
    printable = {*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
                 *range(ord("\u00ae"), ord("\u00ff") + 1)}
    symbols, extra = [], 0
    for b in range(256):
        if b in printable:
            symbols.append(chr(b))
        else:
            symbols.append(chr(256 + extra))
            extra += 1
    return symbols


def _write(folder: Path, spec: TinyClipSpec) -> None:
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    chars = _byte_symbols()
    vocab_list = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(vocab_list)}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[], model_max_length=spec.max_positions)
    tokenizer.save_pretrained(str(folder))
    config = CLIPTextConfig(vocab_size=len(vocab), hidden_size=spec.width,
                            intermediate_size=spec.intermediate or 4 * spec.width,
                            num_hidden_layers=spec.layers, num_attention_heads=spec.heads,
                            max_position_embeddings=spec.max_positions,
                            bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                            pad_token_id=vocab["<|endoftext|>"])
    torch.manual_seed(spec.seed)
    CLIPTextModel(config).save_pretrained(str(folder))


def write_tiny_clip(folder: Path, spec: TinyClipSpec = TinyClipSpec(), *, exist_ok: bool = False) -> Path:
    """Write the tiny CLIP text model and tokenizer (module docstring) to ``folder``; returns ``folder``.

    The files are written to a temporary folder beside ``folder`` and moved into place at the end, so an
    interrupted call leaves nothing half-written. Raises UserError (one line) when ``folder`` exists and is not an
    empty folder (unless ``exist_ok``: then its files are replaced), or when ``width`` is not a multiple of
    ``heads``."""
    if spec.width % spec.heads:
        raise UserError(f"tiny CLIP: width {spec.width} is not a multiple of heads {spec.heads}")
    if min(spec.width, spec.layers, spec.heads) < 1 or spec.max_positions < 2:
        raise UserError("tiny CLIP: width, layers and heads must be at least 1, max_positions at least 2")
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise UserError(f"tiny CLIP: {folder} is a file; give a folder")
    if folder.is_dir() and any(folder.iterdir()) and not exist_ok:
        raise UserError(f"tiny CLIP: {folder} is not empty; give a new folder (or --force to replace its files)")
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=folder.parent))
    try:
        _write(tmp, spec)
        folder.mkdir(exist_ok=True)
        for path in sorted(tmp.iterdir()):
            path.replace(folder / path.name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return folder


def main(argv: list[str] | None = None) -> int:
    """Command line: ``OUT_DIR [--width W] [--layers N] [--heads H] [--max-positions P] [--seed S] [--force]``.
    Exit 0, or 2 with one line on stderr for bad input."""
    d = TinyClipSpec()
    parser = argparse.ArgumentParser(
        prog="make_tiny_clip", description="Write a small, randomly initialised CLIP text encoder and tokenizer to "
                                           "OUT_DIR (offline; for text.path of a text-to-image config).")
    parser.add_argument("out_dir", type=Path, help="new folder to write (text.path)")
    parser.add_argument("--width", type=int, default=d.width, help=f"hidden width = backbone.text_dim ({d.width})")
    parser.add_argument("--layers", type=int, default=d.layers, help=f"transformer layers ({d.layers})")
    parser.add_argument("--heads", type=int, default=d.heads, help=f"attention heads ({d.heads})")
    parser.add_argument("--max-positions", type=int, default=d.max_positions,
                        help=f"most tokens per caption, the largest text.max_length ({d.max_positions})")
    parser.add_argument("--seed", type=int, default=d.seed, help=f"seed of the random weights ({d.seed})")
    parser.add_argument("--force", action="store_true", help="replace the files of a non-empty OUT_DIR")
    args = parser.parse_args(argv)
    spec = TinyClipSpec(width=args.width, layers=args.layers, heads=args.heads, max_positions=args.max_positions,
                        seed=args.seed)
    try:
        out = write_tiny_clip(args.out_dir, spec, exist_ok=args.force)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"tiny CLIP text encoder (width {spec.width}, {spec.layers} layers, {spec.max_positions} positions, "
          f"seed {spec.seed}) written to {out}; use it with --set text.path={out} "
          f"--set backbone.text_dim={spec.width}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
