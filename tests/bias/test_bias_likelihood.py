"""The neural bias likelihood (paper eq. 16) against direct float64 NumPy/SciPy."""

import math

import numpy as np
import pytest
from scipy import integrate, stats

from tfhalo.bias import NeuralBiasLikelihood, build_model, make_bias_data
from tfhalo.bias.fields import bias_data_from_simulation
from tests.helpers.tiny_sims import make_tiny_simulation

M_TH = 1e12


def _data(seed=0, n=4, n_halos=12, box=20.0):
    rng = np.random.default_rng(seed)
    rho = np.exp(rng.normal(scale=0.5, size=(n, n, n)))
    centres = rng.uniform(0, box, size=(n_halos, 3))
    masses = M_TH * np.exp(rng.exponential(1.0, size=n_halos))
    return make_bias_data(rho / rho.mean(), centres, masses, box, M_TH)


def _model_and_theta(data, seed=1, **kwargs):
    model = build_model(data.log_mass_threshold, n_grid=data.n_grid, dtype="float64", **kwargs)
    like = NeuralBiasLikelihood(model, data)
    rng = np.random.default_rng(seed)
    theta = rng.normal(scale=0.3, size=like.layout.size)
    # Width pre-activations near -6 give sigma ~ 1-2 (the paper's shift is ln 1e3).
    theta[-2:] -= 6.0
    return model, like, theta


def _split(params, k=2):
    return params[..., :k], params[..., k:2 * k], params[..., 2 * k:]


def test_default_model_has_17_parameters():
    model = build_model(math.log(M_TH), n_grid=8)
    assert model.count_params() == 17
    assert len(NeuralBiasLikelihood(model, _data(n=8)).layout.names()) == 17


def test_dipole_configuration_has_more_parameters_and_runs():
    model = build_model(math.log(M_TH), n_grid=4, ells=(0, 1), n_kernels=2, n_components=3)
    out = model(np.zeros((1, 4, 4, 4, 1), "float32"))
    assert out.shape == (1, 4, 4, 4, 9)
    assert model.count_params() > 17
    clone = type(model).from_config(model.get_config())
    assert clone.get_config()["ells"] == [0, 1]


def test_log_likelihood_matches_float64_numpy_with_quadrature():
    data = _data()
    model, like, theta = _model_and_theta(data)
    like.layout.set(model, theta)
    params = np.asarray(model(data.log_density[None, ..., None]))[0].reshape(-1, 6)
    alpha, mu, sigma = _split(params)
    # Halo term: ln sum_j alpha_j exp(-mu_j) N(ln M; mu_j, sigma_j) at each halo's voxel.
    hp = params[data.halo_voxel]
    a, m, s = _split(hp)
    ln_n = np.log(np.sum(a * np.exp(-m) * stats.norm.pdf(data.halo_ln_mass[:, None], m, s), axis=1))
    # Integral term by quadrature in ln M of n(M) M, summed ONCE over voxels.
    def integral(v):
        f = lambda x: np.sum(alpha[v] * np.exp(x - mu[v]) * stats.norm.pdf(x, mu[v], sigma[v]))
        hi = data.log_mass_threshold + 10 + max(0, (mu[v] + sigma[v] ** 2 + 12 * sigma[v]).max() - data.log_mass_threshold)
        return integrate.quad(f, data.log_mass_threshold, hi, epsabs=0, epsrel=1e-11, limit=200)[0]
    expected = data.voxel_volume * sum(integral(v) for v in range(params.shape[0]))
    reference = ln_n.sum() - expected
    value = float(like.log_likelihood(theta))
    assert value == pytest.approx(reference, rel=1e-9, abs=1e-8)
    halo, exp_count = (float(t) for t in like.terms(theta))
    assert exp_count == pytest.approx(expected, rel=1e-9)


def test_voxel_sum_enters_once_not_per_halo():
    base = _data(n_halos=5)
    extra = make_bias_data(base.one_plus_delta, np.r_[np.stack(np.unravel_index(base.halo_voxel, (4,) * 3), -1) * 5.0 + 1.0, [[2.0, 3.0, 4.0]]],
                           np.r_[base.halo_mass, 3e12], base.box_size, M_TH)
    model, like1, theta = _model_and_theta(base)
    like2 = NeuralBiasLikelihood(model, extra)
    like1.layout.set(model, theta)
    params = np.asarray(model(base.log_density[None, ..., None]))[0].reshape(-1, 6)
    a, m, s = _split(params[extra.halo_voxel[-1]])
    ln_n_new = np.log(np.sum(a * np.exp(-m) * stats.norm.pdf(np.log(3e12), m, s)))
    diff = float(like2.log_likelihood(theta)) - float(like1.log_likelihood(theta))
    assert diff == pytest.approx(ln_n_new, rel=1e-10, abs=1e-9)


