"""tfhalo.field.carry: the bias carried by the white noise (NPE pre-activation moments held)."""

import numpy as np
import pytest
from keras import ops

from tests.field.test_posterior import N, _np, _setup, _theta
from tfhalo import backend
from tfhalo.field.carry import NPEMomentCarry
from tfhalo.sim.ics import white_noise


@pytest.fixture(scope="module")
def carried():
    forward, model, cat, post = _setup()
    omega_ref = white_noise(N, 41).reshape(-1)
    return post, NPEMomentCarry(post, omega_ref), omega_ref


def _moments(carry, omega):
    _, _, mean, cov = carry.shell_moments(backend.constant(np.asarray(omega).reshape(-1, N, N, N)))
    return mean, cov


def _shells(post, omega):
    """(V, R) float64 shell sums of one field from the NPE's basis responses."""
    x = ops.expand_dims(post.log_density(backend.constant(np.asarray(omega).reshape(1, N, N, N))), -1)
    return _np(post.model.npe.basis_responses(x)[0][0, ..., 0, :, 0]).reshape(N**3, -1)


def test_reference_moments_are_the_local_linear_maps_shell_moments(carried):
    # An independent route: the neural bias study's reparametrisation computes them from the likelihood's grids.
    from tfhalo.bias.likelihood import NeuralBiasLikelihood
    from tfhalo.bias.reparam import LocalLinearReparametrization

    post, carry, omega_ref = carried
    theta = _theta(3)
    density = post.fields(_np(post.join(omega_ref.reshape(1, N, N, N), theta[None])))["density"][0]
    like = NeuralBiasLikelihood(post.model, post.catalogue.to_bias_data(density, post.density_floor))
    rep = LocalLinearReparametrization(like, theta)
    # (fields() paints its density through another route, equal to about 1e-8)
    np.testing.assert_allclose(carry.reference_mean, rep.shell_mean, rtol=1e-6)
    np.testing.assert_allclose(carry.reference_cov, rep.shell_cov, rtol=1e-6)


def test_the_carried_bias_keeps_the_pre_activations_voxel_mean_and_variance(carried):
    post, carry, omega_ref = carried
    thetas = np.stack([_theta(5), _theta(6)])
    omegas = np.stack([white_noise(N, 42), 1.3 * white_noise(N, 43)]).reshape(2, -1)
    mean, cov = _moments(carry, omegas)
    theta, _ = carry.from_reference(backend.constant(thetas), mean, cov)
    theta = _np(theta)
    w_i, b_i = carry.w_index, carry.b_index
    s_ref = _shells(post, omega_ref)
    for c in range(2):
        u_ref = s_ref @ thetas[c][w_i] + thetas[c][b_i]        # (V, F) on the reference field
        u = _shells(post, omegas[c]) @ theta[c][w_i] + theta[c][b_i]  # on this chain's field
        np.testing.assert_allclose(u.mean(axis=0), u_ref.mean(axis=0), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(u.var(axis=0, ddof=1), u_ref.var(axis=0, ddof=1), rtol=1e-10)
        # only the NPE's weights and bias move
        rest = np.setdiff1d(np.arange(17), np.concatenate([w_i.ravel(), b_i]))
        np.testing.assert_array_equal(theta[c][rest], thetas[c][rest])
    # on the reference field the map is the identity
    same, log_det = carry.from_reference(backend.constant(thetas), *_moments(carry, np.stack([omega_ref] * 2)))
    np.testing.assert_allclose(_np(same), thetas, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(_np(log_det), 0.0, atol=1e-12)


def test_the_map_round_trips_and_its_log_det_is_the_finite_difference_jacobians(carried):
    post, carry, _ = carried
    omega = white_noise(N, 44).reshape(1, -1) * 0.8
    mean, cov = _moments(carry, omega)
    theta_ref = _theta(7)
    theta, log_det = carry.from_reference(backend.constant(theta_ref[None]), mean, cov)
    back = carry.to_reference(theta, mean, cov)
    np.testing.assert_allclose(_np(back)[0], theta_ref, rtol=1e-12, atol=1e-12)

    def f(t):
        return _np(carry.from_reference(backend.constant(t[None]), mean, cov)[0])[0]

    eps = 1e-6
    jac = np.stack([(f(theta_ref + eps * e) - f(theta_ref - eps * e)) / (2 * eps) for e in np.eye(17)], axis=1)
    sign, logdet = np.linalg.slogdet(jac)
    assert sign > 0
    assert float(_np(log_det)[0]) == pytest.approx(logdet, abs=1e-6)
    assert abs(logdet) > 1e-2  # the field's moments differ from the reference's: a real test of the term


def test_the_carried_target_is_the_joint_at_the_carried_bias_plus_the_log_det(carried):
    post, carry, omega_ref = carried
    omegas = np.stack([white_noise(N, 45), 0.9 * white_noise(N, 46)]).reshape(2, -1)
    a = backend.constant(np.stack([_theta(8), _theta(9)]))
    x = backend.constant(omegas)
    blocks, log_det = carry.carry(x, a)
    direct = _np(post.log_prob(ops.concatenate(blocks, axis=-1))) + _np(log_det)
    np.testing.assert_allclose(_np(carry.log_prob(post.log_prob, x, a)), direct, rtol=1e-11)
    # ancillary inverts carry at the same field
    np.testing.assert_allclose(_np(carry.ancillary(blocks)), _np(a), rtol=1e-11, atol=1e-12)


def test_bad_reference_fields_are_refused(carried):
    post, _, omega_ref = carried
    with pytest.raises(ValueError, match=r"reference_omega must have shape \(64,\)"):
        NPEMomentCarry(post, omega_ref[:10])
    bad = omega_ref.copy()
    bad[3] = np.nan
    with pytest.raises(ValueError, match="reference_omega"):
        NPEMomentCarry(post, bad)
