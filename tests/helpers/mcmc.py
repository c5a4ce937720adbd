"""Seeded statistical checks of MCMC draws whose tolerances scale as 1 / sqrt(ESS)."""

import arviz as az
import numpy as np

#: Allowed |error| in Monte Carlo standard errors (MCSE = sd / sqrt(bulk ESS)).
N_SIGMA = 4.5


def bulk_ess(values) -> float:
    """Rank-normalised bulk ESS (Vehtari et al. 2021) of ``(S, C)`` values."""
    return float(az.ess(np.asarray(values, np.float64).T, method="bulk"))


def check_expectation(values, truth, name, n_sigma=N_SIGMA):
    """|mean(f) - E f| within ``n_sigma`` MCSE of ``(S, C)`` draws of f."""
    values = np.asarray(values, np.float64)
    mcse = values.std(ddof=1) / np.sqrt(bulk_ess(values))
    err = values.mean() - truth
    assert abs(err) < n_sigma * mcse, f"{name}: estimate {values.mean():.5g} vs {truth:.5g} (MCSE {mcse:.3g})"


def check_gaussian(samples, mean, cov, n_sigma=N_SIGMA):
    """Whitened ``(S, C, P)`` draws ``y = L^-1 (x - mean)`` must be N(0, I) in every mean and variance."""
    chol = np.linalg.cholesky(cov)
    y = np.linalg.solve(chol, (samples - mean).reshape(-1, mean.size).T).T.reshape(samples.shape)
    for i in range(mean.size):
        check_expectation(y[..., i], 0.0, f"mean of whitened coordinate {i}", n_sigma)
        check_expectation(y[..., i] ** 2, 1.0, f"variance of whitened coordinate {i}", n_sigma)


def sampler_config(**overrides):
    """A small :class:`tfhalo.inference.SamplerConfig` for tests: 4 chains, 200 + 400 steps, seed 1, no XLA."""
    import tfhalo.inference as inf

    base = dict(num_chains=4, num_warmup=200, num_samples=400, block_size=100, jit_compile=False, seed=1)
    base.update(overrides)
    return inf.SamplerConfig(**base)
