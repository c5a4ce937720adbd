"""Residuals, correlation, the KDE Kullback-Leibler divergence of the paper, bootstrap intervals.

Lucie-Smith, Peiris, Pontzen, Nord & Thiyagalingam (2020), "Deep learning
insights into cosmological structure formation", arXiv:2011.10577, compare
models through the distributions of their residuals
``Delta = log10(M_pred / M_true)``: each is estimated with a Gaussian kernel
density estimate of bandwidth 0.1 dex and
``D_KL(p || q) = int p ln(p / q) dDelta`` is integrated over [-3, 3] (their eq. 2).

:func:`bootstrap_interval` gives any of these numbers a percentile bootstrap
interval over the test particles (Efron & Tibshirani 1993, "An Introduction
to the Bootstrap", ch. 13); :func:`kl_divergence` with ``weights`` evaluates
many bootstrap replicates at once.
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp
from scipy.stats import gaussian_kde, pearsonr

from tfhalo.validation import check_float, check_int, check_probability

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


def _check_residuals(sample) -> np.ndarray:
    """``(P,)`` float64 residuals: at least 2, finite, not all equal."""
    sample = np.asarray(sample, dtype=np.float64).reshape(-1)
    if sample.size < 2:
        raise ValueError(f"a KDE needs at least 2 residuals. Received: {sample.size}")
    finite = np.isfinite(sample)
    if not finite.all():
        # Checked before the spread: std of a sample with NaN is NaN, which read as "zero spread".
        n_nan, n_inf = int(np.isnan(sample).sum()), int(np.isinf(sample).sum())
        raise ValueError(f"residuals must be finite. Received: {n_nan} NaN and {n_inf} infinite values "
                         f"among {sample.size} residuals")
    if not sample.std(ddof=1) > 0:
        raise ValueError("residuals must not all be equal (zero spread). Received a constant sample")
    return sample


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
    sample = _check_residuals(sample)
    return gaussian_kde(sample, bw_method=float(bandwidth) / sample.std(ddof=1))


def _check_weights(weights, n: int) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    if w.ndim not in (1, 2) or w.shape[-1] != n:
        raise ValueError(f"weights must have shape (n,) or (B, n) with n={n} residuals. "
                         f"Received: weights of shape {w.shape}")
    w = np.atleast_2d(w)
    if not np.all(np.isfinite(w)) or np.any(w < 0):
        raise ValueError("weights must be finite and non-negative. Received: "
                         f"{int((~np.isfinite(w)).sum())} non-finite and {int((w < 0).sum())} negative values")
    if np.any(w.sum(axis=1) <= 0):
        raise ValueError(f"every row of weights must have a positive sum. Received: rows "
                         f"{np.flatnonzero(w.sum(axis=1) <= 0)[:5].tolist()} sum to 0")
    return w


_KDE_BLOCK = 1024  # sample points per block of the kernel matrix


def weighted_kde_logpdf(sample, weights, grid, bandwidth: float = KL_BANDWIDTH) -> np.ndarray:
    """Log-density of Gaussian KDEs of one sample under many weightings, on a grid.

    ``log f_b(x) = log sum_i w_bi N(x; x_i, bandwidth^2) - log sum_i w_bi``. With
    integer weights (bootstrap counts) row ``b`` is the KDE of the sample with
    point ``i`` repeated ``w_bi`` times, i.e. :func:`residual_kde` of a
    bootstrap replicate. All rows share one kernel matrix, evaluated in blocks
    of points and shifted by each grid point's largest log-kernel so far tails
    do not underflow; an entry whose sum is still tiny is recomputed with a
    log-sum-exp.

    Args:
        sample: ``(n,)`` residuals.
        weights: ``(B, n)`` (or ``(n,)``) non-negative weights.
        grid: ``(G,)`` evaluation points.
        bandwidth: kernel standard deviation.

    Returns:
        ``(B, G)`` log-densities (``(G,)`` for 1-D ``weights``).

    Example:
        >>> x = np.random.default_rng(0).normal(size=50)
        >>> g = np.linspace(-3, 3, 7)
        >>> np.allclose(weighted_kde_logpdf(x, np.ones(50), g), residual_kde(x).logpdf(g))
        True
    """
    x = _check_residuals(sample)
    h = check_float("bandwidth", bandwidth, positive=True)
    w = _check_weights(weights, x.size)
    grid = np.asarray(grid, dtype=np.float64).reshape(-1)
    order = np.argsort(x)
    xs, ws = x[order], w[:, order]
    pos = np.searchsorted(xs, grid)
    nearest = np.minimum(np.abs(grid - xs[np.clip(pos - 1, 0, x.size - 1)]),
                         np.abs(grid - xs[np.clip(pos, 0, x.size - 1)]))
    shift = -0.5 * (nearest / h) ** 2  # the largest log-kernel at each grid point
    acc = np.zeros((w.shape[0], grid.size))
    for start in range(0, x.size, _KDE_BLOCK):
        z = (grid[None, :] - xs[start:start + _KDE_BLOCK, None]) / h
        acc += ws[:, start:start + _KDE_BLOCK] @ np.exp(-0.5 * z**2 - shift[None, :])
    with np.errstate(divide="ignore"):
        log_acc = np.log(acc)
    # Sums this small (the nearest points drawn zero times, the rest far away) have lost
    # significant bits or underflowed: redone exactly with a log-sum-exp.
    for b, g in zip(*np.nonzero(acc < np.finfo(np.float64).tiny * 1e8)):
        keep = ws[b] > 0
        log_k = -0.5 * ((grid[g] - xs[keep]) / h) ** 2
        log_acc[b, g] = logsumexp(log_k + np.log(ws[b, keep])) - shift[g]
    out = shift[None, :] + log_acc - np.log(w.sum(axis=1))[:, None] - np.log(h * np.sqrt(2 * np.pi))
    return out[0] if np.ndim(weights) == 1 else out


def kl_divergence(p_sample, q_sample, bandwidth: float = KL_BANDWIDTH,
                  support=KL_SUPPORT, n_grid: int = 2001, weights=None):
    """``D_KL(p || q)`` between two residual samples, as in the paper.

    Both densities are Gaussian KDEs with kernel std ``bandwidth``; the
    integral over ``support`` uses the trapezoid rule on ``n_grid`` points of
    the log-densities (so far tails cannot underflow to ``0 * log 0``).

    Args:
        p_sample, q_sample: ``(n_p,)``, ``(n_q,)`` residuals.
        weights: optional ``(B, n)`` or ``(n,)`` non-negative weights of the
            particles, for paired samples (``n_p == n_q == n``, the same test
            particles under two models): row ``b`` weighs both samples. Integer
            rows are bootstrap replicates (see :func:`bootstrap_interval`).

    Returns:
        A float; with 2-D ``weights`` a ``(B,)`` array, one divergence per row.

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
    if weights is None:
        log_p = residual_kde(p_sample, bandwidth).logpdf(grid)
        log_q = residual_kde(q_sample, bandwidth).logpdf(grid)
    else:
        n_p, n_q = np.size(p_sample), np.size(q_sample)
        if n_p != n_q:
            raise ValueError(f"weights need paired samples of equal length. Received: {n_p} and {n_q} residuals")
        log_p = weighted_kde_logpdf(p_sample, np.atleast_2d(weights), grid, bandwidth)
        log_q = weighted_kde_logpdf(q_sample, np.atleast_2d(weights), grid, bandwidth)
    integrand = np.exp(log_p) * (log_p - log_q)
    kl = np.trapezoid(integrand, grid, axis=-1)
    if weights is None or np.ndim(weights) == 1:
        return float(np.reshape(kl, -1)[0])
    return kl


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


