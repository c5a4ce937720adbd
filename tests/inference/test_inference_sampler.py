"""tfhalo.inference.sample recovers analytic posteriors; seeds, checkpoints and bad inputs behave.

Statistical checks compare a Monte Carlo estimate of E[f] with its exact value
within ``tests.helpers.mcmc.N_SIGMA`` Monte Carlo standard errors ``sd(f) / sqrt(ESS(f))`` (ArviZ's
bulk ESS of ``f``), so they hold on any machine whatever the rounding.
Tracing TFP's kernels dominates the cost, so each sampler run is a module
fixture shared by several tests.
"""

import dataclasses
import os

import arviz as az
import keras
import numpy as np
import pytest

if keras.backend.backend() != "tensorflow":
    pytest.skip("targets in TensorFlow; test_sampler_backends.py runs on every backend", allow_module_level=True)

import tensorflow as tf  # noqa: E402
import tensorflow_probability as tfp  # noqa: E402

import tfhalo.inference as inf
from tests.helpers.mcmc import check_expectation, check_gaussian, sampler_config  # noqa: E402

tfb = tfp.bijectors
P = 4


def _gaussian(seed=0, p=P):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(p, p))
    # Correlated and ill-conditioned (condition number ~1e3): a diagonal mass matrix cannot whiten it.
    cov = a @ a.T + np.diag(np.logspace(-2, 1, p))
    mean = 3.0 * rng.normal(size=p)
    prec = tf.constant(np.linalg.inv(cov))

    def log_prob(x):
        d = x - mean
        return -0.5 * tf.reduce_sum(d * tf.linalg.matvec(prec, d), axis=-1)

    return mean, cov, log_prob


MEAN, COV, LOG_PROB = _gaussian()


def _starts(seed, c=4, p=P):
    return MEAN + np.random.default_rng(seed).normal(size=(c, p))


@pytest.fixture(scope="module")
def nuts_chains():
    return inf.sample(LOG_PROB, _starts(2), sampler_config(kernel="nuts"), progress=False)


@pytest.fixture(scope="module")
def hmc_affine_chains():
    # The exact Laplace map whitens this target; HMC then needs few leapfrog steps.
    bij = inf.affine_preconditioner(MEAN, np.linalg.inv(COV))
    cfg = sampler_config(kernel="hmc", num_leapfrog_steps=2)
    return inf.sample(LOG_PROB, _starts(3), cfg, bijector=bij, progress=False), bij


def test_nuts_recovers_correlated_gaussian(nuts_chains):
    ch = nuts_chains
    assert ch.samples.shape == (400, 4, P) and ch.samples.dtype == np.float64
    check_gaussian(ch.samples, MEAN, COV)
    assert not ch.sample_stats["diverging"].any()
    # The adapted diagonal inverse mass is the posterior variance (pooled warm-up draws).
    np.testing.assert_allclose(ch.inverse_mass_matrix, np.diag(COV), rtol=0.5)


def test_hmc_with_affine_preconditioner_recovers_the_same_gaussian(hmc_affine_chains):
    ch, _ = hmc_affine_chains
    check_gaussian(ch.samples, MEAN, COV)
    assert not ch.sample_stats["diverging"].any()
    # In the whitened coordinates the adapted inverse mass is ~1.
    np.testing.assert_allclose(ch.inverse_mass_matrix, 1.0, rtol=0.5)


