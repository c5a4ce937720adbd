"""Fourier preconditioning of a white-noise field: exact bijector, curvature shells, Wiener posterior.

The analytic posterior (issue 14): a linear model ``delta = T omega`` with
``T omega = irfftn(rfftn(omega) * A(|k|))`` (``tfhalo.sim.ics.gaussian_field``'s
convention, ``A = sqrt(P n^3 / V)``, 0 at ``k = 0``) and data
``d = T omega_true + sigma n``, ``n ~ N(0, I)``, with the prior ``omega ~ N(0, I)``.

Derivation.  With NumPy's unnormalised ``F``, ``U = F / sqrt(N)`` is unitary and
``T = F^-1 diag(A) F = U^H diag(A) U``.  ``A`` is real and even (``A(k) = A(-k)``),
so ``T`` is a real symmetric convolution and the orthonormal Hartley transform
``H = Re U - Im U`` (``tfhalo.field.fft.hartley3``, ``H = H^T = H^-1``) diagonalises
it: ``H T H = diag(A)`` over the full ``(n, n, n)`` index grid (checked exactly
below on a dense 4^3 operator).  In Hartley coordinates ``v = H omega`` the
prior is ``v ~ N(0, I)`` and the data ``y = H d = A v + sigma H n`` with
``H n ~ N(0, I)``, so modes decouple and each is a scalar Gaussian problem:

    precision  = 1 + A^2 / sigma^2,
    mean       = (A / sigma^2) y / precision          (the Wiener filter),
    variance   = 1 / precision.

Statistical checks compare Monte Carlo means with exact values in units of
their Monte Carlo standard error ``sd / sqrt(ESS)`` (ArviZ bulk ESS per
coordinate), so they hold on any machine whatever the rounding.

Everything runs on the active Keras backend (``KERAS_BACKEND=tensorflow`` or ``jax``):
targets are ``keras.ops``, the bijector is TFP's substrate of that backend
(:mod:`tfhalo.backend`).  The two backends' random streams differ, so the sampler
checks are statistical on both.
"""

import textwrap

import arviz as az
import numpy as np
import pytest
from keras import ops

import tfhalo.inference as inf
from tests.helpers.backend import run_under_jax_without_tensorflow
from tfhalo import backend
from tfhalo.field.fft import hartley3, irfft3, rfft3
from tfhalo.field.precondition import (
    PRIOR_CURVATURE,
    FourierPreconditioner,
    curvature_scales,
    hutchinson_curvature,
    isotropic_scales,
    k_shells,
    mode_wavenumbers,
    scales_from_draws,
    shell_average,
)
from tfhalo.sim.cosmology import WMAP5
from tfhalo.sim.grid import rfft_wavenumbers
from tfhalo.sim.ics import white_noise

N_SIGMA = 4.5


def _np(x):
    return backend.to_numpy(x)


def _fresh(x):
    """A new backend tensor of ``x``'s values, so that TFP's bijector cache cannot hand back a stored input."""
    return backend.constant(np.array(_np(x)))


def _jacobian_rows(fn, u):
    """``(B, Q, P)`` Jacobians of ``fn: (B, P) -> (B, Q)`` (rows independent) by one compiled VJP per output."""
    u = backend.constant(u)
    q = int(fn(u).shape[-1])
    vjp = backend.jit(lambda x, e: backend.value_and_gradient(lambda y: ops.sum(fn(y) * e, axis=-1), x)[1],
                      jit_compile=False)
    rows = [_np(vjp(u, backend.constant(np.tile(np.eye(q)[i], (u.shape[0], 1))))) for i in range(q)]
    return np.stack(rows, axis=1)


def _hartley_np(x):
    """Float64 NumPy reference of the orthonormal Hartley transform over the last 3 axes."""
    f = np.fft.fftn(x, axes=(-3, -2, -1))
    return (f.real - f.imag) / np.sqrt(np.prod(x.shape[-3:]))


# ---------------------------------------------------------------- the bijector


