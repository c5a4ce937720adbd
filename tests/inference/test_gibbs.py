"""tfhalo.inference.gibbs: blocked sampling from TFP kernels, on the current Keras backend.

The statistical checks compare draws with an exact Gaussian posterior within
``tests.helpers.mcmc.N_SIGMA`` Monte Carlo standard errors (ArviZ bulk ESS), so
they hold on any machine whatever its rounding.
"""

import json

import numpy as np
import pytest
from keras import ops

from tests.helpers.mcmc import check_gaussian
from tfhalo import backend
from tfhalo.inference import BlockCarry, GibbsConfig, GibbsKernel, affine_preconditioner, sample_gibbs

tfp = backend.tfp
P = 5


def _gaussian(seed=3):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(P, P))
    # Strongly correlated across the two blocks: a sweep must still sample the joint, not the conditionals.
    cov = a @ a.T / P + 0.3 * np.eye(P)
    mean = rng.normal(size=P)
    prec = np.linalg.inv(cov)

    def log_prob(x):
        d = x - ops.convert_to_tensor(mean)
        return -0.5 * ops.sum(d * ops.matmul(d, ops.convert_to_tensor(prec)), axis=-1)

    return mean, cov, prec, log_prob


def _hmc(adapt=150):
    def make(f):
        hmc = tfp.mcmc.HamiltonianMonteCarlo(f, step_size=0.3, num_leapfrog_steps=4)
        return tfp.mcmc.DualAveragingStepSizeAdaptation(hmc, num_adaptation_steps=adapt,
                                                        target_accept_prob=backend.constant(0.75))
    return make


def _slice(f):
    return tfp.mcmc.SliceSampler(f, step_size=1.0, max_doublings=5)


def _config(**kw):
    base = dict(num_chains=4, num_warmup=200, num_samples=1000, seed=2, block_size=1000, jit_compile=False)
    base.update(kw)
    return GibbsConfig(**base)


def test_hmc_and_slice_blocks_sample_the_joint_gaussian():
    mean, cov, _, log_prob = _gaussian()
    kernel = GibbsKernel(log_prob, [3, 2], [_hmc(), _slice], steps_per_sweep=[1, 2])
    chains = sample_gibbs(kernel, np.zeros((4, P)), _config(), progress=False)
    assert chains.samples.shape == (1000, 4, P)
    check_gaussian(chains.samples, mean, cov)
    stats = chains.sample_stats
    assert not stats["diverging"].any()
    # Only the HMC block reports divergences; the slice sampler has no energy error.
    assert np.array_equal(stats["diverging"], stats["diverging_0"]) and "diverging_1" not in stats
    # The HMC block's step size adapted, then stayed frozen over the kept sweeps.
    assert np.ptp(stats["step_size_0"]) == 0.0 and stats["step_size_0"][0, 0] != pytest.approx(0.3)
    assert 0.5 < stats["acceptance_rate_0"].mean() <= 1.0


# Compiled, a gradient-based kernel in a later block differentiates its conditional with the earlier
# blocks' new values held constant; differentiating through the loops that moved them does not compile.
@pytest.mark.parametrize("jit_compile", [False, True])
def test_hmc_and_adaptive_nuts_blocks_sample_the_joint_gaussian(jit_compile):
    # The field-level study's blocked sampler with bias_kernel="nuts": NUTS whose step size adapts
    # over its own transitions (two per sweep here), then stays frozen.
    mean, cov, _, log_prob = _gaussian(seed=5)

    def nuts(f):
        inner = tfp.mcmc.NoUTurnSampler(f, step_size=backend.constant(0.1), max_tree_depth=5)
        return tfp.mcmc.DualAveragingStepSizeAdaptation(inner, num_adaptation_steps=2 * 150,
                                                        target_accept_prob=backend.constant(0.9))

    kernel = GibbsKernel(log_prob, [3, 2], [_hmc(), nuts], steps_per_sweep=[1, 2])
    chains = sample_gibbs(kernel, np.zeros((4, P)), _config(jit_compile=jit_compile), progress=False)
    check_gaussian(chains.samples, mean, cov)
    stats = chains.sample_stats
    assert not stats["diverging"].any()
    assert np.array_equal(stats["diverging"], stats["diverging_0"] | stats["diverging_1"])
    assert np.ptp(stats["step_size_1"]) == 0.0 and stats["step_size_1"][0, 0] != pytest.approx(0.1)