def test_sample_stats_are_consistent(nuts_chains, hmc_affine_chains):
    ch = nuts_chains
    s = ch.sample_stats
    assert set(s) == {"diverging", "energy", "acceptance_rate", "step_size", "n_steps", "lp", "tree_depth"}
    assert all(v.shape == (400, 4) for v in s.values())
    # lp is the sampled density at the draw (no bijector: log_prob_fn itself).
    lp = np.stack([LOG_PROB(tf.constant(x)).numpy() for x in ch.samples])
    np.testing.assert_allclose(s["lp"], lp, rtol=1e-10, atol=1e-10)
    # NUTS: a tree of depth d holds 2^(d-1) .. 2^d - 1 leapfrog steps.
    assert np.all(s["n_steps"] <= 2 ** s["tree_depth"] - 1) and np.all(s["n_steps"] >= 2 ** (s["tree_depth"] - 1))
    assert np.all(s["tree_depth"] <= ch.config.max_tree_depth)
    np.testing.assert_array_equal(s["step_size"], ch.step_size)
    # Dual averaging reaches about its target acceptance; energies give a healthy E-BFMI.
    assert 0.6 < s["acceptance_rate"].mean() < 0.97
    assert np.min(az.bfmi(s["energy"].T)) > 0.3
    assert ch.n_gradient_evaluations > s["n_steps"].sum() / 4

    hmc, bij = hmc_affine_chains
    h = hmc.sample_stats
    assert "tree_depth" not in h
    np.testing.assert_array_equal(h["n_steps"], 2)
    # With a bijector lp includes ln|d theta / d z| = ln det L, a constant for the affine map.
    log_det = np.ravel(bij.forward_log_det_jacobian(tf.zeros((1, P), tf.float64), event_ndims=1).numpy())[0]
    lp = np.stack([LOG_PROB(tf.constant(x)).numpy() for x in hmc.samples])
    np.testing.assert_allclose(h["lp"] - lp, log_det, atol=1e-8)
    assert np.min(az.bfmi(h["energy"].T)) > 0.3
    # Warm-up (one bootstrap, 2 leapfrogs a step) + sampling (one bootstrap per block).
    assert hmc.n_gradient_evaluations == 1 + 200 * 2 + 4 * (1 + 100 * 2)


def test_constrained_target_through_bijectors():
    # x0 ~ Gamma(3, rate 2) on (0, inf) via Softplus, x1 ~ Beta(2, 5) on (0, 1) via Sigmoid.  (Through
    # Exp the Gamma's right tail would be doubly exponential in z: stiff, a source of divergences.)
    f64 = lambda v: tf.constant(v, tf.float64)  # noqa: E731
    gamma, beta = tfp.distributions.Gamma(f64(3.0), f64(2.0)), tfp.distributions.Beta(f64(2.0), f64(5.0))

    def log_prob(x):
        return gamma.log_prob(x[:, 0]) + beta.log_prob(x[:, 1])

    bij = tfb.Blockwise([tfb.Softplus(), tfb.Sigmoid()], block_sizes=[1, 1])
    init = np.column_stack([np.linspace(0.5, 3.0, 4), np.linspace(0.1, 0.6, 4)])
    ch = inf.sample(log_prob, init, sampler_config(kernel="nuts", num_samples=500), bijector=bij, progress=False)
    x = ch.samples
    assert np.all(x[..., 0] > 0) and np.all((x[..., 1] > 0) & (x[..., 1] < 1))
    check_expectation(x[..., 0], 1.5, "Gamma mean")
    check_expectation((x[..., 0] - 1.5) ** 2, 0.75, "Gamma variance")
    check_expectation(x[..., 1], 2 / 7, "Beta mean")
    check_expectation((x[..., 1] - 2 / 7) ** 2, 10 / (49 * 8), "Beta variance")
    assert ch.sample_stats["diverging"].mean() < 0.01


def test_high_dimensional_diagonal_target_stays_linear_in_memory():
    # 20,000 parameters: any dense (P, P) matrix would be 3.2 GB.
    p = 20_000
    scale = np.logspace(-1, 1, p)
    scale_t = tf.constant(scale)

    def log_prob(x):
        return -0.5 * tf.reduce_sum(tf.square(x / scale_t), axis=-1)

    init = np.random.default_rng(0).normal(size=(4, p)) * scale
    cfg = sampler_config(kernel="hmc", num_warmup=40, num_samples=4, num_leapfrog_steps=4, block_size=40)
    ch = inf.sample(log_prob, init, cfg, progress=False)
    assert ch.samples.shape == (4, 4, p) and np.all(np.isfinite(ch.samples))
    assert ch.inverse_mass_matrix.shape == (p,)
    assert all(v.shape == (4, 4) for v in ch.sample_stats.values())
    # Even 40 warm-up steps learn the 10^4 spread of variances.
    assert np.corrcoef(np.log(ch.inverse_mass_matrix), 2 * np.log(scale))[0, 1] > 0.9


