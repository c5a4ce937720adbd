"""tfhalo.inference on the current Keras backend (run under KERAS_BACKEND=tensorflow and =jax).

The targets are written in ``keras.ops``, so the same test runs on TFP's
TensorFlow substrate and on its JAX substrate (:mod:`tfhalo.backend`).
Statistical checks compare a Monte Carlo estimate of E[f] with its exact value
within ``tests.helpers.mcmc.N_SIGMA`` Monte Carlo standard errors ``sd(f) / sqrt(ESS(f))`` (ArviZ's
bulk ESS), so they hold on any machine whatever the rounding.  The two
backends' random streams differ: the same seed gives the same chains within a
backend, which is what is tested.
"""

import os
import textwrap

import numpy as np
import pytest
from keras import ops

import tfhalo.inference as inf
from tests.helpers.mcmc import check_gaussian, sampler_config
from tests.helpers.backend import run_under_jax_without_tensorflow
from tfhalo import backend

P = 3


def _gaussian(seed=0, p=P):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(p, p))
    # Correlated (condition number ~1e2): the diagonal mass matrix alone cannot whiten it.
    cov = a @ a.T + np.diag(np.logspace(-1, 0.5, p))
    mean = 2.0 * rng.normal(size=p)
    prec = np.linalg.inv(cov)

    def log_prob(x):  # (C, P) -> (C,), in keras.ops: either backend
        d = x - ops.convert_to_tensor(mean)
        return -0.5 * ops.sum(d * ops.matmul(d, ops.convert_to_tensor(prec)), axis=-1)

    return mean, cov, log_prob


MEAN, COV, LOG_PROB = _gaussian()


def _starts(seed, c=4):
    return MEAN + np.random.default_rng(seed).normal(size=(c, P))


def _assert_same_chains(a, b):
    np.testing.assert_array_equal(a.samples, b.samples)
    assert a.sample_stats.keys() == b.sample_stats.keys()
    for k, v in a.sample_stats.items():
        np.testing.assert_array_equal(b.sample_stats[k], v)
    assert a.step_size == b.step_size
    np.testing.assert_array_equal(a.inverse_mass_matrix, b.inverse_mass_matrix)


@pytest.fixture(scope="module")
def nuts_chains():
    return inf.sample(LOG_PROB, _starts(2), sampler_config(kernel="nuts"), progress=False)


def test_backend_primitives():
    x = np.array([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]])
    value, grad = backend.value_and_gradient(lambda t: ops.sum(ops.exp(t) * t, axis=-1), backend.constant(x))
    # float64 throughout (float32 would miss these tolerances by 1e6).
    np.testing.assert_allclose(backend.to_numpy(value), (np.exp(x) * x).sum(axis=1), rtol=1e-13)
    np.testing.assert_allclose(backend.to_numpy(grad), np.exp(x) * (x + 1.0), rtol=1e-13)
    # The Python value at a static position fixes the trace; each value gives its own result.
    f = backend.jit(lambda t, n: t * n, static_argnums=(1,))
    assert [float(backend.to_numpy(f(backend.constant(1.5), n))) for n in (2, 3)] == [3.0, 4.5]
    words = np.array([7, 2**32 - 1], np.uint32)
    seed = backend.to_numpy(backend.stateless_seed(words))
    assert seed.dtype == (np.uint32 if backend.NAME == "jax" else np.int32)
    np.testing.assert_array_equal(seed.view(np.uint32), words)
    with pytest.raises(ValueError, match="words must be two 32-bit integers"):
        backend.stateless_seed(np.arange(3))