def test_analytic_integral_matches_quadrature_via_head():
    data = _data()
    model, like, theta = _model_and_theta(data)
    head = model.head
    lmt = data.log_mass_threshold
    params = np.array([
        [1e-3, 2e-3, lmt - 1.0, lmt + 0.5, 0.7, 1.3],
        [5e-2, 1e-4, lmt + 2.0, lmt + 2.0, 0.2, 3.0],
        [1e-3, 1e-3, lmt - 4.0, lmt - 1.0, 1.0, 0.5],
    ])
    analytic = np.asarray(head.integral_above_threshold(params))
    for row, value in zip(params, analytic):
        alpha, mu, sigma = _split(row)
        f = lambda x: np.sum(alpha * np.exp(x - mu) * stats.norm.pdf(x, mu, sigma))
        hi = (mu + sigma**2 + 15 * sigma).max()
        ref = integrate.quad(f, lmt, hi, epsrel=1e-11, limit=200)[0]
        assert value == pytest.approx(ref, rel=1e-5)


def test_flat_layout_round_trip_and_stateless_call_agree_with_model_call():
    data = _data()
    model, like, theta = _model_and_theta(data)
    like.layout.set(model, theta)
    np.testing.assert_array_equal(like.layout.get(model), theta)
    x = data.log_density[None, ..., None]
    np.testing.assert_allclose(np.asarray(like._params(theta, x.astype("float64"))), np.asarray(model(x)), rtol=1e-12)
    prior = float(like.log_prior(theta))
    assert prior == pytest.approx(np.sum(stats.norm.logpdf(theta, 0, 10)), rel=1e-12)


@pytest.mark.parametrize("batch", [1, 3])
def test_voxelwise_head_equals_the_head_on_the_grid_voxel_by_voxel(batch):
    from tfhalo.bias.model import voxelwise

    model = build_model(math.log(1e12), n_grid=4, dtype="float64", n_components=3, n_kernels=2, ells=(0, 1))
    rng = np.random.default_rng(7)
    for v in model.head.trainable_variables:
        v.assign(rng.normal(scale=0.5, size=v.shape))
    psi = rng.normal(size=(batch, 4, 5, 3, model.npe.output_channels))
    params = np.asarray(voxelwise(model.head, psi))
    assert params.shape == (batch, 4, 5, 3, 9)
    for index in [(0, 0, 0, 0), (batch - 1, 3, 4, 2), (batch // 2, 1, 2, 1)]:
        np.testing.assert_allclose(params[index], np.asarray(model.head(psi[index][None]))[0], rtol=1e-13)
    # A grid of unknown size goes through the head unchanged.
    seen = []
    voxelwise(lambda x: seen.append(x) or x, _UnknownSpatial(psi))
    assert isinstance(seen[0], _UnknownSpatial)


class _UnknownSpatial:
    def __init__(self, x):
        self.shape = (x.shape[0], None, None, None, x.shape[-1])


@pytest.mark.parametrize("kwargs", [{}, dict(ells=(0, 1), n_kernels=2, n_components=3)])
def test_precomputed_npe_gives_the_convolution_path_value_and_gradient(kwargs):
    from tfhalo import backend
    from tfhalo.bias.fit import value_and_gradient_fn

    data = [_data(seed=s, n=5, n_halos=20) for s in (0, 1)]
    model = build_model(data[0].log_mass_threshold, n_grid=5, dtype="float64", **kwargs)
    fast = NeuralBiasLikelihood(model, data)
    conv = NeuralBiasLikelihood(model, data, precompute_npe=False)
    assert fast.precomputed_npe and not conv.precomputed_npe
    rng = np.random.default_rng(4)
    for _ in range(3):
        theta = rng.normal(scale=0.3, size=fast.layout.size)
        value, grad = (np.asarray(backend.to_numpy(t)) for t in value_and_gradient_fn(fast)(theta))
        ref_value, ref_grad = (np.asarray(backend.to_numpy(t)) for t in value_and_gradient_fn(conv)(theta))
        assert value == pytest.approx(ref_value, rel=1e-11)
        np.testing.assert_allclose(grad, ref_grad, rtol=1e-9, atol=1e-9 * np.abs(ref_grad).max())
        np.testing.assert_allclose(fast.component_shares(theta), conv.component_shares(theta), rtol=1e-9)


def test_a_model_with_its_own_call_is_evaluated_by_that_call():
    from tfhalo.bias.model import NeuralBiasModel

    class Doubled(NeuralBiasModel):
        def call(self, log_density):
            return super().call(2.0 * self._with_channel(log_density))

    data = _data()
    model = Doubled(data.log_mass_threshold, dtype="float64")
    model.build((None, data.n_grid, data.n_grid, data.n_grid, 1))
    like = NeuralBiasLikelihood(model, data)
    assert not like.precomputed_npe
    theta = like.layout.get(model)
    x = data.log_density[None, ..., None]
    np.testing.assert_allclose(like.per_voxel(theta)["params"], np.asarray(model(x))[0], rtol=1e-12)
    assert float(like.log_likelihood(theta)) == pytest.approx(like.voxel_log_likelihood(theta).sum(), rel=1e-12)


def test_mismatched_threshold_is_rejected():
    model = build_model(math.log(2 * M_TH), n_grid=4)
    with pytest.raises(ValueError, match="log_mass_threshold"):
        NeuralBiasLikelihood(model, _data())


@pytest.mark.parametrize("case, match", [
    ("outside", "inside the grid"),
    ("nan", "finite"),
    ("threshold", "no halo above the mass threshold"),
])
def test_bad_catalogues_raise_clear_errors(case, match):
    rho = np.ones((4, 4, 4))
    centres, masses = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]]), np.array([2e12, 3e12])
    if case == "outside":
        centres[1, 2] = 25.0
    elif case == "nan":
        rho[0, 1, 2] = np.nan
    else:
        masses = np.array([1e11, 5e11])
    with pytest.raises(ValueError, match=match):
        make_bias_data(rho, centres, masses, 20.0, M_TH)


