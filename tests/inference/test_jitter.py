"""tfhalo.inference.JitteredStepSize: a random step per transition, on the current Keras backend.

Statistical checks compare draws with an exact Gaussian within
``tests.helpers.mcmc.N_SIGMA`` Monte Carlo standard errors (ArviZ bulk ESS).
"""

import numpy as np
import pytest
from keras import ops

from tests.helpers.mcmc import check_gaussian
from tfhalo import backend
from tfhalo.inference import GibbsConfig, GibbsKernel, JitteredStepSize, sample_gibbs

tfp = backend.tfp


def _gaussian(sd):
    sd = np.asarray(sd, np.float64)

    def log_prob(x):
        return -0.5 * ops.sum(ops.square(x / ops.convert_to_tensor(sd)), axis=-1)

    return log_prob


def _config(**kw):
    base = dict(num_chains=4, num_warmup=0, num_samples=600, seed=7, block_size=1000, jit_compile=False)
    base.update(kw)
    return GibbsConfig(**base)


def _hmc(step, min_factor=None, leapfrog=5):
    def make(f):
        hmc = tfp.mcmc.HamiltonianMonteCarlo(f, step_size=backend.constant(step), num_leapfrog_steps=leapfrog)
        return hmc if min_factor is None else JitteredStepSize(hmc, min_factor=min_factor)
    return make


def test_a_step_past_the_stability_limit_freezes_hmc_and_the_jittered_kernel_samples_exactly():
    # sd 1: leapfrog is unstable for steps above 2.  At step 2.5 every trajectory's energy error explodes,
    # so plain HMC never accepts and its chains stay at their start.  With factors down to 0.1 most
    # transitions use a stable step, and the draws are the Gaussian's.
    log_prob = _gaussian([1.0, 1.0])
    start = np.full((4, 2), 0.5)
    frozen = sample_gibbs(GibbsKernel(log_prob, [2], [_hmc(2.5, leapfrog=10)]), start, _config(num_samples=50),
                          progress=False)
    assert np.all(frozen.samples == start[None])
    assert frozen.sample_stats["diverging_0"].all()
    jittered = sample_gibbs(GibbsKernel(log_prob, [2], [_hmc(2.5, 0.1, leapfrog=10)]), start, _config(),
                            progress=False)
    check_gaussian(jittered.samples, np.zeros(2), np.eye(2))
    # Factors above 0.8 are unstable: about (ln 1.25 / ln 10) = 10% of transitions diverge.
    rate = jittered.sample_stats["diverging_0"].mean()
    assert 0.03 < rate < 0.2


@pytest.mark.parametrize("jit_compile", [False, True])
def test_under_dual_averaging_the_jittered_kernel_samples_a_stiff_gaussian(jit_compile):
    # Widths 0.05 to 3: the adaptation sets the base step, the wrapper draws below it; exact throughout.
    sd = np.array([0.05, 0.3, 1.0, 3.0])
    log_prob = _gaussian(sd)

    def make(f):
        hmc = tfp.mcmc.HamiltonianMonteCarlo(f, step_size=backend.constant(0.01), num_leapfrog_steps=8)
        return tfp.mcmc.DualAveragingStepSizeAdaptation(JitteredStepSize(hmc, min_factor=0.3),
                                                        num_adaptation_steps=150,
                                                        target_accept_prob=backend.constant(0.8))

    chains = sample_gibbs(GibbsKernel(log_prob, [4], [make]), np.zeros((4, 4)),
                          _config(num_warmup=200, num_samples=1500, jit_compile=jit_compile), progress=False)
    check_gaussian(chains.samples, np.zeros(4), np.diag(sd**2))
    stats = chains.sample_stats
    # The adapted base step is what the adaptation reports, frozen over the kept draws.
    assert np.ptp(stats["step_size_0"]) == 0.0 and stats["step_size_0"][0, 0] != pytest.approx(0.01)


def test_the_results_keep_the_base_step_and_the_factors_lie_in_range():
    log_prob = _gaussian([1.0, 2.0, 0.5])
    hmc = tfp.mcmc.HamiltonianMonteCarlo(log_prob, step_size=backend.constant(0.2), num_leapfrog_steps=3)
    kernel = JitteredStepSize(hmc, min_factor=0.25)
    state = backend.constant(np.zeros((64, 3)))
    results = kernel.bootstrap_results(state)
    assert backend.to_numpy(results.step_factor).shape == (64, 1)
    _, new = kernel.one_step(state, results, seed=backend.stateless_seed([1, 2]))
    factor = backend.to_numpy(new.step_factor)
    assert factor.shape == (64, 1) and np.all((factor >= 0.25) & (factor <= 1.0))
    # Independent per chain: 64 draws of ln f uniform on [ln 0.25, 0] are not all alike.
    assert np.std(np.log(factor)) > 0.2
    for part in (new.inner_results.accepted_results, new.inner_results.proposed_results):
        assert float(backend.to_numpy(part.step_size)) == pytest.approx(0.2)
    # The same seed gives the same factors.
    _, again = kernel.one_step(state, results, seed=backend.stateless_seed([1, 2]))
    assert np.array_equal(backend.to_numpy(again.step_factor), factor)


@pytest.mark.parametrize("min_factor", [0.0, -0.5, 1.5, float("nan"), "a"])
def test_a_bad_min_factor_is_named(min_factor):
    hmc = tfp.mcmc.HamiltonianMonteCarlo(_gaussian([1.0]), step_size=0.1, num_leapfrog_steps=2)
    with pytest.raises(ValueError, match="min_factor"):
        JitteredStepSize(hmc, min_factor=min_factor)


def test_a_kernel_without_a_step_size_is_refused():
    with pytest.raises(ValueError, match="inner_kernel"):
        JitteredStepSize(tfp.mcmc.SliceSampler(_gaussian([1.0]), step_size=1.0, max_doublings=3))
