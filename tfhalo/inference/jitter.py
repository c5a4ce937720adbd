"""A random step size per transition for HMC-like TFP kernels.

Leapfrog integration is unstable where the step exceeds ``2 / sqrt(lambda_max)``
of the local curvature of the log density.  When a posterior's curvature varies
across its typical set by more than the margin a step adapted on average
leaves, a chain that reaches a stiffer region proposes only divergent
trajectories, is never accepted, and stays there: after warm-up nothing lowers
the step again.  The neural bias model's conditional given the field is such a
posterior (its stiffest direction, a mixture amplitude's slope, is ten times
stiffer at some fields than at others).

:class:`JitteredStepSize` draws each transition's step as ``step * f`` with
``ln f`` uniform on ``[ln min_factor, 0]``, independently per chain and of the
state.  A transition is then a mixture, over ``f``, of kernels that each leave
the target invariant, so it does too (Neal 2011, section 5.4.2.2, which
recommends such randomisation for exactly this reason: no single step is
stable everywhere).  A chain in a region that needs a step ``r`` times smaller
than the adapted one still moves on a fraction ``1 - ln r / ln(1 / min_factor)``
of its transitions.

The wrapper sits between a step-size adaptation and the kernel it adapts
(``DualAveragingStepSizeAdaptation(JitteredStepSize(HamiltonianMonteCarlo(...)))``):
the adaptation sets and reads the base step, the inner kernel sees the drawn one,
and the results carry the base step again after every transition.

Reference:
    Neal (2011), "MCMC using Hamiltonian dynamics", in Handbook of Markov Chain
    Monte Carlo, chapter 5, arXiv:1206.1901.

Example:
    >>> from tfhalo import backend
    >>> tfp = backend.tfp
    >>> hmc = tfp.mcmc.HamiltonianMonteCarlo(log_prob, step_size=0.1, num_leapfrog_steps=20)
    >>> kernel = tfp.mcmc.DualAveragingStepSizeAdaptation(
    ...     JitteredStepSize(hmc, min_factor=0.25), num_adaptation_steps=500)
"""

from __future__ import annotations

import collections
import math

from keras import ops

from tfhalo import backend
from tfhalo.validation import check_fraction

tfp = backend.tfp

__all__ = ["JitteredStepSize", "JitteredStepSizeResults"]

JitteredStepSizeResults = collections.namedtuple("JitteredStepSizeResults", ["inner_results", "step_factor"])
JitteredStepSizeResults.__doc__ = """Results of :class:`JitteredStepSize`.

Attributes:
    inner_results: the inner kernel's results, holding the base step size.
    step_factor: ``(C, 1)`` the factor each chain's last transition used (1 at bootstrap).
"""

# Results fields under which HMC-like kernels nest the results that hold ``step_size``.
_NESTED = ("inner_results", "accepted_results", "proposed_results")


def _with_step_size(results, step_size):
    """``results`` with every nested ``step_size`` field (accepted and proposed) set to ``step_size``."""
    updates = {}
    for name in _NESTED:
        if hasattr(results, name):
            updates[name] = _with_step_size(getattr(results, name), step_size)
    if hasattr(results, "step_size"):
        updates["step_size"] = step_size
    return results._replace(**updates) if updates else results


def _step_size(results):
    """The innermost ``step_size`` of ``results`` (an HMC-like kernel's accepted results)."""
    found = getattr(results, "step_size", None)
    for name in ("inner_results", "accepted_results"):
        if hasattr(results, name):
            inner = _step_size(getattr(results, name))
            if inner is not None:
                return inner
    return found


class JitteredStepSize(tfp.mcmc.TransitionKernel):
    """Runs ``inner_kernel`` with its step size multiplied by a random factor each transition.

    Args:
        inner_kernel: an HMC-like ``tfp.mcmc`` kernel whose results hold ``step_size``
            (``HamiltonianMonteCarlo``, ``NoUTurnSampler``), on a single-tensor
            state ``(C, P)`` (or ``(P,)``).
        min_factor: smallest factor, in ``(0, 1]``; factors are log-uniform on
            ``[min_factor, 1]``, one per chain and transition.  ``1`` runs the
            inner kernel unchanged.
        name: the kernel's name.

    Shapes:
        ``one_step(state (C, P), results, seed) -> (state (C, P), results)``.

    Raises:
        ValueError: ``min_factor`` is not in ``(0, 1]``, or ``inner_kernel`` has no
            ``step_size`` in its results.

    Example:
        >>> kernel = tfp.mcmc.DualAveragingStepSizeAdaptation(
        ...     JitteredStepSize(tfp.mcmc.HamiltonianMonteCarlo(f, 0.1, 40), min_factor=0.25),
        ...     num_adaptation_steps=400, target_accept_prob=0.9)
    """

    def __init__(self, inner_kernel, min_factor: float = 0.25, name=None):
        factor = check_fraction("min_factor", min_factor)
        params = getattr(inner_kernel, "parameters", {})
        # HMC-like: a leapfrog integrator (a fixed number of steps, or NUTS's trees) with a step size.
        if not hasattr(inner_kernel, "one_step") or "step_size" not in params or not (
                "num_leapfrog_steps" in params or "max_tree_depth" in params):
            raise ValueError("inner_kernel must be an HMC-like TFP kernel with a step size. Received: "
                             f"inner_kernel={inner_kernel!r}")
        if params.get("store_parameters_in_results") is False:
            # Such a kernel reads its own step_size, not the results' that this wrapper sets.
            inner_kernel = type(inner_kernel)(**dict(params, store_parameters_in_results=True))
        self._parameters = dict(inner_kernel=inner_kernel, min_factor=factor, name=name)

    @property
    def inner_kernel(self):
        return self._parameters["inner_kernel"]

    @property
    def min_factor(self) -> float:
        return self._parameters["min_factor"]

    @property
    def name(self):
        return self._parameters["name"]

    @property
    def parameters(self):
        return self._parameters

    @property
    def is_calibrated(self):
        return self.inner_kernel.is_calibrated

    def _factor_shape(self, state):
        shape = tuple(ops.shape(state))
        return shape[:-1] + (1,) if len(shape) > 1 else ()

    def bootstrap_results(self, init_state):
        inner = self.inner_kernel.bootstrap_results(init_state)
        if _step_size(inner) is None:
            raise ValueError("inner_kernel's results hold no step_size; JitteredStepSize needs an HMC-like kernel. "
                             f"Received: inner_kernel={self.inner_kernel!r}")
        return JitteredStepSizeResults(inner_results=inner,
                                       step_factor=ops.ones(self._factor_shape(init_state), dtype=init_state.dtype))

    def one_step(self, current_state, previous_kernel_results, seed=None):
        seed_factor, seed_inner = tfp.random.split_seed(seed, n=2)
        inner = previous_kernel_results.inner_results
        base = _step_size(inner)
        dtype = current_state.dtype
        u = tfp.distributions.Uniform(ops.zeros((), dtype), ops.ones((), dtype)).sample(
            self._factor_shape(current_state), seed=seed_factor)
        factor = ops.exp(u * math.log(self.min_factor))
        state, results = self.inner_kernel.one_step(current_state, _with_step_size(inner, base * factor),
                                                    seed=seed_inner)
        return state, JitteredStepSizeResults(inner_results=_with_step_size(results, base), step_factor=factor)
