import numpy as np
import pytest
from scipy.stats import pearsonr

from tfhalo.evaluation import (gaussian_kl, kl_divergence, mass_bin_masks, pearson_r, radial_masks,
                               residual_kde, residuals)


@pytest.mark.parametrize("mu_p,s_p,mu_q,s_q", [(0.0, 0.3, 0.2, 0.4), (0.1, 0.25, -0.1, 0.25), (0.0, 0.5, 0.0, 0.2)])
def test_kl_of_two_gaussians_matches_closed_form(mu_p, s_p, mu_q, s_q):
    rng = np.random.default_rng(0)
    p = rng.normal(mu_p, s_p, 20000)
    q = rng.normal(mu_q, s_q, 20000)
    # a Gaussian KDE of a Gaussian sample is that Gaussian convolved with the kernel (std 0.1)
    expected = gaussian_kl(mu_p, np.hypot(s_p, 0.1), mu_q, np.hypot(s_q, 0.1))
    assert kl_divergence(p, q) == pytest.approx(expected, abs=0.01 + 0.05 * expected)


def test_kl_is_zero_for_identical_and_kernel_has_bandwidth_01():
    x = np.random.default_rng(1).normal(0, 0.7, 3000)
    assert kl_divergence(x, x) == pytest.approx(0.0, abs=1e-12)
    assert np.sqrt(residual_kde(x).covariance[0, 0]) == pytest.approx(0.1, rel=1e-12)


def test_pearson_and_residuals():
    rng = np.random.default_rng(2)
    t = rng.uniform(11, 13.4, 500)
    p = t + rng.normal(0, 0.3, 500)
    assert pearson_r(p, t) == pytest.approx(pearsonr(p, t).statistic, rel=1e-12)
    np.testing.assert_allclose(residuals(p, t), np.log10(10**p / 10**t), atol=1e-10)
    with pytest.raises(ValueError, match="same length"):
        residuals(p, t[:3])


def test_radial_and_mass_masks_follow_definitions():
    r = np.array([0.0, 0.1, 0.2, 0.3, 0.4, 0.6, 0.7, 0.8, 5.0, np.nan])
    m = radial_masks(r)
    np.testing.assert_array_equal(np.flatnonzero(m["inner"]), [1, 2])
    np.testing.assert_array_equal(np.flatnonzero(m["mid"]), [4, 5])
    np.testing.assert_array_equal(np.flatnonzero(m["outskirts"]), [7, 8])
    lm = np.array([11.0, 11.5, 12.0, 13.0])
    masks = mass_bin_masks(lm, [11.0, 12.0, 13.0])
    np.testing.assert_array_equal(masks[0], [True, True, False, False])
    np.testing.assert_array_equal(masks[1], [False, False, True, True])  # last bin closed


def test_non_finite_residuals_are_reported_as_such():
    x = np.random.default_rng(1).normal(0, 0.3, 100)
    x[[3, 7]] = np.nan
    x[9] = np.inf
    with pytest.raises(ValueError, match=r"residuals must be finite. Received: 2 NaN and 1 infinite"):
        residual_kde(x)
    with pytest.raises(ValueError, match=r"2 NaN"):
        kl_divergence(x, np.random.default_rng(2).normal(0, 0.3, 100))


def test_argument_errors_name_argument_and_value():
    from tfhalo.evaluation import GBTBaseline, random_predictions

    rng = np.random.default_rng(0)
    p, q = rng.normal(0, 0.3, 200), rng.normal(0.5, 0.3, 200)
    with pytest.raises(ValueError, match=r"n_grid must be at least 3. Received: n_grid=1"):
        kl_divergence(p, q, n_grid=1)
    with pytest.raises(ValueError, match=r"n must be at least 0. Received: n=-3"):
        random_predictions(-3, (11, 13))
    with pytest.raises(ValueError, match=r"radii must be .*Received: radii=\[-1.0\]"):
        GBTBaseline([-1.0])


def test_bootstrap_interval_of_a_mean_is_its_standard_error():
    from tfhalo.evaluation.metrics import bootstrap_interval

    x = np.random.default_rng(3).normal(2.0, 1.5, 400)
    se = x.std() / np.sqrt(x.size)  # the bootstrap's own (plug-in) standard error of the mean
    n_boot = 4000
    lo, hi = bootstrap_interval(np.mean, x, n_boot=n_boot, seed=0)
    # The mean of 400 draws is Gaussian to high accuracy, so the 68% interval is mean -+ se; the
    # percentiles of n_boot replicates scatter by ~sqrt(0.16 * 0.84 / n_boot) / phi(1) = 0.024 se.
    tol = 5 * np.sqrt(0.16 * 0.84 / n_boot) / 0.242 * se
    assert (hi - lo) / 2 == pytest.approx(se, abs=tol)
    assert (hi + lo) / 2 == pytest.approx(x.mean(), abs=tol)
    wide = bootstrap_interval(np.mean, x, n_boot=n_boot, seed=0, level=0.95)
    assert (wide[1] - wide[0]) / 2 == pytest.approx(1.96 * se, abs=2 * tol)


