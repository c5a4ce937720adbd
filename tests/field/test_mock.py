"""Mock catalogues from the Poisson process of paper eq. 16: counts, masses, positions, bad input.

Runs on TensorFlow and on JAX (float64 through ``jax.enable_x64``). Statistical
checks are seeded; their tolerances come from the known Poisson variance.
"""

import math

import numpy as np
import pytest
from keras import ops
from scipy import integrate, special, stats

from tfhalo.bias import build_model
from tfhalo.field import mock as mock_module
from tfhalo.field.forward import LPTForwardModel
from tfhalo.field.mock import draw_mock_catalogue, mock_intensity
from tfhalo.field.posterior import FieldCatalogue, FieldLevelPosterior
from tfhalo.sim.grid import minimum_image
from tfhalo.sim.ics import white_noise

from tests.helpers.backend import BACKEND


M_TH = 1e12
LN_TH = math.log(M_TH)
N = 8
BOX = 32.0  # 4 Mpc/h voxels, as the paper's
VOXEL = (BOX / N) ** 3
SEEDS = (101, 102, 103, 104)



def _theta(per_voxel=4.0, seed=0):
    """About ``per_voxel`` halos per voxel, amplitudes rising with density, two components (sigma ~ 0.8, 1)."""
    theta = np.zeros(17)
    theta[0:4] = [0.5, 0.2, 0.1, 0.05]
    theta[5:11] = [1.0, 0.5, 0.3, 0.2, 0.1, 0.1]
    amp = math.log(per_voxel / VOXEL) - math.log(1e-3) - 0.8
    theta[11:17] = [amp, amp - 1.0, 0.5, 1.0, -6.8, -6.5]
    return theta + np.random.default_rng(seed).normal(scale=0.05, size=17)


@pytest.fixture
def setup():
    forward = LPTForwardModel(N, BOX)
    model = build_model(LN_TH, N, dtype="float64")
    omega = white_noise(N, 7)
    theta = _theta()
    cats = [draw_mock_catalogue(forward, model, omega, theta, seed=s) for s in SEEDS]
    # The likelihood's own per-voxel expected counts and mixture parameters (an independent code path).
    post = FieldLevelPosterior(forward, model, cats[0])
    fields = post.fields(post.join(omega[None], theta[None]))
    return forward, model, omega, theta, cats, fields


def test_expected_counts_are_the_likelihoods(setup):
    forward, model, omega, theta, _, fields = setup
    log_weight, _, _ = mock_intensity(forward, model, omega, theta)
    expected = VOXEL * np.exp(special.logsumexp(log_weight, axis=-1))
    # The head's erfc is a Chebyshev fit (relative error < 1.2e-7); the mock uses scipy's exact one.
    np.testing.assert_allclose(expected, fields["expected"][0].ravel(), rtol=1e-6)


def test_counts_per_voxel_are_poisson_with_the_expected_mean(setup):
    *_, cats, fields = setup
    lam = fields["expected"][0].ravel()
    assert 1.0 < lam.mean() < 20.0 and lam.std() > 0.1 * lam.mean()  # varied, well-populated voxels
    counts = np.stack([np.bincount(c.halo_voxel, minlength=N**3) for c in cats])  # (4, n^3)
    # Total: Poisson(sum lam) per mock.
    total, mean_total = counts.sum(), len(cats) * lam.sum()
    assert abs(total - mean_total) < 5.0 * math.sqrt(mean_total)
    # Pearson statistic: E = #cells, Var = sum(2 + 1/lam) for Poisson cells.
    pearson = np.sum((counts - lam) ** 2 / lam)
    n_cells = counts.size
    assert abs(pearson - n_cells) < 5.0 * math.sqrt(np.sum(2.0 + 1.0 / lam) * len(cats))
    # The counts follow the density-dependent mean, voxel by voxel.
    assert np.corrcoef(counts.mean(axis=0), lam)[0, 1] > 0.8


def _analytic_cdf(params, x):
    """CDF of ln M above ln M_th for the per-halo mixture ``params (H, 6)`` at ``x (H,)`` (float64)."""
    alpha, mu, sigma = params[:, :2], params[:, 2:4], params[:, 4:]
    loc = mu + sigma**2
    weight = alpha * np.exp(0.5 * sigma**2)
    lower = special.ndtr((LN_TH - loc) / sigma)
    numer = np.sum(weight * (special.ndtr((x[:, None] - loc) / sigma) - lower), axis=1)
    return numer / np.sum(weight * (1.0 - lower), axis=1)