def test_a_function_traced_once_serves_every_compiled_caller_with_its_gradient():
    # The sampler's compiled blocks all call the log-density; TensorFlow would trace it at every call site.
    calls = []

    def fn(t):
        calls.append(1)
        return ops.sum(ops.exp(t) * t, axis=-1)

    shared = backend.traced_once(fn)
    x = np.array([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]])
    first = backend.jit(lambda t: backend.value_and_gradient(shared, t), jit_compile=False)
    second = backend.jit(lambda t: 2.0 * shared(t), jit_compile=False)
    value, grad = first(backend.constant(x))
    twice = second(backend.constant(x))
    np.testing.assert_allclose(backend.to_numpy(value), (np.exp(x) * x).sum(axis=1), rtol=1e-13)
    np.testing.assert_allclose(backend.to_numpy(grad), np.exp(x) * (x + 1.0), rtol=1e-13)
    np.testing.assert_allclose(backend.to_numpy(twice), 2.0 * (np.exp(x) * x).sum(axis=1), rtol=1e-13)
    # TensorFlow: one trace for both graphs; JAX traces each jitted caller (and caches each)
    assert len(calls) == (1 if backend.NAME == "tensorflow" else 2)
    assert backend.traced_once(shared) is shared  # wrapped once, shared by whoever wraps it again
    # As one program it gives what the function gives, in float64
    whole = backend.as_one_program(lambda t: backend.value_and_gradient(fn, t))
    v1, g1 = whole(backend.constant(x))
    np.testing.assert_allclose(backend.to_numpy(v1), backend.to_numpy(value), rtol=1e-13)
    np.testing.assert_allclose(backend.to_numpy(g1), backend.to_numpy(grad), rtol=1e-13)
    assert backend.to_numpy(g1).dtype == np.float64


def test_the_starts_checks_are_the_target_and_its_gradient_kept_per_target_and_bijector_under_jax():
    import dataclasses

    from tfhalo.inference import sampler

    @dataclasses.dataclass
    class Target:  # a dataclass with __eq__ has no __hash__: jax.jit cannot key a compilation on it
        w: float

        def __call__(self, theta):
            return -0.5 * self.w * ops.sum(theta**2, axis=-1)

    tfb = backend.tfp.bijectors
    scale = np.array([0.5, 2.0, 3.0])
    bijector = tfb.Chain([tfb.Shift(backend.constant(np.ones(P))), tfb.Scale(backend.constant(scale))])
    z = np.array([[0.1, -0.2, 0.3], [1.0, 0.5, -2.0]])
    theta = 1.0 + scale * z
    for target in (Target(2.0), lambda t: -0.5 * 2.0 * ops.sum(t**2, axis=-1)):
        first = sampler._check_programs(target, bijector)
        value, target_and_gradient = first
        np.testing.assert_allclose(backend.to_numpy(value(backend.constant(theta))), -(theta**2).sum(-1),
                                   rtol=1e-13)
        lp, grad = target_and_gradient(backend.constant(z))
        # in the sampling coordinates: the Jacobian's log-determinant added, the chain rule through the scale
        np.testing.assert_allclose(backend.to_numpy(lp), -(theta**2).sum(-1) + np.log(scale).sum(), rtol=1e-13)
        np.testing.assert_allclose(backend.to_numpy(grad), -2.0 * theta * scale, rtol=1e-13)
        again = sampler._check_programs(target, bijector)
        other = sampler._check_programs(target, tfb.Scale(backend.constant(scale)))
        # Compiled programs are kept for a hashable target under JAX; TensorFlow checks eagerly and keeps none.
        kept = backend.NAME == "jax" and not isinstance(target, Target)
        assert (again is first) == kept
        assert other is not first  # another bijector: other programs


def test_compiled_functions_of_one_closure_do_not_warn_of_retracing():
    # The sampler compiles one function per (target, bijector, config) from the same closure; each
    # traces once, which TensorFlow's per-code-object counter would report as frequent retracing.
    import logging

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logger = logging.getLogger("tensorflow")
    logger.addHandler(handler)
    try:
        def make(scale):
            return backend.jit(lambda t: t * scale)

        values = [float(backend.to_numpy(make(k)(backend.constant(np.ones(k)))).sum()) for k in range(1, 9)]
    finally:
        logger.removeHandler(handler)
    assert values == [float(k * k) for k in range(1, 9)]
    assert not [r for r in records if "retracing" in r.getMessage()]


