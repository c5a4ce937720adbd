"""The joint field + bias posterior against float64 NumPy (tfhalo.sim) and NeuralBiasLikelihood.

Runs on TensorFlow and on JAX (float64 through ``jax.enable_x64``).
"""

import dataclasses
import math
import types

import numpy as np
import pytest
from keras import ops
from scipy import stats

from tfhalo.bias import NeuralBiasLikelihood, build_model, make_bias_data
from tfhalo.field import posterior as posterior_module
from tfhalo.field.forward import LPTForwardModel
from tfhalo.field.posterior import FieldCatalogue, FieldLevelPosterior
from tfhalo.sim.cosmology import WMAP5
from tfhalo.sim.ics import gaussian_field, lpt_displacements, lpt_state, white_noise
from tfhalo.sim.mesh import cic_paint

from tests.helpers.backend import BACKEND

M_TH = 1e12
N = 4
BOX = 64.0  # 16 Mpc/h voxels: mildly non-linear 2LPT, no voxel near the density floor



def _halos(seed=0, n_halos=12, box=BOX):
    rng = np.random.default_rng(seed)
    centres = rng.uniform(0.0, box, size=(n_halos, 3))
    masses = M_TH * np.exp(rng.exponential(1.0, size=n_halos))
    return centres, masses


def _catalogue(seed=0, n=N, box=BOX, n_halos=12):
    centres, masses = _halos(seed, n_halos, box)
    return FieldCatalogue.from_halos(centres, masses, box, n, M_TH)


def _theta(seed, voxel_volume=(BOX / N) ** 3, per_voxel=0.2):
    """Bias parameters with about ``per_voxel`` halos per voxel, density-dependent amplitudes, sigma ~ 0.8."""
    theta = np.zeros(17)
    theta[0:4] = [0.5, 0.2, 0.1, 0.05]            # NPE radial weights
    theta[5:11] = [1.0, 0.5, 0.3, 0.2, 0.1, 0.1]  # head kernel: alpha_1,2 mu_1,2 sigma_1,2
    # alpha = softplus(pre + ln 1e-3) ~ exp(pre) 1e-3 when small; psi ~ 0.8 adds ~0.8 to pre.
    amp = math.log(per_voxel / voxel_volume) - math.log(1e-3) - 0.8
    theta[11:17] = [amp, amp - 1.0, 0.5, 1.0, -6.8, -6.5]
    return theta + np.random.default_rng(seed).normal(scale=0.1, size=17)


def _setup(n=N, box=BOX, seed=0):
    forward = LPTForwardModel(n, box)
    cat = _catalogue(seed, n, box)
    model = build_model(cat.log_mass_threshold, n, dtype="float64")
    return forward, model, cat, FieldLevelPosterior(forward, model, cat)


def _np(x):
    return np.asarray(ops.convert_to_numpy(x), dtype=np.float64)


def _compiled(fn):
    """``fn`` traced once under JAX (eager JAX compiles every primitive on first use, which is slow)."""
    if BACKEND == "jax":
        import jax

        return jax.jit(fn)
    return fn


def _value_and_grad(fn):
    """``x -> (sum(fn(x)), gradient)`` as float64 NumPy, on the active backend."""
    if BACKEND == "jax":
        import jax

        compiled = jax.jit(jax.value_and_grad(lambda z: ops.sum(fn(z))))

        def run(x):
            value, grad = compiled(ops.convert_to_tensor(np.asarray(x, np.float64)))
            return float(value), np.asarray(grad, np.float64)

        return run
    import tensorflow as tf

    def run(x):
        var = tf.Variable(np.asarray(x, np.float64))
        with tf.GradientTape() as tape:
            value = tf.reduce_sum(fn(var))
        return float(value), tape.gradient(value, var).numpy()

    return run


@pytest.fixture(scope="module")
def target():
    """One 4^3 posterior and its compiled functions, shared by the tests (two chains everywhere)."""
    forward, model, cat, post = _setup()
    return types.SimpleNamespace(
        forward=forward, model=model, cat=cat, post=post,
        log_prob=_compiled(post.log_prob),
        log_likelihood=_compiled(post.log_likelihood),
        value_and_grad=_value_and_grad(post.log_prob),
    )


def _numpy_log_prob(seed, theta, centres, masses, model):
    """Direct float64 joint log density: tfhalo.sim ICs + 2LPT + CIC, NeuralBiasLikelihood, scipy priors."""
    omega = white_noise(N, seed)
    delta = gaussian_field(N, BOX, WMAP5, seed)  # the same white noise (same seed)
    psi1, psi2 = lpt_displacements(delta, BOX)
    positions, _ = lpt_state(psi1, psi2, BOX, WMAP5, 1.0)
    mesh = cic_paint(positions, N, BOX)
    data = make_bias_data(mesh / mesh.mean(), centres, masses, BOX, M_TH)
    # BiasData stores the model input in float32; the reference keeps float64.
    data = dataclasses.replace(data, log_density=np.log(data.one_plus_delta))
    log_like = float(NeuralBiasLikelihood(model, data).log_likelihood(theta))
    prior = stats.norm.logpdf(omega).sum() + stats.norm.logpdf(theta, 0.0, 10.0).sum()
    return prior + log_like, log_like


