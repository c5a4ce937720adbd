"""tfhalo.inference.DrawReduction: thinned coordinates, their mean and summaries, on the current backend.

A reduced run must be the unreduced run, reduced: the same chains (same seed), with
the thinned coordinates kept every ``thin``-th draw, their mean over every draw and
the summaries of every draw.  Small blocks that ``thin`` does not divide check that
the thinning follows the draws' index across blocks and across a resumed, extended run.
"""

import numpy as np
import pytest
from keras import ops

import tfhalo.inference as inf
from tests.helpers.mcmc import sampler_config
from tfhalo import backend

tfp = backend.tfp
P = 6
START, STOP, THIN = 1, 5, 3


def _log_prob(x):  # an anisotropic Gaussian, (C, P) -> (C,), in keras.ops: either backend
    scale = ops.convert_to_tensor(np.linspace(0.5, 2.0, P))
    return -0.5 * ops.sum((x / scale) ** 2, axis=-1)


def _summary(x):  # (n, C, m) -> per draw: the squared norm and the first two coordinates
    return {"norm2": np.sum(x**2, axis=-1), "head": x[..., :2]}


REDUCTION = inf.DrawReduction(start=START, stop=STOP, thin=THIN, summary_fn=_summary, key="norm2+head")


def _check_reduced(full, reduced):
    s = full.samples
    np.testing.assert_array_equal(reduced.samples, np.concatenate([s[..., :START], s[..., STOP:]], axis=-1))
    t = reduced.thinned
    np.testing.assert_array_equal(t.index, np.arange(0, s.shape[0], THIN))
    np.testing.assert_array_equal(t.samples, s[::THIN, :, START:STOP])
    np.testing.assert_allclose(t.mean, s[..., START:STOP].mean(axis=0), rtol=1e-12)
    for name, value in _summary(s[..., START:STOP]).items():
        np.testing.assert_array_equal(t.summaries[name], value)
    for name in full.sample_stats:
        np.testing.assert_array_equal(reduced.sample_stats[name], full.sample_stats[name])


def _gibbs_kernel():
    def hmc(f):
        return tfp.mcmc.HamiltonianMonteCarlo(f, step_size=0.3, num_leapfrog_steps=3)

    return inf.GibbsKernel(_log_prob, [4, 2], [hmc, hmc])


def _gibbs_config(**kw):
    return inf.GibbsConfig(**{**dict(num_chains=2, num_warmup=4, num_samples=11, seed=5, block_size=4,
                                     jit_compile=False), **kw})


def test_a_reduced_hmc_run_is_the_full_run_thinned_and_summarised(tmp_path):
    cfg = sampler_config(kernel="hmc", num_chains=2, num_warmup=20, num_samples=11, block_size=4)
    starts = np.random.default_rng(0).normal(size=(2, P))
    full = inf.sample(_log_prob, starts, cfg, progress=False)
    reduced = inf.sample(_log_prob, starts, cfg, progress=False, checkpoint_dir=tmp_path, reduction=REDUCTION)
    _check_reduced(full, reduced)
    # The checkpoint holds the thinned coordinates only: 2 of a 4-draw block's draws at most.
    with np.load(tmp_path / "block_00000.npz") as f:
        assert f["draws"].shape == (4, 2, P - (STOP - START)) and f["thinned"].shape == (2, 2, STOP - START)
    # Another thinning is another run: refused, not mixed in.
    with pytest.raises(ValueError, match="checkpoint of another run"):
        inf.sample(_log_prob, starts, cfg, progress=False, checkpoint_dir=tmp_path,
                   reduction=inf.DrawReduction(start=START, stop=STOP, thin=2, summary_fn=_summary, key="norm2+head"))


def test_chain_groups_join_their_thinned_draws():
    cfg = sampler_config(kernel="hmc", num_chains=4, num_warmup=20, num_samples=7, block_size=4, chain_groups=2,
                         pool_warmup=False)
    starts = np.random.default_rng(2).normal(size=(4, P))
    full = inf.sample(_log_prob, starts, cfg, progress=False)
    _check_reduced(full, inf.sample(_log_prob, starts, cfg, progress=False, reduction=REDUCTION))


def test_a_reduced_gibbs_run_is_the_full_run_thinned_and_summarised_and_extends(tmp_path):
    starts = np.random.default_rng(1).normal(size=(2, P))
    full = inf.sample_gibbs(_gibbs_kernel(), starts, _gibbs_config(num_samples=17), progress=False)
    # 11 sweeps, then extended to 17 from the checkpoint: the thinning follows the sweeps' index.
    inf.sample_gibbs(_gibbs_kernel(), starts, _gibbs_config(), progress=False, checkpoint_dir=tmp_path,
                     reduction=REDUCTION)
    extended = inf.sample_gibbs(_gibbs_kernel(), starts, _gibbs_config(num_samples=17), progress=False,
                                checkpoint_dir=tmp_path, reduction=REDUCTION)
    _check_reduced(full, extended)
    # A full run's checkpoint is not a reduced run's.
    with pytest.raises(ValueError, match="checkpoint of another run"):
        inf.sample_gibbs(_gibbs_kernel(), starts, _gibbs_config(num_samples=17), progress=False,
                         checkpoint_dir=tmp_path)


@pytest.mark.parametrize("kwargs,match", [
    (dict(start=-1, stop=2), "start must be at least 0. Received: start=-1"),
    (dict(start=2, stop=2), "stop must be at least 3. Received: stop=2"),
    (dict(start=0, stop=2, thin=0), "thin must be at least 1. Received: thin=0"),
    (dict(start=0, stop=2, summary_fn=3), "summary_fn must be callable or None. Received: summary_fn=3"),
])
def test_bad_reductions_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        inf.DrawReduction(**kwargs)


def test_a_reduction_outside_the_draws_is_refused_before_sampling(tmp_path):
    starts = np.zeros((2, P))
    with pytest.raises(ValueError, match=f"reduction.stop must be at most the number of parameters \\({P}\\). "
                                         "Received: reduction.stop=7"):
        inf.sample(_log_prob, starts, sampler_config(num_chains=2), progress=False, checkpoint_dir=tmp_path,
                   reduction=inf.DrawReduction(start=0, stop=P + 1))
    with pytest.raises(ValueError, match="reduction must be a DrawReduction or None. Received: reduction=3"):
        inf.sample_gibbs(_gibbs_kernel(), starts, _gibbs_config(), progress=False, reduction=3)
    assert not any(tmp_path.iterdir())


def test_a_summary_of_the_wrong_shape_is_refused():
    bad = inf.DrawReduction(start=0, stop=2, summary_fn=lambda x: {"total": x.sum()})
    with pytest.raises(ValueError, match=r"summary_fn's 'total' must have leading shape \(n, C\) = \(3, 2\)"):
        bad.reduce_block(np.zeros((3, 2, 4)), offset=0)