def test_batched_equals_the_per_chain_values():
    f = inf.batched(lambda t: ops.sum(t**2) + t[0], 3)
    x = np.arange(6.0).reshape(3, 2)
    out = f(backend.constant(x))
    np.testing.assert_allclose(backend.to_numpy(out), (x**2).sum(axis=1) + x[:, 0], rtol=1e-15)
    # batched targets are sampled as any (C, P) -> (C,) target.
    lp = inf.batched(lambda t: -0.5 * ops.sum(t**2), 4)
    config = sampler_config(kernel="hmc", num_warmup=0, num_samples=4, num_leapfrog_steps=2, init_step_size=0.5)
    ch = inf.sample(lp, np.zeros((4, 2)), config, progress=False)
    assert ch.samples.shape == (4, 4, 2) and np.all(np.isfinite(ch.samples))


def test_nuts_recovers_correlated_gaussian(nuts_chains):
    ch = nuts_chains
    assert ch.samples.shape == (400, 4, P) and ch.samples.dtype == np.float64
    check_gaussian(ch.samples, MEAN, COV)
    assert not ch.sample_stats["diverging"].any()
    np.testing.assert_allclose(ch.inverse_mass_matrix, np.diag(COV), rtol=0.5)
    s = ch.sample_stats
    lp = np.stack([backend.to_numpy(LOG_PROB(backend.constant(x))) for x in ch.samples])
    np.testing.assert_allclose(s["lp"], lp, rtol=1e-10, atol=1e-10)
    assert np.all(s["n_steps"] <= 2 ** s["tree_depth"] - 1) and np.all(s["n_steps"] >= 2 ** (s["tree_depth"] - 1))
    assert 0.6 < s["acceptance_rate"].mean() < 0.97


def test_hmc_with_affine_preconditioner_recovers_the_same_gaussian():
    bij = inf.affine_preconditioner(MEAN, np.linalg.inv(COV))
    ch = inf.sample(LOG_PROB, _starts(3), sampler_config(kernel="hmc", num_leapfrog_steps=2), bijector=bij,
                    progress=False)
    check_gaussian(ch.samples, MEAN, COV)
    np.testing.assert_array_equal(ch.sample_stats["n_steps"], 2)
    np.testing.assert_allclose(ch.inverse_mass_matrix, 1.0, rtol=0.5)
    # lp includes ln|d theta / d z| = ln det chol(COV), a constant for the affine map.
    lp = np.stack([backend.to_numpy(LOG_PROB(backend.constant(x))) for x in ch.samples])
    np.testing.assert_allclose(ch.sample_stats["lp"] - lp, np.log(np.diag(np.linalg.cholesky(COV))).sum(), atol=1e-8)
    assert ch.n_gradient_evaluations == 1 + 200 * 2 + 4 * (1 + 100 * 2)


def test_same_seed_same_chains_other_seed_other_chains(nuts_chains):
    _assert_same_chains(nuts_chains, inf.sample(LOG_PROB, _starts(2), sampler_config(kernel="nuts"), progress=False))
    other = inf.sample(LOG_PROB, _starts(2), sampler_config(kernel="nuts", seed=2), progress=False)
    assert not np.allclose(other.samples, nuts_chains.samples)