def test_log_prob_matches_float64_numpy_reference_for_two_chains(target):
    post, model = target.post, target.model
    centres, masses = _halos(0)
    seeds = (11, 12)
    thetas = np.stack([_theta(1), _theta(2)])
    omegas = np.stack([white_noise(N, s) for s in seeds])
    state = post.join(omegas, thetas)
    assert tuple(state.shape) == (2, N**3 + 17)
    values = _np(target.log_prob(state))
    log_like = _np(target.log_likelihood(ops.convert_to_tensor(omegas), ops.convert_to_tensor(thetas)))
    for c, seed in enumerate(seeds):
        ref, ref_like = _numpy_log_prob(seed, thetas[c], centres, masses, model)
        assert values[c] == pytest.approx(ref, rel=1e-8)
        assert log_like[c] == pytest.approx(ref_like, rel=1e-8)
    # The two chains are evaluated independently: different states, different values.
    assert abs(values[0] - values[1]) > 1.0


def test_likelihood_agrees_with_neural_bias_likelihood_on_the_same_field(target):
    post, model, cat = target.post, target.model, target.cat
    theta = _theta(4)
    # Chain 0 is scored against NeuralBiasLikelihood; chain 1 is another state in the batch.
    omega = np.stack([white_noise(N, 5), white_noise(N, 6)])
    state = post.join(omega, np.stack([theta, _theta(5)]))
    fields = post.fields(state)
    data = cat.to_bias_data(fields["density"][0])
    assert np.array_equal(data.halo_voxel, cat.halo_voxel)
    data64 = dataclasses.replace(data, log_density=np.log(data.one_plus_delta))
    like = NeuralBiasLikelihood(model, data64)
    value = float(_np(target.log_likelihood(*post.split(state)))[0])
    assert value == pytest.approx(float(like.log_likelihood(theta)), rel=1e-12)
    # BiasData as stored (float32 model input) agrees to float32 rounding of ln(1 + delta).
    assert value == pytest.approx(float(NeuralBiasLikelihood(model, data).log_likelihood(theta)), rel=1e-5)
    # Per-voxel expected counts are the likelihood's, and they sum to its expected term.
    expected = like.per_voxel(theta)["expected"]
    np.testing.assert_allclose(fields["expected"][0], expected, rtol=1e-12)
    _, expected_total = like.terms(theta)
    assert fields["expected"][0].sum() == pytest.approx(float(expected_total), rel=1e-12)
    # The gradient in theta is NeuralBiasLikelihood's too.
    n3 = N**3
    _, g_post = target.value_and_grad(_np(state))
    _, g_like = _value_and_grad(like.log_posterior)(theta)
    np.testing.assert_allclose(g_post[0, n3:], g_like, rtol=1e-9, atol=1e-9)


def test_gradient_matches_central_differences(target):
    post = target.post
    rng = np.random.default_rng(7)
    state = _np(post.join(np.stack([white_noise(N, 21), white_noise(N, 22)]), np.stack([_theta(8), _theta(9)])))
    _, grad = target.value_and_grad(state)
    direction = rng.normal(size=state.shape)
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    eps = 1e-5
    plus = _np(target.log_prob(state + eps * direction))
    minus = _np(target.log_prob(state - eps * direction))
    numeric = (plus - minus) / (2 * eps)
    analytic = np.sum(grad * direction, axis=1)
    np.testing.assert_allclose(analytic, numeric, rtol=1e-5, atol=1e-6)
    # The field gradient is not just the prior's -omega: the likelihood depends on omega.
    n3 = N**3
    assert np.max(np.abs(grad[:, :n3] + state[:, :n3])) > 1e-3


def test_split_join_round_trip_sizes_and_names(target):
    post = target.post
    assert (post.n_field, post.n_bias, post.size) == (64, 17, 81)
    names = post.parameter_names()
    assert len(names) == 17 and names[-1].endswith("mdn/bias[5]")
    state = np.random.default_rng(0).normal(size=(3, 81))
    omega, theta = post.split(state)
    assert tuple(omega.shape) == (3, 4, 4, 4) and tuple(theta.shape) == (3, 17)
    np.testing.assert_array_equal(_np(omega)[1].ravel(), state[1, :64])
    np.testing.assert_array_equal(_np(post.join(omega, theta)), state)


