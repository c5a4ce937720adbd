"""tfhalo.models: the paper CNN's architecture, compile/fit, save/load, export."""

import csv
import os
import subprocess
import sys

import keras
import numpy as np
import pytest

from tfhalo.layers import CauchyScale, MultipoleConv3D
from tfhalo.losses import CauchySelectionLoss
from tfhalo.models import GammaHistory, HaloModel, compile_halo_cnn, halo_cnn
from tfhalo.regularizers import L1GroupLasso

TINY = dict(input_shape=(9, 9, 9, 1), conv_filters=(4, 4), pool_after=(True, True), dense_units=(8,))


def n_trainable(model):
    return sum(int(np.prod(w.shape)) for w in model.trainable_weights)


def synthetic_task(n=96, size=9, seed=0):
    """Labels in [-1, 1] that a small CNN can learn: the mean of the central 3^3."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, size, size, size, 1)).astype("float32")
    c = size // 2
    y = np.tanh(2.0 * x[:, c - 1 : c + 2, c - 1 : c + 2, c - 1 : c + 2, 0].mean(axis=(1, 2, 3)))
    return x, (0.8 * y).astype("float32")


@pytest.fixture(scope="module")
def paper_model():
    return halo_cnn(compile=False)


def test_paper_model_has_2108258_trainable_parameters_including_gamma(paper_model):
    assert n_trainable(paper_model) == 2_108_258
    assert paper_model.count_params() == 2_108_258
    assert isinstance(paper_model.layers[-1], CauchyScale)


def test_paper_architecture_shapes(paper_model):
    pools = [layer for layer in paper_model.layers if isinstance(layer, keras.layers.MaxPooling3D)]
    assert [p.output.shape[1] for p in pools] == [38, 19, 10, 5, 3]
    assert paper_model.get_layer("conv1").output.shape[1:] == (75, 75, 75, 32)
    assert paper_model.get_layer("flatten").output.shape[-1] == 3456
    convs = [layer for layer in paper_model.layers if isinstance(layer, keras.layers.Conv3D)]
    assert [c.filters for c in convs] == [32, 32, 64, 128, 128, 128]
    assert all(c.kernel_size == (3, 3, 3) and c.padding == "same" for c in convs)
    assert paper_model.output.shape == (None, 1)


def test_paper_regularisers_on_the_right_layers(paper_model):
    alpha = 10**-2.5
    for layer in paper_model.layers:
        if isinstance(layer, keras.layers.Conv3D):
            assert isinstance(layer.kernel_regularizer, keras.regularizers.L2)
            assert layer.kernel_regularizer.l2 == pytest.approx(alpha)
        if isinstance(layer, (keras.layers.Conv3D, keras.layers.Dense)):
            assert layer.bias_regularizer is None
    for name in ("dense1", "dense2"):
        reg = paper_model.get_layer(name).kernel_regularizer
        assert isinstance(reg, L1GroupLasso) and reg.factor == pytest.approx(alpha)
        assert reg.group_factor == pytest.approx(alpha)
    assert paper_model.get_layer("prediction").kernel_regularizer is None
    assert len(paper_model.losses) == 8  # 6 convolutions + 2 Dense


def test_regularisation_can_be_disabled():
    for alpha in (None, 0):
        model = halo_cnn(**TINY, alpha=alpha, compile=False)
        assert len(model.losses) == 0


def test_default_compile_is_amsgrad_adam_with_cauchy_loss():
    model = halo_cnn(**TINY)
    assert isinstance(model.optimizer, keras.optimizers.Adam) and model.optimizer.amsgrad
    assert float(keras.ops.convert_to_numpy(model.optimizer.learning_rate)) == pytest.approx(5e-5)
    assert isinstance(model.loss, CauchySelectionLoss)
    assert model.gamma == np.float32(0.2)


@pytest.mark.parametrize(
    "kwargs, received",
    [
        (dict(conv_filters=(4, -2), pool_after=(True, True)), "conv_filters="),
        (dict(conv_filters=(4,), pool_after=(True, True)), "pool_after="),
        (dict(input_shape=(9, 9, 9)), "input_shape="),
        (dict(dense_units=(0,)), "dense_units="),
        (dict(conv_type="fft"), "conv_type="),
        (dict(ells=(-1,)), "ells="),
        (dict(initial_gamma=0.0), "initial_gamma="),
        (dict(initial_gamma=-0.2), "initial_gamma="),
        (dict(alpha=-1e-3), "alpha="),
        (dict(alpha=float("nan")), "alpha="),
        (dict(leaky_alpha=-0.1), "leaky_alpha="),
        (dict(learning_rate=0.0), "learning_rate="),
    ],
)
def test_bad_arguments_raise_with_received_value(kwargs, received):
    args = {**TINY, **kwargs}
    with pytest.raises(ValueError, match=f"Received: {received}"):
        halo_cnn(**args)


def test_training_reduces_loss_and_trains_gamma(tmp_path):
    x, y = synthetic_task()
    model = halo_cnn(**TINY, alpha=None, learning_rate=3e-3, seed=1)
    before = model.evaluate(x, y, verbose=0)
    log = tmp_path / "log.csv"
    history = model.fit(x, y, batch_size=16, epochs=6, verbose=0, callbacks=[keras.callbacks.CSVLogger(str(log))])
    after = model.evaluate(x, y, verbose=0)
    assert np.isfinite(after) and after < before - 0.3, (before, after)
    gammas = history.history["gamma"]
    assert len(gammas) == 6 and gammas[-1] == pytest.approx(model.gamma)
    # Trained, not frozen: an untrained gamma stays at 0.2 exactly.  How far it
    # moves in 6 epochs varies with TF's multithreaded reductions (7e-4 to
    # >1e-3 seen), so only the movement is asserted; where it converges is
    # tested by test_fit_trains_gamma_to_the_numpy_maximum_likelihood_scale.
    assert abs(model.gamma - 0.2) > 1e-5
    with open(log) as f:
        rows = list(csv.DictReader(f))
    assert [float(r["gamma"]) for r in rows] == pytest.approx(gammas)


def test_user_compile_with_unbound_loss_and_explicit_callback():
    x, y = synthetic_task(n=32)
    model = halo_cnn(**TINY, compile=False)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss=CauchySelectionLoss())
    tracker = GammaHistory()
    history = model.fit(x, y, batch_size=16, epochs=2, verbose=0, callbacks=[tracker])
    assert tracker.gammas == pytest.approx(history.history["gamma"])
    assert tracker.gammas[-1] != pytest.approx(0.2, abs=1e-4)


def test_keras_round_trip_reproduces_outputs_gamma_and_keeps_training(tmp_path):
    x, y = synthetic_task(n=32)
    model = halo_cnn(**TINY, learning_rate=1e-2)
    model.fit(x, y, batch_size=16, epochs=1, verbose=0)
    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert isinstance(loaded, HaloModel)
    np.testing.assert_array_equal(loaded.predict(x, verbose=0), model.predict(x, verbose=0))
    assert loaded.gamma == model.gamma
    assert int(loaded.optimizer.iterations) == int(model.optimizer.iterations) == 2
    history = loaded.fit(x, y, batch_size=16, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])
    assert loaded.gamma != model.gamma  # the reloaded loss is bound to the new gamma


@pytest.mark.skipif(keras.backend.backend() != "tensorflow", reason="SavedModel export needs TensorFlow")
def test_saved_model_export_reproduces_outputs(tmp_path):
    import tensorflow as tf

    x, _ = synthetic_task(n=5)
    model = halo_cnn(**TINY)
    model.export(str(tmp_path / "saved"), verbose=False)
    reloaded = tf.saved_model.load(str(tmp_path / "saved"))
    np.testing.assert_allclose(reloaded.serve(x).numpy(), model.predict(x, verbose=0), rtol=1e-6, atol=1e-7)


def test_multipole_variant_builds_and_trains():
    x, y = synthetic_task(n=16)
    model = halo_cnn(**TINY, conv_type="multipole", ells=(0,), learning_rate=1e-2)
    convs = [layer for layer in model.layers if isinstance(layer, MultipoleConv3D)]
    assert len(convs) == 2
    # l = 0 on a 3^3 kernel: 4 radial weights per channel pair, plus biases.
    assert convs[0].count_params() == 4 * 1 * 4 + 4
    assert convs[1].count_params() == 4 * 4 * 4 + 4
    history = model.fit(x, y, batch_size=8, epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_compile_halo_cnn_binds_a_plain_functional_model():
    inputs = keras.Input((3,))
    outputs = CauchyScale(0.5)(keras.layers.Dense(1)(inputs))
    model = keras.Model(inputs, outputs)
    compile_halo_cnn(model, learning_rate=1e-3)
    rng = np.random.default_rng(0)
    history = model.fit(rng.standard_normal((8, 3)), rng.uniform(-1, 1, 8), epochs=1, verbose=0)
    assert np.isfinite(history.history["loss"][0])


def test_importing_models_under_jax_does_not_import_tensorflow():
    code = (
        "import sys, tfhalo.models, tfhalo.losses, tfhalo.regularizers, tfhalo.layers\n"
        "m = tfhalo.models.halo_cnn(input_shape=(5, 5, 5, 1), conv_filters=(2,), pool_after=(True,),"
        " dense_units=(2,))\n"
        "bad = sorted(k for k in sys.modules if k == 'tensorflow' or k.startswith('tensorflow.'))\n"
        "assert not bad, bad\n"
    )
    env = {**os.environ, "KERAS_BACKEND": "jax", "TF_CPP_MIN_LOG_LEVEL": "2"}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]


def test_halo_cnn_seed_gives_reproducible_initial_weights():
    kwargs = dict(input_shape=(9, 9, 9, 1), conv_filters=(2, 4), pool_after=(False, True), dense_units=(8,), compile=False)
    a = halo_cnn(seed=7, **kwargs)
    b = halo_cnn(seed=7, **kwargs)
    c = halo_cnn(seed=8, **kwargs)
    for wa, wb in zip(a.get_weights(), b.get_weights()):
        np.testing.assert_array_equal(wa, wb)
    kernels_a = [w for w in a.get_weights() if w.ndim > 1]
    kernels_c = [w for w in c.get_weights() if w.ndim > 1]
    assert all(not np.array_equal(x, y) for x, y in zip(kernels_a, kernels_c))
    # Layers must not share one stream: equal-shaped kernels of different layers differ.
    assert not np.array_equal(kernels_a[0].ravel()[:2], kernels_a[1].ravel()[:2])


@pytest.mark.parametrize("seed", [-1, 1.5, True, "3"])
def test_halo_cnn_rejects_bad_seed(seed):
    with pytest.raises(ValueError, match="seed"):
        halo_cnn(input_shape=(9, 9, 9, 1), conv_filters=(2,), pool_after=(False,), dense_units=(), seed=seed, compile=False)


def test_rotation_invariant_variant_is_invariant_under_the_cube_group():
    from tests.helpers.equivariance import assert_equivariant

    # Odd and even grids on the way (15 -> 7 -> 3 -> 1), so both pooling windows are exercised.
    model = halo_cnn(
        input_shape=(15, 15, 15, 1), conv_filters=(3, 4, 4, 4), pool_after=(False, True, True, True),
        dense_units=(8,), conv_type="multipole", ells=(0,), rotation_invariant=True, seed=3, compile=False,
    )
    x = np.random.default_rng(0).normal(size=(2, 15, 15, 15, 1)).astype("float32")

    def scalar_field(inputs):
        # The (batch, 1) prediction as a 1^3 field: invariant outputs = l = 0 block.
        out = keras.ops.convert_to_numpy(model(inputs))
        return out.reshape(-1, 1, 1, 1, 1)

    assert_equivariant(scalar_field, x, blocks=[(0, 1)], rtol=1e-4)
    # The paper's head (Flatten + "same" pooling) is not invariant: the check has teeth.
    paper_head = halo_cnn(
        input_shape=(15, 15, 15, 1), conv_filters=(3, 4, 4, 4), pool_after=(False, True, True, True),
        dense_units=(8,), conv_type="multipole", ells=(0,), seed=3, compile=False,
    )
    with pytest.raises(AssertionError, match="not equivariant"):
        assert_equivariant(
            lambda inputs: keras.ops.convert_to_numpy(paper_head(inputs)).reshape(-1, 1, 1, 1, 1),
            x, blocks=[(0, 1)], rtol=1e-4,
        )


@pytest.mark.parametrize(
    "kwargs",
    [dict(conv_type="conv"), dict(conv_type="multipole", ells=(0, 1)), dict(conv_type="multipole", input_shape=(9, 9, 11, 1))],
)
def test_rotation_invariant_needs_l0_multipole_on_a_cube(kwargs):
    base = dict(input_shape=(9, 9, 9, 1), conv_filters=(2,), pool_after=(True,), dense_units=(), compile=False)
    base.update(kwargs)
    with pytest.raises(ValueError, match="rotation_invariant"):
        halo_cnn(rotation_invariant=True, **base)


def test_fit_refuses_non_finite_or_out_of_range_arrays_before_training():
    x, y = synthetic_task(n=16)
    model = halo_cnn(**TINY, seed=0)
    weights = model.get_weights()
    bad_x = x.copy()
    bad_x[3, 4, 4, 4, 0] = np.nan
    with pytest.raises(ValueError, match=r"x must be finite. Received: 1 non-finite of 11664 values, first "
                                         r"x\[3, 4, 4, 4, 0\]=nan"):
        model.fit(bad_x, y, batch_size=8, epochs=1, verbose=0)
    with pytest.raises(ValueError, match=r"validation_data\[0\] must be finite"):
        model.fit(x, y, batch_size=8, epochs=1, verbose=0, validation_data=(bad_x, y))
    bad_y = y.copy()
    bad_y[5] = 1.5
    with pytest.raises(ValueError, match=r"y must be labels scaled to \[-1, 1\] for CauchySelectionLoss. "
                                         r"Received: 1 of 16 labels outside it, first y\[5\]=1.5"):
        model.fit(x, bad_y, 8, 1, 0)  # positional arguments are checked too
    assert int(model.optimizer.iterations) == 0
    for before, after in zip(weights, model.get_weights()):
        np.testing.assert_array_equal(before, after)


def test_non_finite_batch_from_a_dataset_stops_fit_with_an_error():
    from tfhalo.models import NonFiniteLossError

    x, y = synthetic_task(n=32)

    class Batches(keras.utils.PyDataset):
        def __len__(self):
            return 4

        def __getitem__(self, i):
            xb = x[8 * i : 8 * (i + 1)].copy()
            if i == 2:
                xb[0, 4, 4, 4, 0] = np.nan
            return xb, y[8 * i : 8 * (i + 1)]

    model = halo_cnn(**TINY, seed=0)
    with pytest.raises(NonFiniteLossError, match=r"training loss is (nan|inf) at epoch 1/3, batch 3/4.*non-finite inputs"):
        model.fit(Batches(), epochs=3, verbose=0, shuffle=False)
    assert int(model.optimizer.iterations) == 3  # stopped at the bad batch, not at the end of fit