def test_checkpoint_resume_equals_uninterrupted_run(tmp_path, nuts_chains):
    cfg = sampler_config(kernel="nuts")
    full = inf.sample(LOG_PROB, _starts(2), cfg, progress=False, checkpoint_dir=tmp_path)
    _assert_same_chains(nuts_chains, full)
    # An interruption after two sampling blocks leaves exactly these files.
    for name in ("block_00002.npz", "block_00003.npz"):
        (tmp_path / name).unlink()
    resumed = inf.sample(LOG_PROB, _starts(2), cfg, progress=False, checkpoint_dir=tmp_path)
    _assert_same_chains(nuts_chains, resumed)
    assert sorted(os.listdir(tmp_path)) == ["block_00000.npz", "block_00001.npz", "block_00002.npz",
                                            "block_00003.npz", "warmup.npz"]
    # A checkpoint of the other backend (another random stream, so another fingerprint) is refused.
    with np.load(tmp_path / "warmup.npz") as f:
        warm = {k: f[k] for k in f.files}
    assert str(warm["backend"]) == backend.NAME
    other = "tensorflow" if backend.NAME == "jax" else "jax"
    np.savez(tmp_path / "warmup.npz", **dict(warm, backend=np.array(other), fingerprint=np.array("0" * 64)))
    with pytest.raises(ValueError, match=f"checkpoint_dir.*written on the {other} backend, this run is on "
                                         f"{backend.NAME}"):
        inf.sample(LOG_PROB, _starts(2), cfg, progress=False, checkpoint_dir=tmp_path)


def test_more_kept_draws_extend_a_checkpointed_run(tmp_path, nuts_chains):
    cfg = sampler_config(kernel="nuts")
    short = sampler_config(kernel="nuts", num_samples=250)  # blocks of 100, 100 and 50
    first = inf.sample(LOG_PROB, _starts(2), short, progress=False, checkpoint_dir=tmp_path)
    np.testing.assert_array_equal(first.samples, nuts_chains.samples[:250])
    kept = {f.name: f.stat().st_mtime_ns for f in tmp_path.glob("*.npz")}
    extended = inf.sample(LOG_PROB, _starts(2), cfg, progress=False, checkpoint_dir=tmp_path)
    _assert_same_chains(nuts_chains, extended)
    now = {f.name: f.stat().st_mtime_ns for f in tmp_path.glob("*.npz")}
    # The warm-up and the two full blocks were reused; the short third block was sampled again, whole.
    assert {n for n, t in kept.items() if now[n] != t} == {"block_00002.npz"}
    assert sorted(now) == ["block_00000.npz", "block_00001.npz", "block_00002.npz", "block_00003.npz",
                           "warmup.npz"]


@pytest.fixture(scope="module")
def chees_chains():
    return inf.sample(LOG_PROB, _starts(5), sampler_config(kernel="chees", max_leapfrog_steps=64), progress=False)


def test_chees_recovers_correlated_gaussian(chees_chains):
    ch = chees_chains
    check_gaussian(ch.samples, MEAN, COV)
    assert not ch.sample_stats["diverging"].any()
    np.testing.assert_allclose(ch.inverse_mass_matrix, np.diag(COV), rtol=0.5)
    s = ch.sample_stats
    assert "tree_depth" not in s
    lp = np.stack([backend.to_numpy(LOG_PROB(backend.constant(x))) for x in ch.samples])
    np.testing.assert_allclose(s["lp"], lp, rtol=1e-10, atol=1e-10)
    # Every chain of a batch takes the same jittered number of steps, ceil(u T / step) with u in (0, 1].
    assert np.all(s["n_steps"] == s["n_steps"][:, :1])
    length, step = ch.trajectory_length, ch.step_size
    assert np.isfinite(length) and length > step
    assert s["n_steps"].min() >= 1 and s["n_steps"].max() <= min(np.ceil(length / step), 64)
    assert len(np.unique(s["n_steps"][:, 0])) > 1
    # Uniform jitter: the mean length is T / 2 (to within the ceil), over 400 independent draws of u.
    mean_steps = s["n_steps"][:, 0].mean()
    assert abs(mean_steps - (length / step / 2 + 0.5)) < 4 * (length / step) / np.sqrt(12 * 400) + 0.5
    # Gradients: warm-up and sampling steps, plus one bootstrap per sampling block.
    assert ch.n_gradient_evaluations > s["n_steps"][:, 0].sum() + 4
    assert 0.6 < s["acceptance_rate"].mean() < 0.97
    idata = ch.to_inference_data()
    assert idata.posterior.attrs["trajectory_length"] == length
    assert "trajectory_length" not in inf.sample(LOG_PROB, _starts(2), sampler_config(kernel="hmc", num_samples=4),
                                                 progress=False).to_inference_data().posterior.attrs


