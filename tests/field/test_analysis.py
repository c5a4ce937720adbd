"""Field-level posterior summaries (tfhalo.field.analysis): exact identities and seeded statistics."""

import numpy as np
import pytest

from tfhalo.field import analysis as fa


def _noise(shape, seed=0):
    return np.random.default_rng(seed).standard_normal(shape)


def test_k_bins_exclude_mean_and_nyquist_and_pair_modes():
    bins = fa.k_bins(8, 40.0)
    idx = bins.index
    assert idx[0, 0, 0] == -1
    assert np.all(idx[4] == -1) and np.all(idx[:, 4] == -1) and np.all(idx[:, :, 4] == -1)
    # k and -k share a bin (a real field's conjugate pair)
    neg = np.roll(np.flip(idx, axis=(0, 1, 2)), 1, axis=(0, 1, 2))
    assert np.array_equal(idx, neg)
    assert bins.n_modes.sum() == np.sum(idx >= 0)
    assert np.all(np.diff(bins.centres) > 0)
    assert np.all((bins.centres >= bins.edges[:-1]) & (bins.centres <= bins.edges[1:]))


def test_hartley_coefficients_match_keras_transform_and_are_orthonormal():
    from keras import ops

    from tfhalo.field.fft import hartley3

    x = _noise((3, 6, 6, 6))
    u = fa.hartley_coefficients(x)
    np.testing.assert_allclose(u, np.asarray(ops.convert_to_numpy(hartley3(x))), atol=1e-12)
    np.testing.assert_allclose(np.sum(u**2, axis=(1, 2, 3)), np.sum(x**2, axis=(1, 2, 3)), rtol=1e-12)
    np.testing.assert_allclose(fa.hartley_coefficients(u), x, atol=1e-12)


def test_binned_power_of_a_single_mode_is_exact():
    n, box = 8, 20.0
    bins = fa.k_bins(n, box)
    q = np.arange(n) * box / n
    kf = 2 * np.pi / box
    x = np.cos(2 * kf * q)[:, None, None] * np.ones((n, n, n))   # mode (+-2, 0, 0), amplitude 1
    p = fa.binned_power(x, bins)[0]
    b = bins.index[2, 0, 0]
    # |delta_k|^2 = (N/2)^2 at two modes: P = V (N/2)^2 * 2 / N^2 / n_modes(bin)
    expected = box**3 * 2 * 0.25 / bins.n_modes[b]
    np.testing.assert_allclose(p[b], expected, rtol=1e-12)
    assert np.allclose(np.delete(p, b), 0.0, atol=1e-20)


def test_binned_power_of_white_noise_is_flat_within_its_sampling_error():
    n, box, d = 8, 16.0, 40
    bins = fa.k_bins(n, box)
    p = fa.binned_power(_noise((d, n, n, n), seed=3), bins).mean(axis=0)
    expected = box**3 / n**3
    sd = expected * np.sqrt(2.0 / (bins.n_modes * d))
    assert np.all(np.abs(p - expected) < 4 * sd)


def test_cross_correlation_identities():
    n, box = 8, 30.0
    bins = fa.k_bins(n, box)
    a = _noise((n, n, n), 1)
    np.testing.assert_allclose(fa.cross_correlation(a, a, bins), 1.0, atol=1e-12)
    np.testing.assert_allclose(fa.cross_correlation(a, -2.5 * a, bins), -1.0, atol=1e-12)
    r = fa.cross_correlation(a, _noise((n, n, n), 2), bins)
    assert np.all(np.abs(r) < 1.0)


def test_k_at_correlation_interpolates():
    assert fa.k_at_correlation([0.1, 0.2, 0.3], [0.9, 0.7, 0.3], 0.5) == pytest.approx(0.25)
    assert fa.k_at_correlation([0.1, 0.2], [0.9, 0.8], 0.5) is None
    assert fa.k_at_correlation([0.1, 0.2], [0.4, 0.8], 0.5) == pytest.approx(0.1)


def test_coverage_is_nominal_for_draws_from_the_truths_distribution():
    n, box, d = 8, 20.0, 400
    bins = fa.k_bins(n, box, n_bins=3)
    draws = _noise((d, n, n, n), 5)
    truth = _noise((n, n, n), 6)
    cover = fa.coverage(draws, truth, bins, levels=(0.68, 0.95))
    assert cover["n_draws"] == d and cover["n_chains"] == 1
    for level, v in cover["levels"].items():
        # quantiles of 400 draws add a little spread; 4 standard errors keep a seeded check robust
        assert np.all(np.abs(np.asarray(v["z"])) < 4.0), (level, v)
        assert np.all(np.abs(np.asarray(v["z_expected"])) < 4.0), (level, v)
        # independent draws: the order-statistics expectation, level (D - 1) / (D + 1), to ESS noise
        np.testing.assert_allclose(v["expected"], float(level) * (d - 1) / (d + 1), atol=0.01)
    # the truth at the draws' median is always inside, far out never
    med = np.median(draws, axis=0)
    assert all(np.allclose(v["fraction"], 1.0) for v in fa.coverage(draws, med, bins)["levels"].values())
    assert all(np.allclose(v["fraction"], 0.0) for v in fa.coverage(draws, med + 100, bins)["levels"].values())


def _ar1_chains(rng, chains, draws, modes, rho):
    x = np.empty((chains, draws, modes))
    x[:, 0] = rng.standard_normal((chains, modes))
    for t in range(1, draws):
        x[:, t] = rho * x[:, t - 1] + np.sqrt(1 - rho**2) * rng.standard_normal((chains, modes))
    return x


