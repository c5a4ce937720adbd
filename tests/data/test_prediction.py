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


def _no_model_loading(monkeypatch):
    import tfhalo.data.prediction as prediction

    def refuse(*args, **kwargs):
        raise AssertionError("the model was loaded before the arguments were checked")

    monkeypatch.setattr(prediction, "load_trained", refuse)


def test_predict_to_file_refuses_to_overwrite_its_inputs(trained_dir, tmp_path, monkeypatch):
    from tfhalo.sim import hdf5

    out, sims, _, _ = trained_dir
    sim_path = hdf5.write_simulation(sims[0], tmp_path / "v.h5")
    (tmp_path / "link.h5").symlink_to(sim_path)
    before = sim_path.read_bytes()
    _no_model_loading(monkeypatch)
    for target, what in [(sim_path, "simulation"), (tmp_path / "link.h5", "simulation"),
                         (tmp_path / "." / "v.h5", "simulation"), (out / "model.keras", "model_dir"),
                         (out / "scalers.json", "model_dir")]:
        with pytest.raises(ValueError, match=rf"out_path must not be .*{what}.*Received: out_path="):
            predict_to_file(out, sim_path, target, progress=False)
    assert sim_path.read_bytes() == before


def test_predict_to_file_checks_out_path_before_any_work(trained_dir, tmp_path, monkeypatch):
    out, sims, _, _ = trained_dir
    (tmp_path / "a_dir").mkdir()
    (tmp_path / "a_file").write_text("x")
    _no_model_loading(monkeypatch)
    with pytest.raises(ValueError, match=r"out_path must not be an existing directory. Received: out_path='.*a_dir'"):
        predict_to_file(out, sims[0], tmp_path / "a_dir", progress=False)
    with pytest.raises(ValueError, match=r"out_path must be a file path. Received: out_path=''"):
        predict_to_file(out, sims[0], "", progress=False)
    with pytest.raises(ValueError, match=r"out_path.*a_file is a file.*Received: out_path='.*a_file/p.h5'"):
        predict_to_file(out, sims[0], tmp_path / "a_file" / "p.h5", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_dir", "a_file"]


def test_non_finite_simulation_is_refused_and_nothing_is_written(trained_dir, tmp_path):
    out, _, _, _ = trained_dir
    sim = make_tiny_simulation(n_side=10, seed=5)
    sim.initial_density[4, 4, 4] = np.nan
    with pytest.raises(ValueError, match=r"initial_density.*must be finite.*initial_density\[4, 4, 4\]=nan"):
        predict_to_file(out, sim, tmp_path / "new" / "pred.h5", progress=False)
    assert list(tmp_path.iterdir()) == []


def test_simulation_smaller_than_the_model_box_names_the_simulation(trained_dir, tmp_path):
    out, _, _, _ = trained_dir  # 5^3 input boxes
    sim = make_tiny_simulation(n_side=4, seed=5, n_halos=2)
    with pytest.raises(ValueError, match=r"simulation must have at least 5 particles per side.*"
                                         r"Received: simulation 'tiny_005' with n_side=4"):
        predict_to_file(out, sim, tmp_path / "new" / "pred.h5", progress=False)
    assert list(tmp_path.iterdir()) == []  # no empty directory left behind


def test_corrupt_model_files_are_named(trained_dir, tmp_path):
    import shutil

    out = trained_dir[0]
    cases = {
        "model.keras": (b"PK\x03\x04 not really a zip", r"model.keras.*cannot be loaded"),
        "scalers.json": (b'{"input_standardizer": ', r"scalers.json.*not valid JSON"),
        "MANIFEST.json": (b"{parts: [", r"MANIFEST.json.*not valid JSON"),
    }
    for name, (content, match) in cases.items():
        bad = tmp_path / name.replace(".", "_")
        shutil.copytree(out, bad)
        (bad / name).write_bytes(content)
        with pytest.raises(ValueError, match=match) as info:
            load_trained(bad)
        assert str(bad / name) in str(info.value)
        assert "File not found" not in str(info.value)


def test_model_with_non_finite_weights_is_refused(trained_dir, tmp_path):
    out, sims, _, _ = trained_dir
    trained = load_trained(out)
    weights = trained.model.get_weights()
    weights[0] = weights[0].copy()
    weights[0].flat[3] = np.nan
    trained.model.set_weights(weights)
    save_trained(trained.model, tmp_path / "nan_model", trained.standardizer, trained.label_scaler,
                 trained.input_config, export=False)
    with pytest.raises(ValueError, match=r"model.keras holds non-finite weights"):
        predict_to_file(tmp_path / "nan_model", sims[0], tmp_path / "p.h5", progress=False)
    assert not (tmp_path / "p.h5").exists()
