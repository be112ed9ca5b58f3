"""Files a config, an export or a killed process leaves behave: outputs stay in the run, the model card
escapes and hides local paths, a foreign config.json cannot demand memory, exports are reproducible."""
import json
import os
import subprocess
import sys

import pytest

import dtr_plugins as dp
from dtr_plugins.core.errors import CheckpointError
from dtr_plugins.core.io import atomic_path, clean_dead_partials, clean_stale_temps, owner_tag
from dtr_plugins.runs.listing import find_runs, format_runs_table, summarize_run
from dtr_plugins.runs.rundir import RunDir
from dtr_plugins.sharing import hub
from dtr_plugins.sharing.model_card import render_model_card

from ..conftest import tiny_dit_config
from .test_hub import TINY, fake_api, run_dir  # noqa: F401 -- fixtures


@pytest.mark.parametrize("subdir", ["../../escape", "/tmp/elsewhere", "a/../../b"])
def test_tracker_subdir_outside_the_run_is_refused(tmp_path, run_cli, subdir):
    path = tiny_dit_config(tmp_path, "c.yaml", **TINY, log={"trackers": [{"name": "tensorboard", "subdir": subdir}]})
    code, _, err = run_cli("validate", str(path))
    assert code == 2 and "log.trackers.0.subdir: " in err and "relative path inside the run directory" in err
    assert len(err.strip().splitlines()) == 1


def test_model_card_escapes_values_and_shows_local_paths_by_their_last_component():
    cfg = {"name": "m", "backbone": {"name": "latent_dit", "hidden_size": 32},
           "routing": {"name": "dtr", "note": "<b>x</b>"},
           "vae": {"path": "/home/alice/secret/vae`\n<img src=x onerror=alert(1)>"},
           "data": {"name": "image_folder", "path": "/home/alice/secret/faces"}}
    record = {"weights": "ema", "step": 1, "checkpoint": "c`k.pt", "weights_file": "model.safetensors",
              "weights_sha256": "ab"}
    card = render_model_card(cfg, record, None)
    prose = card.split("## Config")[0]  # the config below is in a fenced block: shown as text
    assert "<b>" not in prose and "/home/alice" not in card
    assert "&lt;b&gt;x&lt;/b&gt;" in card and ".../faces" in card  # prose: HTML escaped
    # code spans: a backtick cannot close them, a newline cannot end them; raw HTML stays literal text inside
    assert "VAE ``.../vae`\\n<img src=x onerror=alert(1)>``" in card and "``c`k.pt``" in card
    assert prose.count("<img") == prose.count("``.../vae`\\n<img src=x onerror=alert(1)>``") == 2
    assert all(not line.lstrip().startswith("<") for line in prose.splitlines())


def test_push_warns_of_absolute_paths(run_dir, tmp_path, run_cli, fake_api):  # noqa: F811
    out = hub.export_run(run_dir, tmp_path / "exp")
    code, _, err = run_cli("push", str(out), "org/tiny")
    assert code == 0 and "dtr: warning: push: " in err and "absolute local paths (output_dir)" in err


def test_two_exports_of_one_checkpoint_are_identical_with_usual_modes(run_dir, tmp_path):  # noqa: F811
    a, b = hub.export_run(run_dir, tmp_path / "a"), hub.export_run(run_dir, tmp_path / "b")
    sha = [json.loads((d / "config.json").read_text())[hub.EXPORT_KEY]["weights_sha256"] for d in (a, b)]
    assert sha[0] == sha[1] and (a / "model.safetensors").read_bytes() == (b / "model.safetensors").read_bytes()
    mask = os.umask(0)
    os.umask(mask)
    modes = {p.name: p.stat().st_mode & 0o777 for p in a.iterdir()}
    assert modes == dict.fromkeys(("README.md", "config.json", "model.safetensors"), 0o666 & ~mask)


def test_foreign_config_asking_for_a_huge_model_is_refused_before_allocating(run_dir, tmp_path):  # noqa: F811
    out = hub.export_run(run_dir, tmp_path / "exp")
    config = json.loads((out / "config.json").read_text())
    config["backbone"].update(hidden_size=1 << 16, depth=512)  # ~ 10 TB of float32 weights
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"config.json: the config asks for .* of shape \[.*65536.*\] but "
                                              r"model.safetensors holds"):
        dp.from_pretrained(out)