def test_expected_coverage_of_independent_draws_is_the_order_statistics_mean():
    # D independent draws of the right posterior: E[coverage] = level (D - 1) / (D + 1) exactly.
    x = np.random.default_rng(3).standard_normal((2, 60, 1500))
    for level in (0.68, 0.95):
        e = fa.expected_coverage(x, level)
        assert e.shape == (1500,) and np.all((e >= 0) & (e <= level))
        assert abs(e.mean() - level * 119 / 121) < 0.004, (level, e.mean())


def test_expected_coverage_predicts_what_autocorrelated_exact_chains_give():
    # Exact but autocorrelated chains (stationary AR(1), the truth a fresh draw of the same
    # posterior): their intervals hold the truth less often than nominal, by far more than the
    # binomial error of 2,000 modes, and as often as the expectation says.
    rng = np.random.default_rng(0)
    x = _ar1_chains(rng, 2, 50, 2000, 0.7)
    truth = rng.standard_normal(2000)
    for level in (0.68, 0.95):
        lo, hi = np.quantile(x.reshape(-1, 2000), [(1 - level) / 2, (1 + level) / 2], axis=0)
        frac = np.mean((truth >= lo) & (truth <= hi))
        e = fa.expected_coverage(x, level)
        z_expected = (frac - e.mean()) / np.sqrt(np.mean(e * (1 - e)) / 2000)
        assert abs(z_expected) < 3.0, (level, frac, e.mean())
        # below the independent draws' expectation too: the correlation matters, not only D
        assert e.mean() < level * 99 / 101 - 0.005, (level, e.mean())
    assert (frac - 0.95) / np.sqrt(0.95 * 0.05 / 2000) < -4.0


def test_coverage_splits_draws_into_chains_and_refuses_a_bad_count():
    n, box = 4, 10.0
    bins = fa.k_bins(n, box)
    rng = np.random.default_rng(1)
    chains = rng.standard_normal((40, 2, n, n, n))                  # (S, C, ...): draw-major
    truth = rng.standard_normal((n, n, n))
    one = fa.coverage(chains.reshape(-1, n, n, n), truth, bins, n_chains=2)
    assert one["n_chains"] == 2 and one["n_draws"] == 80
    # the fractions do not depend on the chains; the expectation's ESS does (a per-chain split)
    pooled = fa.coverage(chains.reshape(-1, n, n, n), truth, bins)
    for level in one["levels"]:
        assert one["levels"][level]["fraction"] == pooled["levels"][level]["fraction"]
    with pytest.raises(ValueError, match="n_chains"):
        fa.coverage(chains.reshape(-1, n, n, n), truth, bins, n_chains=3)
    with pytest.raises(ValueError, match="n_chains"):
        fa.coverage(chains.reshape(-1, n, n, n), truth, bins, n_chains=40)
    with pytest.raises(ValueError, match=r"chain_draws must be finite.*60 non-finite of 60 values, "
                                         r"first chain_draws\[0, 0, 0\]=nan"):
        fa.expected_coverage(np.full((2, 10, 3), np.nan), 0.68)
    with pytest.raises(ValueError, match="level"):
        fa.expected_coverage(rng.standard_normal((2, 10, 3)), 1.0)


def test_the_expectation_from_a_subset_of_each_bins_modes_is_the_bins_average(monkeypatch):
    n, box = 8, 20.0
    bins = fa.k_bins(n, box, n_bins=2)
    rng = np.random.default_rng(4)
    draws, truth = rng.standard_normal((60, n, n, n)), rng.standard_normal((n, n, n))
    full = fa.coverage(draws, truth, bins, n_chains=2)
    monkeypatch.setattr(fa, "MAX_MODES_FOR_EXPECTATION", 48)
    part = fa.coverage(draws, truth, bins, n_chains=2)
    assert min(bins.n_modes) > 48
    for level in full["levels"]:
        a, b = full["levels"][level], part["levels"][level]
        assert a["fraction"] == b["fraction"] and a["expected"] != b["expected"]
        np.testing.assert_allclose(b["expected"], a["expected"], atol=0.01)


def test_cosmic_variance_band():
    lo, hi = fa.cosmic_variance_band([2.0, 4.0], [2, 8])
    np.testing.assert_allclose(lo, [0.0, 2.0])
    np.testing.assert_allclose(hi, [4.0, 6.0])


@pytest.mark.parametrize("bad", [np.ones((4, 4)), np.full((4, 4, 4), np.nan), np.ones((2, 4, 4, 5))])
def test_bad_fields_are_refused(bad):
    with pytest.raises(ValueError, match="fields"):
        fa.hartley_coefficients(bad)


def test_bad_bins_and_levels_are_refused():
    with pytest.raises(ValueError, match="box_size"):
        fa.k_bins(8, -1.0)
    with pytest.raises(ValueError, match="n"):
        fa.k_bins(1, 10.0)
    bins = fa.k_bins(4, 10.0)
    with pytest.raises(ValueError, match="levels"):
        fa.coverage(_noise((30, 4, 4, 4)), _noise((4, 4, 4)), bins, levels=(1.5,))
    with pytest.raises(ValueError, match="20 draws"):
        fa.coverage(_noise((5, 4, 4, 4)), _noise((4, 4, 4)), bins)