def test_divergences_are_reported_per_block():
    _, _, _, log_prob = _gaussian()

    def hmc(step):
        return lambda f: tfp.mcmc.HamiltonianMonteCarlo(f, step_size=step, num_leapfrog_steps=4)

    # A step far past the stability limit of leapfrog on this target diverges; a small one does not.
    kernel = GibbsKernel(log_prob, [3, 2], [hmc(50.0), hmc(0.05)])
    chains = sample_gibbs(kernel, np.zeros((4, P)), _config(num_warmup=0, num_samples=20), progress=False)
    stats = chains.sample_stats
    assert stats["diverging_0"].all() and not stats["diverging_1"].any()
    assert np.array_equal(stats["diverging"], stats["diverging_0"] | stats["diverging_1"])


def test_bijector_and_cached_conditional_give_the_same_posterior():
    """Block 2 in the whitened coordinates of its exact conditional, with the conditional supplied by hand,
    moved by random-walk Metropolis."""
    mean, cov, prec, log_prob = _gaussian()
    # Conditional of block 2 given block 1: Normal with precision prec[3:, 3:].
    p22 = prec[3:, 3:]

    def conditional_2(blocks):
        d1 = blocks[0] - ops.convert_to_tensor(mean[:3])
        shift = ops.matmul(d1, ops.convert_to_tensor(prec[:3, 3:]))  # (C, 2)

        def f(x2):
            d2 = x2 - ops.convert_to_tensor(mean[3:])
            return -0.5 * ops.sum(d2 * ops.matmul(d2, ops.convert_to_tensor(p22)), axis=-1) - ops.sum(d2 * shift, -1)

        return f

    bij = affine_preconditioner(mean[3:], hessian=p22)

    def rwm(f):  # unit-scale random walk: the block's whitened conditional is N(., I)
        return tfp.mcmc.RandomWalkMetropolis(f, new_state_fn=tfp.mcmc.random_walk_normal_fn(scale=1.0))

    kernel = GibbsKernel(log_prob, [3, 2], [_hmc(), rwm], conditional_fns=[None, conditional_2],
                         bijectors=[None, bij], steps_per_sweep=[1, 3])
    chains = sample_gibbs(kernel, np.tile(mean, (4, 1)), _config(seed=5), progress=False)
    check_gaussian(chains.samples, mean, cov)
    z = backend.to_numpy(kernel.inverse(backend.constant(chains.samples[-1])))
    np.testing.assert_allclose(backend.to_numpy(kernel.forward(backend.constant(z))), chains.samples[-1],
                               rtol=1e-12, atol=1e-12)


def test_same_seed_same_chains_and_another_seed_other_chains():
    _, _, _, log_prob = _gaussian()
    kernel = GibbsKernel(log_prob, [3, 2], [_hmc(20), _slice])
    cfg = _config(num_warmup=20, num_samples=10, block_size=10)
    a = sample_gibbs(kernel, np.zeros((4, P)), cfg, progress=False).samples
    b = sample_gibbs(kernel, np.zeros((4, P)), cfg, progress=False).samples
    c = sample_gibbs(kernel, np.zeros((4, P)), _config(num_warmup=20, num_samples=10, block_size=10, seed=9), progress=False).samples
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)


def test_a_kernels_compiled_sweep_is_reused_and_another_kernels_is_not():
    # Compiling is lazy: nothing here traces. A kernel fixes the traced program, so its compiled
    # functions serve every later call; an equal but distinct kernel gets its own.
    from tfhalo.inference import gibbs as gibbs_module

    _, _, _, log_prob = _gaussian()
    kernel = GibbsKernel(log_prob, [3, 2], [_hmc(10), _slice])
    first = gibbs_module._compiled_sweeps(kernel, False)
    assert all(a is b for a, b in zip(first, gibbs_module._compiled_sweeps(kernel, False)))
    assert gibbs_module._compiled_sweeps(kernel, True)[1] is not first[1]
    other = gibbs_module._compiled_sweeps(GibbsKernel(log_prob, [3, 2], [_hmc(10), _slice]), False)
    assert other[1] is not first[1]


