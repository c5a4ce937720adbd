"""LPTForwardModel, cic_paint and truncate_white_noise against tfhalo.sim (NumPy float64).

Runs on the TensorFlow and JAX backends; float64 on JAX is switched on by tests/field/conftest.py.
"""

import json
import warnings

import keras
import numpy as np
import pytest

from tests.helpers.backend import BACKEND, gradient, to_numpy
from tfhalo.bias.fields import DEFAULT_DENSITY_FLOOR
from tfhalo.field.forward import LPTForwardModel, cic_paint, linear_amplitude, truncate_white_noise
from tfhalo.sim import mesh
from tfhalo.sim.cosmology import WMAP5, Cosmology
from tfhalo.sim.grid import lattice_positions, minimum_image
from tfhalo.sim.ics import gaussian_field, lpt_displacements, lpt_state, white_noise

L = 32.0  # 4 Mpc/h voxels on 8^3, as the paper's


def _noise(n, seeds):
    return np.stack([white_noise(n, s) for s in seeds])


def _compile(fn):
    """``fn`` jit-compiled on JAX (its op-by-op first calls are slow); as is on TensorFlow (eager)."""
    if BACKEND == "jax":
        import jax

        return jax.jit(fn)
    return fn


def _rel(a, b):
    return np.abs(a - b).max() / np.abs(b).max()


# ------------------------------------------------------------ against tfhalo.sim
@pytest.mark.parametrize("n", [8, 9])
def test_linear_field_and_displacements_match_sim(n):
    seeds = (11, 12)
    model = LPTForwardModel(n, L)
    delta = to_numpy(_compile(model.linear_field)(_noise(n, seeds)))
    psi1, psi2 = (to_numpy(p) for p in _compile(model.displacements)(delta))
    assert delta.shape == (2, n, n, n) and psi1.shape == psi2.shape == (2, n, n, n, 3)
    for b, seed in enumerate(seeds):
        want = gaussian_field(n, L, WMAP5, seed)
        assert _rel(delta[b], want) < 1e-6
        w1, w2 = lpt_displacements(want, L)
        assert _rel(psi1[b], w1) < 1e-6
        assert _rel(psi2[b], w2) < 1e-6
        assert np.abs(w2).max() > 1e-3 * np.abs(w1).max()  # the second order is really there


@pytest.mark.parametrize("a", [1.0, 0.5])
def test_positions_and_density_match_sim(a):
    n, seeds = 8, (3, 4)
    model = LPTForwardModel(n, L, a=a)
    out = _compile(model)(_noise(n, seeds))
    x, rho = to_numpy(out["positions"]), to_numpy(out["density"])
    assert x.shape == (2, n**3, 3) and rho.shape == (2, n, n, n)
    assert x.min() >= 0.0 and x.max() < L
    for b, seed in enumerate(seeds):
        psi1, psi2 = lpt_displacements(gaussian_field(n, L, WMAP5, seed), L)
        want = lpt_state(psi1, psi2, L, WMAP5, a)[0]
        assert np.abs(minimum_image(x[b] - want, L)).max() < 1e-6 * L
        painted = mesh.cic_paint(want, n, L)
        np.testing.assert_allclose(rho[b], painted / painted.mean(), rtol=0, atol=1e-9)
        np.testing.assert_allclose(rho[b].mean(), 1.0, rtol=1e-12)


def test_first_order_is_zeldovich():
    n, seed = 8, 5
    model = LPTForwardModel(n, L, order=1, a=0.8)
    omega = _noise(n, (seed,))
    psi1, psi2 = (to_numpy(p) for p in _compile(lambda om: model.displacements(model.linear_field(om)))(omega))
    assert not psi2.any()
    w1, _ = lpt_displacements(gaussian_field(n, L, WMAP5, seed), L)
    q = lattice_positions(n, L)
    want = q + WMAP5.growth_factor(0.8) * w1.reshape(-1, 3)
    x = to_numpy(_compile(model.positions)(omega))[0]
    assert np.abs(minimum_image(x - want, L)).max() < 1e-6 * L
    assert np.abs(minimum_image(x - q, L)).max() > 0.1  # particles did move


