"""A tiny, randomly initialised CLIP text model and tokenizer written to a folder (offline: nothing downloads)."""
from __future__ import annotations

import json
from pathlib import Path

#: the tiny text model's width (the text_dim a text-conditioned test backbone declares)
TINY_TEXT_DIM = 16
#: tokens per text in the tests
TINY_TEXT_LENGTH = 12


def tiny_clip_folder(folder: Path, seed: int = 0) -> Path:
    """``folder`` with a CLIPTextModel (2 layers, width 16) and a CLIPTokenizer (one token per character, no
    merges), as ``save_pretrained`` writes them; returns ``folder``."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    chars = _byte_symbols()
    vocab_list = chars + [c + "</w>" for c in chars] + ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(vocab_list)}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[])
    tokenizer.save_pretrained(str(folder))
    config = CLIPTextConfig(vocab_size=len(vocab), hidden_size=TINY_TEXT_DIM, intermediate_size=32,
                            num_hidden_layers=2, num_attention_heads=2, max_position_embeddings=32,
                            bos_token_id=vocab["<|startoftext|>"], eos_token_id=vocab["<|endoftext|>"],
                            pad_token_id=vocab["<|endoftext|>"])
    torch.manual_seed(seed)
    CLIPTextModel(config).save_pretrained(str(folder))
    return folder


def _byte_symbols() -> list[str]:
    """The 256 printable symbols byte-level BPE uses for the bytes 0..255 (GPT-2's table)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
                 *range(ord("\u00ae"), ord("\u00ff") + 1)]
    symbols, extra = {}, 0
    for b in range(256):
        if b in printable:
            symbols[b] = chr(b)
        else:
            symbols[b] = chr(256 + extra)
            extra += 1
    return [symbols[b] for b in range(256)]


def tiny_clip_model_folder(folder: Path, seed: int = 0) -> Path:
    """``folder`` with a whole CLIPModel (text and vision towers, 32px images) and its CLIPProcessor, as
    ``save_pretrained`` writes them (for the CLIP score); returns ``folder``."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor, CLIPTokenizer

    text_dir = tiny_clip_folder(folder / "text", seed)
    tokenizer = CLIPTokenizer.from_pretrained(str(text_dir))
    text_config = json.loads((text_dir / "config.json").read_text())
    vision = {"image_size": 32, "patch_size": 8, "hidden_size": 16, "intermediate_size": 32, "num_hidden_layers": 1,
              "num_attention_heads": 2}
    config = CLIPConfig(text_config={k: text_config[k] for k in ("vocab_size", "hidden_size", "intermediate_size",
                                                                 "num_hidden_layers", "num_attention_heads",
                                                                 "max_position_embeddings", "bos_token_id",
                                                                 "eos_token_id", "pad_token_id")},
                        vision_config=vision, projection_dim=8)
    torch.manual_seed(seed)
    CLIPModel(config).save_pretrained(str(folder))
    images = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    CLIPProcessor(image_processor=images, tokenizer=tokenizer).save_pretrained(str(folder))
    return folder
