"""Posterior sampling of the neural bias parameters with TensorFlow Probability.

Kernels: HMC (``tfp.mcmc.HamiltonianMonteCarlo``) or NUTS
(``tfp.mcmc.NoUTurnSampler``), each wrapped in
``tfp.mcmc.DualAveragingStepSizeAdaptation``, several chains in one batch.

Mass matrix (``mass_matrix=``):

* ``"identity"``: plain HMC on the parameters.
* ``"hessian"``: the paper's quasi-Newton idea made exact.  With ``H`` the
  Hessian of ``-ln posterior`` at the MAP (eigenvalues floored at the prior
  precision so it is positive definite) and ``L = chol(H^-1)``, the chains run
  on ``z`` with ``theta = theta_MAP + L z``.  HMC with identity mass on ``z`` is
  HMC with mass matrix ``H`` on ``theta``; the map is linear and FIXED, so the
  Jacobian is constant and the chain is exactly invariant for the posterior.
* ``"adaptive"``: windowed adaptation (as Stan): warm-up in doubling windows,
  each ending with a regularised estimate of the posterior covariance from its
  own draws; the next window (and the final sampling) uses it as the fixed
  preconditioner above.  Sampling happens only after adaptation ends.

``jit_compile=True`` compiles each block of steps with XLA (~4x faster on CPU
for the default model); the preconditioner is held in variables so all warm-up
windows share one compiled graph.  An optional fixed bijection
(``reparametrization=``, e.g. :mod:`tfhalo.bias.reparam`) lets the chains run
on other coordinates with the Jacobian-corrected target.

The log-density is any ``theta (P,) -> scalar`` TensorFlow-traceable function,
e.g. :meth:`NeuralBiasLikelihood.log_posterior` (the Keras model through
``stateless_call``).
"""

from __future__ import annotations

import dataclasses
import time
import warnings

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp
from tqdm.auto import tqdm

KERNELS = ("hmc", "nuts")
MASS_MATRICES = ("identity", "hessian", "adaptive")


@dataclasses.dataclass
class SamplingResult:
    """Chains and sampler statistics.

    Attributes:
        samples: ``(S, C, P)`` float64 draws (after warm-up).
        log_prob: ``(S, C)`` the sampled target's ln density at each draw: the ln
            posterior of theta, or, with a ``reparametrization``, of its coordinates
            ``v`` (ln posterior of ``theta(v)`` plus ln |d theta / d v|).
        is_accepted: ``(S, C)`` bool.
        log_accept_ratio: ``(S, C)``.
        divergent: ``(S, C)`` bool: energy error above 1000 or non-finite.
        step_size: final adapted step size (in the preconditioned space).
        n_gradient_evaluations: log-density-and-gradient evaluations per chain, warm-up and all replicas included.
        seconds: wall time of warm-up + sampling.
        kernel, mass_matrix: the options used.
        preconditioner: ``(P, P)`` lower-triangular ``L`` (theta = centre + L z), or None.
        inverse_temperatures: the replica ladder (``[1.0]`` without replica exchange).
        swap_acceptance: acceptance rate of swaps between adjacent replicas, or None.
    """

    samples: np.ndarray
    log_prob: np.ndarray
    is_accepted: np.ndarray
    log_accept_ratio: np.ndarray
    divergent: np.ndarray
    step_size: float
    n_gradient_evaluations: int
    seconds: float
    kernel: str
    mass_matrix: str
    preconditioner: np.ndarray | None = None
    inverse_temperatures: list | None = None
    swap_acceptance: list | None = None


def batched(log_prob_fn, n_chains: int):
    """Turn ``theta (P,) -> scalar`` into ``(C, P) -> (C,)`` by unrolling over chains."""

    def fn(states):
        return tf.stack([log_prob_fn(states[i]) for i in range(n_chains)])

    return fn


def _compose(fn, forward):
    return lambda v: fn(forward(v))


