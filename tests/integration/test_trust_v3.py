"""Trust v3: a lost periodic evaluation redone on resume, failed evaluations fail the run, the weights sampled
are the weights recorded, non-finite exported weights refused."""
import json
import re

import torch

import dtr_plugins as dp

from ..conftest import tiny_dit_config

EVAL = ["data={name: digits, image_size: 8}", "backbone.num_classes=10",
        "eval={every: 3, at_end: true, num_samples: 20, metrics: [fid], feature_extractor: digits-classifier}"]


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_an_evaluation_lost_at_the_resumed_checkpoint_is_redone(tmp_path, log_text):
    """Checkpoint 6 written, its evaluation killed: resuming to 12 records evaluations 3, 6, 9, 12."""
    base = [f"output_dir={tmp_path / 'runs'}", *EVAL]
    run_dir = dp.train(dp.load_config(tiny_dit_config(tmp_path), overrides=base), progress=False)
    kept = [r for r in records(run_dir) if not ("eval" in r and r["step"] == 6)]  # what the kill lost
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in kept))
    log_text()
    dp.train(dp.load_config(tiny_dit_config(tmp_path), overrides=[*base, "train.steps=12"]), resume=True,
             progress=False)
    assert "the evaluation of step 6 has no record (interrupted); redoing it" in log_text()
    assert [r["step"] for r in records(run_dir) if "eval" in r] == [3, 6, 9, 12]
    steps = [r["step"] for r in records(run_dir)]
    assert steps == sorted(steps)


def test_a_failed_evaluation_fails_the_run(tmp_path, run_cli, monkeypatch):
    """A reference that disappears after validation: the evaluation fails, so does `dtr train` (exit 2)."""
    ref = tmp_path / "ref.npz"
    cfg_path = tiny_dit_config(tmp_path)
    sets = [f"output_dir={tmp_path / 'runs'}", *EVAL, "eval.every=0", f"eval.reference={ref}"]
    args = ["train", str(cfg_path)] + [a for s in sets for a in ("--set", s)]
    code, _, err = run_cli(*args)
    assert code == 2 and err.count("dtr: error:") == 1 and "eval.reference" in err and str(ref) in err, err
    import dtr_plugins.evaluation.references as references

    monkeypatch.setattr(references, "check_config_reference", lambda *a, **k: None)  # past validate only
    code, _, err = run_cli(*args)
    assert code == 2 and "evaluation at step 6 failed" in err and str(ref) in err, err
    assert not (tmp_path / "runs" / "tiny" / "eval.json").exists()


def test_a_checkpoint_without_ema_weights_samples_and_records_the_raw_weights(tmp_path, run_cli):
    run_dir = dp.train(dp.load_config(tiny_dit_config(tmp_path), overrides=[f"output_dir={tmp_path / 'runs'}"]),
                       progress=False)
    path = run_dir / "checkpoints" / "0000006.pt"
    ckpt = torch.load(path, weights_only=True)
    del ckpt["ema"]
    torch.save(ckpt, path)
    code, _, err = run_cli("sample", str(run_dir), "--num", "2", "--out", str(tmp_path / "s"))
    assert code == 0, err
    assert "holds no EMA weights" in err and str(path) in err
    assert json.loads((tmp_path / "s" / "samples.json").read_text())["weights"] == "model"


def test_an_export_with_non_finite_weights_is_refused(tmp_path, run_cli):
    from safetensors.torch import load_file, save_file

    run_dir = dp.train(dp.load_config(tiny_dit_config(tmp_path), overrides=[f"output_dir={tmp_path / 'runs'}"]),
                       progress=False)
    export = tmp_path / "export"
    assert run_cli("export", str(run_dir), "--out", str(export))[0] == 0
    weights = next(export.rglob("*.safetensors"))
    state = load_file(str(weights))
    name = next(k for k, v in state.items() if v.is_floating_point())
    state[name] = torch.full_like(state[name], float("nan"))
    save_file(state, str(weights))
    code, _, err = run_cli("sample", str(export), "--num", "2", "--out", str(tmp_path / "s"))
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert str(weights) in err and "NaN or inf" in err and name in err
    assert not (tmp_path / "s").exists()


def test_a_full_disk_during_a_checkpoint_write_is_one_line(tmp_path, run_cli, monkeypatch):
    def full(obj, f):
        raise RuntimeError("[enforce fail at inline_container.cc:603] . unexpected pos 1216 vs 1112")

    monkeypatch.setattr(torch, "save", full)
    code, _, err = run_cli("train", str(tiny_dit_config(tmp_path)), "--set", f"output_dir={tmp_path / 'runs'}")
    ckpt = tmp_path / "runs" / "tiny" / "checkpoints" / "0000003.pt"
    expected = (f"dtr: error: {ckpt}: no space left on the device; free space or choose another output_dir (the "
                "write stopped part-way; is the disk full?)")
    assert code == 2 and "Traceback" not in err and re.findall(r"dtr: error: [^\n]*", err) == [expected], err
    assert not any((tmp_path / "runs" / "tiny" / "checkpoints").iterdir())
