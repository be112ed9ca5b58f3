"""``scripts/make_tiny_clip.py`` (``dtr_plugins.conditioners.tiny_clip``): a small random CLIP text encoder written
offline to a folder that ``clip_text`` reads, sized for ``configs/t2i_digits.yaml``."""
from __future__ import annotations

import os
import subprocess
import sys

import dtr_plugins as dp
from dtr_plugins.conditioners.clip_text import ClipTextConditioner
from dtr_plugins.conditioners.tiny_clip import TinyClipSpec, main, write_tiny_clip
from dtr_plugins.data.class_captions import DIGIT_NAMES, DIGIT_TEMPLATES

from ..conftest import ROOT


def test_the_script_writes_an_encoder_clip_text_reads_and_refuses_a_full_folder(tmp_path):
    out = tmp_path / "clip"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    done = subprocess.run([sys.executable, str(ROOT / "scripts" / "make_tiny_clip.py"), str(out), "--width", "32",
                           "--heads", "4", "--layers", "1", "--seed", "3"], capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0, done.stderr
    assert f"--set text.path={out}" in done.stdout and "--set backbone.text_dim=32" in done.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip"]  # nothing left beside it
    enc = ClipTextConditioner(str(out), max_length=32)
    captions = [t.format(name=n) for n in DIGIT_NAMES for t in DIGIT_TEMPLATES]
    tokens, pooled, mask = enc.encode(captions)
    assert tokens.shape == (len(captions), 32, 32) and enc.embed_dim == 32
    assert len({tuple(p.tolist()) for p in pooled}) == len(captions)  # every caption its own embedding
    chars = [len(c.replace(" ", "")) for c in captions]  # words split at spaces, then one token per character
    assert mask.sum(1).tolist() == [n + 2 for n in chars]  # and the start and end tokens; none truncated
    # the same seed and shape write the same weights (the text cache is keyed by them), another seed others
    same = write_tiny_clip(tmp_path / "same", TinyClipSpec(width=32, heads=4, layers=1, seed=3))
    other = write_tiny_clip(tmp_path / "other", TinyClipSpec(width=32, heads=4, layers=1, seed=4))
    assert ClipTextConditioner(str(same), max_length=32).fingerprint() == enc.fingerprint()
    assert ClipTextConditioner(str(other), max_length=32).fingerprint() != enc.fingerprint()


def test_a_full_folder_or_a_bad_shape_is_one_line(tmp_path, capsys):
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("mine")
    assert main([str(tmp_path / "full")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "full is not empty" in err and "Traceback" not in err
    assert main([str(tmp_path / "odd"), "--width", "30", "--heads", "4"]) == 2
    assert "width 30 is not a multiple of heads 4" in capsys.readouterr().err
    assert (tmp_path / "full" / "keep.txt").read_text() == "mine" and not (tmp_path / "odd").exists()


def test_the_default_encoder_fits_the_digits_config():
    cfg = dp.load_config(ROOT / "configs" / "t2i_digits.yaml")
    spec = TinyClipSpec()
    assert cfg.backbone.params["text_dim"] == spec.width
    longest = max(len(t.format(name=n).replace(" ", "")) for n in DIGIT_NAMES for t in DIGIT_TEMPLATES) + 2
    assert longest <= cfg.text.params["max_length"] == cfg.backbone.params["text_length"] <= spec.max_positions