@pytest.mark.parametrize("source", ["nbody", "lpt"])
def test_bias_data_from_simulation_bins_every_halo_above_threshold(source):
    sim = make_tiny_simulation(n_side=16, box_size=20.0, seed=2, n_halos=10, particle_mass=1e10)
    threshold = np.median(sim.halos.mass)
    data = bias_data_from_simulation(sim, n_grid=8, mass_threshold=threshold, source=source)
    assert data.n_halos == int(np.sum(sim.halos.mass >= threshold))
    assert data.halo_counts().sum() == data.n_halos
    assert data.one_plus_delta.mean() == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("centre", [(3.9, 3.9, 3.9), (4.4, 0.2, 7.8), (0.05, 7.7, 2.5)])
def test_halo_is_binned_to_the_voxel_that_holds_its_density_peak(centre):
    """A halo sits on a clump of particles; painted by CIC, the clump peaks in the halo's voxel."""
    from tfhalo.sim.mesh import cic_paint

    rng = np.random.default_rng(0)
    n, box = 8, 8.0
    clump = np.mod(np.asarray(centre) + rng.normal(0.0, 0.05, (2000, 3)), box)
    background = rng.uniform(0.0, box, (5000, 3))
    mesh = cic_paint(np.vstack([clump, background]), n, box)
    data = make_bias_data(mesh / mesh.mean(), [centre], [2e12], box, 1e12)
    assert int(data.halo_voxel[0]) == int(np.argmax(mesh))


def test_several_catalogues_add_and_per_voxel_picks_each_grid():
    # Same-shaped grids are evaluated as one batch; the result must equal the sum of
    # the single-catalogue likelihoods, and per_voxel(i) must return grid i's fields.
    grids = [_data(seed=s) for s in (0, 1, 2)] + [_data(seed=3, n=5, box=25.0)]
    model, like, theta = _model_and_theta(grids[0])
    singles = [NeuralBiasLikelihood(model, d) for d in grids]
    both = NeuralBiasLikelihood(model, grids)
    total = sum(float(s.log_likelihood(theta)) for s in singles)
    assert float(both.log_likelihood(theta)) == pytest.approx(total, rel=1e-12)
    for i, single in enumerate(singles):
        np.testing.assert_allclose(both.per_voxel(theta, i)["expected"], single.per_voxel(theta)["expected"],
                                   rtol=1e-12)
    with pytest.raises(ValueError, match="index"):
        both.per_voxel(theta, 4)


def test_component_shares_split_the_expected_count():
    # Share of component j = the expected count with the other component's
    # amplitude switched off (pre-activation -200) over the full expected count.
    grids = [_data(seed=s) for s in (0, 1)] + [_data(seed=3, n=5, box=25.0)]
    model, like, theta = _model_and_theta(grids[0])
    like = NeuralBiasLikelihood(model, grids)
    names = [n.split("/", 1)[-1] for n in like.layout.names()]
    shares = like.component_shares(theta)
    assert shares.shape == (2,) and shares.sum() == pytest.approx(1.0, abs=1e-12)
    full = float(like.terms(theta)[1])
    for j in range(2):
        off = theta.copy()
        off[names.index(f"mdn/bias[{1 - j}]")] = -200.0
        off[names.index(f"mdn/kernel[0,{1 - j}]")] = 0.0
        assert shares[j] == pytest.approx(float(like.terms(off)[1]) / full, rel=1e-9)
