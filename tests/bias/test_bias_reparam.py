"""The psi-scale reparametrisation is an exact bijection with the right Jacobian."""

import math

import numpy as np
import tensorflow as tf

from tfhalo.bias import NeuralBiasLikelihood, build_model, make_bias_data
from tfhalo.bias.reparam import PsiScaleReparametrization

M_TH = 1e12


def _likelihood(n_kernels=1):
    rng = np.random.default_rng(0)
    n, box = 4, 20.0
    rho = np.exp(rng.normal(scale=0.5, size=(n, n, n)))
    data = make_bias_data(rho / rho.mean(), rng.uniform(0, box, size=(10, 3)),
                          M_TH * np.exp(rng.exponential(1.0, size=10)), box, M_TH)
    model = build_model(data.log_mass_threshold, n_grid=n, dtype="float64", n_kernels=n_kernels)
    like = NeuralBiasLikelihood(model, data)
    theta = rng.normal(scale=0.5, size=like.layout.size)
    return like, theta


def test_round_trip_and_log_det_jacobian_match_autodiff():
    for n_kernels in (1, 2):
        like, theta = _likelihood(n_kernels)
        rep = PsiScaleReparametrization(like, theta)
        v = rep.inverse(theta)
        np.testing.assert_allclose(rep.forward_np(v), theta, rtol=1e-12, atol=1e-12)
        # Only the head kernel changes; the NPE bias (and everything else) is shared.
        changed = np.flatnonzero(~np.isclose(v, theta, rtol=0, atol=0))
        assert set(changed) <= set(rep.kernel_index.ravel())
        v_t = tf.constant(v)
        with tf.GradientTape() as tape:
            tape.watch(v_t)
            out = rep.forward(v_t)
        jac = tape.jacobian(out, v_t).numpy()
        sign, logdet = np.linalg.slogdet(jac)
        assert sign > 0
        np.testing.assert_allclose(float(rep.log_det_jacobian(v_t)), logdet, rtol=1e-10, atol=1e-10)


def test_wrapped_target_is_posterior_plus_jacobian_and_batches():
    like, theta = _likelihood()
    rep = PsiScaleReparametrization(like, theta)
    v = rep.inverse(theta)
    wrapped = float(rep.wrap(like.log_posterior)(tf.constant(v)))
    expected = float(like.log_posterior(tf.constant(theta))) + float(rep.log_det_jacobian(tf.constant(v)))
    assert math.isclose(wrapped, expected, rel_tol=1e-12)
    batch = np.stack([v, v + 0.1])
    np.testing.assert_allclose(rep.forward_np(batch)[0], theta, rtol=1e-12)
    np.testing.assert_allclose(rep.inverse(rep.forward_np(batch)), batch, rtol=1e-12)


def test_default_model_uses_smooth_mean_increment():
    model = build_model(math.log(M_TH), n_grid=4)
    assert model.get_config()["mean_increment"] == "softplus"
    assert model.head.mean_increment == "softplus"
    paper = build_model(math.log(M_TH), n_grid=4, mean_increment="relu")
    assert type(paper).from_config(paper.get_config()).head.mean_increment == "relu"