def test_bootstrap_is_paired_reproducible_and_batched_equals_looped():
    from tfhalo.evaluation.metrics import bootstrap_interval

    rng = np.random.default_rng(4)
    t = rng.normal(size=300)
    p = t + rng.normal(0, 0.5, 300)
    a = bootstrap_interval(pearson_r, p, t, n_boot=200, seed=7)
    assert a == bootstrap_interval(pearson_r, p, t, n_boot=200, seed=7)
    assert a != bootstrap_interval(pearson_r, p, t, n_boot=200, seed=8)
    assert a[0] < pearson_r(p, t) < a[1]
    # Pairs are drawn together: the statistic of (x, x) stays exactly 1 in every replicate.
    assert bootstrap_interval(lambda u, v: float(np.all(u == v)), p, p, n_boot=50) == (1.0, 1.0)
    looped = bootstrap_interval(np.mean, p, n_boot=300, seed=2)
    batched = bootstrap_interval(lambda x, weights: weights @ x / weights.sum(axis=1), p, n_boot=300, seed=2,
                                 batched=True)
    np.testing.assert_allclose(batched, looped, rtol=1e-12)


@pytest.mark.parametrize("kwargs,match", [
    (dict(n_boot=1), r"n_boot must be at least 2. Received: n_boot=1"),
    (dict(level=1.5), r"level must lie in \(0, 1\). Received: level=1.5"),
    (dict(seed=-2), r"seed must be at least 0. Received: seed=-2"),
])
def test_bootstrap_bad_arguments(kwargs, match):
    from tfhalo.evaluation.metrics import bootstrap_interval

    with pytest.raises(ValueError, match=match):
        bootstrap_interval(np.mean, np.arange(10.0), **kwargs)
    with pytest.raises(ValueError, match=r"one common length >= 2. Received: lengths \[10, 9\]"):
        bootstrap_interval(pearson_r, np.arange(10.0), np.arange(9.0))


def test_weighted_kl_equals_kl_of_the_repeated_samples():
    rng = np.random.default_rng(5)
    p, q = rng.normal(0, 0.3, 400), rng.normal(0.2, 0.5, 400)
    # An isolated point whose weight is 0 in the replicate: the far tail must not underflow to log 0.
    p[0], q[0] = -2.9, 2.9
    counts = rng.integers(0, 3, size=(3, 400)).astype(float)
    counts[:, 0] = [0, 1, 2]
    got = kl_divergence(p, q, weights=counts)
    assert got.shape == (3,)
    for b in range(3):
        reps = counts[b].astype(int)
        assert got[b] == pytest.approx(kl_divergence(np.repeat(p, reps), np.repeat(q, reps)), rel=1e-9, abs=1e-12)
    assert kl_divergence(p, q, weights=np.ones(400)) == pytest.approx(kl_divergence(p, q), rel=1e-10)
    with pytest.raises(ValueError, match=r"weights must have shape \(n,\) or \(B, n\) with n=400"):
        kl_divergence(p, q, weights=np.ones(399))
    with pytest.raises(ValueError, match=r"positive sum"):
        kl_divergence(p, q, weights=np.zeros((1, 400)))


def test_weighted_kde_far_tail_does_not_underflow():
    from tfhalo.evaluation.metrics import weighted_kde_logpdf

    rng = np.random.default_rng(6)
    x = np.concatenate([[-2.99], rng.normal(1.0, 0.05, 50)])
    w = np.ones((2, x.size))
    w[1, 0] = 0.0  # drop the isolated point: at -3 the rest lies 38 kernel widths away, exp(-740) < tiny
    grid = np.array([-3.0, -1.0, 1.0])
    got = weighted_kde_logpdf(x, w, grid)
    np.testing.assert_allclose(got[0], residual_kde(x).logpdf(grid), rtol=1e-10)
    np.testing.assert_allclose(got[1], residual_kde(x[1:]).logpdf(grid), rtol=1e-10)
    assert got[1, 0] < -700 and np.isfinite(got[1, 0])


def test_median_bias_correction_keeps_the_spread_and_holds_the_estimate():
    from tfhalo.evaluation.metrics import bootstrap_interval

    x = np.random.default_rng(9).normal(size=200)
    # The maximum of a resample never exceeds the sample's: the plain interval lies below the estimate.
    plain = bootstrap_interval(np.max, x, n_boot=300, seed=1)
    moved = bootstrap_interval(np.max, x, n_boot=300, seed=1, median_bias_correct=True)
    assert plain[1] <= x.max() and plain[0] < x.max()
    assert moved[0] <= x.max() <= moved[1]
    assert moved[1] - moved[0] == pytest.approx(plain[1] - plain[0], rel=1e-12)
    # The shift is the estimate minus the replicates' median, for batched statistics too.
    batched = bootstrap_interval(lambda u, weights: weights @ u / weights.sum(axis=1), x, n_boot=300, seed=1,
                                 batched=True, median_bias_correct=True)
    looped = bootstrap_interval(np.mean, x, n_boot=300, seed=1, median_bias_correct=True)
    np.testing.assert_allclose(batched, looped, rtol=1e-12)