def test_fields_are_consistent(target):
    post, cat = target.post, target.cat
    state = post.join(np.stack([white_noise(N, 3), white_noise(N, 4)]), np.stack([_theta(3), _theta(4)]))
    f = post.fields(state)
    assert f["delta_lin"].shape == (2, 4, 4, 4) and f["psi"].shape == (2, 4, 4, 4, 1)
    np.testing.assert_allclose(f["delta_lin"][0], gaussian_field(N, BOX, WMAP5, 3), rtol=0, atol=1e-12)
    assert f["density"][0].mean() == pytest.approx(1.0, rel=1e-12)
    np.testing.assert_allclose(f["log_density"], np.log(np.maximum(f["density"], 1e-2)), rtol=1e-14)
    assert all(v.shape[0] == 2 for v in f.values())  # every entry has the chain axis
    assert f["halo_counts"][1].sum() == cat.n_halos
    assert f["halo_mass"][1].sum() == pytest.approx(np.exp(cat.ln_mass).sum(), rel=1e-12)


def test_catalogue_bins_like_make_bias_data_and_keeps_threshold():
    centres, masses = _halos(0, n_halos=40)
    masses[:5] = 0.5 * M_TH
    cat = FieldCatalogue.from_halos(centres, masses, BOX, N, M_TH)
    keep = masses >= M_TH
    assert cat.n_halos == keep.sum() and np.all(cat.ln_mass >= math.log(M_TH))
    data = make_bias_data(np.ones((N, N, N)), centres, masses, BOX, M_TH)
    np.testing.assert_array_equal(cat.halo_voxel, data.halo_voxel)
    # Nearest grid point, wrapped: x = L - h/4 belongs to grid point 0.
    edge = FieldCatalogue.from_halos([[BOX - 4.0, 7.9, 8.1]], [2e12], BOX, N, M_TH)
    assert int(edge.halo_voxel[0]) == np.ravel_multi_index((0, 0, 1), (N, N, N))
    with pytest.raises((dataclasses.FrozenInstanceError, AttributeError)):
        cat.n_grid = 8
    with pytest.raises(ValueError):
        cat.positions[0, 0] = 1.0


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(centres=[[1.0, 2.0, 64.0]]), r"centres must lie inside the box .*centres\[0\]=\[1.0, 2.0, 64.0\]"),
        (dict(centres=[[-0.1, 2.0, 3.0]]), r"centres must lie inside the box"),
        (dict(centres=[[np.nan, 2.0, 3.0]]), r"centres must be finite"),
        (dict(centres=[[1.0, 2.0, 3.0, 4.0]]), r"centres must have shape \(H, 3\)"),
        (dict(masses=[np.nan]), r"masses must be finite and positive.*masses\[0\]=nan"),
        (dict(masses=[np.inf]), r"masses must be finite and positive"),
        (dict(masses=[2e12, 3e12]), r"masses must have shape \(H,\)"),
        (dict(masses=[5e11]), r"no halo above the mass threshold.*mass_threshold=1e\+12"),
        (dict(n_grid=2.7), r"n_grid must be an integer. Received: n_grid=2.7"),
        (dict(n_grid=0), r"n_grid must be at least 1. Received: n_grid=0"),
        (dict(box_size=np.nan), r"box_size must be a finite number"),
        (dict(mass_threshold=-1.0), r"mass_threshold must be positive"),
    ],
)
def test_from_halos_rejects_bad_input_before_binning(monkeypatch, kwargs, match):
    def no_work(*args, **kw):
        raise AssertionError("binning started before the arguments were checked")

    monkeypatch.setattr(posterior_module, "halo_voxels", no_work)
    args = dict(centres=[[1.0, 2.0, 3.0]], masses=[2e12], box_size=BOX, n_grid=N, mass_threshold=M_TH)
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        FieldCatalogue.from_halos(**args)


def test_catalogue_constructor_rejects_bad_fields():
    good = dict(positions=[[1.0, 2.0, 3.0]], ln_mass=[math.log(2e12)], box_size=BOX, n_grid=N,
                log_mass_threshold=math.log(M_TH))
    for change, match in [
        (dict(ln_mass=[np.nan]), r"ln_mass must be finite"),
        (dict(ln_mass=[math.log(5e11)]), r"ln_mass must be >= log_mass_threshold"),
        (dict(positions=np.zeros((0, 3)), ln_mass=[]), r"at least one halo"),
        (dict(positions=[[1.0, 2.0, 70.0]]), r"positions must lie inside the box"),
        (dict(log_mass_threshold=np.inf), r"log_mass_threshold must be a finite number"),
    ]:
        with pytest.raises(ValueError, match=match):
            FieldCatalogue(**{**good, **change})