def test_same_seed_same_chains_other_seed_other_chains(nuts_chains):
    again = inf.sample(LOG_PROB, _starts(2), sampler_config(kernel="nuts"), progress=False)
    np.testing.assert_array_equal(again.samples, nuts_chains.samples)
    for k, v in nuts_chains.sample_stats.items():
        np.testing.assert_array_equal(again.sample_stats[k], v)
    other = inf.sample(LOG_PROB, _starts(2), sampler_config(kernel="nuts", seed=2), progress=False)
    assert not np.allclose(other.samples, nuts_chains.samples)


def test_checkpoint_resume_equals_uninterrupted_run(tmp_path, nuts_chains):
    cfg = sampler_config(kernel="nuts")
    full = inf.sample(LOG_PROB, _starts(2), cfg, progress=False, checkpoint_dir=tmp_path)
    np.testing.assert_array_equal(full.samples, nuts_chains.samples)
    assert sorted(os.listdir(tmp_path)) == ["block_00000.npz", "block_00001.npz", "block_00002.npz",
                                            "block_00003.npz", "warmup.npz"]
    # An interruption after two sampling blocks leaves exactly these files.
    for name in ("block_00002.npz", "block_00003.npz"):
        (tmp_path / name).unlink()
    resumed = inf.sample(LOG_PROB, _starts(2), cfg, progress=False, checkpoint_dir=tmp_path)
    np.testing.assert_array_equal(resumed.samples, nuts_chains.samples)
    for k, v in nuts_chains.sample_stats.items():
        np.testing.assert_array_equal(resumed.sample_stats[k], v)
    assert resumed.step_size == nuts_chains.step_size

    # Completed blocks are read back, not recomputed.
    with np.load(tmp_path / "block_00000.npz") as f:
        block = {k: f[k] for k in f.files}
    block["draws"] = block["draws"] + 1.0
    np.savez(tmp_path / "block_00000.npz", **block)
    read = inf.sample(LOG_PROB, _starts(2), cfg, progress=False, checkpoint_dir=tmp_path)
    np.testing.assert_array_equal(read.samples[:100], nuts_chains.samples[:100] + 1.0)

    # A checkpoint of another config or start is refused.
    with pytest.raises(ValueError, match="checkpoint_dir.*target_accept: 0.8 there, 0.9 here"):
        inf.sample(LOG_PROB, _starts(2), sampler_config(kernel="nuts", target_accept=0.9), progress=False,
                   checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="checkpoint_dir.*initial_state"):
        inf.sample(LOG_PROB, _starts(5), cfg, progress=False, checkpoint_dir=tmp_path)


def test_a_checkpoint_of_another_bijector_of_the_same_class_is_refused(tmp_path, monkeypatch):
    # Both maps send the start to zero, so the start in sampling coordinates cannot tell the runs apart: the
    # bijector's values at fixed points do.
    from tfhalo.inference import sampler as sampler_module

    start = np.tile(MEAN, (2, 1))

    def centred(scale):
        return tfb.Chain([tfb.Shift(tf.constant(MEAN)), tfb.Scale(tf.constant(scale, tf.float64))])

    cfg = sampler_config(kernel="hmc", num_chains=2, num_warmup=20, num_samples=20, block_size=10,
                         num_leapfrog_steps=3)
    # One object for the unit scale: its compiled chains are reused by every run below (the
    # identity is of the values, so a new but equal bijector would pass the checks alike).
    unit = centred(1.0)
    first = inf.sample(LOG_PROB, start, cfg, unit, progress=False, checkpoint_dir=tmp_path)
    with pytest.raises(ValueError, match="checkpoint of another run: .*the target, the kernels, the bijectors"):
        inf.sample(LOG_PROB, start, cfg, centred(2.0), progress=False, checkpoint_dir=tmp_path)
    again = inf.sample(LOG_PROB, start, cfg, centred(1.0), progress=False, checkpoint_dir=tmp_path)
    np.testing.assert_array_equal(again.samples, first.samples)
    # Checkpoints written when the identity named the bijector's class only are still read.
    old = tmp_path / "old"
    with monkeypatch.context() as m:
        m.setattr(sampler_module, "_bijector_probe", lambda *args: b"")
        inf.sample(LOG_PROB, start, cfg, unit, progress=False, checkpoint_dir=old)
    stamps = {f: f.stat().st_mtime_ns for f in old.glob("*.npz")}
    np.testing.assert_array_equal(inf.sample(LOG_PROB, start, cfg, unit, progress=False,
                                             checkpoint_dir=old).samples, first.samples)
    assert all(f.stat().st_mtime_ns == t for f, t in stamps.items())  # read back, not sampled again


