"""Tests of MixtureDensityHead against float64 NumPy/SciPy references."""

import math

import keras
import numpy as np
import pytest
from scipy import integrate, special, stats

from tfhalo.layers import MixtureDensityHead

from tests.helpers.backend import BACKEND, PRECISE
from tests.helpers.backend import to_numpy as _to_numpy

RTOL = {"float64": 1e-9, "float32": 2e-5}[PRECISE]
LN_MTH = math.log(2e12)


def _softplus(x):
    return np.logaddexp(0.0, x)


def _reference_params(psi, kernel, bias, k, ln_mth, amp_shift, width_shift, increment="relu"):
    pre = psi @ kernel + bias
    pa, pm, ps = pre[..., :k], pre[..., k : 2 * k], pre[..., 2 * k :]
    alpha = _softplus(pa + amp_shift)
    mu = np.empty_like(pm)
    mu[..., 0] = pm[..., 0] + ln_mth
    for j in range(1, k):
        step = np.maximum(pm[..., j], 0.0) if increment == "relu" else _softplus(pm[..., j])
        mu[..., j] = mu[..., j - 1] + step
    return alpha, mu, _softplus(ps + width_shift)


def _reference_log_density(alpha, mu, sigma, ln_mass):
    terms = np.log(alpha) - mu + stats.norm.logpdf(ln_mass[..., None], mu, sigma)
    return special.logsumexp(terms, axis=-1)


def _reference_log_integral(alpha, mu, sigma, ln_mth):
    # alpha/2 exp(s^2/2) erfc(t) with erfc(t) = 2 Phi(-sqrt2 t), all in logs.
    t = (ln_mth - mu - sigma**2) / (math.sqrt(2) * sigma)
    return special.logsumexp(np.log(alpha) + 0.5 * sigma**2 + special.log_ndtr(-math.sqrt(2) * t), axis=-1)


def _params(alpha, mu, sigma, dtype):
    return keras.ops.convert_to_tensor(np.concatenate([alpha, mu, sigma], axis=-1).astype(dtype))


def test_paper_head_has_12_parameters():
    head = MixtureDensityHead(n_components=2)
    head.build((None, 1))
    assert head.count_params() == 12
    wide = MixtureDensityHead(n_components=3)
    wide.build((None, 4))
    assert wide.count_params() == 4 * 9 + 9


@pytest.mark.parametrize("increment", ["relu", "softplus"])
@pytest.mark.parametrize("n_components, n_features", [(2, 1), (3, 4), (1, 2)])
def test_forward_matches_reference_and_means_are_ordered(n_components, n_features, increment):
    rng = np.random.default_rng(n_components)
    head = MixtureDensityHead(n_components, amplitude_shift=-1.0, width_shift=0.3, mean_increment=increment,
                              dtype=PRECISE)
    psi = rng.normal(size=(50, n_features)).astype(PRECISE)
    head.build(psi.shape)
    head.kernel.assign(rng.normal(size=head.kernel.shape).astype(PRECISE))
    head.bias.assign(rng.normal(size=head.bias.shape).astype(PRECISE))
    params = head(psi)
    assert tuple(params.shape) == (50, 3 * n_components) == head.compute_output_shape(psi.shape)
    alpha, mu, sigma = (_to_numpy(p) for p in head.split(params))
    ref = _reference_params(psi.astype(np.float64), _to_numpy(head.kernel), _to_numpy(head.bias),
                            n_components, LN_MTH, -1.0, 0.3, increment)
    for got, expected in zip((alpha, mu, sigma), ref):
        np.testing.assert_allclose(got, expected, rtol=RTOL, atol=RTOL)
    assert np.all(alpha > 0) and np.all(sigma > 0)
    assert np.all(np.diff(mu, axis=-1) >= 0)
    if increment == "softplus":
        assert np.all(np.diff(mu, axis=-1) > 0)
    # relu steps must sometimes be active for the ordering check to mean something
    if n_components > 1:
        assert np.any(np.diff(mu, axis=-1) > 0)


def test_initial_shifts_are_the_papers():
    head = MixtureDensityHead(kernel_initializer="zeros")
    alpha, mu, sigma = (_to_numpy(p) for p in head.split(head(np.ones((1, 1), "float32"))))
    np.testing.assert_allclose(alpha, _softplus(np.log(1e-3)), rtol=1e-6)
    np.testing.assert_allclose(mu, np.log(2e12), rtol=1e-6)
    np.testing.assert_allclose(sigma, _softplus(np.log(1e3)), rtol=1e-6)