def test_posterior_rejects_mismatched_grid_box_threshold_and_state():
    forward = LPTForwardModel(N, BOX)
    cat = _catalogue()
    model = build_model(cat.log_mass_threshold, N, dtype="float64")
    with pytest.raises(ValueError, match=r"catalogue.n_grid must equal forward.n_grid=4. Received: catalogue.n_grid=8"):
        FieldLevelPosterior(forward, model, _catalogue(n=8))
    with pytest.raises(ValueError, match=r"catalogue.box_size must equal forward.box_size=64.0 \(voxel size 16.0"):
        FieldLevelPosterior(forward, model, _catalogue(box=32.0))
    other = build_model(math.log(2e12), N, dtype="float64")
    with pytest.raises(ValueError, match=r"model.log_mass_threshold must equal the catalogue's"):
        FieldLevelPosterior(forward, other, cat)
    with pytest.raises(ValueError, match=r"catalogue must be a FieldCatalogue"):
        FieldLevelPosterior(forward, model, make_bias_data(np.ones((N,) * 3), [[1.0, 1.0, 1.0]], [2e12], BOX, M_TH))
    with pytest.raises(ValueError, match=r"prior_scale must be positive"):
        FieldLevelPosterior(forward, model, cat, prior_scale=0.0)
    with pytest.raises(ValueError, match=r"density_floor must be a finite number"):
        FieldLevelPosterior(forward, model, cat, density_floor=np.nan)
    post = FieldLevelPosterior(forward, model, cat)
    with pytest.raises(ValueError, match=r"state must have shape \(C, 81\)"):
        post.log_prob(np.zeros((2, 80)))


def test_unbuilt_model_is_built_for_the_grid():
    forward = LPTForwardModel(N, BOX)
    cat = _catalogue()
    from tfhalo.bias import NeuralBiasModel

    model = NeuralBiasModel(cat.log_mass_threshold, dtype="float64")
    post = FieldLevelPosterior(forward, model, cat)
    assert model.built and post.n_bias == 17


def test_bias_conditional_from_basis_responses_equals_the_joint_target(target):
    """The conditional with the NPE's convolution done once is log_prob less the field prior, value and gradient."""
    post = target.post
    omegas = np.stack([white_noise(N, 31), white_noise(N, 32)])
    thetas = np.stack([_theta(10), _theta(11)])
    state = _np(post.join(omegas, thetas))
    conditional = post.bias_conditional(post.log_density(ops.convert_to_tensor(omegas)))
    assert post._n_npe == 2  # the stock NPE (radial weights, bias): the responses path runs
    field_prior = stats.norm.logpdf(omegas.reshape(2, -1)).sum(axis=1)
    want = _np(target.log_prob(state)) - field_prior
    np.testing.assert_allclose(_np(conditional(ops.convert_to_tensor(thetas))), want, rtol=1e-11)
    _, g_joint = target.value_and_grad(state)
    _, g_cond = _value_and_grad(conditional)(thetas)
    np.testing.assert_allclose(g_cond, g_joint[:, N**3:], rtol=1e-9, atol=1e-9)
    # A model whose call is not the stock head(npe(x)) is evaluated directly, to the same value.
    post._n_npe, saved = None, post._n_npe
    try:
        plain = _np(post.bias_conditional(post.log_density(ops.convert_to_tensor(omegas)))(ops.convert_to_tensor(thetas)))
    finally:
        post._n_npe = saved
    np.testing.assert_allclose(plain, want, rtol=1e-11)
    with pytest.raises(ValueError, match=r"theta must have one row per chain .* Received: theta.shape=\(1, 17\)"):
        conditional(ops.convert_to_tensor(thetas[:1]))


def test_a_float32_forward_model_gives_the_float64_target_to_float32_rounding(target):
    """The chains' states, bias model and likelihood stay float64; only the forward model's arithmetic changes."""
    post64, model, cat = target.post, target.model, target.cat
    post32 = FieldLevelPosterior(LPTForwardModel(N, BOX, dtype="float32"), model, cat)
    state = _np(post64.join(np.stack([white_noise(N, 31), white_noise(N, 32)]), np.stack([_theta(3), _theta(6)])))
    value64, grad64 = target.value_and_grad(state)
    value32, grad32 = _value_and_grad(post32.log_prob)(state)
    lp32 = _compiled(post32.log_prob)(ops.convert_to_tensor(state))
    assert "float64" in str(lp32.dtype) and "float64" in str(post32.log_density(post64.split(state)[0]).dtype)
    assert value32 == pytest.approx(value64, rel=1e-6)
    assert value32 != value64  # the forward model really ran in float32
    np.testing.assert_allclose(grad32, grad64, rtol=0, atol=1e-5 * np.abs(grad64).max())
