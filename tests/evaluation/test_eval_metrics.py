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
