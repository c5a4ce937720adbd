"""Resume after an interrupted fit, with the study's own callbacks."""

import importlib.util
from pathlib import Path

import keras
import numpy as np
import pytest

from tests.helpers.tiny_sims import make_tiny_suite
from tfhalo.data import BoxInputs, HaloDataset, LabelScaler, build_particle_sets

ROOT = Path(__file__).resolve().parents[2]


def load_study():
    spec = importlib.util.spec_from_file_location("deep_halos", ROOT / "experiments" / "deep_halos.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


class Interrupt(keras.callbacks.Callback):
    def __init__(self, at_epoch):
        super().__init__()
        self.at_epoch = at_epoch

    def on_epoch_end(self, epoch, logs=None):
        if epoch == self.at_epoch:
            raise KeyboardInterrupt(f"simulated interruption after epoch {epoch}")


class Recorder(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.epochs, self.start_weights, self.end_weights = [], {}, {}

    def on_epoch_begin(self, epoch, logs=None):
        self.epochs.append(epoch)
        self.start_weights[epoch] = [w.copy() for w in self.model.get_weights()]

    def on_epoch_end(self, epoch, logs=None):
        self.end_weights[epoch] = [w.copy() for w in self.model.get_weights()]


def tiny_model():
    model = keras.Sequential([keras.Input((5, 5, 5, 1)), keras.layers.Flatten(), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(1e-3, amsgrad=True), loss="mse")
    return model


def test_interrupted_fit_resumes_from_last_epoch(tmp_path):
    study = load_study()
    sims = make_tiny_suite(3, seed=30, n_side=12)
    sets = build_particle_sets(sims, 40, 16, 16, log_mass_range=(10, 14), seed=0)
    inputs = BoxInputs(sims, kind="raw", size=5)
    inputs.fit_standardizer(sets["train"])
    scaler = LabelScaler().fit(sets["train"].log_mass)
    train = HaloDataset(inputs, sets["train"], scaler, batch_size=16, shuffle=True, seed=1)
    val = HaloDataset(inputs, sets["validation"], scaler, batch_size=16)
    run_dir = tmp_path / "run"

    first = Recorder()
    with pytest.raises(KeyboardInterrupt):
        study.fit_resumable(tiny_model(), train, val, run_dir, epochs=5, patience=10,
                            extra_callbacks=[first, Interrupt(at_epoch=2)], verbose=0)
    assert first.epochs == [0, 1, 2]
    assert (run_dir / "backup").is_dir()

    second = Recorder()
    history = study.fit_resumable(tiny_model(), train, val, run_dir, epochs=5, patience=10,
                                  extra_callbacks=[second], verbose=0)
    assert second.epochs == [3, 4]  # continues after the last finished epoch
    for a, b in zip(first.end_weights[2], second.start_weights[3]):
        np.testing.assert_array_equal(a, b)  # from the weights it had reached
    assert len(history.history["loss"]) == 2
    log = (run_dir / "training_log.csv").read_text().strip().splitlines()
    assert [row.split(",")[0] for row in log[1:]][-2:] == ["3", "4"]
