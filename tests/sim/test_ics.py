"""Initial conditions: Gaussian field statistics, seeding, 2LPT against its definition."""

import numpy as np
import pytest
import scipy.fft

from tfhalo.sim.cosmology import WMAP5
from tfhalo.sim.grid import lattice_positions, rfft_wavenumbers
from tfhalo.sim.ics import gaussian_field, lpt_displacements, lpt_positions, lpt_state, peculiar_velocity
from tfhalo.sim.mesh import cic_paint, cic_readout, power_spectrum


def test_power_spectrum_matches_colossus_times_growth():
    n, box, z = 32, 100.0, 99.0
    kf = 2 * np.pi / box
    ratios, weights = [], []
    for seed in range(6):
        delta = gaussian_field(n, box, WMAP5, seed=seed, z=z)
        k, pk, n_modes = power_spectrum(delta, box)
        keep = k < 0.5 * kf * n / 2  # below half the Nyquist frequency
        cc = WMAP5.to_colossus()
        theory = cc.matterPowerSpectrum(k[keep], 0.0) * cc.growthFactor(z) ** 2
        ratios.append(pk[keep] / theory)
        weights.append(n_modes[keep])
    mean_ratio = np.average(np.concatenate(ratios), weights=np.concatenate(weights))
    assert abs(mean_ratio - 1) < 0.05
    # and the normalisation is not degenerate: variance equals the sum of P/V over modes
    delta = gaussian_field(n, box, WMAP5, seed=0)
    assert delta.std() > 0.1


def test_same_seed_bitwise_identical_and_different_seeds_differ():
    a = gaussian_field(16, 50.0, WMAP5, seed=7)
    b = gaussian_field(16, 50.0, WMAP5, seed=7)
    c = gaussian_field(16, 50.0, WMAP5, seed=8)
    assert a.tobytes() == b.tobytes()
    assert not np.allclose(a, c)
    assert abs(a.mean()) < 1e-12  # k = 0 mode removed


def test_bad_field_arguments():
    with pytest.raises(ValueError, match="box_size must be positive. Received: box_size=-1"):
        gaussian_field(8, -1, WMAP5, seed=0)
    with pytest.raises(ValueError, match="n must be at least 2. Received: n=0"):
        gaussian_field(0, 10.0, WMAP5, seed=0)
    with pytest.raises(ValueError, match="cosmology"):
        gaussian_field(8, 10.0, "WMAP5", seed=0)


def test_first_order_displacement_divergence_is_minus_delta():
    n, box = 16, 64.0
    delta = gaussian_field(n, box, WMAP5, seed=3)
    psi1, _ = lpt_displacements(delta, box)
    # spectral divergence with the Nyquist planes removed (they are zeroed in psi1)
    kx, ky, kz = rfft_wavenumbers(n, box)
    div_k = sum(1j * k * scipy.fft.rfftn(psi1[..., d]) for d, k in enumerate((kx, ky, kz)))
    delta_k = scipy.fft.rfftn(delta)
    nyq = (np.abs(kx) == np.abs(kx).max()) | (np.abs(ky) == np.abs(ky).max()) | (kz == kz.max())
    np.testing.assert_allclose(div_k[~nyq], -delta_k[~nyq], atol=1e-9 * np.abs(delta_k).max())


def test_second_order_source_on_a_plane_wave_vanishes_and_on_two_waves_matches():
    # phi1 = A cos(k x) + B cos(k y): source phi_xx phi_yy - phi_xy^2 = A B k^4 cos(kx) cos(ky)
    n, box = 32, 2 * np.pi
    q = lattice_positions(n, box).reshape(n, n, n, 3)
    x, y = q[..., 0], q[..., 1]
    one = -np.cos(x)  # delta = lap phi1 for phi1 = cos(x)
    _, psi2 = lpt_displacements(one, box)
    assert np.abs(psi2).max() < 1e-10
    two = -np.cos(x) - np.cos(y)  # phi1 = cos x + cos y
    _, psi2 = lpt_displacements(two, box)
    # lap phi2 = cos x cos y  =>  phi2 = -cos x cos y / 2, psi2 = grad phi2
    np.testing.assert_allclose(psi2[..., 0], 0.5 * np.sin(x) * np.cos(y), atol=1e-10)
    np.testing.assert_allclose(psi2[..., 1], 0.5 * np.cos(x) * np.sin(y), atol=1e-10)
    np.testing.assert_allclose(psi2[..., 2], 0.0, atol=1e-10)


def test_lpt_positions_and_momenta_follow_growth():
    n, box = 16, 200.0
    delta0 = gaussian_field(n, box, WMAP5, seed=2)
    psi1, psi2 = lpt_displacements(delta0, box)
    a = 0.1
    x, p = lpt_state(psi1, psi2, box, WMAP5, a)
    q = lattice_positions(n, box)
    disp = x - q
    disp -= box * np.round(disp / box)
    expected = WMAP5.growth_factor(a) * psi1.reshape(-1, 3) + WMAP5.growth_factor_2(a) * psi2.reshape(-1, 3)
    np.testing.assert_allclose(disp, expected, atol=1e-9)
    assert np.all((x >= 0) & (x < box))
    # p = a^3 E dx/da, checked by finite differences of the 2LPT trajectory
    eps = 1e-6
    xp, _ = lpt_state(psi1, psi2, box, WMAP5, a + eps)
    xm, _ = lpt_state(psi1, psi2, box, WMAP5, a - eps)
    dxda = xp - xm
    dxda -= box * np.round(dxda / box)
    np.testing.assert_allclose(p, a**3 * WMAP5.hubble(a) * dxda / (2 * eps), rtol=1e-5, atol=1e-8)
    # peculiar velocity a dx/dt_phys = a^2 H(a) dx/da, H = 100 E km/s/(Mpc/h)
    v = peculiar_velocity(p, a)
    np.testing.assert_allclose(v, a**2 * 100 * WMAP5.hubble(a) * dxda / (2 * eps), rtol=1e-5, atol=1e-6)
    # lpt_positions from the field given at another redshift is the same thing
    x2 = lpt_positions(delta0 * WMAP5.growth_factor(0.01), box, WMAP5, a_from=0.01, a_to=a)
    np.testing.assert_allclose(x2, x, atol=1e-9)


def test_cic_paint_conserves_mass_and_readout_is_linear():
    rng = np.random.default_rng(0)
    pos = rng.uniform(-5, 15, (500, 3))  # outside the box too: wrapped
    w = rng.uniform(0.5, 2.0, 500)
    mesh = cic_paint(pos, 8, 10.0, weights=w)
    assert mesh.sum() == pytest.approx(w.sum(), rel=1e-12)
    # a particle on a cell position deposits only there; half-way splits in two
    m = cic_paint(np.array([[2.5, 5.0, 0.0]]), 4, 10.0)
    assert m[1, 2, 0] == pytest.approx(1.0)
    m = cic_paint(np.array([[9.999999999, 0.0, 0.0]]), 4, 10.0)
    assert m[0, 0, 0] == pytest.approx(1.0, abs=1e-8)  # periodic wrap
    # readout of a linear function (periodic-safe: interior points) is exact
    grid = np.arange(8) * 10.0 / 8
    lin = np.broadcast_to(grid[:, None, None] * 2.0 + grid[None, None, :], (8, 8, 8))
    inner = rng.uniform(0.5, 8.0, (100, 3))
    np.testing.assert_allclose(cic_readout(lin, inner, 10.0), 2 * inner[:, 0] + inner[:, 2], rtol=1e-12)
