"""The conditioner kind's written contract is its whole contract (as test_contracts.py for the other kinds): a
temporary distribution registers a conditioner (``Conditioner``) and a captioned dataset (``SupportsCaptions``,
``SupportsCaptionClasses``), each written from its Protocol in ``dtr_plugins/core/contracts.py`` alone; ``dtr
plugins``, ``dtr validate``, ``dtr train`` (the text-embedding cache, caption dropout), the prompt classes that
the prompt-class agreement scores against and ``dtr sample --prompt`` run through them with the built-in
``dit_t2i``, in this process."""
import importlib
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from dtr_plugins.core.plugins import default_registry
from dtr_plugins.evaluation.text_metrics import prompt_classes

from ..conftest import write
from ..unit.test_plugins import make_distribution

ACME = (Path(__file__).parent / "acme_text.py").read_text()

CONFIG = """\
name: text
output_dir: {root}/runs
backbone: {{name: dit_t2i, input_size: 8, patch_size: 4, hidden_size: 16, depth: 1, num_heads: 2, in_channels: 1,
           text_dim: 4, text_length: 6}}
routing: {{name: dtr, alpha: 4.0, beta: 0.8}}
diffusion: {{steps: 100, schedule: linear}}
data: {{name: acme_squares, side: 8, count: 16}}
text: {{name: acme_chars, length: 6, width: 4, caption_dropout: 0.5, cache_dir: {root}/text_cache}}
train: {{steps: 2, batch_size: 4, log_every: 1, ckpt_every: 2, threads: 1}}
sample: {{sampler: ddim, respacing: ddim2, num_samples: 4, batch_size: 4, cfg_scale: 1.5}}
eval: {{at_end: false, heldout_every: 0}}
"""


@pytest.fixture
def acme_text(tmp_path, monkeypatch):
    """The distribution on ``sys.path``, the registry rebuilt with it (and again without it afterwards)."""
    site = tmp_path / "site"
    make_distribution(site, "acme-text", "acme_text", ACME)
    monkeypatch.syspath_prepend(str(site))
    importlib.invalidate_caches()
    default_registry.cache_clear()
    yield sys.modules.get("acme_text")
    default_registry.cache_clear()


def test_a_conditioner_and_captioned_data_from_the_protocols_alone(tmp_path, acme_text, run_cli):
    code, out, err = run_cli("plugins", "--json")
    assert code == 0, err
    ours = {(r["kind"], r["name"]) for r in json.loads(out) if r["distribution"] == "acme-text"}
    assert ours == {("conditioner", "acme_chars"), ("dataset", "acme_squares")}
    config = write(tmp_path / "text.yaml", CONFIG.format(root=tmp_path))
    code, _, err = run_cli("validate", str(config))
    assert code == 0, err
    code, _, err = run_cli("validate", str(config), "--set", "backbone.text_dim=5")
    assert code == 2 and "backbone.text_dim: 5 but the conditioner 'acme_chars' gives 4" in err

    code, _, err = run_cli("train", str(config))
    assert code == 0, err
    run = tmp_path / "runs" / "text"
    calls = sys.modules["acme_text"].Chars.calls
    encoded = [t for call in calls for t in call]
    assert len(encoded) == len(set(encoded)), calls  # the cache encodes each caption once
    assert "" in encoded and set(encoded) - {""} <= {"a dark square", "dark", "a light square", "light"}
    cache = next((tmp_path / "text_cache").iterdir())
    manifest = json.loads((cache / "manifest.json").read_text())
    assert (manifest["max_length"], manifest["embed_dim"]) == (6, 4)
    assert len(list(cache.glob("*/*.pt"))) == len(encoded)
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2]
    params = default_registry().get("dataset", "acme_squares").params(count=4)
    classes = prompt_classes(params, ["dark", "a light square", "a dark square"])  # the agreement's labels
    assert classes is not None and classes.tolist() == [0, 1, 0]
    assert prompt_classes(params, ["dark", "a red square"]) is None  # a prompt of no class: no agreement

    out_dir = tmp_path / "samples"
    code, _, err = run_cli("sample", str(run), "-n", "3", "--prompt", "a light square", "--prompt", "dark",
                           "--out", str(out_dir))
    assert code == 0, err
    data = np.load(out_dir / "samples.npz")
    assert data["arr_0"].shape == (3, 8, 8, 1) and list(data["labels"]) == [0, 1, 0]
    assert json.loads((out_dir / "samples.json").read_text())["prompts"] == ["a light square", "dark"]
    assert "a light square" in [t for call in calls for t in call]  # a prompt seen in training: read back
    assert sum(t == "a light square" for call in calls for t in call) == 1
