"""Residuals, correlation and the KDE Kullback-Leibler divergence of the paper.

The paper compares models through the distributions of their residuals
``Delta = log10(M_pred / M_true)``: each is estimated with a Gaussian kernel
density estimate of bandwidth 0.1 dex and
``D_KL(p || q) = int p ln(p / q) dDelta`` is integrated over [-3, 3]
(REFERENCE A; paper eq. 2).
"""

from __future__ import annotations

import numpy as np
from scipy.stats import gaussian_kde, pearsonr

from tfhalo.validation import check_int

KL_BANDWIDTH = 0.1
KL_SUPPORT = (-3.0, 3.0)


def residuals(predicted_log_mass, true_log_mass) -> np.ndarray:
    """``Delta = log10(M_pred / M_true)`` from log10 masses, shape ``(P,)``."""
    pred = np.asarray(predicted_log_mass, dtype=np.float64).reshape(-1)
    true = np.asarray(true_log_mass, dtype=np.float64).reshape(-1)
    if pred.shape != true.shape:
        raise ValueError(
            f"predicted and true masses must have the same length. Received: {pred.size} and {true.size}"
        )
    return pred - true


def pearson_r(predicted_log_mass, true_log_mass) -> float:
    """Pearson correlation coefficient between predicted and true log10 M."""
    pred = np.asarray(predicted_log_mass, dtype=np.float64).reshape(-1)
    true = np.asarray(true_log_mass, dtype=np.float64).reshape(-1)
    if pred.size < 2 or pred.size != true.size:
        raise ValueError(
            f"pearson_r needs two arrays of equal length >= 2. Received: {pred.size} and {true.size}"
        )
    if np.ptp(pred) == 0 or np.ptp(true) == 0:
        return float("nan")  # a constant prediction has no correlation
    return float(pearsonr(pred, true).statistic)


def residual_kde(sample, bandwidth: float = KL_BANDWIDTH) -> gaussian_kde:
    """Gaussian KDE whose kernel standard deviation is ``bandwidth`` (dex).

    ``gaussian_kde`` scales its kernel by the sample's standard deviation, so
    the factor is ``bandwidth / std(sample)``.
    """
    sample = np.asarray(sample, dtype=np.float64).reshape(-1)
    if sample.size < 2:
        raise ValueError(f"a KDE needs at least 2 residuals. Received: {sample.size}")
    if not float(bandwidth) > 0:
        raise ValueError(f"bandwidth must be positive. Received: bandwidth={bandwidth}")
    finite = np.isfinite(sample)
    if not finite.all():
        # Checked before the spread: std of a sample with NaN is NaN, which read as "zero spread".
        n_nan, n_inf = int(np.isnan(sample).sum()), int(np.isinf(sample).sum())
        raise ValueError(f"residuals must be finite. Received: {n_nan} NaN and {n_inf} infinite values "
                         f"among {sample.size} residuals")
    std = sample.std(ddof=1)
    if not std > 0:
        raise ValueError("residuals must not all be equal (zero spread). Received a constant sample")
    return gaussian_kde(sample, bw_method=float(bandwidth) / std)


def kl_divergence(p_sample, q_sample, bandwidth: float = KL_BANDWIDTH,
                  support=KL_SUPPORT, n_grid: int = 2001) -> float:
    """``D_KL(p || q)`` between two residual samples, as in the paper.

    Both densities are Gaussian KDEs with kernel std ``bandwidth``; the
    integral over ``support`` uses the trapezoid rule on ``n_grid`` points of
    the log-densities (so far tails cannot underflow to ``0 * log 0``).

    Example:
        >>> rng = np.random.default_rng(0)
        >>> kl_divergence(rng.normal(0, 0.3, 5000), rng.normal(0, 0.3, 5000)) < 0.01
        True
    """
    n_grid = check_int("n_grid", n_grid, minimum=3)  # fewer points cannot resolve a density
    lo, hi = (float(v) for v in support)
    if not hi > lo:
        raise ValueError(f"support must be (low, high) with low < high. Received: support={support}")
    grid = np.linspace(lo, hi, n_grid)
    log_p = residual_kde(p_sample, bandwidth).logpdf(grid)
    log_q = residual_kde(q_sample, bandwidth).logpdf(grid)
    integrand = np.exp(log_p) * (log_p - log_q)
    return float(np.trapezoid(integrand, grid))


def gaussian_kl(mu_p: float, sigma_p: float, mu_q: float, sigma_q: float) -> float:
    """Closed-form ``D_KL(N(mu_p, sigma_p^2) || N(mu_q, sigma_q^2))`` (nats)."""
    return float(np.log(sigma_q / sigma_p)
                 + (sigma_p**2 + (mu_p - mu_q) ** 2) / (2 * sigma_q**2) - 0.5)


def summary_statistics(predicted_log_mass, true_log_mass) -> dict:
    """Pearson r, residual mean, std, median and 68% interval half-width."""
    delta = residuals(predicted_log_mass, true_log_mass)
    lo, med, hi = np.percentile(delta, [16, 50, 84])
    return {
        "n": int(delta.size),
        "pearson_r": pearson_r(predicted_log_mass, true_log_mass),
        "residual_mean": float(delta.mean()),
        "residual_std": float(delta.std()),
        "residual_median": float(med),
        "residual_68_half_width": float((hi - lo) / 2),
    }