def preconditioner_from_hessian(hessian, floor: float = 1e-2) -> np.ndarray:
    """Lower-triangular ``L`` with ``L L^T = H^-1``; eigenvalues of ``H`` floored at ``floor``.

    Args:
        hessian: ``(P, P)`` Hessian of ``-ln posterior`` at the MAP.
        floor: smallest allowed curvature; the prior precision ``1/10^2`` is the
            natural choice (the posterior is never wider than the prior).
    """
    h = np.asarray(hessian, np.float64)
    if h.ndim != 2 or h.shape[0] != h.shape[1] or not np.all(np.isfinite(h)):
        raise ValueError(f"hessian must be a finite square matrix. Received: shape={h.shape}")
    h = 0.5 * (h + h.T)
    vals, vecs = np.linalg.eigh(h)
    cov = (vecs / np.maximum(vals, floor)) @ vecs.T
    return np.linalg.cholesky(0.5 * (cov + cov.T))


def preconditioner_from_samples(draws, prior_floor: float = 1e-6) -> np.ndarray:
    """``L = chol(Sigma)`` with Sigma the Stan-regularised covariance of ``(N, P)`` draws."""
    draws = np.asarray(draws, np.float64)
    n = draws.shape[0]
    cov = np.cov(draws, rowvar=False)
    cov = (n / (n + 5.0)) * cov + prior_floor * (5.0 / (n + 5.0)) * np.eye(cov.shape[0])
    return np.linalg.cholesky(0.5 * (cov + cov.T) + 1e-12 * np.eye(cov.shape[0]))


class _BlockRunner:
    """Chains on z, theta = centre + L z, run in seeded, compiled blocks.

    ``centre``, ``L`` and the step size are variables, so every warm-up window
    reuses one compiled (XLA) graph instead of recompiling per window.
    Subclasses set ``self.kernel`` and call :meth:`_compile` with their trace.
    """

    def _variables(self, p, dtype, step_shape=()):
        self.dtype = dtype
        self.centre_v = tf.Variable(tf.zeros([p], dtype), trainable=False)
        self.chol_v = tf.Variable(tf.eye(p, dtype=dtype), trainable=False)
        self.step_v = tf.Variable(tf.fill(step_shape, tf.constant(0.1, dtype)), trainable=False)
        self.centre, self.chol = np.zeros(p), np.eye(p)

    def _compile(self, trace_fn, jit_compile):
        @tf.function(jit_compile=jit_compile)
        def run(z, pkr, seed, n):
            return tfp.mcmc.sample_chain(
                num_results=n, current_state=z, previous_kernel_results=pkr, kernel=self.kernel,
                trace_fn=trace_fn, return_final_kernel_results=True, seed=seed)

        self._run = run

    def _step_value(self, step_size):
        return float(step_size)

    def set(self, centre, chol, step_size):
        self.centre, self.chol = np.asarray(centre, np.float64), np.asarray(chol, np.float64)
        self.centre_v.assign(self.centre)
        self.chol_v.assign(self.chol)
        self.step_v.assign(self._step_value(step_size))

    def to_z(self, theta):
        return np.linalg.solve(self.chol, (np.asarray(theta, np.float64) - self.centre).T).T

    def to_theta(self, z):
        return self.centre + np.asarray(z, np.float64) @ self.chol.T

    def _blocks(self, theta0, n_steps, rng, block, bar):
        """``(theta draws (n, C, P), list of traces, final kernel results)``."""
        z = tf.constant(self.to_z(theta0), self.dtype)
        pkr = self.kernel.bootstrap_results(z)
        out = []
        done = 0
        while done < n_steps:
            n = min(block, n_steps - done)
            seed = tf.constant(rng.integers(0, 2**31 - 1, size=2), tf.int32)
            res = self._run(z, pkr, seed, tf.constant(n))
            z, pkr = res.all_states[-1], res.final_kernel_results
            out.append((res.all_states.numpy(), [t.numpy() for t in res.trace]))
            done += n
            bar.update(n)
        zs = np.concatenate([o[0] for o in out])
        traces = [np.concatenate([o[1][i] for o in out]) for i in range(len(out[0][1]))]
        return self.to_theta(zs), traces, pkr


