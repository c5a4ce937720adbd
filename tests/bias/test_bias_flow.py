"""Flow preconditioning: an exact bijection with its Jacobian, a true ELBO, exact sampling."""

import numpy as np
import pytest
import tensorflow as tf

from tfhalo.bias.diagnostics import summarize_chains
from tfhalo.bias.flow import ComposedReparametrization, FlowReparametrization
from tfhalo.bias.sampling import sample_posterior

# x ~ N(0, 1), y | x ~ N(x^2 / 2, 0.3^2), w ~ N(0, 1): a banana the Laplace
# approximation at the mode (0, 0, 0) gets badly wrong; ln Z is known.
BANANA_SIGMA = 0.3
BANANA_LOG_Z = 1.5 * np.log(2 * np.pi) + np.log(BANANA_SIGMA)


def _banana(v):
    x, y, w = v[..., 0], v[..., 1], v[..., 2]
    return -0.5 * x**2 - 0.5 * ((y - 0.5 * x**2) / BANANA_SIGMA) ** 2 - 0.5 * w**2


@pytest.fixture(scope="module")
def fitted():
    flow = FlowReparametrization(np.zeros(3), np.diag([1.0, BANANA_SIGMA, 1.0]), hidden_units=(16,), seed=1)
    return flow.fit(_banana, steps=400, batch_size=32, learning_rate=1e-2, seed=0, jit_compile=False,
                    progress=False)


def test_flow_starts_as_the_affine_laplace_map():
    rng = np.random.default_rng(0)
    centre, a = rng.normal(size=4), rng.normal(size=(4, 4))
    chol = np.linalg.cholesky(a @ a.T + np.eye(4))
    flow = FlowReparametrization(centre, chol, seed=3)
    z = rng.normal(size=(5, 4))
    np.testing.assert_allclose(flow.forward_np(z), centre + z @ chol.T, atol=1e-12)
    np.testing.assert_allclose(flow.log_det_jacobian(tf.constant(z)).numpy(),
                               np.full(5, np.log(np.diag(chol)).sum()), atol=1e-12)


def test_fitted_flow_round_trip_and_log_det_match_autodiff(fitted):
    z = np.random.default_rng(1).normal(size=(6, 3))
    v = fitted.forward_np(z)
    assert np.abs(v - z * [1.0, BANANA_SIGMA, 1.0]).max() > 0.05  # the fit moved it off the affine start
    np.testing.assert_allclose(fitted.inverse(v), z, atol=1e-9)
    for zi in z:
        zt = tf.constant(zi)
        with tf.GradientTape() as tape:
            tape.watch(zt)
            out = fitted.forward(zt)
        jac = tape.jacobian(out, zt).numpy()
        np.testing.assert_allclose(float(fitted.log_det_jacobian(zt)), np.linalg.slogdet(jac)[1], atol=1e-9)


def test_elbo_is_a_lower_bound_that_the_fit_tightens(fitted):
    # Independent estimate of the fitted flow's ELBO with 20,000 fresh draws.
    z = tf.constant(np.random.default_rng(7).normal(size=(20000, 3)))
    v, log_det = fitted._forward(z)
    values = _banana(v).numpy() + log_det.numpy() + 1.5 * (1 + np.log(2 * np.pi))
    elbo, err = values.mean(), values.std() / np.sqrt(values.size)
    assert elbo < BANANA_LOG_Z + 4 * err  # Jensen: never above ln Z
    # The affine start (the Laplace map) misses the curvature: its ELBO is
    # well below; the flow recovers most of the gap.
    z0 = z.numpy()
    laplace = _banana(tf.constant(z0 * [1.0, BANANA_SIGMA, 1.0])).numpy() + np.log(BANANA_SIGMA) \
        + 1.5 * (1 + np.log(2 * np.pi))
    gap0, gap = BANANA_LOG_Z - laplace.mean(), BANANA_LOG_Z - elbo
    assert gap0 > 0.4
    assert gap < 0.3 * gap0


