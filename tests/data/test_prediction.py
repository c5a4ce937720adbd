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
