"""TFP samplers recover known Gaussian posteriors; diagnostics match NumPy formulas."""

import warnings

import numpy as np
import pytest
import tensorflow as tf

from tfhalo.bias.diagnostics import ConvergenceWarning, split_rhat, summarize_chains
from tfhalo.bias.sampling import preconditioner_from_hessian, sample_posterior


def _gaussian(p=4, seed=0):
    rng = np.random.default_rng(seed)
    a = rng.normal(size=(p, p))
    # Ill-conditioned and correlated: identity-mass HMC would struggle.
    cov = a @ a.T + np.diag(np.logspace(-2, 1, p))
    mean = rng.normal(size=p) * 3
    prec = tf.constant(np.linalg.inv(cov))
    mu = tf.constant(mean)

    def log_prob(x):
        d = x - mu
        return -0.5 * tf.reduce_sum(d * tf.linalg.matvec(prec, d))

    return mean, cov, log_prob


def _check_recovery(result, mean, cov, n_sigma=5.0):
    summary = summarize_chains(result.samples, result.is_accepted, result.divergent, warn=False)
    ess = np.array(summary["ess"])
    std = np.sqrt(np.diag(cov))
    # Monte Carlo standard errors: std/sqrt(ESS) for the mean, ~std/sqrt(2 ESS) for the std.
    assert np.all(np.abs(np.array(summary["mean"]) - mean) < n_sigma * std / np.sqrt(ess))
    assert np.all(np.abs(np.array(summary["std"]) - std) < n_sigma * std / np.sqrt(2 * ess) + 0.02 * std)
    assert summary["n_divergent"] == 0
    return summary


@pytest.mark.parametrize("kernel", ["hmc", "nuts"])
def test_hessian_preconditioned_sampler_recovers_gaussian(kernel):
    mean, cov, log_prob = _gaussian()
    init = mean + np.random.default_rng(1).normal(size=(4, mean.size)) * 0.1
    result = sample_posterior(log_prob, init, num_results=400, num_burnin=200, kernel=kernel,
                              mass_matrix="hessian", hessian=np.linalg.inv(cov), centre=mean,
                              seed=3, progress=False, num_leapfrog_steps=4)
    summary = _check_recovery(result, mean, cov)
    assert summary["min_ess"] > 300
    # Full covariance, not just marginals: the preconditioned chain is exact.
    draws = result.samples.reshape(-1, mean.size)
    np.testing.assert_allclose(np.corrcoef(draws, rowvar=False), np.corrcoef(np.random.default_rng(0).multivariate_normal(mean, cov, 200000), rowvar=False), atol=0.1)


def test_adaptive_mass_matrix_recovers_gaussian():
    mean, cov, log_prob = _gaussian(p=3, seed=4)
    init = mean + np.random.default_rng(2).normal(size=(4, mean.size))
    result = sample_posterior(log_prob, init, num_results=400, num_burnin=480, mass_matrix="adaptive",
                              seed=5, progress=False, num_leapfrog_steps=6)
    _check_recovery(result, mean, cov)
    # The adapted preconditioner approximates chol(cov).
    learned = result.preconditioner @ result.preconditioner.T
    np.testing.assert_allclose(np.diag(learned), np.diag(cov), rtol=0.5)


def test_same_seed_same_chains():
    mean, cov, log_prob = _gaussian(p=2)
    kw = dict(num_results=20, num_burnin=10, mass_matrix="identity", seed=11, progress=False)
    a = sample_posterior(log_prob, np.tile(mean, (2, 1)), **kw).samples
    b = sample_posterior(log_prob, np.tile(mean, (2, 1)), **kw).samples
    np.testing.assert_array_equal(a, b)


def test_preconditioner_from_hessian_inverts_and_floors():
    rng = np.random.default_rng(0)
    q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    eig = np.array([-0.5, 1e-4, 2.0, 300.0])
    h = (q * eig) @ q.T
    chol = preconditioner_from_hessian(h, floor=0.01)
    np.testing.assert_allclose(chol, np.tril(chol))
    expected = (q / np.maximum(eig, 0.01)) @ q.T
    np.testing.assert_allclose(chol @ chol.T, expected, rtol=1e-10, atol=1e-12)


def _numpy_split_rhat(x):
    # Split R-hat of Brooks & Gelman (1998), the form TFP documents, per parameter of (S, C, P).
    s = x.shape[0] // 2
    chains = np.concatenate([x[:s], x[s:2 * s]], axis=1)
    n, c = chains.shape[:2]
    w = chains.var(axis=0, ddof=1).mean(axis=0)
    b = n * chains.mean(axis=0).var(axis=0, ddof=1)
    sigma2 = (n - 1) / n * w + b / n
    return np.sqrt((c + 1) / c * sigma2 / w - (n - 1) / (c * n))