def test_bijector_forward_matches_numpy_and_round_trips():
    n, nb, c = 4, 2, 3
    rng = np.random.default_rng(0)
    scale = rng.uniform(0.2, 1.5, (n, n, n))
    loc, bscale = np.array([0.3, -1.0]), np.array([2.0, 0.1])
    bij = FourierPreconditioner(n, n_bias=nb, field_scale=scale, bias_loc=loc, bias_scale=bscale)
    assert (bij.n_field, bij.n_bias, bij.size) == (64, 2, 66)
    u = rng.normal(size=(c, n**3 + nb))
    assert isinstance(bij, backend.tfp.bijectors.Bijector)
    x = bij.forward(u)
    assert tuple(x.shape) == (c, 66) and _np(x).dtype == np.float64
    want_field = _hartley_np(scale * u[:, :64].reshape(c, n, n, n)).reshape(c, 64)
    np.testing.assert_allclose(_np(x)[:, :64], want_field, rtol=0, atol=1e-13)
    np.testing.assert_allclose(_np(x)[:, 64:], loc + bscale * u[:, 64:], rtol=1e-15)
    # Fresh tensors, so TFP's bijector cache cannot hand back the input.
    np.testing.assert_allclose(_np(bij.inverse(_fresh(x))), u, rtol=0, atol=1e-12)
    np.testing.assert_allclose(_np(bij.forward(bij.inverse(backend.constant(u)))), u, rtol=0, atol=1e-12)
    # Extra batch axes pass through.
    assert tuple(bij.forward(u.reshape(1, c, 66)).shape) == (1, c, 66)
    # Inside a compiled function (the sampler's setting) the maps are the same.
    round_trip = backend.jit(lambda t: bij.inverse(bij.forward(t)), jit_compile=False)
    np.testing.assert_allclose(_np(round_trip(backend.constant(u))), u, rtol=0, atol=1e-12)


def test_bijector_log_det_is_exact_against_autodiff_jacobian():
    n, nb = 4, 2
    rng = np.random.default_rng(1)
    scale = rng.uniform(0.2, 1.5, (n, n, n))
    bscale = np.array([2.0, 0.1])
    bij = FourierPreconditioner(n, n_bias=nb, field_scale=scale, bias_loc=[1.0, 2.0], bias_scale=bscale)
    u = backend.constant(rng.normal(size=(2, 66)))
    x = bij.forward(u)
    jac = _jacobian_rows(bij.forward, _np(u))  # (2, 66, 66)
    expected = np.sum(np.log(scale)) + np.sum(np.log(bscale))
    for j in jac:
        sign, logdet = np.linalg.slogdet(j)
        assert sign != 0
        np.testing.assert_allclose(logdet, expected, rtol=1e-12)
    fldj = _np(bij.forward_log_det_jacobian(u, event_ndims=1))
    np.testing.assert_allclose(fldj, expected, rtol=1e-14)
    np.testing.assert_allclose(_np(bij.inverse_log_det_jacobian(_fresh(x), event_ndims=1)), -expected, rtol=1e-14)
    # The field block of J is H diag(scale): orthogonal columns of norm scale.
    block = jac[0, :64, :64]
    np.testing.assert_allclose(block.T @ block, np.diag(scale.ravel() ** 2), atol=1e-12)


def test_bijector_defaults_are_the_hartley_transform():
    n = 4
    bij = FourierPreconditioner(n)
    np.testing.assert_array_equal(bij.field_scale, np.ones((n, n, n)))
    assert bij.n_bias == 0 and bij.size == 64
    assert float(_np(bij.forward_log_det_jacobian(backend.constant(np.zeros((5, 64))), event_ndims=1))) == 0.0
    x = np.random.default_rng(2).normal(size=(2, 64))
    np.testing.assert_allclose(_np(bij.forward(x)), _np(bij.inverse(backend.constant(x))), atol=1e-14)