def test_chain_groups_are_independent_runs_joined(tmp_path):
    # Two groups of two chains, each warmed up alone: each is exactly the run of its own config
    # (its seed, its warm-up), run in its own thread; the joined chains recover the target.
    cfg = sampler_config(kernel="nuts", chain_groups=2, pool_warmup=False)
    starts = _starts(4)
    ch = inf.sample(LOG_PROB, starts, cfg, progress=False, checkpoint_dir=tmp_path)
    groups = cfg.group_configs()
    assert [g.num_chains for g in groups] == [2, 2] and groups[0].seed != groups[1].seed
    assert ch.samples.shape == (400, 4, P) and np.shape(ch.step_size) == (2,)
    assert ch.inverse_mass_matrix.shape == (2, P)
    for g, group in enumerate(groups):
        alone = inf.sample(LOG_PROB, starts[2 * g:2 * g + 2], group, progress=False)
        np.testing.assert_array_equal(ch.samples[:, 2 * g:2 * g + 2], alone.samples)
        np.testing.assert_array_equal(ch.sample_stats["n_steps"][:, 2 * g:2 * g + 2], alone.sample_stats["n_steps"])
        assert ch.step_size[g] == alone.step_size
        np.testing.assert_array_equal(ch.inverse_mass_matrix[g], alone.inverse_mass_matrix)
    assert sorted(os.listdir(tmp_path)) == ["group0", "group1"]
    check_gaussian(ch.samples, MEAN, COV)
    # A resumed run reads every group back.
    again = inf.sample(LOG_PROB, starts, cfg, progress=False, checkpoint_dir=tmp_path)
    np.testing.assert_array_equal(again.samples, ch.samples)
    idata = ch.to_inference_data()
    assert idata.constant_data["inverse_mass_matrix"].dims == ("chain_group", "sampling_coordinate")
    # chain_groups and pool_warmup are part of a run's identity, and absent from it without groups
    # (older checkpoints stay valid).
    assert cfg.chain_fields()["chain_groups"] == 2 and cfg.chain_fields()["pool_warmup"] is False
    assert not {"chain_groups", "pool_warmup"} & set(sampler_config().chain_fields())


def _delete(path):
    path.unlink()
    return path


def test_chain_groups_after_a_pooled_warmup_share_one_kernel(tmp_path):
    # Four groups of one chain warmed up as one batch: every group samples with the same step size and
    # mass matrix (adapted on the draws of all four chains), from its own chain's warmed-up state.
    # The log-density is batched to one chain, as a study's is for chain_groups == num_chains.
    def one_chain(x):
        assert x.shape[0] == 1, x.shape
        return LOG_PROB(x)

    cfg = sampler_config(kernel="nuts", chain_groups=4)
    starts = _starts(6)
    ch = inf.sample(one_chain, starts, cfg, progress=False, checkpoint_dir=tmp_path)
    assert cfg.pool_warmup and ch.samples.shape == (400, 4, P)
    assert np.unique(ch.step_size).size == 1 and np.unique(ch.inverse_mass_matrix, axis=0).shape[0] == 1
    # The mass matrix is the pooled variance of the warm-up draws: that of the target, to within its noise
    # (per-chain estimates from 2 x 4 + ... draws would scatter far more; the whitened check below is exact).
    assert np.all(np.abs(np.log(ch.inverse_mass_matrix[0] / np.diag(COV))) < np.log(3.0))
    assert sorted(os.listdir(tmp_path)) == ["group0", "group1", "group2", "group3", "warmup"]
    check_gaussian(ch.samples, MEAN, COV)
    # Resuming after an interruption in sampling (one group lost a block) repeats the uninterrupted run.
    _delete(tmp_path / "group2" / "block_00003.npz")
    again = inf.sample(one_chain, starts, cfg, progress=False, checkpoint_dir=tmp_path)
    np.testing.assert_array_equal(again.samples, ch.samples)
    np.testing.assert_array_equal(again.step_size, ch.step_size)
    # A checkpoint of the same groups warmed up one by one is another run's.
    with pytest.raises(ValueError, match="checkpoint_dir.*pool_warmup: True there, False here"):
        inf.sample(one_chain, starts, dataclasses.replace(cfg, pool_warmup=False), progress=False,
                   checkpoint_dir=tmp_path)
    assert not list(tmp_path.glob("group*/warmup.npz"))  # refused before any group warmed up


