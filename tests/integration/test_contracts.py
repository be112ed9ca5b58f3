"""The written contract is the whole contract: one temporary distribution registers one plugin of every
kind, each written from its Protocol in ``dtr_plugins/core/contracts.py`` alone (no built-in base class
but ``RoutedBackbone``), and ``dtr validate``, the launcher's ``launch`` (two ``dtr train`` runs: held-out
loss, tracker, the extractor's FID at the end; a codec and a learned strategy), and ``dtr sample`` run through
them, all in one process and as small as possible: this test checks the wiring of every kind."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from ..conftest import write
from ..unit.test_plugins import make_distribution


def dtr(site: Path, *args: str) -> subprocess.CompletedProcess:
    """``python -c SCRIPT ARGS`` with the temporary distribution importable."""
    env = dict(os.environ, PYTHONPATH=str(site), OMP_NUM_THREADS="1")
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=env, timeout=400)

#: the plugin module of the temporary distribution (a plain file beside this test, copied into it)
ACME = (Path(__file__).parent / "acme_everything.py").read_text()

PIXELS = """\
name: pixels
backbone: {name: acme_net}
routing: {name: acme_halves}
diffusion: {name: acme_linear}
loss_weighting: {name: acme_uniform}
data: {name: acme_blobs, mirror: true}
log: {trackers: [acme_tracker]}
ema: {name: acme_halflife, snapshot_every: 2}
timesteps: {name: acme_low_half}
regularizer: {name: acme_pixel_align}
train: {steps: 3, batch_size: 4, log_every: 1, threads: 1}
sample: {num_samples: 8, batch_size: 8}
eval: {at_end: true, metrics: [fid], feature_extractor: acme-projection, num_samples: 8, heldout_every: 2,
  heldout_per_band: 2}
"""

LATENT = """\
name: latent
backbone: {name: acme_latent_net, width: 4, input_size: 4}
routing: {name: acme_gates}
diffusion: {name: acme_linear}
codec: {name: acme_pool}
data: {name: acme_blobs, side: 8}
train: {steps: 2, batch_size: 4, log_every: 1, threads: 1}
eval: {at_end: false, heldout_every: 1, heldout_per_band: 2}
"""


#: ``dtr plugins --json``, ``dtr validate`` of the first config, the launcher plugin launching ``ROOT/<config
#: stem>`` of each config, ``dtr sample`` of the last run; one JSON line (command -> code and stdout)
DRIVER = """
import contextlib, io, json, sys
from pathlib import Path
from dtr_plugins.cli import main
from dtr_plugins.core.contracts import Launcher, RunSpec
from dtr_plugins.core.plugins import default_registry
def dtr(*args):
    with contextlib.redirect_stdout(io.StringIO()) as out:
        return {"code": main(list(args)), "out": out.getvalue()}
root, configs = Path(sys.argv[1]), sys.argv[2:]
report = {"plugins": dtr("plugins", "--json"), "validate": dtr("validate", configs[0], "--config-only")}
launcher = default_registry().build("launcher", "acme_launcher")
assert isinstance(launcher, Launcher) and launcher.blocking
runs = [RunSpec(Path(c).stem, root / Path(c).stem, Path(c)) for c in configs]
with contextlib.redirect_stdout(sys.stderr):
    report["launch"] = launcher.launch(root, runs)
report["sample"] = dtr("sample", str(runs[-1].run_dir), "--num", "2")
print(json.dumps(report))
"""


def test_one_plugin_of_every_kind_from_the_protocols_alone(tmp_path):
    site = tmp_path / "site"
    make_distribution(site, "acme-everything", "acme_everything", ACME)
    base = write(tmp_path / "pixels.yaml", PIXELS)
    latent = write(tmp_path / "latent.yaml", LATENT)
    runs = tmp_path / "runs" / "acme"
    driven = dtr(site, "-c", DRIVER, str(runs), str(base), str(latent))
    run, latent_run = runs / "pixels", runs / "latent"
    assert driven.returncode == 0, driven.stderr
    report = json.loads(driven.stdout.splitlines()[-1])
    assert report["plugins"]["code"] == 0, driven.stderr
    kinds = {r["kind"] for r in json.loads(report["plugins"]["out"]) if r["distribution"] == "acme-everything"}
    assert kinds == {"process", "dataset", "backbone", "strategy", "loss_weighting", "codec", "tracker",
                     "launcher", "feature_extractor", "ema", "timestep_sampler", "regularizer"}
    assert report["validate"]["code"] == 0, driven.stderr
    statuses = {k: v["state"] for k, v in report["launch"].items()}
    assert statuses == {"pixels": "done", "latent": "done"}, driven.stderr

    assert json.loads((run / "status.json").read_text())["state"] == "done"
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3]
    assert [r["step"] for r in records if "heldout" in r] == [2, 3]  # the process's held-out loss
    assert all(np.isfinite(r["heldout"]["total"]) for r in records if "heldout" in r)
    assert any("fid" in json.dumps(r) for r in records), records[-3:]  # the extractor's FID at the end
    tracked = [json.loads(line) for line in (run / "acme_tracker.jsonl").read_text().splitlines()]
    assert tracked[0] == {"start": "pixels"} and tracked[-1] == {"finish": True}
    config = json.loads((run / "meta.json").read_text())
    assert config["heldout"]["target"] == "epsilon"
    assert config["ema"]["name"] == "acme_halflife" and config["ema"]["applied"] is True  # the EMA rule's record
    assert config["timesteps"] == {"sampler": "every_step(T=10)", "continuous": False, "from": "timesteps"}
    assert config["regularizer"] == {"name": "acme_pixel_align", "weight": 0.1, "block": 1, "applied": True}
    assert all(r["aux/acme_align"] > 0 for r in records if "loss" in r)  # the regularizer's loss, logged
    assert sorted(p.name for p in (run / "ema").iterdir()) == [
        f"snapshot-{s:07d}-{n}.pt" for s in (2, 3) for n in ("fast", "slow")]  # both profiles, every 2 and at the end
    # the final evaluation sampled with the process's own default sampler (walk, 4 steps)
    assert np.load(run / "samples" / "samples.npz")["arr_0"].shape == (8, 8, 8, 1)

    losses = [json.loads(line) for line in (latent_run / "metrics.jsonl").read_text().splitlines()]
    assert any("aux/mean_gate" in json.dumps(r) for r in losses)  # the learned strategy's aux loss
    assert report["sample"]["code"] == 0, driven.stderr
    folder = Path(report["sample"]["out"].split("samples: ", 1)[1].strip())
    assert np.load(folder / "samples.npz")["arr_0"].shape == (2, 8, 8, 1)  # decoded by the codec