@pytest.mark.parametrize("kwargs, match", [
    (dict(n_grid=2.7), "n_grid must be an integer. Received: n_grid=2.7"),
    (dict(n_grid=1), "n_grid must be at least 2"),
    (dict(n_grid=4, n_bias=-1), "n_bias must be at least 0"),
    (dict(n_grid=4, field_scale=np.ones((4, 4))), r"field_scale must have shape \(4, 4, 4\)"),
    (dict(n_grid=4, field_scale=np.zeros((4, 4, 4))),
     r"field_scale must be positive. Received: field_scale\[0, 0, 0\]=0.0"),
    (dict(n_grid=4, field_scale=np.full((4, 4, 4), np.nan)), "field_scale must be finite"),
    (dict(n_grid=4, n_bias=2, bias_loc=[1.0]), r"bias_loc must have shape \(2,\)"),
    (dict(n_grid=4, n_bias=2, bias_loc=[1.0, np.inf]), "bias_loc must be finite"),
    (dict(n_grid=4, n_bias=2, bias_scale=[1.0, -2.0]), r"bias_scale must be positive. Received: bias_scale\[1\]=-2.0"),
    (dict(n_grid=4, n_bias=1, bias_scale="a"), "bias_scale must be an array of numbers"),
])
def test_bijector_refuses_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        FourierPreconditioner(**kwargs)


def test_bijector_refuses_states_of_the_wrong_length():
    with pytest.raises(ValueError, match="last axis n_grid"):
        FourierPreconditioner(4, n_bias=1).forward(np.zeros((2, 64)))


# ---------------------------------------------------------------- shells and curvature