@pytest.mark.parametrize("pool_warmup", [True, False])
def test_chain_groups_read_and_extend_checkpoints_whose_identity_held_num_samples(tmp_path, monkeypatch, pool_warmup):
    # Checkpoints written before num_samples left the identity: written here by a sampler whose identity
    # still holds it.
    from tfhalo.inference import sampler as sampler_module

    cfg = sampler_config(kernel="hmc", num_chains=4, chain_groups=2, pool_warmup=pool_warmup, num_warmup=20,
                         num_samples=20, block_size=10)
    starts = _starts(7)
    with monkeypatch.context() as m:
        m.setattr(sampler_module, "checkpoint_identity", lambda config, extendable=True: config.chain_fields())
        m.setattr(sampler_module, "_bijector_probe", lambda *args: b"")  # nor the bijector's values
        old = inf.sample(LOG_PROB, starts, cfg, progress=False, checkpoint_dir=tmp_path)
    stamps = {f: f.stat().st_mtime_ns for f in tmp_path.rglob("*.npz")}
    longer = dataclasses.replace(cfg, num_samples=30)
    extended = inf.sample(LOG_PROB, starts, longer, progress=False, checkpoint_dir=tmp_path)
    assert all(f.stat().st_mtime_ns == t for f, t in stamps.items())  # read back, not sampled again
    np.testing.assert_array_equal(extended.samples[:20], old.samples)
    np.testing.assert_array_equal(extended.samples, inf.sample(LOG_PROB, starts, longer, progress=False).samples)


def test_chain_groups_raise_a_group_error_in_the_caller():
    def log_prob(x):  # finite at the starts of group 0 only
        return tf.where(x[:, 0] > 100.0, tf.constant(np.nan, tf.float64), -0.5 * tf.reduce_sum(x**2, axis=-1))

    init = np.zeros((4, 2))
    init[3, 0] = 200.0
    with pytest.raises(ValueError, match="log_prob_fn must be finite at initial_state"):
        inf.sample(log_prob, init, sampler_config(chain_groups=2), progress=False)


@pytest.mark.parametrize("kwargs, match", [
    (dict(kernel="mala"), "kernel must be one of"),
    (dict(num_chains=0), "num_chains must be at least 1"),
    (dict(num_warmup=-5), "num_warmup must be at least 0"),
    (dict(num_warmup=10), "num_warmup must be 0 .* or at least 20"),
    (dict(num_samples=2), r"num_samples must be at least 4 .*Received: num_samples=2"),
    (dict(num_samples=2.5), "num_samples must be an integer"),
    (dict(target_accept=1.0), "target_accept must lie in"),
    (dict(target_accept=float("nan")), "target_accept must be a finite number"),
    (dict(max_tree_depth=0), "max_tree_depth must be at least 1"),
    (dict(num_leapfrog_steps=0), "num_leapfrog_steps must be at least 1. Received: num_leapfrog_steps=0"),
    (dict(init_step_size=0.0), "init_step_size must be positive"),
    (dict(seed=-1), "seed must be at least 0"),
    (dict(seed=2**64), "seed must be at most"),
    (dict(jit_compile="yes"), "jit_compile must be True or False"),
    (dict(block_size=0), "block_size must be at least 1"),
    (dict(chain_groups=0), "chain_groups must be at least 1"),
    (dict(num_chains=4, chain_groups=3), "num_chains must be a multiple of chain_groups=3"),
    (dict(num_chains=4, chain_groups=2, devices=2), "use one of them"),
    (dict(pool_warmup=1), "pool_warmup must be True or False. Received: pool_warmup=1"),
    (dict(max_leapfrog_steps=0), "max_leapfrog_steps must be at least 1. Received: max_leapfrog_steps=0"),
    (dict(step_scale=0.0), "step_scale must be positive. Received: step_scale=0.0"),
    (dict(step_scale=1.5), r"step_scale must lie in \(0, 1\] .*Received: step_scale=1.5"),
    (dict(step_scale=float("inf")), "step_scale must be a finite number"),
    (dict(kernel="chees", num_chains=1), r"at least 2 chains per batch .*num_chains=1, chain_groups=1"),
    (dict(kernel="chees", num_chains=4, chain_groups=4), r"at least 2 chains per batch .*chain_groups=4"),
])
def test_bad_config_raises_naming_the_field(kwargs, match):
    with pytest.raises(ValueError, match=match):
        inf.SamplerConfig(**kwargs)