def test_a_resumed_run_repeats_an_uninterrupted_one(tmp_path):
    # The HMC block adapts its step size during warm-up (150 sweeps here), so a resume in
    # warm-up must restore the adaptation state as well as the chains' state.
    _, _, _, log_prob = _gaussian()
    kernel = GibbsKernel(log_prob, [3, 2], [_hmc(30), _slice])
    cfg = _config(num_warmup=40, num_samples=20, block_size=10)
    plain = sample_gibbs(kernel, np.zeros((4, P)), cfg, progress=False)
    ckpt = tmp_path / "ckpt"
    full = sample_gibbs(kernel, np.zeros((4, P)), cfg, progress=False, checkpoint_dir=ckpt)
    np.testing.assert_array_equal(full.samples, plain.samples)
    files = sorted(ckpt.glob("block_*.npz"))
    assert len(files) == 6
    # Interrupted after the second warm-up block: the later blocks are missing.
    for f in files[2:]:
        f.unlink()
    resumed = sample_gibbs(kernel, np.zeros((4, P)), cfg, progress=False, checkpoint_dir=ckpt)
    np.testing.assert_array_equal(resumed.samples, plain.samples)
    for k in plain.sample_stats:
        np.testing.assert_array_equal(resumed.sample_stats[k], plain.sample_stats[k])
    assert resumed.step_size == plain.step_size
    assert resumed.n_warmup_divergent == plain.n_warmup_divergent
    # A finished run is read back without sampling.
    again = sample_gibbs(kernel, np.zeros((4, P)), cfg, progress=False, checkpoint_dir=ckpt)
    np.testing.assert_array_equal(again.samples, plain.samples)
    # Another seed or start is another run: refused, not mixed in.
    with pytest.raises(ValueError, match="checkpoint_dir holds a checkpoint of another run: block_00000.npz: "
                                         "the config differs \\(seed: 2 there, 5 here\\)"):
        sample_gibbs(kernel, np.zeros((4, P)), _config(num_warmup=40, num_samples=20, block_size=10, seed=5),
                     progress=False, checkpoint_dir=ckpt)
    with pytest.raises(ValueError, match="checkpoint_dir holds a checkpoint of another run"):
        sample_gibbs(kernel, np.full((4, P), 0.1), cfg, progress=False, checkpoint_dir=ckpt)
    with pytest.raises(ValueError, match="checkpoint_dir must be a directory, not a file"):
        sample_gibbs(kernel, np.zeros((4, P)), cfg, progress=False, checkpoint_dir=files[0])


def test_a_checkpoint_of_other_block_kernels_or_bijector_values_is_refused(tmp_path):
    """The identity names each block kernel's settings and the bijectors' values, not only their classes;
    a checkpoint written before it did (the older form of the same run's identity) is still read."""
    from tfhalo.inference import gibbs as gibbs_module

    _, _, _, log_prob = _gaussian()

    def hmc(steps):
        return lambda f: tfp.mcmc.HamiltonianMonteCarlo(f, step_size=0.3, num_leapfrog_steps=steps)

    def scaled(scale):
        return GibbsKernel(log_prob, [3, 2], [hmc(4), _slice],
                           bijectors=[None, tfp.bijectors.Scale(backend.constant(scale))])

    kernel = scaled(1.0)
    cfg = _config(num_warmup=10, num_samples=10, block_size=10)
    ckpt = tmp_path / "ckpt"
    first = sample_gibbs(kernel, np.zeros((4, P)), cfg, progress=False, checkpoint_dir=ckpt)
    for other in (GibbsKernel(log_prob, [3, 2], [hmc(5), _slice],
                              bijectors=[None, tfp.bijectors.Scale(backend.constant(1.0))]), scaled(2.0)):
        with pytest.raises(ValueError, match="checkpoint of another run: block_00000.npz: the target, the kernels"):
            sample_gibbs(other, np.zeros((4, P)), cfg, progress=False, checkpoint_dir=ckpt)
    again = sample_gibbs(scaled(1.0), np.zeros((4, P)), cfg, progress=False, checkpoint_dir=ckpt)
    np.testing.assert_array_equal(again.samples, first.samples)
    ident = gibbs_module._block_kernels_identity(kernel)
    assert ident[0] == {"kernel": "HamiltonianMonteCarlo", "num_leapfrog_steps": "4", "state_gradients_are_stopped":
                        False, "step_size": "0.3"}
    assert ident[1]["kernel"] == "SliceSampler" and ident[1]["max_doublings"] == "5"
    # Rewritten with the identity's older form (no kernel settings, bijectors by class), the blocks are read.
    theta0 = np.zeros((4, P))
    lp0 = backend.to_numpy(log_prob(backend.constant(theta0)))
    old_form = gibbs_module._fingerprint(kernel, cfg, theta0, lp0, kernels=False)
    assert old_form != gibbs_module._fingerprint(kernel, cfg, theta0, lp0)
    for f in ckpt.glob("block_*.npz"):
        with np.load(f) as z:
            arrays = {k: z[k] for k in z.files}
        np.savez(f, **dict(arrays, fingerprint=np.array(old_form)))
    np.testing.assert_array_equal(sample_gibbs(kernel, theta0, cfg, progress=False, checkpoint_dir=ckpt).samples,
                                  first.samples)