def test_chees_resume_equals_uninterrupted_run(tmp_path, chees_chains):
    cfg = sampler_config(kernel="chees", max_leapfrog_steps=64)
    full = inf.sample(LOG_PROB, _starts(5), cfg, progress=False, checkpoint_dir=tmp_path)
    _assert_same_chains(chees_chains, full)
    with np.load(tmp_path / "warmup.npz") as f:
        assert float(f["trajectory_length"]) == chees_chains.trajectory_length
    for name in ("block_00001.npz", "block_00002.npz", "block_00003.npz"):
        (tmp_path / name).unlink()
    resumed = inf.sample(LOG_PROB, _starts(5), cfg, progress=False, checkpoint_dir=tmp_path)
    _assert_same_chains(chees_chains, resumed)
    assert resumed.trajectory_length == chees_chains.trajectory_length
    # The cap is part of a ChEES run's identity only.
    with pytest.raises(ValueError, match="checkpoint_dir.*max_leapfrog_steps: 64 there, 32 here"):
        inf.sample(LOG_PROB, _starts(5), sampler_config(kernel="chees", max_leapfrog_steps=32), progress=False,
                   checkpoint_dir=tmp_path)
    assert "max_leapfrog_steps" not in sampler_config(kernel="nuts").chain_fields()


def test_bad_bijector_and_start_are_refused_before_sampling():
    with pytest.raises(ValueError, match=f"bijector must be a tfp.bijectors.Bijector .TFP's {backend.NAME}"):
        inf.sample(LOG_PROB, _starts(2), sampler_config(), bijector="exp")
    with pytest.raises(ValueError, match="initial_state must lie in the bijector's image"):
        inf.sample(LOG_PROB, -np.ones((4, P)), sampler_config(), bijector=backend.tfp.bijectors.Exp())
    with pytest.raises(ValueError, match="float64"):
        inf.sample(lambda x: ops.cast(LOG_PROB(x), "float32"), _starts(2), sampler_config())


_NO_TF_SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    from keras import ops
    import tfhalo.inference as inf

    cfg = inf.SamplerConfig(kernel="hmc", num_chains=2, num_warmup=20, num_samples=4, num_leapfrog_steps=2,
                            block_size=10, seed=3)
    bij = inf.affine_preconditioner(np.zeros(2), np.eye(2))
    ch = inf.sample(lambda x: -0.5 * ops.sum(x**2, axis=-1), np.zeros((2, 2)), cfg, bijector=bij, progress=False)
    summary = inf.convergence_summary(ch.to_inference_data())
    tf_modules = sorted(m for m in sys.modules if m == "tensorflow" or m.startswith("tensorflow."))
    print(json.dumps(dict(shape=list(ch.samples.shape), finite=bool(np.isfinite(ch.samples).all()),
                          n_draws=summary["n_draws"], substrate=inf.sampler.tfp.__name__,
                          tf_modules=tf_modules[:10])))