def test_shells_match_the_fft_wavenumbers():
    n, box = 6, 30.0
    labels, m2, counts = k_shells(n)
    k = mode_wavenumbers(n, box)
    kf = 2 * np.pi / box
    np.testing.assert_allclose(k, kf * np.sqrt(m2[labels]), rtol=1e-14)
    assert counts.sum() == n**3 and np.all(np.diff(m2) > 0)
    # The rfft half of the grid is tfhalo.sim.grid's wave vectors.
    kx, ky, kz = rfft_wavenumbers(n, box)
    np.testing.assert_allclose(k[..., : n // 2 + 1], np.sqrt(kx**2 + ky**2 + kz**2), rtol=1e-14)
    # Hermitian partners share a shell.
    flip = np.roll(labels[::-1, ::-1, ::-1], 1, axis=(0, 1, 2))
    np.testing.assert_array_equal(labels, flip)


def test_shell_average_and_isotropic_scales():
    n = 4
    rng = np.random.default_rng(3)
    v = rng.uniform(1, 5, (n, n, n))
    avg = shell_average(v)
    labels, _, counts = k_shells(n)
    for s in range(counts.size):
        np.testing.assert_allclose(avg[labels == s], v[labels == s].mean(), rtol=1e-14)
    np.testing.assert_allclose(isotropic_scales(n, v), 1 / np.sqrt(avg), rtol=1e-14)
    # Below the floor the width is the prior's.
    np.testing.assert_array_equal(isotropic_scales(n, np.full((n, n, n), 0.3)), 1.0)
    np.testing.assert_allclose(isotropic_scales(n, np.full((n, n, n), 0.3), floor=0.25), 1 / np.sqrt(0.3))
    scale = isotropic_scales(n, lambda k: 1 + k**2, box_size=2 * np.pi)
    np.testing.assert_allclose(scale, 1 / np.sqrt(1 + mode_wavenumbers(n, 2 * np.pi) ** 2), rtol=1e-14)
    with pytest.raises(ValueError, match="box_size is required"):
        isotropic_scales(n, lambda k: k)
    with pytest.raises(ValueError, match="curvature must be finite"):
        isotropic_scales(n, np.full((n, n, n), np.nan))
    with pytest.raises(ValueError, match="floor must be positive"):
        isotropic_scales(n, v, floor=0.0)
    with pytest.raises(ValueError, match=r"values must be a cubic"):
        shell_average(np.ones((4, 4, 5)))


def _fourier_gaussian(h, n_bias=0):
    """ln p of a field with precision diag(h) in Hartley coordinates, and extras of precision 7 (held fixed)."""
    n = h.shape[0]
    ht = backend.constant(h)

    def log_prob(x):
        v = hartley3(ops.reshape(x[:, : n**3], (-1, n, n, n)))
        lp = -0.5 * ops.sum(ops.reshape(ht * v**2, (-1, n**3)), -1)
        return lp - 0.5 * ops.sum(x[:, n**3:] ** 2, -1) * 7.0 if n_bias else lp

    return log_prob


def test_curvature_of_a_fourier_diagonal_gaussian_is_exact():
    n = 6
    # Isotropic precision: the shells return it exactly (Hutchinson is exact for a diagonal matrix).
    h_iso = 1.0 + 40.0 * np.exp(-mode_wavenumbers(n, 30.0) / 0.3)
    state = np.random.default_rng(4).normal(size=(2, n**3 + 3))
    lp = _fourier_gaussian(h_iso, n_bias=3)
    est = hutchinson_curvature(lp, state, n, n_probes=1, seed=5)
    np.testing.assert_allclose(est, h_iso, rtol=1e-7)
    np.testing.assert_allclose(curvature_scales(lp, state, n, n_probes=1, seed=5), 1 / np.sqrt(h_iso), rtol=1e-7)
    # Anisotropic diagonal precision: per-mode estimates exact, scales the shell means.
    h_aniso = np.random.default_rng(6).uniform(0.5, 30.0, (n, n, n))
    lp = _fourier_gaussian(h_aniso)
    est = hutchinson_curvature(lp, state[0, : n**3], n, n_probes=2, seed=7)
    np.testing.assert_allclose(est, h_aniso, rtol=1e-7)
    want = 1 / np.sqrt(np.maximum(shell_average(h_aniso), PRIOR_CURVATURE))
    np.testing.assert_allclose(curvature_scales(lp, state[:1, : n**3], n, seed=7), want, rtol=1e-7)


def test_hutchinson_is_seeded_and_unbiased_for_a_coupled_hessian():
    # A Hessian with off-diagonal couplings in Hartley space: estimates differ per seed, agree in mean.
    n = 4
    rng = np.random.default_rng(8)
    b = rng.normal(size=(n**3, n**3)) / n**1.5
    m = np.eye(n**3) * 3.0 + b @ b.T
    mt = backend.constant(m)

    def log_prob(x):
        v = ops.reshape(hartley3(ops.reshape(x, (-1, n, n, n))), (-1, n**3))
        return -0.5 * ops.sum(v * ops.matmul(v, mt), -1)  # M symmetric: v M = M v

    x0 = np.zeros((1, n**3))
    a = hutchinson_curvature(log_prob, x0, n, n_probes=3, seed=9)
    np.testing.assert_array_equal(a, hutchinson_curvature(log_prob, x0, n, n_probes=3, seed=9))
    assert not np.allclose(a, hutchinson_curvature(log_prob, x0, n, n_probes=3, seed=10))
    # z_i (M z)_i = M_ii + sum_{j != i} M_ij z_i z_j: mean M_ii, variance sum_{j != i} M_ij^2 per
    # probe; estimates i and j share the term z_i z_j, so their covariance is M_ij^2 per probe.
    probes = 64  # 16 probes at each of 4 states
    est = hutchinson_curvature(log_prob, np.zeros((4, n**3)), n, n_probes=probes // 4, seed=11).ravel()
    off = m**2 - np.diag(np.diag(m) ** 2)
    sd = np.sqrt(off.sum(1) / probes)
    z = (est - np.diag(m)) / sd
    corr = off / probes / np.outer(sd, sd) + np.eye(z.size)
    assert abs(z.sum()) < N_SIGMA * np.sqrt(corr.sum())
    assert abs(np.mean(z**2) - 1) < N_SIGMA * np.sqrt(2 * np.sum(corr**2)) / z.size


@pytest.mark.parametrize("kwargs, match", [
    (dict(log_prob_fn=None), "log_prob_fn must be callable"),
    (dict(state=np.zeros((2, 10))), r"state must be \(P,\) or \(C, P\) with P >= n_grid\^3 = 64"),
    (dict(state=np.full(64, np.nan)), "state must be finite"),
    (dict(n_probes=0), "n_probes must be at least 1"),
    (dict(eps=-1.0), "eps must be positive"),
    (dict(seed=-3), "seed must be at least 0"),
    (dict(seed=None), "seed must be an integer"),
    (dict(floor=np.nan), "floor must be a finite number"),
])
def test_curvature_scales_refuses_bad_arguments(kwargs, match):
    args = dict(log_prob_fn=_fourier_gaussian(np.ones((4, 4, 4))), state=np.zeros(64), n_grid=4)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        curvature_scales(**args)


def test_curvature_refuses_a_non_finite_target():
    with pytest.raises(ValueError, match="log_prob_fn must be finite and differentiable"):
        hutchinson_curvature(lambda x: ops.sum(ops.log(x), -1), -np.ones((1, 64)), 4)


# ---------------------------------------------------------------- scales from draws


def test_scales_from_draws_inverts_the_bijector_exactly():
    # Draws made by the bijector from known coordinates u: the spread is their shell-averaged variance,
    # regularised towards 1, whatever the scales (checked against the bijector's own forward map).
    rng = np.random.default_rng(4)
    n, s_draws, chains = 4, 6, 2
    scale = isotropic_scales(n, lambda k: 1.0 + 30.0 * np.exp(-k), box_size=20.0)
    u = rng.standard_normal((s_draws, chains, n**3)) * rng.uniform(0.3, 3.0, n**3)
    omega = _np(FourierPreconditioner(n, field_scale=scale).forward(backend.constant(u.reshape(-1, n**3))))
    new, spread = scales_from_draws(scale, omega.reshape(s_draws, chains, n**3))
    m = s_draws * chains
    expected = np.sqrt(m / (m + 5.0) * shell_average(u.reshape(m, n, n, n).var(axis=0, ddof=1)) + 5.0 / (m + 5.0))
    np.testing.assert_allclose(spread, expected, rtol=1e-10)
    np.testing.assert_allclose(new, scale * expected, rtol=1e-10)
    # (S, P) draws are the same draws as one chain
    np.testing.assert_allclose(scales_from_draws(scale, omega)[1], expected, rtol=1e-10)


def test_scales_from_draws_recover_the_widths_of_a_fourier_diagonal_gaussian():
    # Draws whose Hartley coefficients have widths w per shell, sampled in scales s0 that are wrong by a
    # factor of 0.2 to 5: the new scales are w, within the Monte Carlo error of a variance from
    # (modes in the shell) x (draws) values, sqrt(2 / count) relative, and the regularisation's pull.
    rng = np.random.default_rng(5)
    n, m = 8, 400
    k = mode_wavenumbers(n, 2 * np.pi)
    s0 = isotropic_scales(n, lambda kk: 1.0 + 10.0 * np.exp(-kk), box_size=2 * np.pi)
    w = shell_average(s0 * np.exp(1.6 * np.cos(k)))                  # a factor exp(+-1.6) ~ 0.2-5 per shell
    omega = _hartley_np(w * rng.standard_normal((m, n, n, n))).reshape(m // 2, 2, n**3)
    new, spread = scales_from_draws(s0, omega)
    _, _, counts = k_shells(n)
    labels = k_shells(n)[0]
    target = np.sqrt(m / (m + 5.0) * (w / s0) ** 2 + 5.0 / (m + 5.0))
    rel_se = np.sqrt(2.0 / (counts[labels] * (m - 1)))              # of the variance; half of it for the sd
    assert np.all(np.abs(spread / target - 1.0) < N_SIGMA * rel_se / 2 + 1e-12)
    assert np.all(np.abs(new / np.sqrt(w**2 * m / (m + 5.0) + s0**2 * 5.0 / (m + 5.0)) - 1.0)
                  < N_SIGMA * rel_se / 2 + 1e-12)
    # In the new scales the same draws' variance is the old one times (s0 / new)^2, exactly: the
    # re-estimate leaves the shells it has already widened alone, up to the regularisation's pull.
    _, again = scales_from_draws(new, omega)
    var0 = (spread**2 - 5.0 / (m + 5.0)) * (m + 5.0) / m
    np.testing.assert_allclose(again, np.sqrt(m / (m + 5.0) * var0 * (s0 / new) ** 2 + 5.0 / (m + 5.0)), rtol=1e-10)
    assert np.all(np.abs(again - 1.0) < 0.2)


@pytest.mark.parametrize("kwargs,match", [
    (dict(omega_draws=np.zeros((3, 2, 63))), r"omega_draws must be \(S, C, 64\) or \(S, 64\).*shape=\(3, 2, 63\)"),
    (dict(omega_draws=np.zeros((1, 64))), r"at least 2 draws.*shape=\(1, 64\)"),
    (dict(omega_draws=np.full((3, 64), np.nan)), "omega_draws must be finite"),
    (dict(field_scale=-np.ones((4, 4, 4))), r"field_scale must be positive. Received: field_scale\[0, 0, 0\]=-1.0"),
    (dict(field_scale=np.ones((4, 4))), r"field_scale must be a cubic \(n, n, n\).*shape=\(4, 4\)"),
    (dict(field_scale=None), r"field_scale must be a cubic .* Received: field_scale.shape=\(\)"),
])
def test_scales_from_draws_refuses_bad_arguments(kwargs, match):
    args = dict(field_scale=np.ones((4, 4, 4)), omega_draws=np.zeros((3, 64)))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        scales_from_draws(**args)


# ---------------------------------------------------------------- the Wiener filter


def _amplitude_full(n, box):
    """A(|k|) = sqrt(P(k) n^3 / V) on the full FFT grid (0 at k = 0), P from colossus (WMAP5, z = 0)."""
    k = mode_wavenumbers(n, box)
    amp = np.zeros_like(k)
    amp[k > 0] = np.sqrt(WMAP5.linear_power(k[k > 0]) * n**3 / box**3)
    return amp


def _linear_np(omega, amp_full):
    n = omega.shape[-1]
    return np.fft.irfftn(np.fft.rfftn(omega, axes=(-3, -2, -1)) * amp_full[..., : n // 2 + 1],
                         s=(n, n, n), axes=(-3, -2, -1))


def test_linear_model_is_diagonal_in_hartley_coordinates():
    # The derivation in the module docstring: H T H = diag(A) over the full index grid.
    n, box = 4, 20.0
    amp = _amplitude_full(n, box)
    basis = np.eye(n**3).reshape(n**3, n, n, n)
    t = _linear_np(basis, amp).reshape(n**3, n**3).T  # column j = T e_j
    hmat = _hartley_np(basis).reshape(n**3, n**3).T
    np.testing.assert_allclose(hmat @ hmat, np.eye(n**3), atol=1e-14)
    np.testing.assert_allclose(hmat @ t @ hmat, np.diag(amp.ravel()), atol=1e-12 * amp.max())


class Wiener:
    """Linear Gaussian field problem on an 8^3 grid of 32 Mpc/h: A^2/sigma^2 from ~14 to ~0.2."""

    n, box, sigma = 8, 32.0, 1.5

    def __init__(self, seed=0):
        n = self.n
        self.amp = _amplitude_full(n, self.box)
        omega_true = white_noise(n, seed)
        rng = np.random.default_rng(seed + 1)
        self.data = _linear_np(omega_true, self.amp) + self.sigma * rng.standard_normal((n, n, n))
        prec = 1 + self.amp**2 / self.sigma**2
        self.mean = self.amp / self.sigma**2 * _hartley_np(self.data) / prec  # Hartley coordinates
        self.var = 1 / prec
        amp_half = backend.constant(self.amp[..., : n // 2 + 1])
        data = backend.constant(self.data)

        def log_prob(x):  # (C, n^3) -> (C,)
            omega = ops.reshape(x, (-1, n, n, n))
            re, im = rfft3(omega)
            r = (irfft3(re * amp_half, im * amp_half, n) - data) / self.sigma
            return -0.5 * ops.sum(x**2, -1) - 0.5 * ops.sum(ops.reshape(r, (-1, n**3)) ** 2, -1)

        self.log_prob = log_prob


@pytest.fixture(scope="module")
def wiener():
    return Wiener()


def _ess(f):
    """ArviZ bulk ESS per coordinate of draws ``(S, C, P)``."""
    return az.ess(az.convert_to_dataset(np.moveaxis(f, 0, 1)), method="bulk")["x"].values


def _check_mean(f, target, what):
    """|mean(f) - target| within N_SIGMA Monte Carlo standard errors, f of shape (S, C)."""
    ess = float(_ess(f[..., None])[0])
    mcse = f.std(ddof=1) / np.sqrt(ess)
    err = f.mean() - target
    assert abs(err) < N_SIGMA * mcse, f"{what}: {f.mean():.5g} vs {target:.5g} (MCSE {mcse:.3g}, ESS {ess:.0f})"


def _check_wiener_draws(samples, w, tag):
    """Draws ``(S, C, n^3)`` of omega against the Wiener posterior, per |k| shell and as a chi-square.

    ``y = (H omega - mean) / sd`` is N(0, I) under the exact posterior.  Per shell of
    ``m`` modes, ``sum(y) / sqrt(m) ~ N(0, 1)`` (posterior mean) and ``mean(y^2)`` has
    expectation 1 (posterior variance); the radius ``r^2 = sum(y^2) ~ chi2(n^3)`` has
    mean ``n^3`` and variance ``2 n^3``.  Each is one scalar chain, so its Monte Carlo
    error (ArviZ ESS) includes any correlation between the modes the sampler induces.
    """
    s, c, _ = samples.shape
    n = w.n
    v = _hartley_np(samples.reshape(s, c, n, n, n)).reshape(s, c, -1)
    y = (v - w.mean.ravel()) / np.sqrt(w.var.ravel())
    labels, m2, counts = k_shells(n)
    lab = labels.ravel()
    for sh in range(counts.size):
        ys = y[..., lab == sh]
        _check_mean(ys.sum(-1) / np.sqrt(counts[sh]), 0.0, f"{tag}: posterior mean, shell m2={m2[sh]}")
        _check_mean(np.mean(ys**2, -1), 1.0, f"{tag}: posterior variance, shell m2={m2[sh]}")
    r2, dof = np.sum(y**2, -1), y.shape[-1]
    _check_mean(r2, dof, f"{tag}: chi-square radius")
    _check_mean((r2 - dof) ** 2, 2 * dof, f"{tag}: variance of the chi-square radius")
    return y


def _wiener_config(**kw):
    base = dict(kernel="hmc", num_leapfrog_steps=4, num_chains=4, num_warmup=200, num_samples=500,
                block_size=500, jit_compile=False, seed=1)
    base.update(kw)
    return inf.SamplerConfig(**base)


@pytest.fixture(scope="module")
def wiener_chains(wiener):
    w = wiener
    # Chains start from the prior; the curvature is measured there (exact for this quadratic target).
    start = np.random.default_rng(20).normal(size=(4, w.n**3))
    scale = curvature_scales(w.log_prob, start, w.n, n_probes=1, seed=0)
    bij = FourierPreconditioner(w.n, field_scale=scale)
    return inf.sample(w.log_prob, start, _wiener_config(), bijector=bij, progress=False), scale


def test_wiener_target_matches_its_numpy_definition(wiener):
    w = wiener
    x = np.random.default_rng(21).normal(size=(3, w.n**3))
    r = (_linear_np(x.reshape(3, w.n, w.n, w.n), w.amp) - w.data).reshape(3, -1) / w.sigma
    want = -0.5 * np.sum(x**2, -1) - 0.5 * np.sum(r**2, -1)
    np.testing.assert_allclose(_np(w.log_prob(backend.constant(x))), want, rtol=1e-12)
    # The data constrain the low-k modes (A^2 / sigma^2 > 10), the prior the highest ones (< 0.3).
    snr = (w.amp / w.sigma) ** 2
    assert snr.max() > 10 and snr[mode_wavenumbers(w.n, w.box) > 1.2].max() < 0.3


def test_curvature_scales_are_the_wiener_widths(wiener_chains, wiener):
    _, scale = wiener_chains
    np.testing.assert_allclose(scale, np.sqrt(wiener.var), rtol=1e-7)


def test_preconditioned_hmc_recovers_the_wiener_posterior(wiener_chains, wiener):
    ch, _ = wiener_chains
    assert ch.samples.shape == (500, 4, wiener.n**3)
    # (Warm-up may diverge while dual averaging tries steps past the leapfrog stability limit of 2.)
    assert not ch.sample_stats["diverging"].any()
    _check_wiener_draws(ch.samples, wiener, "preconditioned HMC")
    # In the preconditioned coordinates the posterior has unit width: the adapted inverse mass is ~1
    # (each entry a variance estimate from ~300 correlated warm-up draws).
    assert abs(np.median(ch.inverse_mass_matrix) - 1) < 0.15
    assert 0.4 < ch.inverse_mass_matrix.min() and ch.inverse_mass_matrix.max() < 2.5


# ---------------------------------------------------------------- JAX without TensorFlow

_NO_TF_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np

    import tfhalo.inference as inf
    from tfhalo import backend
    from tfhalo.bias import build_model
    from tfhalo.field import (FieldCatalogue, FieldLevelPosterior, FourierPreconditioner, LPTForwardModel,
                              curvature_scales)

    n, box, m_th = 4, 64.0, 1e12
    rng = np.random.default_rng(0)
    cat = FieldCatalogue.from_halos(rng.uniform(0.0, box, (12, 3)), m_th * np.exp(rng.exponential(1.0, 12)),
                                    box, n, m_th)
    post = FieldLevelPosterior(LPTForwardModel(n, box), build_model(cat.log_mass_threshold, n, dtype="float64"), cat)
    # ~0.2 halos per voxel, density-dependent amplitudes (as tests/field/test_posterior.py's _theta).
    amp = np.log(0.2 / (box / n) ** 3) - np.log(1e-3) - 0.8
    theta = np.array([0.5, 0.2, 0.1, 0.05, 0.0, 1.0, 0.5, 0.3, 0.2, 0.1, 0.1, amp, amp - 1.0, 0.5, 1.0, -6.8, -6.5])
    state = np.concatenate([rng.standard_normal((2, n**3)), np.tile(theta, (2, 1))], axis=1)
    # Compiled once: JAX's eager mode compiles every primitive of the forward model separately.
    log_prob = backend.jit(post.log_prob)
    scale = curvature_scales(log_prob, state, n, n_probes=1, seed=0)
    bias_scale = np.full(17, 0.05)
    bij = FourierPreconditioner(n, post.n_bias, field_scale=scale, bias_loc=theta, bias_scale=bias_scale)
    cfg = inf.SamplerConfig(kernel="hmc", num_chains=2, num_warmup=0, num_samples=4, num_leapfrog_steps=2,
                            init_step_size=0.1, seed=3)
    ch = inf.sample(log_prob, state, cfg, bijector=bij, progress=False)
    lp = np.stack([backend.to_numpy(log_prob(backend.constant(x))) for x in ch.samples])
    tf_modules = sorted(m for m in sys.modules if m == "tensorflow" or m.startswith("tensorflow."))
    print(json.dumps(dict(shape=list(ch.samples.shape), finite=bool(np.isfinite(ch.samples).all()),
                          lp_minus_target=(ch.sample_stats["lp"] - lp).ravel().tolist(),
                          log_det=float(np.log(scale).sum() + np.log(bias_scale).sum()),
                          scale=[float(scale.min()), float(scale.max())],
                          bijector_module=type(bij).__mro__[1].__module__, tf_modules=tf_modules[:10])))
""")


def test_field_posterior_sampled_under_jax_loads_no_tensorflow():
    result = run_under_jax_without_tensorflow(_NO_TF_SCRIPT)
    assert result["shape"] == [4, 2, 64 + 17] and result["finite"]
    assert result["bijector_module"].startswith("tensorflow_probability.substrates.jax.")
    # Curvature widths are floored at the prior's (1).
    assert 0.0 < result["scale"][0] <= result["scale"][1] <= 1.0
    # The sampler's lp is the target plus the preconditioner's constant log-Jacobian.
    np.testing.assert_allclose(result["lp_minus_target"], result["log_det"], rtol=1e-10)