def test_float32_model_agrees_with_float64():
    n = 8
    omega = _noise(n, (21,))
    rho64 = to_numpy(_compile(LPTForwardModel(n, L).density)(omega))
    out32 = _compile(LPTForwardModel(n, L, dtype="float32").density)(omega.astype(np.float32))
    assert "float32" in str(out32.dtype)
    np.testing.assert_allclose(to_numpy(out32), rho64, rtol=0, atol=1e-4 * np.abs(rho64).max())


def test_linear_amplitude_gives_the_power_spectrum():
    n = 8
    amp = linear_amplitude(n, L, WMAP5)
    assert amp.shape == (n, n, n // 2 + 1) and amp[0, 0, 0] == 0.0
    kf = 2 * np.pi / L
    # mode (1, 0, 0): <|delta_k|^2> = amp^2 <|omega_k|^2> = amp^2 n^3 must equal P(k) n^6 / V
    np.testing.assert_allclose(amp[1, 0, 0] ** 2 * n**3, WMAP5.linear_power(kf) * n**6 / L**3, rtol=1e-5)


# ------------------------------------------------------------------------- CIC
def test_cic_paint_matches_sim_and_conserves_mass():
    n, count = 8, 300
    rng = np.random.default_rng(7)
    pos = rng.uniform(0, L, (2, count, 3))
    # on the box faces, a hair inside and outside, and whole periods away: all wrap
    pos[0, :8] = [[0, 0, 0], [L, L, L], [-1e-13, 5.0, L - 1e-13], [L + 0.3, -0.7, 2 * L + 1.1],
                  [L / n, 2 * L / n, 0.5 * L], [1e-12, L - 1e-12, 3 * L / n], [-L, 0.0, L * 1.5], [31.99, 0.01, 16.0]]
    got = to_numpy(cic_paint(keras.ops.convert_to_tensor(pos, dtype="float64"), n, L))
    assert got.shape == (2, n, n, n)
    for b in range(2):
        np.testing.assert_allclose(got[b], mesh.cic_paint(pos[b], n, L), rtol=0, atol=1e-12)
        np.testing.assert_allclose(got[b].sum(), count, rtol=1e-13)
    # unbatched (N, 3) paints the same mesh
    np.testing.assert_allclose(to_numpy(cic_paint(pos[1], n, L)), got[1], rtol=0, atol=1e-13)


def test_cic_paint_float32_conserves_mass():
    pos = np.random.default_rng(8).uniform(-5.0, 40.0, (3, 200, 3)).astype(np.float32)
    got = cic_paint(keras.ops.convert_to_tensor(pos), 6, L)
    assert "float32" in str(got.dtype)
    np.testing.assert_allclose(to_numpy(got).sum(axis=(1, 2, 3)), 200.0, rtol=1e-5)


# -------------------------------------------------------------------- gradient
def _cells(positions, model, omega):
    """Integer CIC cell of every particle: the pieces on which the density is smooth."""
    x = to_numpy(positions(keras.ops.convert_to_tensor(omega, dtype="float64")))
    return np.floor(x * (model.n_grid / model.box_size)).astype(np.int64)


def test_gradient_of_log_density_matches_finite_differences():
    n, floor = 8, DEFAULT_DENSITY_FLOOR
    model = LPTForwardModel(n, L)
    omega = _noise(n, (31, 32))
    weights = np.random.default_rng(3).normal(size=omega.shape)
    w = keras.ops.convert_to_tensor(weights, dtype="float64")

    def objective(om):
        rho = model.density(om)
        return keras.ops.sum(w * keras.ops.log(keras.ops.maximum(rho, floor)))

    compiled, positions = _compile(objective), _compile(model.positions)

    def value(om):
        return float(keras.ops.convert_to_numpy(compiled(keras.ops.convert_to_tensor(om, dtype="float64"))))

    grad = gradient(objective, omega, jit=True)
    assert grad.shape == omega.shape and np.isfinite(grad).all()
    rng = np.random.default_rng(4)
    base_cells = _cells(positions, model, omega)
    step, checked = 1e-5, 0
    for flat in rng.choice(omega.size, size=7, replace=False):
        idx = np.unravel_index(flat, omega.shape)
        plus, minus = omega.copy(), omega.copy()
        plus[idx] += step
        minus[idx] -= step
        # skip a coordinate whose step moves a particle across a cell face (a kink of CIC)
        if not all(np.array_equal(_cells(positions, model, om), base_cells) for om in (plus, minus)):
            continue
        fd = (value(plus) - value(minus)) / (2 * step)
        np.testing.assert_allclose(grad[idx], fd, rtol=1e-5, atol=1e-7 * np.abs(grad).max())
        checked += 1
    assert checked >= 4
    # batch elements are independent: a function of element 0 alone has no gradient on element 1
    only_first = gradient(lambda om: keras.ops.sum(w[0] * model.density(om)[0] ** 2), omega)
    assert np.abs(only_first[0]).max() > 0 and not only_first[1].any()


# ----------------------------------------------------------- truncated noise
def test_truncated_noise_gives_the_truncated_linear_field():
    big, n = 16, 8
    omega_hi = white_noise(big, 41)
    omega = truncate_white_noise(omega_hi, n)
    assert omega.shape == (n, n, n) and omega.dtype == np.float64
    # reference: the hi-res linear field with its modes |k_i| >= n/2 removed, sampled at the coarse sites
    freq = np.abs(np.fft.fftfreq(big, d=1.0 / big))
    zfreq = np.arange(big // 2 + 1)
    mask = (freq[:, None, None] < n / 2) & (freq[None, :, None] < n / 2) & (zfreq[None, None, :] < n / 2)
    spec = np.fft.rfftn(omega_hi) * linear_amplitude(big, L) * mask
    step = big // n
    want = np.fft.irfftn(spec, s=(big,) * 3, axes=(0, 1, 2))[::step, ::step, ::step]
    got = to_numpy(_compile(LPTForwardModel(n, L).linear_field)(omega[None]))[0]
    assert _rel(got, want) < 1e-6


def test_truncated_noise_is_white_on_the_kept_modes():
    big, n = 16, 8
    keep = np.abs(np.fft.fftfreq(n, d=1.0 / n)) < n / 2
    kept = keep[:, None, None] & keep[None, :, None] & keep[None, None, :]
    chi2 = 0.0
    for seed in range(4):
        omega_hi = white_noise(big, seed)
        omega = truncate_white_noise(omega_hi, n)
        f_lo, f_hi = np.fft.fftn(omega), np.fft.fftn(omega_hi)
        rows = np.mod(np.round(np.fft.fftfreq(n, d=1.0 / n)).astype(int), big)
        # Parseval, exactly: the coarse field carries the kept hi-res modes' power and nothing else
        np.testing.assert_allclose(
            (omega**2).sum(), (np.abs(f_hi[np.ix_(rows, rows, rows)][kept]) ** 2).sum() / big**3, rtol=1e-12
        )
        assert np.abs(f_lo[~kept]).max() < 1e-12
        chi2 += (omega**2).sum()
    # omega is unit white noise projected on the kept modes: sum omega^2 ~ chi^2 with 4 (n-1)^3 dof
    dof = 4 * int(kept.sum())
    assert abs(chi2 - dof) < 5 * np.sqrt(2 * dof)


# ------------------------------------------------------------------ bad input
@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_grid=2.5), "n_grid must be an integer"),
        (dict(n_grid=1), "n_grid must be at least 2"),
        (dict(box_size=-1.0), "box_size must be positive"),
        (dict(box_size=float("inf")), "box_size must be a finite number"),
        (dict(order=3), r"order must be one of \(1, 2\)"),
        (dict(a=0.0), r"a must be in \(0, 1.5\]"),
        (dict(a=2.0), r"a must be in \(0, 1.5\]"),
        (dict(dtype="float16"), "dtype must be one of"),
        (dict(cosmology="WMAP5"), "cosmology must be a tfhalo Cosmology"),
    ],
)
def test_bad_model_arguments_are_named(kwargs, match):
    args = dict(n_grid=8, box_size=L) | kwargs
    with pytest.raises(ValueError, match=match):
        LPTForwardModel(**args)


