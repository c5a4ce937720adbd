"""The local-linear sampling coordinates: an exact bijection with the right Jacobian,
whose coordinates mean what they say."""

import math

import numpy as np
import pytest
import tensorflow as tf

from tfhalo.bias import NeuralBiasLikelihood, build_model, make_bias_data
from tfhalo.bias.reparam import LocalLinearReparametrization, _shell_sums

M_TH = 1e12


def _likelihood(n_kernels=1, n_grids=2, ells=(0,), **model_kwargs):
    rng = np.random.default_rng(0)
    n, box = 4, 20.0
    data = []
    for _ in range(n_grids):
        rho = np.exp(rng.normal(scale=0.5, size=(n, n, n)))
        data.append(make_bias_data(rho / rho.mean(), rng.uniform(0, box, size=(10, 3)),
                                   M_TH * np.exp(rng.exponential(1.0, size=10)), box, M_TH))
    model = build_model(data[0].log_mass_threshold, n_grid=n, dtype="float64", n_kernels=n_kernels, ells=ells,
                        **model_kwargs)
    like = NeuralBiasLikelihood(model, data)
    theta = rng.normal(scale=0.5, size=like.layout.size)
    return like, theta


def _jacobian(rep, v):
    v_t = tf.constant(v)
    with tf.GradientTape() as tape:
        tape.watch(v_t)
        out = rep.forward(v_t)
    return tape.jacobian(out, v_t).numpy()


@pytest.mark.parametrize("n_kernels,increment,components", [(1, "softplus", 2), (2, "softplus", 2),
                                                            (1, "relu", 3), (1, "softplus", 1)])
def test_round_trip_and_log_det_jacobian_match_autodiff(n_kernels, increment, components):
    like, theta = _likelihood(n_kernels, mean_increment=increment, n_components=components)
    rep = LocalLinearReparametrization(like, theta)
    v = rep.inverse(theta)
    np.testing.assert_allclose(rep.forward_np(v), theta, rtol=1e-12, atol=1e-12)
    rng = np.random.default_rng(1)
    points = v + 0.3 * rng.normal(size=(3, v.size))
    np.testing.assert_allclose(rep.inverse(rep.forward_np(points)), points, rtol=1e-10, atol=1e-10)
    # The formula drops a constant: compare differences between points.
    logdets = [np.linalg.slogdet(_jacobian(rep, p)) for p in points]
    assert all(sign != 0 for sign, _ in logdets)
    formula = [float(rep.log_det_jacobian(tf.constant(p))) for p in points]
    np.testing.assert_allclose(np.diff([ld for _, ld in logdets]), np.diff(formula), rtol=1e-9, atol=1e-9)