def test_analytic_mass_cdf_is_the_integral_of_the_mass_function(setup):
    *_, fields = setup
    params = fields["params"][0].reshape(-1, 6)[[0, 100, 300]]
    for p in params:
        alpha, mu, sigma = p[:2], p[2:4], p[4:]

        def n_of_m(ln_m):  # n(M) per unit M from the head's formula
            return np.sum(alpha * np.exp(-mu) * stats.norm.pdf(ln_m, mu, sigma))

        per_ln_m = lambda x: n_of_m(x) * math.exp(x)  # noqa: E731
        top = integrate.quad(per_ln_m, LN_TH, LN_TH + 30.0, epsabs=0, epsrel=1e-11, limit=200)[0]
        for x in (LN_TH + 0.3, LN_TH + 1.5, LN_TH + 3.0):
            part = integrate.quad(per_ln_m, LN_TH, x, epsabs=0, epsrel=1e-11)[0]
            assert _analytic_cdf(p[None], np.array([x]))[0] == pytest.approx(part / top, rel=1e-8)


def test_ln_mass_follows_the_truncated_mixture(setup):
    *_, cats, fields = setup
    params = fields["params"][0].reshape(-1, 6)
    voxel = np.concatenate([c.halo_voxel for c in cats])
    ln_mass = np.concatenate([c.ln_mass for c in cats])
    assert ln_mass.size > 5000 and np.all(ln_mass >= LN_TH)
    assert all(np.all(np.exp(c.ln_mass) >= M_TH * (1 - 1e-15)) for c in cats)
    # Probability integral transform with each halo's own voxel mixture: iid U(0, 1).
    u = _analytic_cdf(params[voxel], ln_mass)
    assert stats.kstest(u, "uniform").pvalue > 1e-3
    # The test has power: the mixture in ln M without the sigma^2 shift of the means is rejected.
    wrong = params[voxel].copy()
    wrong[:, 2:4] -= wrong[:, 4:] ** 2
    wrong_u = np.clip(_analytic_cdf(wrong, ln_mass), 0.0, 1.0)
    assert stats.kstest(wrong_u, "uniform").pvalue < 1e-6


def test_every_halo_lies_in_the_voxel_it_was_drawn_for(setup):
    forward, model, omega, theta, cats, _ = setup
    log_weight, _, _ = mock_intensity(forward, model, omega, theta)
    expected = VOXEL * np.exp(special.logsumexp(log_weight, axis=-1))
    h = BOX / N
    for seed, cat in zip(SEEDS, cats):
        # The voxel counts are the generator's first draw (documented in draw_mock_catalogue).
        drawn = np.random.Generator(np.random.PCG64(seed)).poisson(expected)
        np.testing.assert_array_equal(np.bincount(cat.halo_voxel, minlength=N**3), drawn)
        # Geometry, independent of the binning code: within half a voxel of the voxel's grid point.
        sites = np.stack(np.unravel_index(cat.halo_voxel, (N, N, N)), axis=-1) * h
        assert np.all(np.abs(minimum_image(cat.positions - sites, BOX)) <= 0.5 * h)
        assert np.all((cat.positions >= 0) & (cat.positions < BOX))
        assert cat.n_grid == N and cat.box_size == BOX and cat.log_mass_threshold == pytest.approx(LN_TH)
    # Halos reach the cell edges (so the binning at the edges is exercised) and fill the cells uniformly.
    offsets = np.concatenate([
        minimum_image(c.positions - np.stack(np.unravel_index(c.halo_voxel, (N,) * 3), -1) * h, BOX) / h for c in cats
    ]).ravel()
    assert stats.kstest(offsets + 0.5, "uniform").pvalue > 1e-3
    assert np.abs(offsets).max() > 0.499


def test_same_seed_same_catalogue_other_seed_another(setup):
    forward, model, omega, theta, cats, _ = setup
    again = draw_mock_catalogue(forward, model, omega, theta, seed=SEEDS[0])
    np.testing.assert_array_equal(again.positions, cats[0].positions)
    np.testing.assert_array_equal(again.ln_mass, cats[0].ln_mass)
    assert cats[1].n_halos != cats[0].n_halos or not np.array_equal(cats[1].ln_mass, cats[0].ln_mass)