def test_wrong_omega_shape_is_named():
    model = LPTForwardModel(8, L)
    with pytest.raises(ValueError, match=r"omega must have shape \(B, 8, 8, 8\).*\(1, 8, 8, 9\)"):
        model.density(np.zeros((1, 8, 8, 9)))
    with pytest.raises(ValueError, match="omega must have shape"):
        model.linear_field(np.zeros((8, 8, 8)))
    with pytest.raises(ValueError, match="delta_lin must have shape"):
        model.displacements(np.zeros((1, 4, 4, 4)))
    with pytest.raises(ValueError, match="positions must have shape"):
        cic_paint(np.zeros((2, 5, 2)), 8, L)


def test_truncate_white_noise_refuses_bad_input():
    omega = white_noise(8, 0)
    bad = omega.copy()
    bad[1, 2, 3] = np.nan
    with pytest.raises(ValueError, match=r"omega_hi must be finite.*omega_hi\[1, 2, 3\]=nan"):
        truncate_white_noise(bad, 4)
    with pytest.raises(ValueError, match="n_grid must divide the side of omega_hi"):
        truncate_white_noise(omega, 3)
    with pytest.raises(ValueError, match="n_grid must be at most 8"):
        truncate_white_noise(omega, 16)
    with pytest.raises(ValueError, match="omega_hi must be a cubic"):
        truncate_white_noise(omega[:, :, :4], 4)


