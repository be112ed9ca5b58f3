"""One-line messages that name what is wrong: cache-latents names the config, eval names a bad --ref first."""
import numpy as np

from ..conftest import ROOT


def test_cache_latents_errors_name_the_config_file(run_cli):
    path = ROOT / "configs" / "dit_digits.yaml"
    code, _, err = run_cli("cache-latents", str(path))
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert err.startswith(f"dtr: error: {path}: vae.path: dtr cache-latents needs a vae section")


def test_eval_names_an_unknown_reference_dataset_before_missing_inception_weights(tmp_path, run_cli, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))  # no Inception weights here
    monkeypatch.delenv("DTR_INCEPTION_WEIGHTS", raising=False)
    samples = tmp_path / "x.npz"
    np.savez(samples, arr_0=np.zeros((4, 8, 8, 1), np.uint8))
    code, _, err = run_cli("eval", "--samples", str(samples), "--ref", "dataset:nope", "--out", str(tmp_path / "e"))
    assert code == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert ("unknown dataset 'nope' (known: coco_captions, digits, digits_captions, fashion_captions, fashion_mnist, "
            "image_folder, image_text, synthetic)") in err
    assert "weights" not in err
    assert not (tmp_path / "e").exists()