def test_foreign_config_asking_for_a_huge_image_is_refused_before_allocating(run_dir, tmp_path):  # noqa: F811
    """The position table of a DiT is computed with numpy at construction: on the meta device it is skipped, so
    a hostile input_size (a 10^12-entry table) is refused by the shape check instead of allocating."""
    out = hub.export_run(run_dir, tmp_path / "exp")
    config = json.loads((out / "config.json").read_text())
    config["backbone"].update(input_size=1 << 20, patch_size=1)
    (out / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"config.json: the config asks for .* but model.safetensors holds"):
        dp.from_pretrained(out)


def test_export_cleans_what_a_killed_export_left(run_dir, tmp_path):  # noqa: F811
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = tmp_path / f".exp.partial-{dead.pid}"
    left.mkdir()
    (left / "model.safetensors").write_bytes(b"half")
    hub.export_run(run_dir, tmp_path / "exp")
    assert not left.exists() and not list(tmp_path.glob(".exp.partial-*"))
    assert (tmp_path / "exp" / "model.safetensors").is_file()


def test_runs_listing_shows_control_characters_escaped(run_dir, tmp_path):  # noqa: F811
    config = RunDir(run_dir).config_path
    original = config.read_text()
    config.write_text(original.replace("name: dtr", 'name: "dtr\\e[2J\\e]0;pwned\\a"', 1))
    try:
        table = format_runs_table([summarize_run(p, run_dir.parent) for p in find_runs(run_dir.parent)])
    finally:
        config.write_text(original)
    assert "\x1b" not in table and "\x07" not in table and "dtr\\x1b[2J\\x1b]0;pwned\\x07" in table


def test_temp_files_of_a_dead_process_are_cleaned_and_a_live_ones_kept(tmp_path):
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = int(child.stdout)
    host = owner_tag().rsplit("-", 1)[0]
    stale = tmp_path / f".0000100.pt.{host}-{dead}.abc123_x.tmp"
    stale.write_bytes(b"half a checkpoint")
    other_host = tmp_path / f".0000100.pt.elsewhere-{dead}.abc123_x.tmp"
    other_host.write_bytes(b"x")
    with atomic_path(tmp_path / "0000200.pt") as live:
        live.write_bytes(b"being written")
        assert clean_stale_temps(tmp_path) == [stale]
        assert live.exists() and other_host.exists()
    (tmp_path / f".out.partial-{dead}").mkdir()
    (tmp_path / f".out.partial-{os.getpid()}").mkdir()
    clean_dead_partials(tmp_path / "out")
    assert not (tmp_path / f".out.partial-{dead}").exists() and (tmp_path / f".out.partial-{os.getpid()}").exists()


def test_run_lock_cleans_what_a_killed_run_left(tmp_path):
    child = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    run = RunDir(tmp_path / "run")
    run.checkpoints.mkdir(parents=True)
    stale = run.checkpoints / f".0000002.pt.{owner_tag().rsplit('-', 1)[0]}-{int(child.stdout)}.q1w2e3r4.tmp"
    stale.write_bytes(b"x" * 1024)
    with run.lock():
        assert not stale.exists()


def test_vanilla_refuses_a_routing_site_and_plugin_params_are_strict(tmp_path, run_cli):
    path = tiny_dit_config(tmp_path, "v.yaml", **{**TINY, "routing": {"name": "vanilla", "site": "heads_mlp"}})
    code, _, err = run_cli("validate", str(path))
    assert code == 2 and "routing.site: 'heads_mlp' given with routing 'vanilla', which routes nothing" in err
    path = tiny_dit_config(tmp_path, "s.yaml", **{**TINY, "routing": {"name": "switch", "num_experts": True}})
    code, _, err = run_cli("validate", str(path))
    assert code == 2 and "routing.num_experts: expected an integer, got True (bool)" in err


def test_threads_minus_one_is_a_cli_error(tmp_path, run_cli):
    code, _, err = run_cli("train", str(tiny_dit_config(tmp_path, "c.yaml", **TINY)), "--threads", "-1")
    assert code == 2 and "--threads: -1 is not a thread count" in err and "train.threads" not in err
    assert len(err.strip().splitlines()) == 1