def test_float64_without_x64_is_refused_on_jax():
    if BACKEND != "jax":
        pytest.skip("only JAX can lack float64")
    import jax

    with jax.enable_x64(False), warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # JAX's own note that float64 is truncated
        with pytest.raises(ValueError, match="dtype='float64' is not available"):
            LPTForwardModel(8, L)


# --------------------------------------------------------------- serialisation
def test_config_round_trip():
    cosmo = Cosmology(sigma8=0.9)
    model = LPTForwardModel(8, L, cosmology=cosmo, order=1, a=0.7)
    config = json.loads(json.dumps(model.get_config()))
    clone = LPTForwardModel.from_config(config)
    assert clone.get_config() == model.get_config() and clone.cosmology == cosmo
    omega = _noise(8, (9,))
    np.testing.assert_array_equal(to_numpy(clone.density(omega)), to_numpy(model.density(omega)))


@pytest.mark.parametrize("order", [1, 2])
def test_supersampled_particles_match_numpy_lpt_of_the_padded_spectrum(order):
    """particle_factor f: 2LPT on the (f n)^3 lattice of the zero-padded linear field, painted on n^3."""
    from tfhalo.sim.cosmology import WMAP5
    from tfhalo.sim.ics import lpt_displacements, lpt_state, white_noise
    from tfhalo.sim.mesh import cic_paint as np_cic_paint

    n, f, box = 8, 2, 32.0
    m, h = n * f, n // 2
    model = LPTForwardModel(n, box, order=order, particle_factor=f)
    omega = np.stack([white_noise(n, 11), white_noise(n, 12)])
    delta = to_numpy(model.linear_field(omega))
    rho = to_numpy(model.density(omega))
    assert model.positions(omega).shape == (2, m**3, 3)
    kept_in, kept_out = [i for i in range(n) if i != h], [i if i < h else i + m - n for i in range(n) if i != h]
    for b in range(2):
        coeffs = np.fft.rfftn(delta[b])
        padded = np.zeros((m, m, m // 2 + 1), complex)
        padded[np.ix_(kept_out, kept_out, range(h))] = coeffs[np.ix_(kept_in, kept_in, range(h))] * f**3
        psi1, psi2 = lpt_displacements(np.fft.irfftn(padded, s=(m, m, m), axes=(0, 1, 2)), box)
        if order == 1:
            psi2 = np.zeros_like(psi2)
        pos = lpt_state(psi1, psi2, box, WMAP5, 1.0)[0]
        ref = np_cic_paint(pos, n, box)
        np.testing.assert_allclose(rho[b], ref / ref.mean(), rtol=1e-10,
                                   atol=1e-12)
    assert LPTForwardModel.from_config(model.get_config()).particle_factor == f
    with pytest.raises(ValueError, match="particle_factor must be at least 1. Received: particle_factor=0"):
        LPTForwardModel(n, box, particle_factor=0)
    with pytest.raises(ValueError, match="n_grid must be even when particle_factor > 1. Received: n_grid=9"):
        LPTForwardModel(9, box, particle_factor=2)