PARAM_SETS = [
    # alpha, mu, sigma (two components)
    ([0.3, 0.05], [LN_MTH - 0.5, LN_MTH + 1.0], [0.4, 0.8]),
    ([1e-3, 2.0], [LN_MTH + 2.0, LN_MTH + 2.0], [1.5, 0.1]),
    ([1.0, 1.0], [LN_MTH - 3.0, LN_MTH - 1.0], [0.3, 0.2]),  # mostly below threshold: erfc tail
    ([5.0, 1e-6], [LN_MTH + 0.1, LN_MTH + 4.0], [2.5, 3.0]),
]


@pytest.mark.parametrize("alpha, mu, sigma", PARAM_SETS)
def test_log_number_density_matches_scipy(alpha, mu, sigma):
    head = MixtureDensityHead()
    alpha, mu, sigma = (np.array(v) for v in (alpha, mu, sigma))
    ln_mass = np.linspace(LN_MTH - 5, LN_MTH + 8, 27)
    params = _params(np.broadcast_to(alpha, (27, 2)), np.broadcast_to(mu, (27, 2)),
                     np.broadcast_to(sigma, (27, 2)), PRECISE)
    got = _to_numpy(head.log_number_density(params, ln_mass.astype(PRECISE)))
    expected = _reference_log_density(alpha, mu, sigma, ln_mass)
    np.testing.assert_allclose(got, expected, rtol=RTOL, atol=RTOL * np.abs(expected).max())


@pytest.mark.parametrize("alpha, mu, sigma", PARAM_SETS)
def test_integral_matches_quadrature(alpha, mu, sigma):
    head = MixtureDensityHead()
    alpha, mu, sigma = (np.array(v, dtype=np.float64) for v in (alpha, mu, sigma))

    def n_of_mass(mass):
        x = math.log(mass)
        return float(np.sum(alpha * np.exp(-mu) * stats.norm.pdf(x, mu, sigma)))

    # Integrate n(M) dM in ln M (dM = M dlnM) where the integrand lives.
    upper = float(np.max(mu + sigma**2 + 40 * sigma))
    expected, _ = integrate.quad(lambda x: n_of_mass(math.exp(x)) * math.exp(x), LN_MTH, upper,
                                 epsabs=0, epsrel=1e-11, limit=200, points=list(mu[mu > LN_MTH]))
    params = _params(alpha[None], mu[None], sigma[None], PRECISE)
    got = _to_numpy(head.integral_above_threshold(params))[0]
    # 1.2e-7 is the accuracy of the erfc fit used above t = 0.5
    assert got == pytest.approx(expected, rel=max(RTOL, 3e-7))
    # an explicit threshold gives the same as the layer default
    got_explicit = _to_numpy(head.integral_above_threshold(params, LN_MTH))[0]
    assert got_explicit == pytest.approx(got, rel=1e-12)


def test_integral_for_other_thresholds_and_broadcasting():
    head = MixtureDensityHead()
    alpha, mu, sigma = np.array([[0.7, 0.2]]), np.array([[28.0, 29.5]]), np.array([[0.6, 1.1]])
    ln_th = np.linspace(25.0, 35.0, 9)
    params = _params(np.repeat(alpha, 9, 0), np.repeat(mu, 9, 0), np.repeat(sigma, 9, 0), PRECISE)
    got = _to_numpy(head.log_integral_above_threshold(params, ln_th.astype(PRECISE)))
    expected = _reference_log_integral(alpha, mu, sigma, ln_th[:, None])
    np.testing.assert_allclose(got, expected, rtol=3e-7, atol=3e-7)


EXTREME = [
    # alpha, mu, sigma: tiny/huge widths, tiny amplitudes, far thresholds
    ([1e-30, 1e-3], [LN_MTH, LN_MTH + 1], [1e3, 1e3]),  # the paper's initial width
    ([1e-20, 1e-20], [LN_MTH - 60, LN_MTH - 30], [0.05, 0.5]),  # far below threshold
    ([3.0, 1e-35], [LN_MTH + 40, LN_MTH + 80], [1e-4, 30.0]),
    ([1e-3, 1e-3], [LN_MTH, LN_MTH], [0.0, 1e-30]),  # softplus underflow
]


@pytest.mark.parametrize("alpha, mu, sigma", EXTREME)
def test_float32_stability_at_extreme_parameters(alpha, mu, sigma):
    head = MixtureDensityHead()
    alpha, mu, sigma = (np.array(v, dtype=np.float64)[None] for v in (alpha, mu, sigma))
    params = _params(alpha, mu, sigma, "float32")
    ln_mass = np.array([LN_MTH - 200.0, LN_MTH, LN_MTH + 200.0], dtype="float32")
    log_n = _to_numpy(head.log_number_density(params, ln_mass))
    log_int = _to_numpy(head.log_integral_above_threshold(params))
    integral = _to_numpy(head.integral_above_threshold(params))
    assert np.all(np.isfinite(log_n)) and np.all(np.isfinite(log_int))
    assert not np.any(np.isnan(integral))
    if np.all(sigma > 1e-5):
        ref = _reference_log_integral(alpha, mu, sigma, LN_MTH)
        np.testing.assert_allclose(log_int, ref, rtol=2e-6, atol=2e-4)


