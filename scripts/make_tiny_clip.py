"""Write a small, randomly initialised CLIP text encoder and tokenizer to a folder, offline (nothing downloads).

    python scripts/make_tiny_clip.py runs/tiny-clip            # width 512 (configs/t2i_digits.yaml's text_dim)
    python scripts/make_tiny_clip.py runs/tiny-clip-64 --width 64 --heads 4

Then train with ``--set text.path=runs/tiny-clip`` (docs/text_to_image.md, "An offline trial"). The code is
``dtr_plugins.conditioners.tiny_clip`` (also ``python -m dtr_plugins.conditioners.tiny_clip``); the tests build
their tiny encoder with it too.
"""
from __future__ import annotations

import sys

from dtr_plugins.conditioners.tiny_clip import main

if __name__ == "__main__":
    sys.exit(main())