@pytest.mark.parametrize(
    "change, match",
    [
        (dict(omega="nan"), r"omega must be finite. Received: 1 non-finite"),
        (dict(omega=np.zeros((4, 4, 4))), r"omega must have shape \(8, 8, 8\)"),
        (dict(theta="nan"), r"theta must be finite"),
        (dict(theta=np.zeros(16)), r"theta must have shape \(17,\)"),
        (dict(seed=-1), r"seed must be at least 0. Received: seed=-1"),
        (dict(seed=1.5), r"seed must be an integer"),
        (dict(density_floor=0.0), r"density_floor must be positive"),
        (dict(forward="not a model"), r"forward must be an LPTForwardModel"),
    ],
)
def test_bad_input_is_refused_before_any_work(monkeypatch, change, match):
    def no_work(*args, **kwargs):
        raise AssertionError("the forward model ran before the arguments were checked")

    monkeypatch.setattr(mock_module, "_intensity", no_work)
    forward = LPTForwardModel(N, BOX)
    model = build_model(LN_TH, N, dtype="float64")
    args = dict(forward=forward, model=model, omega=white_noise(N, 1), theta=_theta(), seed=0)
    if isinstance(change.get("omega"), str):
        change["omega"] = args["omega"].copy()
        change["omega"][1, 2, 3] = np.nan
    if isinstance(change.get("theta"), str):
        change["theta"] = args["theta"].copy()
        change["theta"][3] = np.inf
    args.update(change)
    with pytest.raises(ValueError, match=match):
        draw_mock_catalogue(**args)


def test_no_halo_above_the_threshold_is_an_error():
    forward = LPTForwardModel(N, BOX)
    model = build_model(LN_TH, N, dtype="float64")
    with pytest.raises(ValueError, match=r"the mock has no halo: theta gives .* expected halos"):
        draw_mock_catalogue(forward, model, white_noise(N, 1), _theta(per_voxel=1e-9), seed=0)


def test_mock_catalogue_is_scored_by_the_posterior(setup):
    forward, model, omega, theta, cats, _ = setup
    post = FieldLevelPosterior(forward, model, cats[0])
    assert isinstance(cats[0], FieldCatalogue)
    assert np.isfinite(np.asarray(post.log_prob(post.join(omega[None], theta[None])))).all()


def _mean_score_t(forward, model, omega, theta, theta_eval, seeds):
    """Per coordinate of (white noise, bias): the t statistic of the mean over mocks of the eq. 16 score at
    ``(omega, theta_eval)``, the mocks drawn at ``(omega, theta)``."""
    from tfhalo import backend

    scores = []
    for s in seeds:
        post = FieldLevelPosterior(forward, model, draw_mock_catalogue(forward, model, omega, theta, seed=s))
        n_field = post.n_field

        def log_likelihood(state):
            return post.log_likelihood(ops.reshape(state[:, :n_field], (-1, N, N, N)), state[:, n_field:])

        state = backend.constant(np.concatenate([omega.reshape(-1), theta_eval])[None])
        _, grad = backend.value_and_gradient(log_likelihood, state)
        scores.append(backend.to_numpy(grad)[0])
    scores = np.asarray(scores, np.float64)
    return scores.mean(axis=0) / (scores.std(axis=0, ddof=1) / math.sqrt(len(seeds))), n_field


# Each mock is a new posterior, so under JAX every score is an uncompiled, op-by-op gradient of the forward
# model (minutes for the 48 here). The identity is one of the mock's and eq. 16's mathematics; the
# posterior's tests check eq. 16 against NumPy on both backends.
@pytest.mark.skipif(BACKEND == "jax", reason="one uncompiled JAX gradient per mock; the TensorFlow run checks it")
def test_the_likelihood_score_has_mean_zero_over_mocks_drawn_at_the_truth():
    """Bartlett's first identity, E_data[grad ln L(truth)] = 0, for the white noise and the bias together.

    It holds only if the mock draws exactly from the distribution eq. 16 scores (counts, masses and
    positions), so it tests their agreement beyond the per-piece tests above; a bias shifted by a fraction
    of its spread over mocks fails it.
    """
    forward, model = LPTForwardModel(N, BOX), build_model(LN_TH, N, dtype="float64")
    omega, theta = white_noise(N, 7), _theta()
    seeds = range(200, 224)
    t, n_field = _mean_score_t(forward, model, omega, theta, theta, seeds)
    t_field, t_bias = t[:n_field], t[n_field:]
    # Student t with 23 degrees of freedom per coordinate: E[t^2] = 23/21; 512 field coordinates.
    assert np.max(np.abs(t_bias)) < 4.5, t_bias
    assert np.max(np.abs(t_field)) < 5.5
    assert abs(np.mean(t_field**2) - 23 / 21) < 0.3, np.mean(t_field**2)
    # The check has power: the amplitude intercepts 0.1 off (their spread over these mocks is ~0.02).
    shifted = theta.copy()
    shifted[11:13] += 0.1
    t_off, _ = _mean_score_t(forward, model, omega, theta, shifted, seeds)
    assert np.max(np.abs(t_off[n_field:])) > 10