""")


def test_jax_backend_loads_no_tensorflow():
    result = run_under_jax_without_tensorflow(_NO_TF_SCRIPT)
    assert result["shape"] == [4, 2, 2] and result["finite"] and result["n_draws"] == 4
    assert result["substrate"] == "tensorflow_probability.substrates.jax"


def test_pooled_warmup_then_groups_on_this_backend(tmp_path):
    # One chain per group, warmed up as one batch: every group samples with the one adapted kernel,
    # and the joined chains recover the target; a resumed run repeats them.
    def one_chain(x):
        assert x.shape[0] == 1, x.shape
        return LOG_PROB(x)

    cfg = sampler_config(kernel="nuts", chain_groups=4, jit_compile=True)
    ch = inf.sample(one_chain, _starts(7), cfg, progress=False, checkpoint_dir=tmp_path)
    assert np.unique(ch.step_size).size == 1 and np.unique(ch.inverse_mass_matrix, axis=0).shape[0] == 1
    check_gaussian(ch.samples, MEAN, COV)
    (tmp_path / "group1" / "block_00002.npz").unlink()
    again = inf.sample(one_chain, _starts(7), cfg, progress=False, checkpoint_dir=tmp_path)
    np.testing.assert_array_equal(again.samples, ch.samples)


def test_step_scale_samples_with_that_fraction_of_the_adapted_step(nuts_chains):
    # The warm-up does not see the scale, so the same seed adapts the same step; the kept draws
    # take half of it (exact in floating point), stay an exact chain of the target, and NUTS
    # lengthens its trees to reach the same U-turn.  The full-step run is the module's NUTS run.
    full = nuts_chains
    half = inf.sample(LOG_PROB, _starts(2), sampler_config(kernel="nuts", step_scale=0.5), progress=False)
    np.testing.assert_array_equal(np.asarray(half.step_size), 0.5 * np.asarray(full.step_size))
    np.testing.assert_array_equal(half.inverse_mass_matrix, full.inverse_mass_matrix)
    np.testing.assert_array_equal(half.sample_stats["step_size"],
                                  np.broadcast_to(half.step_size, half.samples.shape[:2]))
    check_gaussian(half.samples, MEAN, COV)
    assert half.sample_stats["n_steps"].mean() > 1.5 * full.sample_stats["n_steps"].mean()
    assert half.sample_stats["acceptance_rate"].mean() > full.sample_stats["acceptance_rate"].mean()
    # A run at the adapted step keeps the identity (checkpoints, caches) it had before the scale existed.
    assert "step_scale" not in full.config.chain_fields() and half.config.chain_fields()["step_scale"] == 0.5


def test_the_step_scale_shares_the_compiled_chains_and_the_kernel_does_not():
    # The scale multiplies the step passed in, so it enters no traced program (compiling is lazy: nothing
    # here traces); the kernel does.
    from tfhalo.inference import sampler as sampler_module

    cfg = sampler_config(kernel="nuts")
    compiled = sampler_module._compiled(LOG_PROB, None, cfg)
    assert sampler_module._compiled(LOG_PROB, None, sampler_config(kernel="nuts", step_scale=0.5)) is compiled
    assert sampler_module._compiled(LOG_PROB, None, sampler_config(kernel="hmc")) is not compiled


def test_step_scale_scales_each_chain_groups_own_adapted_step():
    # Chain groups warm up alone, each to its own step: every group samples at that fraction of its own.
    # Short HMC chains: what is checked is the steps, not the draws (the test above checks those).
    kwargs = dict(kernel="hmc", num_leapfrog_steps=3, chain_groups=2, num_warmup=40, num_samples=10, block_size=10)
    full = inf.sample(LOG_PROB, _starts(2), sampler_config(**kwargs), progress=False)
    half = inf.sample(LOG_PROB, _starts(2), sampler_config(step_scale=0.5, **kwargs), progress=False)
    steps = np.asarray(full.step_size)
    assert steps.shape == (2,)
    np.testing.assert_array_equal(np.asarray(half.step_size), 0.5 * steps)
    np.testing.assert_array_equal(half.inverse_mass_matrix, full.inverse_mass_matrix)
    np.testing.assert_array_equal(half.sample_stats["step_size"], np.broadcast_to(np.repeat(0.5 * steps, 2), (10, 4)))
    assert np.all(np.isfinite(half.samples)) and not np.array_equal(half.samples, full.samples)
