"""Periodic-box and lattice helpers (tfhalo.sim.grid) against direct NumPy definitions."""

import numpy as np
import pytest
import scipy.fft

from tfhalo.sim.grid import derivative_wavenumbers, lattice_positions, minimum_image, rfft_wavenumbers, wrap_periodic


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_wrap_maps_the_round_up_of_tiny_negatives_to_zero(dtype):
    box = 10.0
    tiny = -np.finfo(dtype).eps * 0.01
    x = np.array([tiny, -box, box, 2.5 * box, -0.25 * box], dtype=dtype)
    # the roundings the guard exists for: np.mod in dtype, and float64 -> dtype
    assert np.mod(x, dtype(box))[0] == box
    assert np.mod(x.astype(np.float64), box).astype(dtype)[0] == box
    for out in (wrap_periodic(x, box, dtype=dtype), wrap_periodic(x, box, out=x.copy())):
        assert out.dtype == dtype
        np.testing.assert_array_equal(out, [0.0, 0.0, 0.0, 5.0, 7.5])
    assert wrap_periodic(x, box).dtype == np.float64


def test_wrap_is_a_periodic_image_inside_the_box_and_works_in_place():
    rng = np.random.default_rng(0)
    box = 7.3
    x = rng.uniform(-3 * box, 3 * box, (1000, 3))
    w = wrap_periodic(x, box)
    assert np.all((w >= 0) & (w < box))
    shifts = (x - w) / box
    np.testing.assert_allclose(shifts, np.round(shifts), atol=1e-12)
    y = x.copy()
    assert wrap_periodic(y, box, out=y) is y
    np.testing.assert_array_equal(y, w)


def test_minimum_image_is_the_nearest_image():
    rng = np.random.default_rng(1)
    box = 4.0
    d = rng.uniform(-10, 10, (500, 3))
    m = minimum_image(d, box)
    assert np.all(np.abs(m) <= box / 2)
    shifts = (d - m) / box
    np.testing.assert_allclose(shifts, np.round(shifts), atol=1e-12)
    # brute force over images -1, 0, 1 of the wrapped separation
    base = wrap_periodic(d, box)
    candidates = np.stack([base + k * box for k in (-1, 0, 1)])
    np.testing.assert_allclose(np.abs(m), np.abs(candidates).min(axis=0), atol=1e-12)
    np.testing.assert_array_equal(minimum_image(-d, box), -m)  # odd (no separation at exactly L/2 here)


def test_lattice_positions_are_sites_times_spacing_in_c_order():
    n, box = 5, 12.5
    q = lattice_positions(n, box)
    sites = np.stack(np.unravel_index(np.arange(n**3), (n,) * 3), axis=-1)
    np.testing.assert_array_equal(q, sites * (box / n))
    assert lattice_positions(n, box, np.float32).dtype == np.float32


@pytest.mark.parametrize("n", [6, 7])
def test_wavenumbers_match_scipy_frequencies(n):
    box = 3.0
    kx, ky, kz = rfft_wavenumbers(n, box)
    k = 2 * np.pi * scipy.fft.fftfreq(n, d=box / n)
    np.testing.assert_allclose(kx.ravel(), k, rtol=1e-15, atol=1e-15)
    np.testing.assert_allclose(ky.ravel(), k, rtol=1e-15, atol=1e-15)
    np.testing.assert_allclose(kz.ravel(), 2 * np.pi * scipy.fft.rfftfreq(n, d=box / n), rtol=1e-15, atol=1e-15)
    assert (kx.shape, ky.shape, kz.shape) == ((n, 1, 1), (1, n, 1), (1, 1, n // 2 + 1))


@pytest.mark.parametrize("n", [8, 9])
def test_derivative_wavenumbers_differentiate_exactly_and_drop_nyquist(n):
    box = 5.0
    x = np.arange(n) * box / n
    X, Y, Z = np.meshgrid(x, x, x, indexing="ij")
    m = 2
    field = np.sin(2 * np.pi * m * X / box) + np.cos(2 * np.pi * m * Z / box)
    fk = scipy.fft.rfftn(field)
    kx, _, kz = derivative_wavenumbers(n, box)
    ddx = scipy.fft.irfftn(1j * kx * fk, s=field.shape)
    ddz = scipy.fft.irfftn(1j * kz * fk, s=field.shape)
    w = 2 * np.pi * m / box
    np.testing.assert_allclose(ddx, w * np.cos(w * X), atol=1e-12)
    np.testing.assert_allclose(ddz, -w * np.sin(w * Z), atol=1e-12)
    if n % 2 == 0:
        # (-1)^i is the Nyquist mode alone: its derivative is dropped, the plain wave vectors keep it.
        nyquist = np.cos(np.pi * n * X / box)
        dn = scipy.fft.irfftn(1j * kx * scipy.fft.rfftn(nyquist), s=field.shape)
        np.testing.assert_array_equal(dn, 0.0)
        assert rfft_wavenumbers(n, box)[0][n // 2].item() == -np.pi * n / box


def test_fft_wavenumber_magnitude_matches_numpy_and_pairs_conjugate_modes():
    from tfhalo.sim.grid import fft_wavenumber_magnitude

    n, box = 6, 30.0
    k1 = 2 * np.pi * np.fft.fftfreq(n, d=box / n)
    kx, ky, kz = np.meshgrid(k1, k1, k1, indexing="ij")
    got = fft_wavenumber_magnitude(n, box)
    np.testing.assert_allclose(got, np.sqrt(kx**2 + ky**2 + kz**2), rtol=1e-14)
    assert got[0, 0, 0] == 0.0
    partner = np.roll(np.flip(got, axis=(0, 1, 2)), 1, axis=(0, 1, 2))   # index -i mod n
    np.testing.assert_array_equal(got, partner)
