"""deep_halos.py: settings validated before any work; stale caches refused."""

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def study():
    spec = importlib.util.spec_from_file_location("deep_halos_cfg", ROOT / "experiments" / "deep_halos.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("argv,match", [
    (["--log-mass-range", "13", "11"], r"log_mass_range must satisfy low < high"),
    (["--patience", "-1"], r"patience must be at least 0. Received: patience=-1"),
    (["--workers", "0"], r"workers must be at least 1. Received: workers=0"),
    (["--n-sims", "2"], r"n_sims must be at least 3. Received: n_sims=2"),
    (["--learning-rate", "nan"], r"learning_rate must be a finite number. Received: learning_rate=nan"),
])
def test_bad_settings_fail_in_resolve_config(study, argv, match):
    with pytest.raises(ValueError, match=match):
        study.resolve_config(study.parse_args(argv))


def _cfg(study, tmp_path, *argv):
    cfg = study.resolve_config(study.parse_args(["--configs", "raw", *argv]))
    cfg["suite"] = str(tmp_path / "suite")
    return cfg


def test_stale_particle_sets_and_models_are_refused(study, tmp_path):
    from tests.helpers.tiny_sims import make_tiny_suite

    sims = make_tiny_suite(3, seed=60, n_side=10)
    cfg = _cfg(study, tmp_path, "--log-mass-range", "10", "14", "--n-train", "40",
               "--n-validation", "10", "--n-test", "10")
    sets, _ = study.particle_sets(sims, cfg, tmp_path)
    again, _ = study.particle_sets(sims, cfg, tmp_path)  # same settings: the cache is reused
    np.testing.assert_array_equal(sets["train"].particle_id, again["train"].particle_id)
    study.check_caches(cfg, tmp_path)

    changed = _cfg(study, tmp_path, "--log-mass-range", "10", "14", "--n-train", "30",
                   "--n-validation", "10", "--n-test", "10", "--seed", "5")
    with pytest.raises(study.StaleCacheError, match=r"n_train: cached 40, now 30.*seed: cached 0, now 5.*fresh --out"):
        study.check_caches(changed, tmp_path)
    with pytest.raises(study.StaleCacheError):
        study.particle_sets(sims, changed, tmp_path)

    run_dir = tmp_path / "models" / "raw"
    run_dir.mkdir(parents=True)
    (run_dir / "DONE").write_text(json.dumps({"settings": study.model_key(cfg, "raw")}))
    (run_dir / "SETTINGS.json").write_text(json.dumps({"settings": study.model_key(cfg, "raw")}))
    study.check_caches(cfg, tmp_path)
    bigger = dict(cfg, subbox_size=cfg["subbox_size"] + 2)
    with pytest.raises(study.StaleCacheError, match=r"model 'raw'.*subbox_size"):
        study.check_caches(bigger, tmp_path)

    changed["overwrite"] = True  # discards the sets, and every model trained on them
    study.check_caches(changed, tmp_path)
    assert not (tmp_path / "particle_sets.npz").exists() and not run_dir.exists()