@pytest.mark.skipif(BACKEND == "jax", reason="a compiled fit per mock; the TensorFlow run checks the same code")
def test_bias_recovery_maximises_each_mocks_posterior_and_summarises_the_offsets():
    from tfhalo import backend
    from tfhalo.field.mock import bias_recovery

    forward, model = LPTForwardModel(N, BOX), build_model(LN_TH, N, dtype="float64")
    omega, theta = white_noise(N, 7), _theta()
    seeds = [300, 301]
    r = bias_recovery(forward, model, omega, theta, seeds, prior_scale=100.0)
    est = np.asarray(r["estimates"])
    assert est.shape == (2, 17) and all(r["converged"])
    # The first mock's fit, checked on its own posterior (one is enough; each fit is the same code).
    cat = draw_mock_catalogue(forward, model, omega, theta, seed=seeds[0])
    assert cat.positions.shape[0] == r["n_halos"][0]
    post = FieldLevelPosterior(forward, model, cat, prior_scale=100.0)
    cond = post.bias_conditional(post.log_density(ops.convert_to_tensor(omega[None])))

    def lp_and_grad(fn, t):
        value, grad = backend.value_and_gradient(fn, backend.constant(t[None]))
        return float(backend.to_numpy(value)[0]), np.asarray(backend.to_numpy(grad))[0]

    lp_hat, g_hat = lp_and_grad(cond, est[0])
    lp_true, g_true = lp_and_grad(cond, theta)
    # a maximum: above the start, and its gradient a small fraction of the start's
    assert lp_hat >= lp_true
    assert np.linalg.norm(g_hat) < 1e-3 * np.linalg.norm(g_true)
    # the recorded score is the likelihood's gradient in the bias at theta: the posterior's less the prior's
    np.testing.assert_allclose(r["scores"][0], g_true + theta / 100.0**2, rtol=1e-9, atol=1e-9)
    offsets = est - theta
    se = offsets.std(axis=0, ddof=1) / np.sqrt(2)
    np.testing.assert_allclose(r["mean_offset"], offsets.mean(axis=0), rtol=1e-12)
    np.testing.assert_allclose(r["standard_error"], se, rtol=1e-12)
    np.testing.assert_allclose(r["t"], offsets.mean(axis=0) / se, rtol=1e-12)
    s = np.asarray(r["scores"])
    np.testing.assert_allclose(r["score_t"], s.mean(axis=0) / (s.std(axis=0, ddof=1) / np.sqrt(2)), rtol=1e-12)


@pytest.mark.parametrize("kwargs, match", [
    (dict(seeds=[1]), r"seeds must hold at least 2 distinct seeds. Received: seeds=\[1\]"),
    (dict(seeds=[1, 1]), r"Received: seeds=\[1, 1\]"),
    (dict(seeds=[1, -2]), r"seeds"),
    (dict(prior_scale=0.0), r"prior_scale must be positive"),
    (dict(theta=np.full(17, np.nan)), r"theta must be finite"),
])
def test_bias_recovery_refuses_bad_input_before_any_fit(monkeypatch, kwargs, match):
    from tfhalo.field import mock as m

    def no_draw(*args, **kw):
        raise AssertionError("a mock was drawn before the arguments were checked")

    monkeypatch.setattr(m, "draw_mock_catalogue", no_draw)
    args = dict(forward=LPTForwardModel(N, BOX), model=build_model(LN_TH, N, dtype="float64"),
                omega=white_noise(N, 7), theta=_theta(), seeds=[1, 2])
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        m.bias_recovery(**args)
