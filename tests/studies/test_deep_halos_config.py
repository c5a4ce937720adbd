"""tfhalo.studies.deep_halos: settings validated on construction; stale caches refused; the script's exit codes."""

import dataclasses
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.helpers.tiny_sims import make_tiny_suite
from tfhalo.studies import deep_halos
from tfhalo.studies.common import StaleCacheError

ROOT = Path(__file__).resolve().parents[2]

# One bad value per field, and the message it must give (field and value named).
BAD = {
    "devices": (0, r"devices must be at least 1. Received: devices=0"),
    "preset_name": ("huge", r"preset_name must be one of .*Received: preset_name='huge'"),
    "sim_preset": ("tiny", r"sim_preset must be one of .*Received: sim_preset='tiny'"),
    "n_sims": (2, r"n_sims must be at least 3. Received: n_sims=2"),
    "seed": (-1, r"seed must be at least 0. Received: seed=-1"),
    "subbox_size": (0, r"subbox_size must be at least 1. Received: subbox_size=0"),
    "conv_filters": ((8, 0, 16, 32), r"conv_filters\[1\] must be at least 1. Received: conv_filters\[1\]=0"),
    "pool_after": ((True,), r"pool_after must hold one True/False per convolution \(4\). "
                            r"Received: pool_after=\(True,\)"),
    "dense_units": ((), r"dense_units must be a non-empty sequence .*Received: dense_units=\(\)"),
    "n_train": (0, r"n_train must be at least 1. Received: n_train=0"),
    "n_validation": (2.5, r"n_validation must be an integer. Received: n_validation=2.5"),
    "n_test": ("10", r"n_test must be an integer. Received: n_test='10'"),
    "epochs": (0, r"epochs must be at least 1. Received: epochs=0"),
    "batch_size": (True, r"batch_size must be an integer. Received: batch_size=True"),
    "learning_rate": (math.nan, r"learning_rate must be a finite number. Received: learning_rate=nan"),
    "patience": (-1, r"patience must be at least 0. Received: patience=-1"),
    "log_mass_range": ((13.0, 11.0),
                       r"log_mass_range must satisfy low < high. Received: log_mass_range=\(13.0, 11.0\)"),
    "balanced": (1, r"balanced must be True or False. Received: balanced=1"),
    "z0_width": (0.0, r"z0_width must be positive. Received: z0_width=0.0"),
    "z0_transform": ("cube", r"z0_transform must be one of .*Received: z0_transform='cube'"),
    "workers": (0, r"workers must be at least 1. Received: workers=0"),
    "use_multiprocessing": ("yes", r"use_multiprocessing must be True or False. Received: use_multiprocessing='yes'"),
    "standardizer_particles": (0, r"standardizer_particles must be at least 1. Received: standardizer_particles=0"),
    "predict_batch_size": (-4, r"predict_batch_size must be at least 1. Received: predict_batch_size=-4"),
    "configs": (("raw", "cubic"), r"configs must be one of .*Received: configs='cubic'"),
    "gbt": (None, r"gbt must be True or False. Received: gbt=None"),
    "export": (0, r"export must be True or False. Received: export=0"),
    "n_boot": (5, r"n_boot must be at least 10. Received: n_boot=5"),
}


def test_every_field_has_a_bad_value_case():
    assert set(BAD) == {f.name for f in dataclasses.fields(deep_halos.Config)}


@pytest.mark.parametrize("field", sorted(BAD))
def test_bad_field_is_named_with_its_value(field):
    value, match = BAD[field]
    with pytest.raises(ValueError, match=match):
        deep_halos.Config(**{field: value})


@pytest.mark.parametrize("kwargs,match", [
    (dict(log_mass_range=(11.0, math.inf)), r"log_mass_range must be a pair of finite numbers"),
    (dict(log_mass_range=(11.0,)), r"log_mass_range must be a pair"),
    (dict(configs=("raw", "raw")), r"configs must not repeat a configuration"),
    (dict(configs=()), r"configs must be a non-empty sequence"),
])
def test_more_bad_values(kwargs, match):
    with pytest.raises(ValueError, match=match):
        deep_halos.Config(**kwargs)


def test_z0_transforms_are_the_data_pipelines():
    from tfhalo.data.z0 import Z0_TRANSFORMS

    assert deep_halos.Z0_TRANSFORMS == Z0_TRANSFORMS


