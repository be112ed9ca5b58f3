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
    merges), as ``save_pretrained`` writes them (``dtr_plugins.conditioners.tiny_clip``); returns ``folder``."""
    from dtr_plugins.conditioners.tiny_clip import TinyClipSpec, write_tiny_clip

    spec = TinyClipSpec(width=TINY_TEXT_DIM, layers=2, heads=2, intermediate=32, max_positions=32, seed=seed)
    return write_tiny_clip(folder, spec, exist_ok=True)


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
