"""Neyrinck baseline: parameter recovery and a normalised mass distribution."""

import numpy as np
import pytest
from scipy import integrate
from scipy.ndimage import gaussian_filter

from tfhalo.bias import make_bias_data
from tfhalo.bias.neyrinck import NeyrinckBias


def _draw(seed, nbar=0.4, alpha=1.5, a=0.3, eps=1.2, n=20, box=100.0):
    rng = np.random.default_rng(seed)
    g = gaussian_filter(rng.normal(size=(n, n, n)), 1.0, mode="wrap")
    rho = np.exp(0.7 * g / g.std())
    rho /= rho.mean()
    lam = nbar * rho**alpha * np.exp(-a * rho**(-eps))
    counts = rng.poisson(lam)
    vox = np.repeat(np.arange(n**3), counts.ravel())
    # Voxel i's density is the value AT grid point i: its halos lie within half a voxel of it.
    offsets = rng.uniform(-0.5, 0.5, size=(vox.size, 3))
    centres = np.mod((np.stack(np.unravel_index(vox, (n,) * 3), -1) + offsets) * box / n, box)
    masses = 1e12 * np.exp(rng.exponential(0.8, size=vox.size))
    return make_bias_data(rho, centres, masses, box, 1e12)


def test_neyrinck_recovers_known_parameters():
    data = _draw(0)
    fit = NeyrinckBias(n_starts=4, seed=1).fit(data)
    p = fit.get_params()
    assert p["Nbar"] == pytest.approx(0.4, rel=0.2)
    assert p["alpha"] == pytest.approx(1.5, abs=0.3)
    # The fitted maximum beats the truth on the data it was fitted to.
    truth = NeyrinckBias(n_starts=1)
    truth.log_mass_threshold = data.log_mass_threshold
    truth.count_params = np.array([np.log(0.4), 1.5, np.log(0.3), 1.2])
    truth.mass_params = fit.mass_params
    assert fit.log_likelihood(data) >= truth.log_likelihood(data) - 1e-6


def test_mass_distribution_is_normalised_above_threshold():
    data = _draw(1)
    fit = NeyrinckBias(n_starts=2).fit(data)
    lmt = data.log_mass_threshold
    # p(M) per unit M integrates to 1: integrate p(M) M over ln M.
    total = integrate.quad(lambda x: np.exp(fit.log_mass_pdf(x)[0] + x), lmt, lmt + 40, limit=200)[0]
    assert total == pytest.approx(1.0, rel=1e-6)


def test_unfitted_model_raises():
    with pytest.raises(RuntimeError, match="not fitted"):
        NeyrinckBias().log_likelihood(_draw(2, n=6))


def test_log_number_density_is_per_unit_volume_and_builds_the_likelihood():
    data = _draw(2)
    fit = NeyrinckBias(n_starts=2, seed=0).fit(data)
    rho = data.one_plus_delta.ravel()
    ln_n = fit.log_number_density(rho[data.halo_voxel], data.halo_ln_mass, data.voxel_volume)
    # Rate per voxel / voxel volume: a density that does not depend on the voxel size.
    np.testing.assert_allclose(np.exp(ln_n), fit.rate(rho[data.halo_voxel]) / data.voxel_volume
                               * np.exp(fit.log_mass_pdf(data.halo_ln_mass)), rtol=1e-12)
    assert fit.log_likelihood(data) == pytest.approx(ln_n.sum() - fit.rate(rho).sum(), rel=1e-12)
    with pytest.raises(ValueError, match="voxel_volume must be positive. Received: voxel_volume=0"):
        fit.log_number_density(1.0, 28.0, 0)