def _gradient(fn, x):
    """d sum(fn(x)) / dx on the active backend."""
    if BACKEND == "tensorflow":
        import tensorflow as tf

        x = tf.constant(x)
        with tf.GradientTape() as tape:
            tape.watch(x)
            y = keras.ops.sum(fn(x))
        return tape.gradient(y, x).numpy()
    if BACKEND == "jax":
        import jax

        return np.asarray(jax.grad(lambda v: fn(v).sum())(x))
    pytest.skip(f"no gradient helper for backend {BACKEND}")


@pytest.mark.parametrize("alpha, mu, sigma", EXTREME[:3])
def test_float32_gradients_are_finite(alpha, mu, sigma):
    head = MixtureDensityHead()
    params = np.concatenate([alpha, mu, sigma]).astype("float32")[None]
    for fn in (
        head.log_integral_above_threshold,
        lambda p: head.log_number_density(p, np.float32(LN_MTH + 3.0)),
    ):
        assert np.all(np.isfinite(_gradient(fn, params)))


def test_softplus_increment_has_no_flat_region():
    # d mu_2 / d d_2 is sigmoid(c psi + d) > 0 for softplus, exactly 0 for relu below the kink.
    import tensorflow as tf

    if BACKEND != "tensorflow":
        pytest.skip("gradient check uses tf.GradientTape")
    psi = np.ones((1, 1), "float64")
    for increment, expected in (("relu", 0.0), ("softplus", 1.0 / (1.0 + math.exp(3.0)))):
        head = MixtureDensityHead(2, mean_increment=increment, dtype="float64")
        head.build((None, 1))
        head.kernel.assign(np.zeros((1, 6)))
        head.bias.assign(np.array([0, 0, 0, -3.0, 0, 0]))
        with tf.GradientTape() as tape:
            mu2 = head(psi)[0, 3]
        grad = _to_numpy(tape.gradient(mu2, head.bias))
        np.testing.assert_allclose(grad[3], expected, rtol=1e-12, atol=1e-15)


def test_config_is_backward_compatible():
    config = MixtureDensityHead(2).get_config()
    assert config["mean_increment"] == "relu"
    del config["mean_increment"]  # a config saved before the option existed
    assert MixtureDensityHead.from_config(config).mean_increment == "relu"


def test_config_and_keras_round_trip(tmp_path):
    head = MixtureDensityHead(3, log_mass_threshold=30.0, amplitude_shift=-2.0, width_shift=0.1,
                              mean_increment="softplus", kernel_regularizer="l2", name="mdn")
    config = head.get_config()
    assert MixtureDensityHead.from_config(config).get_config() == config
    inputs = keras.Input((2,))
    model = keras.Model(inputs, MixtureDensityHead(2, width_shift=0.0)(inputs))
    psi = np.random.default_rng(0).normal(size=(4, 2)).astype("float32")
    expected = _to_numpy(model(psi))
    model.save(tmp_path / "mdn.keras")
    loaded = keras.saving.load_model(tmp_path / "mdn.keras")
    np.testing.assert_allclose(_to_numpy(loaded(psi)), expected, rtol=1e-6)
    loaded_head = loaded.layers[-1]
    assert isinstance(loaded_head, MixtureDensityHead) and loaded_head.width_shift == 0.0


@pytest.mark.skipif(BACKEND != "tensorflow", reason="SavedModel export needs the TensorFlow backend")
def test_saved_model_export(tmp_path):
    import tensorflow as tf

    inputs = keras.Input((1,))
    model = keras.Model(inputs, MixtureDensityHead(2)(inputs))
    psi = np.linspace(0, 2, 5, dtype="float32")[:, None]
    expected = _to_numpy(model(psi))
    model.export(str(tmp_path / "sm"), verbose=False)
    reloaded = tf.saved_model.load(str(tmp_path / "sm"))
    np.testing.assert_allclose(reloaded.serve(tf.constant(psi)).numpy(), expected, rtol=1e-6)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"n_components": 0}, "n_components=0"),
        ({"n_components": 1.5}, "n_components=1.5"),
        ({"log_mass_threshold": float("nan")}, "log_mass_threshold=nan"),
        ({"width_shift": float("inf")}, "width_shift=inf"),
        ({"amplitude_shift": "big"}, "amplitude_shift='big'"),
        ({"mean_increment": "tanh"}, "mean_increment='tanh'"),
    ],
)
def test_bad_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        MixtureDensityHead(**kwargs)
