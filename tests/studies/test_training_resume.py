"""Resume after an interrupted fit, with the deep-halo study's own callbacks."""

import keras
import numpy as np
import pytest

from tests.helpers.tiny_sims import make_tiny_suite
from tfhalo.data import BoxInputs, HaloDataset, LabelScaler, build_particle_sets
from tfhalo.models import halo_cnn
from tfhalo.studies import deep_halos as study


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


def tiny_datasets(seed, n_side, n_train):
    """Shuffled training and validation datasets of 5^3 raw boxes from a tiny suite."""
    sims = make_tiny_suite(3, seed=seed, n_side=n_side)
    sets = build_particle_sets(sims, n_train, 16, 16, log_mass_range=(10, 14), seed=0)
    inputs = BoxInputs(sims, kind="raw", size=5)
    inputs.fit_standardizer(sets["train"])
    scaler = LabelScaler(10.0, 14.0)  # the sets' mass range: every label in [-1, 1]
    train = HaloDataset(inputs, sets["train"], scaler, batch_size=16, shuffle=True, seed=1)
    val = HaloDataset(inputs, sets["validation"], scaler, batch_size=16)
    return train, val


def tiny_model():
    model = keras.Sequential([keras.Input((5, 5, 5, 1)), keras.layers.Flatten(), keras.layers.Dense(1)])
    model.compile(optimizer=keras.optimizers.Adam(1e-3, amsgrad=True), loss="mse")
    return model


def test_interrupted_fit_resumes_from_last_epoch(tmp_path):
    train, val = tiny_datasets(seed=30, n_side=12, n_train=40)
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
    assert history["epoch"] == [0, 1, 2, 3, 4]  # the whole run, not only the resumed call
    assert len(history["loss"]) == 5
    log = (run_dir / "training_log.csv").read_text().strip().splitlines()
    assert [row.split(",")[0] for row in log[1:]][-2:] == ["3", "4"]


class EpochOrder(keras.callbacks.Callback):
    """Records which shuffling epoch the training dataset serves at each epoch."""

    def __init__(self, dataset):
        super().__init__()
        self.dataset, self.served = dataset, {}

    def on_epoch_begin(self, epoch, logs=None):
        self.served[epoch] = self.dataset.epoch


class Scramble(keras.callbacks.Callback):
    """After each batch, push the network's weights far away: every later epoch validates worse.

    The Cauchy scale is left alone: scrambled, it can make the loss non-finite, which stops ``fit``.
    """

    def on_train_batch_end(self, batch, logs=None):
        rng = np.random.default_rng(batch)
        for v in self.model.trainable_variables:
            if not v.path.startswith("cauchy_scale"):
                v.assign(v + 5.0 * rng.standard_normal(tuple(v.shape)).astype(v.dtype))


def test_resumed_halo_model_restores_best_weights_across_interruption(tmp_path):
    """The best val_loss epoch lies before the interruption: its weights must come back."""
    sims = make_tiny_suite(3, seed=31, n_side=10)
    sets = build_particle_sets(sims, 48, 16, 16, log_mass_range=(10, 14), seed=0)
    inputs = BoxInputs(sims, kind="raw", size=5)
    inputs.fit_standardizer(sets["train"])
    scaler = LabelScaler(10.0, 14.0)  # the sets' mass range: every label in [-1, 1]
    val = HaloDataset(inputs, sets["validation"], scaler, batch_size=16)
    run_dir = tmp_path / "run"

    def model():
        return halo_cnn(input_shape=(5, 5, 5, 1), conv_filters=(2,), pool_after=(True,), dense_units=(4,),
                        learning_rate=1e-3, seed=0)

    def train_ds():  # a fresh object, as in a new process after the interruption
        return HaloDataset(inputs, sets["train"], scaler, batch_size=16, shuffle=True, seed=3)

    first, ds1 = Recorder(), train_ds()
    order1 = EpochOrder(ds1)
    with pytest.raises(KeyboardInterrupt):
        study.fit_resumable(model(), ds1, val, run_dir, epochs=5, patience=10,
                            extra_callbacks=[first, order1, Interrupt(at_epoch=1)], verbose=0)
    ds2 = train_ds()
    second, order = Recorder(), EpochOrder(ds2)
    final_model = model()
    history = study.fit_resumable(final_model, ds2, val, run_dir, epochs=5, patience=10,
                                  extra_callbacks=[second, order, Scramble()], verbose=0)
    assert second.epochs == [2, 3, 4]
    # Keras advances a PyDataset once at fit start and once per epoch: the
    # shuffling epoch must keep the same offset from the training epoch as before.
    offsets = {e - served for e, served in {**order1.served, **order.served}.items()}
    assert len(offsets) == 1, (order1.served, order.served)  # shuffles as an uninterrupted run
    assert history["epoch"] == [0, 1, 2, 3, 4]
    best = int(np.argmin(history["val_loss"]))
    assert best < 2, history["val_loss"]  # the scrambled epochs are worse: the test is meaningful
    ends = {**first.end_weights, **second.end_weights}
    for got, want in zip(final_model.get_weights(), ends[best]):
        np.testing.assert_array_equal(got, want)


def test_resumed_early_stopping_keeps_its_patience(tmp_path):
    """Patience counts epochs without improvement before the interruption too."""
    train, val = tiny_datasets(seed=32, n_side=10, n_train=32)
    run_dir = tmp_path / "run"
    # Epoch 0 is the best; scrambling makes 1, 2, ... worse. patience=2 stops after epoch 2.
    first = Recorder()
    with pytest.raises(KeyboardInterrupt):
        study.fit_resumable(tiny_model(), train, val, run_dir, epochs=8, patience=2,
                            extra_callbacks=[Scramble(), first, Interrupt(at_epoch=1)], verbose=0)
    second = Recorder()
    history = study.fit_resumable(tiny_model(), train, val, run_dir, epochs=8, patience=2,
                                  extra_callbacks=[Scramble(), second], verbose=0)
    assert int(np.argmin(history["val_loss"])) == 0, history["val_loss"]
    assert second.epochs == [2]  # one more epoch without improvement, then stop (not 2 more)
