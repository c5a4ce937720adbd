"""Convergence diagnostics of MCMC chains (TFP estimators).

Split R-hat (``tfp.mcmc.potential_scale_reduction`` with ``split_chains=True``)
and the cross-chain effective sample size (``tfp.mcmc.effective_sample_size``
with ``cross_chain_dims``), per parameter, plus acceptance rate and divergences.
"""

from __future__ import annotations

import warnings

import numpy as np
import tensorflow as tf
import tensorflow_probability as tfp

DEFAULT_RHAT_MAX = 1.01
DEFAULT_ESS_MIN = 400.0


class ConvergenceWarning(UserWarning):
    """Chains that have not converged by the requested criteria."""


def split_rhat(samples) -> np.ndarray:
    """Split R-hat per parameter of ``(S, C, P)`` draws (``S >= 4``), on the usual square-root scale.

    ``tfp.mcmc.potential_scale_reduction`` returns the Brooks & Gelman (1998)
    variance ratio ``R``; the customary R-hat (Gelman et al., Stan, ArviZ; the
    one compared with 1.01) is its square root.
    """
    samples = _check(samples)
    ratio = tfp.mcmc.potential_scale_reduction(
        tf.constant(samples), independent_chain_ndims=1, split_chains=True)
    return np.sqrt(np.asarray(ratio, np.float64))


def effective_sample_size(samples) -> np.ndarray:
    """Cross-chain ESS per parameter of ``(S, C, P)`` draws."""
    samples = _check(samples)
    return np.asarray(tfp.mcmc.effective_sample_size(
        tf.constant(samples), cross_chain_dims=1 if samples.shape[1] > 1 else None), np.float64)


def _check(samples):
    samples = np.asarray(samples, np.float64)
    if samples.ndim != 3 or samples.shape[0] < 4:
        raise ValueError(
            f"samples must be (draws >= 4, chains, parameters). Received: samples.shape={samples.shape}")
    return samples


def summarize_chains(samples, is_accepted=None, divergent=None, names=None,
                     rhat_max: float = DEFAULT_RHAT_MAX, ess_min: float = DEFAULT_ESS_MIN,
                     warn: bool = True) -> dict:
    """Per-parameter and global diagnostics; warns (:class:`ConvergenceWarning`) when not converged.

    Args:
        samples: ``(S, C, P)`` draws.
        is_accepted: ``(S, C)`` acceptance flags, optional.
        divergent: ``(S, C)`` divergence flags, optional.
        names: ``P`` parameter names.
        rhat_max: largest acceptable split R-hat.
        ess_min: smallest acceptable ESS.
        warn: emit a warning when a criterion fails.

    Returns:
        A JSON-ready dict: ``rhat``, ``ess``, ``mean``, ``std`` (lists),
        ``max_rhat``, ``min_ess``, ``acceptance_rate``, ``n_divergent``,
        ``converged`` and the thresholds.

    Example:
        >>> summary = summarize_chains(result.samples, result.is_accepted, result.divergent)
        >>> summary["converged"]
    """
    samples = _check(samples)
    p = samples.shape[2]
    names = list(names) if names is not None else [f"theta[{i}]" for i in range(p)]
    if len(names) != p:
        raise ValueError(f"names must have one entry per parameter ({p}). Received: {len(names)} names")
    rhat = split_rhat(samples) if samples.shape[1] > 1 or samples.shape[0] >= 4 else np.full(p, np.nan)
    ess = effective_sample_size(samples)
    n_div = int(np.sum(divergent)) if divergent is not None else 0
    acc = float(np.mean(is_accepted)) if is_accepted is not None else float("nan")
    converged = bool(np.all(rhat < rhat_max) and np.all(ess >= ess_min) and n_div == 0)
    summary = {
        "names": names,
        "rhat": rhat.tolist(),
        "ess": ess.tolist(),
        "mean": samples.reshape(-1, p).mean(axis=0).tolist(),
        "std": samples.reshape(-1, p).std(axis=0, ddof=1).tolist(),
        "max_rhat": float(np.max(rhat)),
        "min_ess": float(np.min(ess)),
        "acceptance_rate": acc,
        "n_divergent": n_div,
        "n_draws": int(samples.shape[0]),
        "n_chains": int(samples.shape[1]),
        "rhat_max": rhat_max,
        "ess_min": ess_min,
        "converged": converged,
    }
    if warn and not converged:
        worst = int(np.argmax(rhat))
        failed = [c for c, bad in (("R-hat", not np.all(rhat < rhat_max)), ("ESS", not np.all(ess >= ess_min)),
                                   ("divergences", n_div > 0)) if bad]
        # Divergences alone leave R-hat and ESS valid but mark regions the chains
        # may under-sample, so they are named as the failing criterion.
        warnings.warn(
            f"chains not converged ({', '.join(failed)}): max split R-hat {summary['max_rhat']:.4f} (limit "
            f"{rhat_max}, parameter {names[worst]}), min ESS {summary['min_ess']:.0f} (need {ess_min:.0f}), "
            f"{n_div} divergences (need 0)", ConvergenceWarning, stacklevel=2)
    return summary
