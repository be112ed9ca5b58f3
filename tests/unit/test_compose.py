"""One composition: `dtr validate` refuses what `dtr train` refuses with the same line (the routing plan is
sized at `routing.site` in both), and each component is built once per `dtr validate` / `train` / `sample`."""
import collections

import pytest

from dtr_plugins.core.plugins import PluginInfo

from ..conftest import write

TINY = """\
name: c
output_dir: {out}
backbone: {{name: dit, input_size: 8, patch_size: 2, hidden_size: 32, depth: 2, num_heads: {heads}, in_channels: 1,
  num_classes: 10}}
routing: {routing}
diffusion: {{steps: 100}}
data: {{name: digits, image_size: 8}}
train: {{steps: 2, batch_size: 4, ckpt_every: 2, threads: 1}}
sample: {{respacing: ddim4, num_samples: 4, batch_size: 4}}
eval: {{at_end: false}}
"""


def _config(tmp_path, heads=2, routing="{name: dtr, beta: 0.4, site: heads_mlp}"):
    return write(tmp_path / "c.yaml", TINY.format(out=tmp_path / "runs", heads=heads, routing=routing))


def _error(code, err):
    lines = [ln for ln in err.splitlines() if not ln.startswith("dtr: warning")]
    assert code == 2 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


@pytest.mark.parametrize(("heads", "routing"), [(2, "{name: dtr, beta: 0.4, site: heads_mlp}"),
                                                (4, "{name: dtr, beta: 0.2, site: heads}")])
def test_validate_refuses_a_site_plan_with_the_line_train_gives(tmp_path, run_cli, heads, routing):
    path = _config(tmp_path, heads, routing)
    validated = _error(*run_cli("validate", str(path))[::2])
    trained = _error(*run_cli("train", str(path))[::2])
    assert validated == trained
    assert "routing.beta:" in validated and "tasks no channels" in validated
    assert not (tmp_path / "runs").exists()


class Counting:
    """Every plugin construction (:meth:`PluginInfo.build`, which the registry's factories all go through) of
    the counted kinds, counted by kind; ``splits`` counts datasets by their parameters (the held-out split
    that training scores is a dataset of its own)."""

    KINDS = ("process", "backbone", "dataset", "codec", "loss_weighting")

    def __init__(self, monkeypatch):
        self.counts: collections.Counter = collections.Counter()
        self.splits: collections.Counter = collections.Counter()
        build = PluginInfo.build

        def counted(info, **params):
            if info.kind in self.KINDS:
                self.counts[info.kind] += 1
            if info.kind == "dataset":
                self.splits[repr(sorted(params.items()))] += 1
            return build(info, **params)

        monkeypatch.setattr(PluginInfo, "build", counted)


@pytest.fixture
def counting(monkeypatch):
    return Counting(monkeypatch)


def test_each_component_is_built_once_per_command(tmp_path, run_cli, counting):
    path = _config(tmp_path, 2, "{name: dtr, beta: 0.5}")
    code, _, err = run_cli("validate", str(path))
    assert code == 0, err
    assert counting.counts == {**dict.fromkeys(Counting.KINDS, 1), "dataset": 2}  # training data, held-out split
    counting.counts.clear()
    counting.splits.clear()
    code, _, err = run_cli("train", str(path))
    assert code == 0, err
    assert counting.counts == {**dict.fromkeys(Counting.KINDS, 1), "dataset": 2}  # training data, held-out split
    assert sorted(counting.splits.values()) == [1, 1]
    counting.counts.clear()
    counting.splits.clear()
    code, _, err = run_cli("sample", str(tmp_path / "runs" / "c"), "--num-samples", "2", "--out",
                           str(tmp_path / "s"))
    assert code == 0, err
    assert counting.counts == {k: 1 for k in Counting.KINDS if k != "dataset"}  # sampling opens no data


def test_one_guidance_rule_with_one_message():
    from types import SimpleNamespace

    from dtr_plugins.core.errors import ConfigError
    from dtr_plugins.core.guidance import check_guidance

    from ..conftest import ROOT

    raising = [p.relative_to(ROOT).as_posix() for p in sorted((ROOT / "dtr_plugins").rglob("*.py"))
               if "asks for classifier-free guidance" in p.read_text() or "null class (label dropout)" in p.read_text()]
    assert raising == ["dtr_plugins/core/guidance.py"]
    check_guidance(SimpleNamespace(num_classes=1, null_class=None), 1.0)  # no guidance: nothing to refuse
    check_guidance(SimpleNamespace(num_classes=10, null_class=10), 4.0)
    for model, why in ((SimpleNamespace(num_classes=1, null_class=None), "is unconditional"),
                       (SimpleNamespace(num_classes=10, null_class=None), "has no null class")):
        with pytest.raises(ConfigError, match=rf"^--cfg-scale: 4 asks for classifier-free guidance, but this backbone "
                                              rf"\(num_classes={model.num_classes}\) {why}"):
            check_guidance(model, 4.0, "--cfg-scale")