class _Runner(_BlockRunner):
    """One HMC/NUTS chain batch.

    With ``adapt`` the step size is dual-averaged over the whole call and the
    averaged value is returned; without it the step size is frozen, which keeps
    the chain exactly invariant.
    """

    def __init__(self, log_prob_fn, n_chains, p, kernel, num_leapfrog_steps, adapt, target_accept,
                 max_tree_depth, dtype, jit_compile=False):
        self._variables(p, dtype)
        target = batched(log_prob_fn, n_chains)

        def target_z(z):
            return target(self.centre_v + tf.linalg.matvec(self.chol_v, z))

        if kernel == "hmc":
            # The step size lives in the kernel results (read at bootstrap, after set()).
            inner = tfp.mcmc.HamiltonianMonteCarlo(target_z, step_size=self.step_v,
                                                   num_leapfrog_steps=num_leapfrog_steps,
                                                   store_parameters_in_results=True)
        else:
            inner = tfp.mcmc.NoUTurnSampler(target_z, step_size=self.step_v, max_tree_depth=max_tree_depth)
        self.adapt = bool(adapt)
        # Adaptation never switches off inside a warm-up call; the averaged step
        # size at its end is what the next phase starts from.
        self.kernel = tfp.mcmc.DualAveragingStepSizeAdaptation(
            inner, num_adaptation_steps=10**9, target_accept_prob=target_accept
        ) if self.adapt else inner

        def trace_fn(_, pkr):
            inner_r = pkr.inner_results if adapt else pkr
            extra = inner_r.leapfrogs_taken if kernel == "nuts" else tf.fill(
                tf.shape(inner_r.is_accepted), tf.constant(num_leapfrog_steps, tf.int32))
            div = inner_r.has_divergence if kernel == "nuts" else tf.logical_not(
                inner_r.log_accept_ratio > -1000.0)
            return (inner_r.is_accepted, inner_r.log_accept_ratio, div, extra,
                    inner_r.accepted_results.target_log_prob if kernel == 'hmc' else inner_r.target_log_prob)

        self._compile(trace_fn, jit_compile)

    def run(self, theta0, n_steps, rng, block, bar):
        """Returns ``(theta draws (n, C, P), traces, step size at the end)``."""
        thetas, traces, pkr = self._blocks(theta0, n_steps, rng, block, bar)
        if self.adapt:
            step = float(np.mean(np.exp(np.asarray(pkr.log_averaging_step))))
        else:
            step = float(self.step_v.numpy())
        return thetas, traces, step