def test_split_rhat_matches_numpy_and_flags_stuck_chains():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 4, 3))
    np.testing.assert_allclose(split_rhat(x), _numpy_split_rhat(x), rtol=1e-6)
    x[:, 0, 1] += 3.0  # one chain stuck elsewhere in parameter 1
    rhat = split_rhat(x)
    assert rhat[1] > 1.1 and rhat[0] < 1.01
    with pytest.warns(ConvergenceWarning, match="not converged"):
        summarize_chains(x)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        summary = summarize_chains(rng.normal(size=(400, 4, 3)))
    assert summary["converged"] and summary["min_ess"] > 800


def test_xla_compiled_adaptive_sampler_recovers_gaussian():
    # jit_compile=True reuses one XLA graph across the warm-up windows (variables, not constants).
    mean, cov, log_prob = _gaussian(p=3, seed=6)
    init = mean + np.random.default_rng(3).normal(size=(4, mean.size))
    result = sample_posterior(log_prob, init, num_results=400, num_burnin=480, mass_matrix="adaptive",
                              seed=7, progress=False, num_leapfrog_steps=6, jit_compile=True)
    _check_recovery(result, mean, cov)


def _two_modes(weight_right=0.7, half_gap=3.0, width=0.5):
    centres = tf.constant([[-half_gap, 0.0], [half_gap, 0.0]], tf.float64)
    log_w = tf.math.log(tf.constant([1.0 - weight_right, weight_right], tf.float64))

    def log_likelihood(x):
        d2 = tf.reduce_sum(tf.square(x[None, :] - centres), axis=-1) / (2.0 * width**2)
        return tf.reduce_logsumexp(log_w - d2)

    def log_prior(x):
        return -0.5 * tf.reduce_sum(tf.square(x / 10.0))

    return log_likelihood, log_prior


def test_replica_exchange_crosses_between_modes_plain_hmc_cannot():
    # Two well-separated modes with weights 0.3 / 0.7; three chains start in the
    # right mode and one in the left.  Plain HMC keeps each chain in its mode
    # (R-hat flags it); replica exchange recovers the weights.
    like, prior = _two_modes()
    init = np.array([[3.0, 0.0], [3.1, 0.1], [-3.0, 0.0], [2.9, -0.1]])
    common = dict(num_results=1000, num_burnin=200, mass_matrix="identity", step_size=0.3, num_leapfrog_steps=5,
                  seed=1, progress=False, jit_compile=True, log_likelihood_fn=like, log_prior_fn=prior)
    post = lambda x: like(x) + prior(x)  # noqa: E731
    plain = sample_posterior(post, init, n_temperatures=1, **common)
    assert summarize_chains(plain.samples, warn=False)["max_rhat"] > 1.5
    res = sample_posterior(post, init, n_temperatures=4, max_temperature=30.0, **common)
    assert len(res.inverse_temperatures) == 4 and res.inverse_temperatures[0] == 1.0
    assert all(0.05 < a < 0.95 for a in res.swap_acceptance)
    right = (res.samples[..., 0] > 0).astype(float)
    # Standard error of a mode weight from ~4 x 1000 correlated draws: use the ESS of the indicator.
    ess = float(np.asarray(summarize_chains(right[..., None], warn=False)["ess"])[0])
    assert abs(right.mean() - 0.7) < 4.0 * np.sqrt(0.7 * 0.3 / ess)
    assert np.all(right.mean(axis=0) > 0.3)  # every chain visits the right mode, and not only it
    assert np.all(right.mean(axis=0) < 0.95)
    # log_prob belongs to the returned (post-swap) draw, not to the pre-swap one.
    flat = res.samples[::25].reshape(-1, 2)
    want = np.array([float(post(tf.constant(x))) for x in flat]).reshape(res.log_prob[::25].shape)
    np.testing.assert_allclose(res.log_prob[::25], want, rtol=1e-10, atol=1e-10)


def test_replica_exchange_needs_the_split_log_density():
    like, prior = _two_modes()
    with pytest.raises(ValueError, match="log_likelihood_fn"):
        sample_posterior(lambda x: like(x) + prior(x), np.zeros((2, 2)), n_temperatures=3, mass_matrix="identity",
                         progress=False)
    with pytest.raises(ValueError, match="max_temperature"):
        sample_posterior(lambda x: like(x) + prior(x), np.zeros((2, 2)), n_temperatures=3, max_temperature=0.5,
                         mass_matrix="identity",
                         log_likelihood_fn=like, log_prior_fn=prior, progress=False)
