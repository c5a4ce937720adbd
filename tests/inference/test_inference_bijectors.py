"""affine_preconditioner: theta = centre + chol(H^-1) z with floored curvature, as a TFP bijector.

Backend-agnostic: the bijectors are of the Keras backend's TFP substrate (tfhalo.backend).
"""

import numpy as np
import pytest

import tfhalo.inference as inf
from tfhalo.backend import constant, to_numpy


def _hessian():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    eig = np.array([-0.5, 1e-4, 2.0, 300.0])  # one negative, one flat direction
    return q, eig, (q * eig) @ q.T


def test_affine_preconditioner_inverts_and_floors_the_hessian():
    q, eig, h = _hessian()
    centre = np.array([1.0, -2.0, 0.5, 3.0])
    bij = inf.affine_preconditioner(centre, h, floor=0.01)
    assert bij.forward_min_event_ndims == 1
    z = np.random.default_rng(1).normal(size=(5, 4))
    theta = bij.forward(constant(z))
    assert theta.dtype.name == "float64"
    theta = to_numpy(theta)
    # The map is affine: recover L from the images of the unit vectors.
    chol = to_numpy(bij.forward(constant(np.eye(4)))).T - centre[:, None]
    np.testing.assert_allclose(chol, np.tril(chol), atol=1e-14)
    expected = (q / np.maximum(eig, 0.01)) @ q.T
    np.testing.assert_allclose(chol @ chol.T, expected, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(theta, centre + z @ chol.T, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(to_numpy(bij.inverse(constant(theta))), z, rtol=1e-9, atol=1e-9)
    # Constant Jacobian: ln|det L| = -0.5 ln det(floored H).
    ldj = to_numpy(bij.forward_log_det_jacobian(constant(z), event_ndims=1))
    np.testing.assert_allclose(ldj, -0.5 * np.sum(np.log(np.maximum(eig, 0.01))), rtol=1e-12)


@pytest.mark.parametrize("centre, hessian, floor, match", [
    (np.zeros((2, 2)), np.eye(2), 1e-2, r"centre must be a \(P,\) vector"),
    (np.array([0.0, np.nan]), np.eye(2), 1e-2, "centre must be finite"),
    (np.zeros(2), np.eye(3), 1e-2, r"hessian must have shape \(2, 2\)"),
    (np.zeros(2), np.array([[1.0, np.inf], [np.inf, 1.0]]), 1e-2, "hessian must be finite"),
    (np.zeros(2), np.array([[1.0, 0.5], [0.0, 1.0]]), 1e-2, "hessian must be symmetric"),
    (np.zeros(2), np.eye(2), 0.0, "floor must be positive"),
    (np.zeros(2), np.eye(2), float("inf"), "floor must be a finite number"),
])
def test_affine_preconditioner_refuses_bad_input(centre, hessian, floor, match):
    with pytest.raises(ValueError, match=match):
        inf.affine_preconditioner(centre, hessian, floor=floor)


def test_preconditioner_from_draws_maps_a_unit_gaussian_to_the_regularised_draw_covariance():
    """forward(z) = mean + L z with L L^T = n/(n+5) cov + shrinkage 5/(n+5) I (float64 NumPy reference)."""
    rng = np.random.default_rng(3)
    draws = rng.normal(size=(50, 3)) @ np.array([[2.0, 0.0, 0.0], [0.5, 1.0, 0.0], [0.0, -0.3, 0.1]]) + [1.0, -2.0, 0.5]
    bij = inf.preconditioner_from_draws(draws, shrinkage=0.01)
    n = draws.shape[0]
    expected = (n / (n + 5.0)) * np.cov(draws, rowvar=False) + 0.01 * (5.0 / (n + 5.0)) * np.eye(3)
    np.testing.assert_allclose(to_numpy(bij.forward(constant(np.zeros((1, 3)))))[0], draws.mean(axis=0), rtol=1e-12)
    jac = np.stack([to_numpy(bij.forward(constant(np.eye(3)[i][None])))[0] - draws.mean(axis=0) for i in range(3)], 1)
    np.testing.assert_allclose(jac @ jac.T, expected, rtol=1e-10, atol=1e-14)
    z = rng.normal(size=(4, 3))
    np.testing.assert_allclose(to_numpy(bij.inverse(bij.forward(constant(z)))), z, atol=1e-12)
    # A constant coordinate (zero sample variance) is kept invertible by the shrinkage.
    flat = draws.copy()
    flat[:, 2] = 0.7
    assert np.all(np.isfinite(to_numpy(inf.preconditioner_from_draws(flat).inverse(constant(flat[:2])))))


@pytest.mark.parametrize("draws, shrinkage, match", [
    (np.zeros((1, 3)), 1e-3, r"draws.shape=\(1, 3\)"),
    (np.zeros(5), 1e-3, r"draws.shape=\(5,\)"),
    (np.array([[0.0, np.nan], [1.0, 2.0]]), 1e-3, "non-finite"),
    (np.zeros((4, 2)), 0.0, "shrinkage"),
])
def test_preconditioner_from_draws_refuses_bad_input(draws, shrinkage, match):
    with pytest.raises(ValueError, match=match):
        inf.preconditioner_from_draws(draws, shrinkage=shrinkage)