def bootstrap_interval(statistic, *arrays, n_boot: int = 1000, seed: int = 0, level: float = 0.68,
                       batched: bool = False, median_bias_correct: bool = False) -> tuple:
    """Percentile bootstrap interval of ``statistic(*arrays)`` over the arrays' rows.

    Each replicate draws ``n`` rows with replacement, the same rows from every
    array (paired: e.g. predictions and true masses of the same particles),
    and evaluates the statistic; the interval holds the central ``level`` of
    the replicates (the 16th and 84th percentiles for 68%).

    With ``median_bias_correct`` the interval is moved by ``estimate -
    median(replicates)``, so it keeps the replicates' spread but is centred
    like the estimate. Statistics of a density estimate need it: a resample
    repeats about a third of its points, its KDE is rougher, and a KL
    divergence between two such KDEs is biased upward against the estimate
    from the full sample, enough to put the plain percentile interval above it.

    Args:
        statistic: ``(*arrays) -> float``; with ``batched``,
            ``(*arrays, weights=(B, n) counts) -> (B,)``, evaluating many
            replicates at once (row ``b`` holds how often each row is drawn).
        *arrays: arrays with the same length ``n >= 2`` along axis 0.
        n_boot: number of replicates.
        seed: seed of the resampling (the replicates depend only on it, ``n`` and ``n_boot``).
        level: probability in the interval, in (0, 1).
        batched: call ``statistic`` with bootstrap counts as ``weights``.
        median_bias_correct: shift the interval by the estimate minus the replicates' median
            (the interval then always holds a finite estimate).

    Returns:
        ``(low, high)``; ``(nan, nan)`` when a replicate's statistic (or, with
        ``median_bias_correct``, the estimate) is not finite.

    Raises:
        ValueError: bad ``n_boot``, ``seed``, ``level``, or arrays of unequal or too short length.

    Example:
        >>> x = np.random.default_rng(0).normal(size=400)
        >>> lo, hi = bootstrap_interval(np.mean, x, n_boot=2000, seed=1)
        >>> bool(abs((hi - lo) / 2 - x.std() / 20) < 0.1 * x.std() / 20)   # the standard error
        True
    """
    if not callable(statistic):
        raise ValueError(f"statistic must be callable. Received: statistic={statistic!r}")
    n_boot = check_int("n_boot", n_boot, minimum=2)
    seed = check_int("seed", seed, minimum=0)
    level = check_probability("level", level)
    if not arrays:
        raise ValueError("bootstrap_interval needs at least one array. Received: none")
    arrays = [np.asarray(a) for a in arrays]
    lengths = [a.shape[0] if a.ndim else 0 for a in arrays]
    if len(set(lengths)) != 1 or lengths[0] < 2:
        raise ValueError(f"arrays must have one common length >= 2. Received: lengths {lengths}")
    n = lengths[0]
    rng = np.random.default_rng(seed)
    chunk = max(1, 1_000_000 // n)  # replicates drawn at once, a function of n only (reproducible)
    values = []
    for start in range(0, n_boot, chunk):
        idx = rng.integers(0, n, size=(min(chunk, n_boot - start), n))
        if batched:
            counts = np.stack([np.bincount(row, minlength=n) for row in idx]).astype(np.float64)
            values.append(np.asarray(statistic(*arrays, weights=counts), dtype=np.float64).reshape(-1))
        else:
            values.append(np.array([statistic(*(a[row] for a in arrays)) for row in idx], dtype=np.float64))
    values = np.concatenate(values)
    if values.size != n_boot:
        raise ValueError(f"a batched statistic must return one value per replicate. Received: "
                         f"{values.size} values for {n_boot} replicates")
    if not np.all(np.isfinite(values)):
        return (float("nan"), float("nan"))
    lo, med, hi = np.percentile(values, [50 * (1 - level), 50, 50 * (1 + level)])
    if median_bias_correct:
        if batched:
            estimate = float(np.reshape(statistic(*arrays, weights=np.ones((1, n))), -1)[0])
        else:
            estimate = float(statistic(*arrays))
        if not np.isfinite(estimate):
            return (float("nan"), float("nan"))
        lo, hi = lo + (estimate - med), hi + (estimate - med)
    return (float(lo), float(hi))