def test_presets_overrides_and_round_trip():
    quick = deep_halos.Config.preset("quick")
    assert quick == deep_halos.Config()  # the defaults are the quick preset
    paper = deep_halos.Config.preset("paper", epochs=3, configs=["raw"], log_mass_range=[11, 13])
    assert (paper.preset_name, paper.subbox_size, paper.epochs, paper.configs) == ("paper", 75, 3, ("raw",))
    assert paper.log_mass_range == (11.0, 13.0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        paper.epochs = 4
    with pytest.raises(ValueError, match=r"preset must be one of .*Received: preset='fast'"):
        deep_halos.Config.preset("fast")
    with pytest.raises(ValueError, match=r"unknown Config fields \['epoch'\]"):
        deep_halos.Config.preset("quick", epoch=3)
    d = paper.to_dict()
    assert deep_halos.Config(**d) == paper
    assert json.loads(json.dumps(d)) == d


def test_stale_particle_sets_and_models_are_refused(tmp_path):
    sims = make_tiny_suite(3, seed=60, n_side=10)
    suite = tmp_path / "suite"
    cfg = deep_halos.Config(configs=("raw",), log_mass_range=(10, 14), n_train=40, n_validation=10, n_test=10)
    sets, _ = deep_halos.particle_sets(sims, cfg, suite, tmp_path)
    again, _ = deep_halos.particle_sets(sims, cfg, suite, tmp_path)  # same settings: the cache is reused
    np.testing.assert_array_equal(sets["train"].particle_id, again["train"].particle_id)
    assert again["split"] == sets["split"]
    deep_halos.check_caches(cfg, suite, tmp_path)

    changed = dataclasses.replace(cfg, n_train=30, seed=5)
    sets_file = str(tmp_path / "particle_sets.npz")
    with pytest.raises(StaleCacheError, match=r"particle_sets.npz was made with different settings "
                                              r"\(n_train: cached 40, now 30; seed: cached 0, now 5\).*--out") as err:
        deep_halos.check_caches(changed, suite, tmp_path)
    assert str(err.value.path) == sets_file
    with pytest.raises(StaleCacheError):
        deep_halos.particle_sets(sims, changed, suite, tmp_path)
    with pytest.raises(StaleCacheError, match=r"suite: cached .*suite', now .*other'"):
        deep_halos.check_caches(cfg, tmp_path / "other", tmp_path)

    from tfhalo.studies.common import Cache

    run_dir = tmp_path / "models" / "raw"
    models = Cache(run_dir, deep_halos.model_key(cfg, suite, "raw"))
    models.save("SETTINGS.json", {})
    models.save("DONE", {"seconds": 1})
    deep_halos.check_caches(cfg, suite, tmp_path)
    bigger = dataclasses.replace(cfg, subbox_size=cfg.subbox_size + 2)
    with pytest.raises(StaleCacheError, match=r"models/raw/SETTINGS.json .*subbox_size: cached 17, now 19"):
        deep_halos.check_caches(bigger, suite, tmp_path)

    deep_halos.check_caches(changed, suite, tmp_path, overwrite=True, progress=False)  # discards the sets
    assert not (tmp_path / "particle_sets.npz").exists() and not run_dir.exists()  # and every model made from them


def test_model_directory_without_settings_is_refused(tmp_path):
    cfg = deep_halos.Config(configs=("averaged",))
    (tmp_path / "models" / "averaged").mkdir(parents=True)
    with pytest.raises(StaleCacheError, match=r"settings not recorded"):
        deep_halos.check_caches(cfg, tmp_path / "suite", tmp_path)


def _script(*argv, cwd):
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, str(ROOT / "experiments" / "deep_halos.py"), *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("argv,message", [
    (["--patience", "-1"], "patience must be at least 0. Received: patience=-1"),
    (["--log-mass-range", "13", "11"], "log_mass_range must satisfy low < high"),
    (["--n-sims", "2"], "n_sims must be at least 3. Received: n_sims=2"),
    (["--epochs", "x"], "argument --epochs: invalid int value: 'x'"),
])
def test_script_rejects_bad_arguments_with_exit_2_and_writes_nothing(tmp_path, argv, message):
    out = tmp_path / "study"
    proc = _script(*argv, "--out", str(out), cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert "Traceback" not in proc.stderr
    assert list(tmp_path.iterdir()) == []  # neither --out nor the default suite was created