def test_coordinates_are_the_mean_spread_value_and_slope_of_the_npe_summary():
    like, theta = _likelihood()
    rep = LocalLinearReparametrization(like, theta)
    v = rep.inverse(theta)
    # u = w . S + b over the training voxels, from a float64 NumPy shell sum.
    shells = _shell_sums(like)
    w, b = theta[rep.w_index][:, 0], theta[rep.b_index][0]
    u = shells @ w + b
    m = v[rep.b_index][0]
    assert m == pytest.approx(u.mean(), rel=1e-10)
    lam = v[rep.w_index[0]][0] + np.logaddexp(0, m)
    s = math.exp(lam) * math.sqrt(1 + np.sum(v[rep.w_index[1:]] ** 2))
    assert s == pytest.approx(u.std(ddof=1), rel=1e-10)
    # The head's values are read at the halos' mean environment g = a, in slope units
    # g = (psi - softplus(m)) / (sigmoid(m) s); component 1's
    # (amplitude, mean, width) pre-activations as its tail above the threshold there.
    c, d = theta[rep.c_index][0], theta[rep.d_index]
    sig_m = 1 / (1 + np.exp(-m))
    psi_h = np.logaddexp(0, shells[_halo_rows(like)] @ w + b)
    anchor = np.mean((psi_h - np.logaddexp(0, m)) / (sig_m * s))
    assert rep.anchor[0] == pytest.approx(anchor, rel=1e-10)
    head = like.model.head

    def psi_at(g):
        return np.logaddexp(0, m) + sig_m * s * g

    def values_at(g):
        """[c0, pre_1, c1, g_2 + D, ln sigma_1, pre_5] from the head's float64 outputs at psi(g)."""
        psi = psi_at(g)
        alpha, mu, sigma = (float(x) for x in np.asarray(
            head.stateless_call([theta[rep.c_index], d], [], np.array([[psi]]))[0])[0, [0, 2, 4]])
        pre = c * psi + d
        dist = mu - math.log(M_TH)
        c0 = math.log(alpha) - dist - math.log(sigma) - dist**2 / (2 * sigma**2)
        return np.array([c0, pre[1], dist / sigma**2, pre[3] + dist, math.log(sigma), pre[5]])

    np.testing.assert_allclose(v[rep.d_index], values_at(anchor), rtol=1e-9, atol=1e-12)
    # The slopes are those of the pre-activations z = c psi + d per unit g.
    np.testing.assert_allclose(v[rep.c_index][0], c * sig_m * s, rtol=1e-10)
    # c0 and c1 are what the names say: ln n_1(M) = c0 + c1 y - y^2 / (2 sigma^2) + (terms free of
    # the parameters) at y = ln M - ln M_th.
    out = head.stateless_call([theta[rep.c_index], d], [], np.array([[psi_at(anchor)]]))[0]
    alpha, mu, sigma = (float(x) for x in np.asarray(out)[0, [0, 2, 4]])
    y = np.array([0.0, 0.7, 2.0])
    ln_n1 = np.log(alpha) - mu - np.log(sigma) - (math.log(M_TH) + y - mu) ** 2 / (2 * sigma**2)
    c0, c1 = v[rep.d_index][[0, 2]]
    np.testing.assert_allclose(ln_n1 - ln_n1[0], c1 * y - y**2 / (2 * sigma**2), rtol=1e-9, atol=1e-12)
    assert ln_n1[0] + math.log(M_TH) == pytest.approx(c0, rel=1e-10)


def _halo_rows(like):
    n_vox = like.data[0].log_density.size
    return np.concatenate([d.halo_voxel + i * n_vox for i, d in enumerate(like.data)])


def test_anchor_moves_only_the_tail_stage_values():
    # The anchor is where the head's values are read: any anchor is an exact bijection onto the
    # same theta, and anchor = 0 reads them at the mean environment (psi = softplus(m)).
    like, theta = _likelihood()
    at_mean = LocalLinearReparametrization(like, theta, anchor=[0.0])
    at_halos = LocalLinearReparametrization(like, theta)
    assert abs(at_halos.anchor[0]) > 0.05  # this catalogue's halos are not at the mean environment
    for rep in (at_mean, at_halos):
        np.testing.assert_allclose(rep.forward_np(rep.inverse(theta)), theta, rtol=1e-12, atol=1e-12)
    v0, v1 = at_mean.inverse(theta), at_halos.inverse(theta)
    moved = np.flatnonzero(~np.isclose(v0, v1, rtol=1e-12, atol=1e-12))
    assert set(moved) <= set(at_mean.d_index) and len(moved) > 0
    m = v0[at_mean.b_index][0]
    pre = theta[at_mean.c_index][0] * np.logaddexp(0, m) + theta[at_mean.d_index]
    np.testing.assert_allclose(v0[at_mean.d_index][[1, 5]], pre[[1, 5]], rtol=1e-10)
    with pytest.raises(ValueError, match="anchor"):
        LocalLinearReparametrization(like, theta, anchor=[np.nan])


def test_the_psi_scale_symmetry_is_one_coordinate():
    # In softplus's linear regime (large m), (w, b, c, d) -> (k w, k b, c / k, d) leaves
    # the model unchanged; in the new coordinates only xi, m and lambda move.
    like, theta = _likelihood()
    rep = LocalLinearReparametrization(like, theta)
    theta = theta.copy()
    theta[rep.b_index] = 30.0
    scaled = theta.copy()
    k = 1.7
    scaled[rep.w_index] *= k
    scaled[rep.b_index] *= k
    scaled[rep.c_index] /= k
    v, v_scaled = rep.inverse(theta), rep.inverse(scaled)
    fixed = np.concatenate([rep.w_index[1:].ravel(), rep.c_index.ravel(), rep.d_index])
    np.testing.assert_allclose(v_scaled[fixed], v[fixed], rtol=1e-9, atol=1e-9)
    assert float(like.log_likelihood(scaled)) == pytest.approx(float(like.log_likelihood(theta)), rel=1e-9)