def test_more_kept_draws_extend_a_checkpointed_run_and_fewer_read_its_prefix(tmp_path):
    from tfhalo.inference import gibbs as gibbs_module

    _, _, _, log_prob = _gaussian()
    kernel = GibbsKernel(log_prob, [3, 2], [_hmc(10), _slice])
    short = _config(num_warmup=20, num_samples=15, block_size=10)
    long = _config(num_warmup=20, num_samples=30, block_size=10)
    ckpt = tmp_path / "ckpt"
    first = sample_gibbs(kernel, np.zeros((4, P)), short, progress=False, checkpoint_dir=ckpt)
    kept = {f.name: f.stat().st_mtime_ns for f in ckpt.glob("block_*.npz")}
    assert len(kept) == 4  # two warm-up blocks, then 10 + 5 kept sweeps
    extended = sample_gibbs(kernel, np.zeros((4, P)), long, progress=False, checkpoint_dir=ckpt)
    plain = sample_gibbs(kernel, np.zeros((4, P)), long, progress=False)
    np.testing.assert_array_equal(extended.samples, plain.samples)
    np.testing.assert_array_equal(extended.samples[:10], first.samples[:10])
    for k in plain.sample_stats:
        np.testing.assert_array_equal(extended.sample_stats[k], plain.sample_stats[k])
    # The warm-up and the full kept block were reused; the short last block was sampled again, whole.
    now = {f.name: f.stat().st_mtime_ns for f in ckpt.glob("block_*.npz")}
    assert [now[n] == t for n, t in sorted(kept.items())] == [True, True, True, False]
    assert len(now) == 5
    # A shorter run reads the longer run's blocks and keeps them whole.
    again = sample_gibbs(kernel, np.zeros((4, P)), short, progress=False, checkpoint_dir=ckpt)
    np.testing.assert_array_equal(again.samples, first.samples)
    with np.load(ckpt / "block_00003.npz") as f:
        assert f["draws"].shape[0] == 10
    # Checkpoints written when the identity held num_samples are extended too.
    theta0 = np.zeros((4, P))
    lp0 = backend.to_numpy(log_prob(backend.constant(theta0)))
    legacy = gibbs_module._fingerprint(kernel, short, theta0, lp0, extendable=False, kernels=False)
    assert legacy != gibbs_module._fingerprint(kernel, short, theta0, lp0)
    old = tmp_path / "old"
    old.mkdir()
    for f in sorted(ckpt.glob("block_*.npz"))[:3]:
        with np.load(f) as z:
            arrays = {k: z[k] for k in z.files}
        arrays.update(fingerprint=np.array(legacy), config=np.array(json.dumps(short.chain_fields(), sort_keys=True)))
        np.savez(old / f.name, **arrays)
    from_old = sample_gibbs(kernel, theta0, long, progress=False, checkpoint_dir=old)
    np.testing.assert_array_equal(from_old.samples, plain.samples)
    # ... but not a legacy checkpoint of another seed.
    arrays.update(fingerprint=np.array(gibbs_module._fingerprint(kernel, _config(num_warmup=20, num_samples=15,
                                                                                   block_size=10, seed=7),
                                                                   theta0, lp0, extendable=False, kernels=False)))
    np.savez(old / "block_00000.npz", **arrays)
    with pytest.raises(ValueError, match="checkpoint of another run: block_00000.npz: the target"):
        sample_gibbs(kernel, theta0, long, progress=False, checkpoint_dir=old)


def test_bad_arguments_are_named_before_any_sweep():
    _, _, _, log_prob = _gaussian()
    with pytest.raises(ValueError, match="kernel_fns needs one entry per block"):
        GibbsKernel(log_prob, [3, 2], [_slice])
    with pytest.raises(ValueError, match="block_sizes"):
        GibbsKernel(log_prob, [3, 0], [_slice, _slice])
    with pytest.raises(ValueError, match="steps_per_sweep"):
        GibbsKernel(log_prob, [3, 2], [_slice, _slice], steps_per_sweep=[1, 0])
    with pytest.raises(ValueError, match="num_samples"):
        GibbsConfig(num_samples=2)
    kernel = GibbsKernel(log_prob, [3, 2], [_slice, _slice])
    with pytest.raises(ValueError, match=r"initial_state must be finite with shape \(num_chains, P\) = \(4, 5\)"):
        sample_gibbs(kernel, np.zeros((4, 4)), _config(), progress=False)
    bad = np.zeros((4, P))
    bad[1, 2] = np.nan
    with pytest.raises(ValueError, match="initial_state must be finite"):
        sample_gibbs(kernel, bad, _config(), progress=False)

    def nowhere(x):
        return ops.sum(x, axis=-1) + np.inf

    with pytest.raises(ValueError, match="target log density must be finite"):
        sample_gibbs(GibbsKernel(nowhere, [3, 2], [_slice, _slice]), np.zeros((4, P)), _config(), progress=False)