class _TemperedRunner(_BlockRunner):
    """Replica exchange (``tfp.mcmc.ReplicaExchangeMC``) of HMC chains on z, theta = centre + L z.

    Replica ``k`` targets ``prior + beta_k * likelihood`` (the prior and any
    Jacobian stay untempered), with step size ``eps / sqrt(beta_k)`` (a tempered
    near-Gaussian posterior is ``1 / sqrt(beta)`` wider); adjacent replicas
    propose swaps every step.  Only the ``beta = 1`` replica is returned: it is
    an exact chain for the posterior, which the hotter replicas help across
    barriers between modes.
    """

    def __init__(self, log_likelihood_fn, log_prior_fn, n_chains, p, num_leapfrog_steps, betas, dtype,
                 jit_compile=False):
        self.betas = np.asarray(betas, np.float64)
        n_rep = len(self.betas)
        self._variables(p, dtype, step_shape=[n_rep, 1, 1])
        like = batched(log_likelihood_fn, n_rep * n_chains)
        prior = batched(log_prior_fn, n_rep * n_chains)

        def on_theta(fn):
            def g(z):  # z: (R, C, P) -> (R, C)
                theta = self.centre_v + tf.linalg.matvec(self.chol_v, z)
                return tf.reshape(fn(tf.reshape(theta, [n_rep * n_chains, p])), [n_rep, n_chains])
            return g

        def make_kernel_fn(target_log_prob_fn):
            return tfp.mcmc.HamiltonianMonteCarlo(target_log_prob_fn, step_size=self.step_v,
                                                  num_leapfrog_steps=num_leapfrog_steps,
                                                  store_parameters_in_results=True)

        self.kernel = tfp.mcmc.ReplicaExchangeMC(
            target_log_prob_fn=None, inverse_temperatures=tf.constant(self.betas, dtype),
            make_kernel_fn=make_kernel_fn, untempered_log_prob_fn=on_theta(prior),
            tempered_log_prob_fn=on_theta(like))

        def trace_fn(_, pkr):
            res = pkr.pre_swap_replica_results  # replica 0 is beta = 1
            accepted, ratio = res.is_accepted[0], res.log_accept_ratio[0]
            return (accepted, ratio, tf.logical_not(ratio > -1000.0),
                    tf.fill(tf.shape(accepted), tf.constant(num_leapfrog_steps * n_rep, tf.int32)),
                    # The returned draw is the post-swap state: its density, not the pre-swap one.
                    pkr.post_swap_replica_results.accepted_results.target_log_prob[0],
                    tf.cast(pkr.is_swap_accepted_adjacent, dtype))

        self._compile(trace_fn, jit_compile)

    def _step_value(self, step_size):
        return (float(step_size) / np.sqrt(self.betas)).reshape(-1, 1, 1)

    def run(self, theta0, n_steps, rng, block, bar):
        """Returns ``(cold draws (n, C, P), traces)``; the last trace is the adjacent swap acceptance."""
        thetas, traces, _ = self._blocks(theta0, n_steps, rng, block, bar)
        return thetas, traces


def inverse_temperatures(n_temperatures: int, max_temperature: float) -> np.ndarray:
    """Geometric ladder ``1 = beta_0 > ... > beta_{R-1} = 1 / max_temperature``."""
    if int(n_temperatures) < 1:
        raise ValueError(f"n_temperatures must be >= 1. Received: n_temperatures={n_temperatures}")
    if not max_temperature >= 1:
        raise ValueError(f"max_temperature must be >= 1. Received: max_temperature={max_temperature}")
    if int(n_temperatures) == 1:
        return np.ones(1)
    return max_temperature ** (-np.linspace(0.0, 1.0, int(n_temperatures)))


