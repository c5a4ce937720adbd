import h5py
import numpy as np
import pytest

from tests.helpers.tiny_sims import make_tiny_simulation, make_tiny_suite
from tfhalo.data import (BoxInputs, LabelScaler, build_particle_sets, load_trained, predict_log_mass,
                         predict_to_file, save_trained)
from tfhalo.models import halo_cnn


@pytest.fixture(scope="module")
def trained_dir(tmp_path_factory):
    sims = make_tiny_suite(3, seed=40, n_side=10)
    sets = build_particle_sets(sims, 50, 10, 10, log_mass_range=(10, 14), seed=0)
    inputs = BoxInputs(sims, kind="raw", size=5)
    inputs.fit_standardizer(sets["train"])
    scaler = LabelScaler().fit(sets["train"].log_mass)
    model = halo_cnn(input_shape=(5, 5, 5, 1), conv_filters=(2,), pool_after=(True,), dense_units=(4,),
                     compile=False)
    out = tmp_path_factory.mktemp("model")
    save_trained(model, out, inputs.standardizer, scaler, inputs.config(), export=True)
    expected = predict_log_mass(model, inputs, sets["test"], scaler, batch_size=4, verbose=0)
    return out, sims, sets, expected


def test_saved_model_round_trip_and_prediction(trained_dir):
    out, sims, sets, expected = trained_dir
    assert (out / "model.keras").is_file() and (out / "saved_model" / "saved_model.pb").is_file()
    trained = load_trained(out)
    test = sets["test"]
    sim_i = int(test.sim_index[0])
    ids = test.particle_id[test.sim_index == sim_i]
    got = trained.predict(sims[sim_i], ids, batch_size=3, progress=False)
    np.testing.assert_allclose(got, expected[test.sim_index == sim_i], rtol=1e-5)


def test_predict_to_file_covers_every_particle(trained_dir, tmp_path):
    out, sims, _, _ = trained_dir
    sim = make_tiny_simulation(n_side=10, seed=77)
    path = predict_to_file(out, sim, tmp_path / "pred.h5", batch_size=300, progress=False)  # 1000 = 3*300+100
    with h5py.File(path) as f:
        ids = f["particle_id"][:]
        pred = f["predicted_log10_mass"][:]
        true = f["true_log10_mass"][:]
    np.testing.assert_array_equal(ids, np.arange(1000))
    assert np.all(np.isfinite(pred))
    direct = load_trained(out).predict(sim, batch_size=1000, progress=False)
    np.testing.assert_allclose(pred, direct, rtol=1e-5)
    np.testing.assert_array_equal(np.isnan(true), sim.halo_id < 0)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["pred.h5"]  # no temporary file left


def test_model_dir_missing_its_scaler_fails_clearly(trained_dir, tmp_path):
    out, sims, _, _ = trained_dir
    bare = tmp_path / "bare"
    bare.mkdir()
    (bare / "model.keras").write_bytes((out / "model.keras").read_bytes())
    with pytest.raises(FileNotFoundError, match="has no scalers.json"):
        load_trained(bare)
    with pytest.raises(FileNotFoundError, match="has no scalers.json"):
        predict_to_file(bare, sims[0], tmp_path / "x.h5")
    assert not (tmp_path / "x.h5").exists()
    with pytest.raises(FileNotFoundError, match="not a directory"):
        load_trained(tmp_path / "nope")


def _parts(trained_dir):
    import json

    from tfhalo.data.scalers import load_scalers

    out = trained_dir[0]
    std, lab, extra = load_scalers(out)
    return out, std, lab, extra["input"]


def test_interrupted_save_leaves_the_old_model_dir_intact(trained_dir, tmp_path, monkeypatch):
    import tfhalo.data.prediction as prediction

    out, std, lab, cfg = _parts(trained_dir)
    model = load_trained(out).model
    run = tmp_path / "run"
    save_trained(model, run, std, lab, cfg, export=False)
    (run / "training_log.csv").write_text("epoch,loss\n0,1.0\n")  # a training run's own files stay
    before = (run / "scalers.json").read_text()

    def crash(*args, **kwargs):
        raise KeyboardInterrupt("interrupted while saving")

    monkeypatch.setattr(prediction, "save_scalers", crash)
    with pytest.raises(KeyboardInterrupt):
        save_trained(model, run, std, lab, cfg, export=False, note="new")
    with pytest.raises(KeyboardInterrupt):
        save_trained(model, tmp_path / "fresh", std, lab, cfg, export=False)
    assert not (tmp_path / "fresh").exists()  # a new directory appears whole or not at all
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no temporary build left
    assert (run / "scalers.json").read_text() == before
    assert (run / "training_log.csv").is_file()
    load_trained(run)  # still complete


def test_model_dir_without_manifest_is_refused(trained_dir, tmp_path):
    import shutil

    out = trained_dir[0]
    partial = tmp_path / "partial"
    shutil.copytree(out, partial)
    (partial / "MANIFEST.json").unlink()  # as left by a save interrupted mid-way
    with pytest.raises(FileNotFoundError, match="incomplete"):
        load_trained(partial)


def test_predict_to_file_rejects_bad_ids_and_batch_size(trained_dir, tmp_path):
    out, sims, _, _ = trained_dir
    n = sims[0].n_particles
    with pytest.raises(ValueError, match=rf"particle_ids must lie in \[0, {n}\).*particle_ids\[1\]={n}"):
        predict_to_file(out, sims[0], tmp_path / "x.h5", particle_ids=[0, n], progress=False)
    with pytest.raises(ValueError, match=r"batch_size must be an integer. Received: batch_size=2.7"):
        predict_to_file(out, sims[0], tmp_path / "x.h5", batch_size=2.7, progress=False)
    assert not (tmp_path / "x.h5").exists()