class _ScaleShear(BlockCarry):
    """``y = b' . x + exp(c . x) a``: the second block follows the first's move (non-constant Jacobian)."""

    def __init__(self, slope, log_scale):
        self.slope, self.log_scale = np.asarray(slope, np.float64), np.asarray(log_scale, np.float64)

    def _loc_scale(self, x):
        loc = ops.sum(x * ops.convert_to_tensor(self.slope), axis=-1, keepdims=True)
        log_s = ops.sum(x * ops.convert_to_tensor(self.log_scale), axis=-1)
        return loc, log_s

    def ancillary(self, blocks):
        loc, log_s = self._loc_scale(blocks[0])
        return (blocks[1] - loc) * ops.exp(-log_s)[:, None]

    def carry(self, x_i, a):
        loc, log_s = self._loc_scale(x_i)
        return [x_i, loc + ops.exp(log_s)[:, None] * a], log_s


def _narrow_ridge(s=0.05):
    """x ~ N(0, I_2), y | x ~ N(b . x, s^2): the joint Gaussian ``(mean, cov, log_prob)`` of ``(x, y)``."""
    b = np.array([1.5, -1.0])
    cov = np.zeros((3, 3))
    cov[:2, :2] = np.eye(2)
    cov[:2, 2] = cov[2, :2] = b
    cov[2, 2] = b @ b + s**2

    def log_prob(z):
        r = z[:, 2] - ops.sum(z[:, :2] * ops.convert_to_tensor(b), axis=-1)
        return -0.5 * ops.sum(ops.square(z[:, :2]), axis=-1) - 0.5 * ops.square(r) / s**2

    return b, np.zeros(3), cov, log_prob


def _carried_chains(carry, s=0.05, seed=4):
    b, mean, cov, log_prob = _narrow_ridge(s)
    # The carried block has a bijector of its own (its move runs in scaled coordinates): after the carry
    # its sampling coordinates must be recomputed so that its kernel still differentiates its target.
    kernel = GibbsKernel(log_prob, [2, 1], [_hmc(), _hmc()], carries=[carry, None],
                         bijectors=[None, tfp.bijectors.Scale(backend.constant(0.1))])
    return sample_gibbs(kernel, np.zeros((4, 3)), _config(seed=seed), progress=False), mean, cov


@pytest.mark.parametrize("slope, log_scale", [([1.5, -1.0], [0.0, 0.0]), ([1.0, -0.5], [1.0, -0.7])])
def test_a_carried_block_move_samples_the_joint_whatever_the_carry(slope, log_scale):
    # Exact for any carry: the exact shear, and a wrong slope with an x-dependent scale whose
    # log-Jacobian (0.6 x_1 - 0.4 x_2) would tilt x's marginal by 0.6 and -0.4 sd if it were left out.
    # (A ridge 0.5 wide: a wrong carry mixes slowly on a narrow one, and exactness is tested here.)
    chains, mean, cov = _carried_chains(_ScaleShear(slope, log_scale), s=0.3)
    check_gaussian(chains.samples, mean, cov)


def test_a_carry_along_the_ridge_frees_a_narrow_conditional():
    # Given y, x moves across a ridge 0.03 wide; carried along it (y - b . x held), x is N(0, I) given a.
    from tests.helpers.mcmc import bulk_ess

    centred, _, _ = _carried_chains(None)
    carried, _, _ = _carried_chains(_ScaleShear([1.5, -1.0], [0.0, 0.0]))
    ess_centred = bulk_ess(centred.samples[..., 0])
    ess_carried = bulk_ess(carried.samples[..., 0])
    assert ess_carried > 10 * ess_centred, (ess_carried, ess_centred)


def test_a_carry_is_refused_beside_a_conditional_or_when_it_is_not_a_block_carry():
    _, _, _, log_prob = _gaussian()
    with pytest.raises(ValueError, match="carries"):
        GibbsKernel(log_prob, [3, 2], [_hmc(), _hmc()], carries=[lambda b: b, None])
    with pytest.raises(ValueError, match="both a carry and a conditional_fn"):
        GibbsKernel(log_prob, [3, 2], [_hmc(), _hmc()], carries=[_ScaleShear([1.0], [0.0]), None],
                    conditional_fns=[lambda b: log_prob, None])