def test_wrapped_target_is_posterior_plus_jacobian_and_batches():
    like, theta = _likelihood()
    rep = LocalLinearReparametrization(like, theta)
    v = rep.inverse(theta)
    wrapped = float(rep.wrap(like.log_posterior)(tf.constant(v)))
    expected = float(like.log_posterior(tf.constant(theta))) + float(rep.log_det_jacobian(tf.constant(v)))
    assert math.isclose(wrapped, expected, rel_tol=1e-12)
    batch = np.stack([v, v + 0.1])
    np.testing.assert_allclose(rep.forward_np(batch)[0], theta, rtol=1e-12)


def test_outside_the_domain_and_unsupported_models_raise():
    like, theta = _likelihood()
    rep = LocalLinearReparametrization(like, theta)
    flipped = theta.copy()
    flipped[rep.w_index] *= -1
    with pytest.raises(ValueError, match="domain"):
        rep.inverse(flipped)
    with pytest.raises(ValueError, match="theta_ref"):
        LocalLinearReparametrization(like, theta[:-1])
    dipole, theta_d = _likelihood(ells=(0, 1))
    with pytest.raises(ValueError, match="ells"):
        LocalLinearReparametrization(dipole, theta_d)


def test_default_model_uses_smooth_mean_increment():
    model = build_model(math.log(M_TH), n_grid=4)
    assert model.get_config()["mean_increment"] == "softplus"
    assert model.head.mean_increment == "softplus"
    paper = build_model(math.log(M_TH), n_grid=4, mean_increment="relu")
    assert type(paper).from_config(paper.get_config()).head.mean_increment == "relu"


@pytest.mark.parametrize("n_kernels", [1, 2])
def test_mirror_is_an_involution_into_the_other_half_that_keeps_a_linear_npe_fit(n_kernels):
    like, theta = _likelihood(n_kernels)
    rep = LocalLinearReparametrization(like, theta)
    for f in range(n_kernels):
        mirrored = rep.mirror(theta, f)
        np.testing.assert_allclose(rep.mirror(mirrored, f), theta, rtol=1e-12, atol=1e-12)
        with pytest.raises(ValueError, match="outside the reparametrisation's domain"):
            rep.inverse(mirrored)
    # Where softplus(u) is linear over the voxels (u >> 1), the head sees the same z:
    # the reflected parameters give the same likelihood.
    shells = _shell_sums(like)
    linear = theta.copy()
    for f in range(n_kernels):
        u = shells @ theta[rep.w_index[:, f]] + theta[rep.b_index[f]]
        linear[rep.b_index[f]] += 40.0 - u.min()  # every voxel's u >= 40
    lnl = float(like.log_likelihood(tf.constant(linear)))
    for f in range(n_kernels):
        assert float(like.log_likelihood(tf.constant(rep.mirror(linear, f)))) == pytest.approx(lnl, rel=1e-9)
    with pytest.raises(ValueError, match=f"feature < {n_kernels}. Received: shape=.*feature={n_kernels}"):
        rep.mirror(theta, n_kernels)


def test_fit_map_reports_the_other_half_and_keeps_the_better_one():
    from tfhalo.bias.fit import fit_map

    like, _ = _likelihood()
    fit = fit_map(like, steps=300, n_starts=1, seed=0, progress=False)
    other = fit.other_half
    assert other is not None, "the reflected start should settle in the other half on this data"
    assert other["log_posterior"] <= fit.log_posterior
    assert np.isfinite(other["log_laplace_mass_ratio"])
    rep = LocalLinearReparametrization(like, fit.theta)
    w_other = other["theta"][rep.w_index[:, 0]]
    assert float(rep.w_hat[:, 0] @ rep.shell_cov @ w_other) < 0  # it is in the other half
    # The returned optimum is one: L-BFGS from it gains nothing.
    assert float(like.log_posterior(tf.constant(other["theta"]))) == pytest.approx(other["log_posterior"], rel=1e-12)