def test_flow_preconditioned_hmc_samples_the_banana_exactly(fitted):
    init = fitted.forward_np(0.5 * np.random.default_rng(2).normal(size=(4, 3)))
    result = sample_posterior(_banana, init, num_results=800, num_burnin=300, mass_matrix="adaptive",
                              num_leapfrog_steps=8, seed=4, progress=False, reparametrization=fitted,
                              centre=np.zeros(3))
    # Check Gaussian quantities (where std/sqrt(ESS) is the Monte Carlo error):
    # x, w, and the conditional residual r = (y - x^2/2) / 0.3, all N(0, 1);
    # and the mean of y (= E[x^2]/2 = 0.5), which needs the tails of x.
    d = result.samples
    r = (d[..., 1] - 0.5 * d[..., 0] ** 2) / BANANA_SIGMA
    gauss = np.stack([d[..., 0], r, d[..., 2]], axis=-1)
    s = summarize_chains(gauss, result.is_accepted, result.divergent, warn=False)
    ess = np.array(s["ess"])
    assert s["min_ess"] > 150
    np.testing.assert_array_less(np.abs(np.array(s["mean"])), 5 / np.sqrt(ess))
    np.testing.assert_array_less(np.abs(np.array(s["std"]) - 1.0), 5 / np.sqrt(2 * ess) + 0.03)
    y = summarize_chains(d[..., 1:2], result.is_accepted, result.divergent, warn=False)
    assert abs(y["mean"][0] - 0.5) < 5 * np.sqrt(0.5 + BANANA_SIGMA**2) / np.sqrt(y["ess"][0])


def test_composed_reparametrization_adds_log_dets_and_inverts(fitted):
    outer = FlowReparametrization(np.array([1.0, -2.0, 0.5]), np.diag([2.0, 0.5, 3.0]), seed=5)
    comp = ComposedReparametrization(outer, fitted)
    z = np.random.default_rng(3).normal(size=(4, 3))
    theta = comp.forward_np(z)
    np.testing.assert_allclose(theta, outer.forward_np(fitted.forward_np(z)), atol=1e-12)
    np.testing.assert_allclose(comp.inverse(theta), z, atol=1e-9)
    zt = tf.constant(z)
    np.testing.assert_allclose(comp.log_det_jacobian(zt).numpy(),
                               fitted.log_det_jacobian(zt).numpy() + np.log(3.0), atol=1e-12)
    with pytest.raises(ValueError, match="same size"):
        ComposedReparametrization(FlowReparametrization(np.zeros(2), np.eye(2)), fitted)


@pytest.mark.parametrize("kwargs, match", [
    (dict(centre=np.zeros((2, 2)), chol=np.eye(2)), "centre"),
    (dict(centre=np.zeros(2), chol=np.eye(3)), "chol"),
    (dict(centre=np.array([0.0, np.nan]), chol=np.eye(2)), "centre"),
    (dict(centre=np.zeros(2), chol=np.eye(2), n_flows=0), "n_flows"),
    (dict(centre=np.zeros(2), chol=np.eye(2), hidden_units=()), "hidden_units"),
])
def test_bad_flow_arguments_raise(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FlowReparametrization(**kwargs)


@pytest.mark.parametrize("kwargs, match", [
    (dict(steps=0), "steps"), (dict(batch_size=0), "batch_size"), (dict(learning_rate=-1.0), "learning_rate"),
    (dict(robust_floor=0.0), "robust_floor")])
def test_bad_fit_arguments_raise_before_any_step(kwargs, match):
    flow = FlowReparametrization(np.zeros(3), np.eye(3))
    with pytest.raises(ValueError, match=match):
        flow.fit(_banana, progress=False, **kwargs)
    assert flow.elbo.size == 0


def test_same_seed_same_flow():
    def fitted_flow(seed):
        flow = FlowReparametrization(np.zeros(3), np.eye(3), hidden_units=(8,), seed=seed)
        return flow.fit(_banana, steps=15, batch_size=8, learning_rate=1e-2, seed=seed, jit_compile=False,
                        progress=False)

    z = np.random.default_rng(5).normal(size=(4, 3))
    a, b, c = fitted_flow(0), fitted_flow(0), fitted_flow(1)
    np.testing.assert_array_equal(a.forward_np(z), b.forward_np(z))
    np.testing.assert_array_equal(a.elbo, b.elbo)
    assert np.abs(a.forward_np(z) - c.forward_np(z)).max() > 1e-6