def sample_posterior(
    log_prob_fn,
    initial_state,
    num_results: int = 1000,
    num_burnin: int = 500,
    kernel: str = "hmc",
    mass_matrix: str = "hessian",
    hessian=None,
    centre=None,
    step_size: float = 0.1,
    num_leapfrog_steps: int = 8,
    target_accept: float | None = None,
    max_tree_depth: int = 8,
    hessian_floor: float = 1e-2,
    n_windows: int = 3,
    seed: int = 0,
    block: int = 100,
    progress: bool = True,
    dtype=tf.float64,
    jit_compile: bool = False,
    reparametrization=None,
    n_temperatures: int = 1,
    max_temperature: float = 4.0,
    log_likelihood_fn=None,
    log_prior_fn=None,
) -> SamplingResult:
    """Sample ``exp(log_prob_fn)`` with HMC or NUTS from ``C`` chains.

    Args:
        log_prob_fn: ``theta (P,) -> scalar`` TensorFlow-traceable ln posterior.
        initial_state: ``(C, P)`` starting points (C chains).
        num_results: draws per chain kept.
        num_burnin: warm-up steps per chain (dual-averaging step-size adaptation over all of
            each warm-up phase, its averaged step size kept; for ``"adaptive"`` the warm-up is split
            into ``n_windows`` doubling covariance windows plus a final phase).
        kernel: ``"hmc"`` or ``"nuts"``.
        mass_matrix: ``"identity"``, ``"hessian"`` or ``"adaptive"``.
        hessian: ``(P, P)`` Hessian of ``-log_prob_fn`` at ``centre`` (needed
            for ``"hessian"``; seeds the first window of ``"adaptive"`` if given).
        centre: ``(P,)`` the MAP (default: mean of ``initial_state``).
        step_size: initial step size (in the preconditioned space).
        num_leapfrog_steps: HMC leapfrog steps per iteration.
        target_accept: dual-averaging target (default 0.75 HMC, 0.8 NUTS).
        max_tree_depth: NUTS tree depth limit.
        hessian_floor: eigenvalue floor of the Hessian (prior precision).
        n_windows: covariance windows of ``"adaptive"``.
        seed: seeds every random draw (stateless TFP seeds).
        block: steps per compiled call (progress granularity).
        progress: show a tqdm bar.
        dtype: float dtype of the chains.
        reparametrization: optional fixed bijection ``theta = r.forward(v)``
            with ``r.inverse``, ``r.log_det_jacobian`` and ``r.wrap`` (e.g.
            :class:`~tfhalo.bias.reparam.LocalLinearReparametrization`): the chains
            run on ``v`` with the Jacobian-corrected target, so they sample the
            same posterior; ``initial_state`` and ``centre`` are given and the
            samples returned in ``theta``, but ``hessian`` must be that of
            ``-ln p(v)`` at ``r.inverse(centre)``.
        jit_compile: compile each block of steps with XLA (much faster on CPU
            for small models; the log-density must be XLA-compatible).
        n_temperatures: replicas of each chain for replica exchange during
            sampling (1: none).  With ``R > 1`` the draws come from the
            ``beta = 1`` replica of ``tfp.mcmc.ReplicaExchangeMC`` (HMC kernels,
            the adapted mass matrix and step size scaled by ``beta^-1/2``),
            which can cross between modes the plain chains cannot.  Warm-up is
            unchanged (``beta = 1``).  Costs ``R`` times the gradients.
        max_temperature: ``1 / beta`` of the hottest replica (geometric ladder).
        log_likelihood_fn, log_prior_fn: the tempered and untempered parts of
            ``log_prob_fn`` (their sum); needed when ``n_temperatures > 1``.

    Returns:
        A :class:`SamplingResult`.

    Example:
        >>> result = sample_posterior(like.log_posterior, start, hessian=fit.hessian, centre=fit.theta)
        >>> result.samples.shape  # (num_results, chains, P)
    """
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {KERNELS}. Received: kernel={kernel!r}")
    if mass_matrix not in MASS_MATRICES:
        raise ValueError(f"mass_matrix must be one of {MASS_MATRICES}. Received: mass_matrix={mass_matrix!r}")
    init = np.asarray(initial_state, np.float64)
    if init.ndim != 2 or not np.all(np.isfinite(init)):
        raise ValueError(f"initial_state must be a finite (chains, P) array. Received: shape={init.shape}")
    if int(num_results) < 1 or int(num_burnin) < 0:
        raise ValueError("num_results must be >= 1 and num_burnin >= 0. Received: "
                         f"num_results={num_results}, num_burnin={num_burnin}")
    if mass_matrix == "hessian" and hessian is None:
        raise ValueError("mass_matrix='hessian' needs hessian=(P, P). Received: hessian=None")
    if not step_size > 0:
        raise ValueError(f"step_size must be positive. Received: step_size={step_size}")
    betas = inverse_temperatures(n_temperatures, max_temperature)
    if len(betas) > 1:
        if kernel != "hmc":
            raise ValueError(f"replica exchange runs HMC kernels. Received: kernel={kernel!r}")
        if log_likelihood_fn is None or log_prior_fn is None:
            raise ValueError("n_temperatures > 1 needs log_likelihood_fn and log_prior_fn. Received: "
                             f"log_likelihood_fn={log_likelihood_fn}, log_prior_fn={log_prior_fn}")
    n_chains, p = init.shape
    centre = np.mean(init, axis=0) if centre is None else np.asarray(centre, np.float64).reshape(p)
    if reparametrization is not None:
        log_prob_fn = reparametrization.wrap(log_prob_fn)
        if log_prior_fn is not None:
            # The Jacobian belongs to the untempered part.
            log_prior_fn = reparametrization.wrap(log_prior_fn)
        if log_likelihood_fn is not None:
            log_likelihood_fn = _compose(log_likelihood_fn, reparametrization.forward)
        init = reparametrization.inverse(init)
        centre = reparametrization.inverse(centre)
    if target_accept is None:
        target_accept = 0.75 if kernel == "hmc" else 0.8
    rng = np.random.default_rng(seed)

    if mass_matrix == "identity":
        chol = np.eye(p)
    elif hessian is not None:
        chol = preconditioner_from_hessian(hessian, hessian_floor)
    else:
        chol = np.eye(p)

    # Warm-up phases: (length, re-estimate the covariance after it?).
    num_burnin = int(num_burnin)
    if mass_matrix == "adaptive" and num_burnin >= 40 * n_windows:
        first = num_burnin // 8
        final = num_burnin // 8
        middle = num_burnin - first - final
        unit = middle / (2**n_windows - 1)
        sizes = [int(round(unit * 2**i)) for i in range(n_windows)]
        sizes[-1] = middle - sum(sizes[:-1])
        phases = [(first, False)] + [(s, True) for s in sizes] + [(final, False)]
    else:
        if mass_matrix == "adaptive":
            warnings.warn(f"num_burnin={num_burnin} is too short for {n_windows} adaptation windows; "
                          "using the initial mass matrix", stacklevel=2)
        phases = [(num_burnin, False)]

    runners = {}

    def runner_for(adapt):
        # One compiled graph for all warm-up windows and one for sampling.
        if adapt not in runners:
            runners[adapt] = _Runner(log_prob_fn, n_chains, p, kernel, num_leapfrog_steps, adapt, target_accept,
                                     max_tree_depth, dtype, jit_compile)
        return runners[adapt]

    total = num_burnin + int(num_results)
    bar = tqdm(total=total, desc=f"{kernel.upper()} ({mass_matrix})", disable=not progress, mininterval=1.0)
    t0 = time.perf_counter()
    theta = init
    n_grad = 0
    eps = float(step_size)
    for length, estimate in phases:
        if length == 0:
            continue
        runner = runner_for(True)
        runner.set(centre, chol, eps)
        draws, traces, eps = runner.run(theta, length, rng, block, bar)
        n_grad += int(traces[3].sum() / n_chains)
        theta = draws[-1]
        if estimate:
            half = draws[len(draws) // 2:].reshape(-1, p)
            chol = preconditioner_from_samples(half)
            centre = half.mean(axis=0)
            # Rescale the step size to the new space: start near 1 (unit-covariance target).
            eps = 0.5
    # Sampling: the adapted step size, frozen.
    swap_rate = None
    if len(betas) > 1:
        runner = _TemperedRunner(log_likelihood_fn, log_prior_fn, n_chains, p, num_leapfrog_steps, betas, dtype,
                                 jit_compile)
        runner.set(centre, chol, eps)
        draws, traces = runner.run(theta, int(num_results), rng, block, bar)
        swap_rate = traces[5].mean(axis=(0, 2)).tolist()
    else:
        runner = runner_for(False)
        runner.set(centre, chol, eps)
        draws, traces, eps = runner.run(theta, int(num_results), rng, block, bar)
    bar.close()
    n_grad += int(traces[3].sum() / n_chains)
    if reparametrization is not None:
        draws = reparametrization.forward_np(draws)
    seconds = time.perf_counter() - t0
    return SamplingResult(
        samples=draws, log_prob=traces[4], is_accepted=traces[0], log_accept_ratio=traces[1],
        divergent=traces[2], step_size=eps, n_gradient_evaluations=n_grad, seconds=seconds,
        kernel=kernel, mass_matrix=mass_matrix, preconditioner=None if mass_matrix == "identity" else chol,
        inverse_temperatures=betas.tolist(), swap_acceptance=swap_rate,
    )