def test_config_normalises_integral_floats():
    cfg = inf.SamplerConfig(num_samples=8.0, num_warmup=20.0)
    assert cfg.num_samples == 8 and isinstance(cfg.num_samples, int)


def _scalar_log_prob(x):
    return -0.5 * tf.reduce_sum(x**2)


@pytest.mark.parametrize("args, kwargs, match", [
    ((LOG_PROB, np.zeros((3, P))), {}, r"initial_state must have shape \(num_chains=4, P\)"),
    ((LOG_PROB, np.zeros(P)), {}, "initial_state must have shape"),
    ((LOG_PROB, np.where(np.eye(4, P) > 0, np.nan, 0.0)), {}, r"initial_state must be finite.*chains \[0, 1, 2, 3\]"),
    ((LOG_PROB, [["a"] * P] * 4), {}, "initial_state must be a"),
    ((_scalar_log_prob, np.zeros((4, P))), {}, r"log_prob_fn must map a \(C, P\) batch to \(C,\).*initial_state"),
    ((lambda x: tf.cast(LOG_PROB(x), tf.float32), np.zeros((4, P))), {}, "float64.*initial_state"),
    ((lambda x: LOG_PROB(x) + tf.math.log(x[:, 0]), np.zeros((4, P))), {},
     "log_prob_fn must be finite at initial_state"),
    ((lambda x: tf.constant(np.zeros(4)), np.zeros((4, P))), {}, "gradient of log_prob_fn"),
    ((LOG_PROB, -np.ones((4, P))), dict(bijector=tfb.Exp()), "initial_state must lie in the bijector's image"),
    ((LOG_PROB, np.zeros((4, P))), dict(bijector="exp"), "bijector must be a tfp.bijectors.Bijector"),
    ((LOG_PROB, np.zeros((4, P))), dict(progress="no"), "progress must be True or False"),
    ((LOG_PROB, np.zeros((4, P))), dict(checkpoint_dir=""), "checkpoint_dir must be a directory path"),
    (("not callable", np.zeros((4, P))), {}, "log_prob_fn must be callable"),
])
def test_bad_inputs_raise_before_sampling(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        inf.sample(*args, sampler_config(), **kwargs)


def test_bad_config_object_and_checkpoint_file(tmp_path):
    with pytest.raises(ValueError, match="config must be a SamplerConfig"):
        inf.sample(LOG_PROB, np.zeros((4, P)), {"kernel": "nuts"})
    path = tmp_path / "file.txt"
    path.write_text("x")
    with pytest.raises(ValueError, match="checkpoint_dir must be a directory, not a file"):
        inf.sample(LOG_PROB, np.zeros((4, P)), sampler_config(), checkpoint_dir=path)
    assert path.read_text() == "x"


def test_batched_unrolls_over_chains():
    f = inf.batched(lambda x: tf.reduce_sum(x**2) + x[0], 3)
    x = np.arange(6.0).reshape(3, 2)
    np.testing.assert_allclose(f(tf.constant(x)).numpy(), (x**2).sum(axis=1) + x[:, 0])
    with pytest.raises(ValueError, match="num_chains must be at least 1"):
        inf.batched(lambda x: x, 0)
