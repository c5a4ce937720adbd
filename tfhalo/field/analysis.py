"""Summaries of field-level posteriors: power spectra, cross-correlation, coverage.

NumPy float64 throughout; every function takes draws of the white noise
``omega`` (or of a field) as ``(D, n, n, n)`` arrays, ``D`` draws of any chains
pooled, so the same code serves a study, a benchmark and a reader of the saved
samples.

The figures follow Charnock, Lavaux, Wandelt, Sarma Boruah, Jasche & Hudson
(2020), "Neural physical engines for inferring the halo mass distribution
function", MNRAS 494, 50, arXiv:1909.06379 (their Figs. 4-6); the coverage test
is the per-mode calibration of field-level posteriors used by Jasche & Wandelt
(2013), "Bayesian physical reconstruction of initial conditions from
large-scale structure surveys", MNRAS 432, 894, arXiv:1203.3639.

Example:
    >>> bins = k_bins(32, 128.0, n_bins=8)
    >>> u = hartley_coefficients(draws)                  # (D, 32, 32, 32)
    >>> cov = coverage(u, hartley_coefficients(truth)[0], bins, levels=(0.68, 0.95))
"""

from __future__ import annotations

import dataclasses
from typing import Optional, Sequence

import numpy as np
import scipy.fft

from tfhalo.sim.grid import fft_wavenumber_magnitude
from tfhalo.validation import check_finite_array, check_float, check_int

__all__ = [
    "KBins",
    "k_bins",
    "hartley_coefficients",
    "binned_power",
    "cross_correlation",
    "k_at_correlation",
    "coverage",
    "expected_coverage",
    "cosmic_variance_band",
]

#: Most modes per k bin whose quantile ESS :func:`coverage` computes for the expected fraction (a
#: seeded subset beyond it: the expectation is a bin average, and ArviZ's ESS costs ~0.4 ms a mode).
MAX_MODES_FOR_EXPECTATION = 256
# The fewest draws (all chains) and draws per chain :func:`coverage` estimates intervals from.
MIN_INTERVAL_DRAWS = 20
MIN_DRAWS_PER_CHAIN = 4


def _fields(x, name: str) -> np.ndarray:
    x = np.asarray(x, np.float64)
    if x.ndim == 3:
        x = x[None]
    if x.ndim != 4 or len(set(x.shape[1:])) != 1:
        raise ValueError(f"{name} must be (D, n, n, n) or (n, n, n). Received: {name}.shape={x.shape}")
    if not np.all(np.isfinite(x)):
        raise ValueError(f"{name} must be finite. Received: {int(np.sum(~np.isfinite(x)))} non-finite values")
    return x


@dataclasses.dataclass(frozen=True)
class KBins:
    """Linear ``|k|`` bins of the full ``n^3`` Fourier grid of a box.

    Attributes:
        n: grid side.
        box_size: box side, Mpc/h.
        edges: ``(B + 1,)`` bin edges in h/Mpc.
        index: ``(n, n, n)`` int bin of each full-FFT (and Hartley) mode; ``-1`` for
            ``k = 0``, modes beyond the last edge, and the Nyquist planes (a real
            field's Nyquist coefficients have no partner mode and a truncated
            truth has none).
        centres: ``(B,)`` mean ``|k|`` of the modes in each bin.
        n_modes: ``(B,)`` number of full-FFT modes per bin.
    """

    n: int
    box_size: float
    edges: np.ndarray
    index: np.ndarray
    centres: np.ndarray
    n_modes: np.ndarray

    @property
    def n_bins(self) -> int:
        return int(self.centres.size)

    def sum(self, values) -> np.ndarray:
        """``(B,)`` sums of an ``(n, n, n)`` array over each bin's modes."""
        sel = self.index >= 0
        return np.bincount(self.index[sel], weights=np.asarray(values, np.float64)[sel], minlength=self.n_bins)

    def average(self, values) -> np.ndarray:
        """``(B,)`` means of an ``(n, n, n)`` array over each bin's modes."""
        return self.sum(values) / self.n_modes


def k_bins(n: int, box_size: float, n_bins: Optional[int] = None, k_max: Optional[float] = None) -> KBins:
    """Bins of ``|k|`` for an ``n^3`` grid of side ``box_size``.

    Args:
        n: grid side (>= 2).
        box_size: box side in Mpc/h.
        n_bins: number of linear bins from ``k_f / 2`` to ``k_max`` (default:
            bins of width ``k_f = 2 pi / L``).
        k_max: last edge (default the Nyquist frequency ``pi n / L``).

    Returns:
        :class:`KBins`; empty bins are dropped.
    """
    n = check_int("n", n, minimum=2)
    box_size = check_float("box_size", box_size, positive=True)
    kf = 2.0 * np.pi / box_size
    k_nyq = kf * n / 2
    k_max = k_nyq if k_max is None else check_float("k_max", k_max, positive=True)
    if n_bins is None:
        n_bins = max(int(round(k_max / kf - 0.5)), 1)
    n_bins = check_int("n_bins", n_bins, minimum=1)
    edges = np.linspace(0.5 * kf, k_max, n_bins + 1)
    kmag = fft_wavenumber_magnitude(n, box_size)
    idx = np.digitize(kmag, edges) - 1
    idx[(idx < 0) | (idx >= n_bins)] = -1
    # Nyquist planes: index n/2 along any axis (even n only).
    if n % 2 == 0:
        h = n // 2
        idx[h, :, :] = -1
        idx[:, h, :] = -1
        idx[:, :, h] = -1
    counts = np.bincount(idx[idx >= 0], minlength=n_bins)
    sums = np.bincount(idx[idx >= 0], weights=kmag[idx >= 0], minlength=n_bins)
    keep = counts > 0
    remap = -np.ones(n_bins, int)
    remap[keep] = np.arange(int(keep.sum()))
    idx = np.where(idx >= 0, remap[np.maximum(idx, 0)], -1)
    lo, hi = edges[:-1][keep], edges[1:][keep]
    return KBins(n=n, box_size=box_size, edges=np.concatenate([lo, hi[-1:]]), index=idx,
                 centres=sums[keep] / counts[keep], n_modes=counts[keep])


def hartley_coefficients(fields) -> np.ndarray:
    """Orthonormal Hartley coefficients ``(Re F - Im F) / sqrt(n^3)`` of ``(D, n, n, n)`` fields.

    The same transform as :func:`tfhalo.field.fft.hartley3`, so that white noise
    has unit-variance, independent coefficients, one real number per mode.
    """
    x = _fields(fields, "fields")
    f = scipy.fft.fftn(x, axes=(1, 2, 3), workers=-1)
    return (f.real - f.imag) / np.sqrt(np.prod(x.shape[1:]))


def binned_power(fields, bins: KBins) -> np.ndarray:
    """``(D, B)`` power ``P(k) = V <|delta_k|^2> / N^2`` per bin of each field (NumPy FFT convention).

    Averaged over the full-FFT modes in each bin of ``bins`` (Nyquist planes and
    ``k = 0`` excluded), so that for a Gaussian field of spectrum ``P`` the
    expectation is ``P`` at the bin's modes.
    """
    x = _fields(fields, "fields")
    if x.shape[1] != bins.n:
        raise ValueError(f"fields must be on the bins' {bins.n}^3 grid. Received: fields.shape={x.shape}")
    f = scipy.fft.fftn(x, axes=(1, 2, 3), workers=-1)
    power = np.abs(f) ** 2 * bins.box_size**3 / float(bins.n) ** 6
    return np.stack([bins.average(p) for p in power])


def cross_correlation(a, b, bins: KBins) -> np.ndarray:
    """``(B,)`` ``r(k) = Re<a_k b_k*> / sqrt(<|a_k|^2> <|b_k|^2>)`` per bin of two ``(n, n, n)`` fields."""
    a = _fields(a, "a")[0]
    b = _fields(b, "b")[0]
    if a.shape != b.shape or a.shape[0] != bins.n:
        raise ValueError(f"a and b must both be on the bins' {bins.n}^3 grid. Received: a.shape={a.shape}, "
                         f"b.shape={b.shape}")
    fa, fb = scipy.fft.fftn(a), scipy.fft.fftn(b)
    cross = bins.sum((fa * np.conj(fb)).real)
    with np.errstate(invalid="ignore", divide="ignore"):
        return cross / np.sqrt(bins.sum(np.abs(fa) ** 2) * bins.sum(np.abs(fb) ** 2))


def k_at_correlation(k, r, level: float = 0.5) -> Optional[float]:
    """The first ``k`` where ``r(k)`` falls below ``level`` (linear interpolation); None if it never does."""
    k = np.asarray(k, np.float64)
    r = np.asarray(r, np.float64)
    below = np.flatnonzero(r < level)
    if below.size == 0:
        return None
    i = int(below[0])
    if i == 0:
        return float(k[0])
    t = (r[i - 1] - level) / (r[i - 1] - r[i])
    return float(k[i - 1] + t * (k[i] - k[i - 1]))


def expected_coverage(chain_draws, level: float) -> np.ndarray:
    """How often an exact sampler's central ``level`` interval of these draws holds the truth, per coefficient.

    The central interval of ``D`` draws (empirical quantiles ``a = (1 - level)/2`` and
    ``b = (1 + level)/2``, NumPy's linear interpolation) is narrower than the posterior's
    own: even for independent draws of the right posterior it contains a fresh draw (the
    truth of a self-consistent mock) with probability ``level (D - 1)/(D + 1)``, the
    mean gap of uniform order statistics (0.934 for 120 draws at 95%), and autocorrelated
    draws shrink it further.  To second order the quantile estimate ``q_p`` of a chain
    whose empirical CDF is unbiased satisfies

        E[F(q_p)] - p = (1 - 2p) / (2 D) + V'(p) / 2,    V(u) = u (1 - u) / ESS_u,

    with ``F`` the posterior's CDF and ``ESS_u`` the effective sample size of the
    indicator ``x <= q_u`` (ArviZ's quantile ESS; Vehtari, Gelman, Simpson, Carpenter &
    Buerkner 2021, Bayesian Anal. 16, 667, arXiv:1903.08008).  The first term is the
    interpolation rule's, the second the quantile's Monte Carlo spread; for independent
    draws the two add up to the order-statistics result.  ``V'`` is a central difference
    over ``u = p -/+ a/2``.  So the expected coverage is
    ``level + (E[F(q_b)] - b) - (E[F(q_a)] - a)``: the reference against which the
    coverage of a finite run is judged, which tends to ``level`` as the draws grow.
    The expansion needs quantile ESS of a few tens or more: with fewer, the result is
    rough (docs/field_level.md, "Calibration").

    Args:
        chain_draws: ``(C, S, M)`` draws: ``C`` chains of ``S`` draws of ``M`` coefficients.
        level: the interval's probability, in (0, 1).

    Returns:
        ``(M,)`` expected coverage, clipped to ``[0, level]``.

    Example:
        >>> x = np.random.default_rng(0).standard_normal((2, 60, 500))   # independent draws
        >>> round(float(expected_coverage(x, 0.95).mean()), 2)           # 0.95 * 119 / 121
        0.93
    """
    import arviz as az

    level = check_float("level", level)
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must lie in (0, 1). Received: level={level}")
    x = np.asarray(chain_draws, np.float64)
    if x.ndim != 3 or x.shape[1] < 4:
        raise ValueError(f"chain_draws must be (chains, draws >= 4, coefficients). Received: shape={x.shape}")
    check_finite_array("chain_draws", x)
    n_draws = x.shape[0] * x.shape[1]
    data = az.convert_to_dataset(x)

    def variance(u):  # V(u); a coefficient whose indicator never changes counts as one draw
        ess = np.asarray(az.ess(data, method="quantile", prob=u)["x"].values, np.float64)
        return u * (1.0 - u) / np.where(np.isfinite(ess), np.maximum(ess, 1.0), 1.0)

    a, b = (1.0 - level) / 2.0, (1.0 + level) / 2.0
    h = a / 2.0
    shift = {}
    for p in (a, b):
        slope = (variance(p + h) - variance(p - h)) / (2.0 * h)
        shift[p] = (1.0 - 2.0 * p) / (2.0 * n_draws) + 0.5 * slope
    return np.clip(level + shift[b] - shift[a], 0.0, level)


def coverage(draws, truth, bins: KBins, levels: Sequence[float] = (0.68, 0.95), n_chains: int = 1) -> dict:
    """Fraction of true coefficients inside the draws' central intervals, per ``|k|`` bin.

    For each coefficient (e.g. each Hartley mode of the white noise) the
    central ``level`` interval of its ``D`` draws is the pair of empirical
    quantiles ``(1 - level)/2`` and ``(1 + level)/2``; the posterior's own interval
    contains the truth with probability ``level``.  The binomial standard error
    ``sqrt(level (1 - level) / N)`` uses the ``N`` modes of a bin: the modes of a
    white-noise field are independent under the prior, and nearly so under a
    posterior that is close to diagonal in Fourier space.

    An interval estimated from finitely many draws is narrower on average, so each bin
    is also compared with what an exact sampler gives with these draws
    (:func:`expected_coverage`: ``expected``, its binomial standard error
    ``expected_stderr`` and ``z_expected``); with few effective draws the two references
    differ by several binomial errors (0.95 against 0.934 for 120 independent draws).

    Args:
        draws: ``(D, n, n, n)`` posterior draws of the coefficients, draw-major when
            ``n_chains > 1`` (``D = S * n_chains``, the ``S`` draws of ``(S, C, n, n, n)``
            flattened).
        truth: ``(n, n, n)`` true coefficients.
        bins: :class:`KBins` of the grid.
        levels: nominal probabilities.
        n_chains: how many chains the draws interleave (for their effective sample size).

    Returns:
        ``{"k": (B,), "n_modes": (B,), "n_draws", "n_chains", "levels": {level: {"fraction": (B,),
        "stderr": (B,), "z": (B,), "expected": (B,), "expected_stderr": (B,), "z_expected": (B,)}}}``
        as lists (JSON-ready); ``z = (fraction - level) / stderr`` and
        ``z_expected = (fraction - expected) / expected_stderr``.  The expectation uses at most
        :data:`MAX_MODES_FOR_EXPECTATION` modes per bin (a seeded subset).
    """
    d = _fields(draws, "draws")
    t = _fields(truth, "truth")[0]
    if d.shape[1:] != t.shape or t.shape[0] != bins.n:
        raise ValueError(f"draws and truth must be on the bins' {bins.n}^3 grid. Received: "
                         f"draws.shape={d.shape}, truth.shape={t.shape}")
    if d.shape[0] < MIN_INTERVAL_DRAWS:
        raise ValueError(f"draws must hold at least {MIN_INTERVAL_DRAWS} draws for interval estimates. "
                         f"Received: {d.shape[0]} draws")
    n_chains = check_int("n_chains", n_chains, minimum=1)
    if d.shape[0] % n_chains or d.shape[0] // n_chains < MIN_DRAWS_PER_CHAIN:
        raise ValueError(f"n_chains must divide the {d.shape[0]} draws into chains of at least {MIN_DRAWS_PER_CHAIN}. "
                         f"Received: n_chains={n_chains}")
    levels = [float(level) for level in levels]
    for level in levels:
        if not 0.0 < level < 1.0:
            raise ValueError(f"levels must lie in (0, 1). Received: levels={list(levels)}")
    sel = bins.index >= 0
    idx = bins.index[sel]
    n_modes = bins.n_modes
    out = {"k": bins.centres.tolist(), "n_modes": n_modes.tolist(), "n_draws": int(d.shape[0]),
           "n_chains": n_chains, "levels": {}}
    flat = d[:, sel]
    truth_sel = t[sel]
    # The modes the expectation is computed on: all, or a seeded subset of each crowded bin.
    rng = np.random.default_rng(0)
    subset = np.concatenate([m if m.size <= MAX_MODES_FOR_EXPECTATION
                             else np.sort(rng.choice(m, MAX_MODES_FOR_EXPECTATION, replace=False))
                             for m in (np.flatnonzero(idx == b) for b in range(bins.n_bins))])
    chains = flat[:, subset].reshape(-1, n_chains, subset.size).transpose(1, 0, 2)   # (C, S, M')
    for level in levels:
        lo, hi = np.quantile(flat, [(1 - level) / 2, (1 + level) / 2], axis=0)
        inside = (truth_sel >= lo) & (truth_sel <= hi)
        frac = np.bincount(idx, weights=inside.astype(float), minlength=bins.n_bins) / n_modes
        err = np.sqrt(level * (1 - level) / n_modes)
        expect = expected_coverage(chains, level)
        counts = np.bincount(idx[subset], minlength=bins.n_bins)
        mean = np.bincount(idx[subset], weights=expect, minlength=bins.n_bins) / counts
        var = np.bincount(idx[subset], weights=expect * (1 - expect), minlength=bins.n_bins) / counts
        # A bin where every draw agrees (variance 0) gets a tiny error, not a division by zero.
        err_expected = np.sqrt(np.maximum(var, 1e-12) / n_modes)
        out["levels"][f"{level:g}"] = {"fraction": frac.tolist(), "stderr": err.tolist(),
                                       "z": ((frac - level) / err).tolist(), "expected": mean.tolist(),
                                       "expected_stderr": err_expected.tolist(),
                                       "z_expected": ((frac - mean) / err_expected).tolist()}
    return out


def cosmic_variance_band(power, n_modes, width: float = 1.0):
    """``(lower, upper)`` of ``P (1 -/+ width sqrt(2 / N_modes))``: the scatter of a bin's power estimate.

    A bin of ``N`` full-FFT modes holds ``N / 2`` independent complex modes of a
    real Gaussian field, each ``|delta_k|^2`` exponential, so the bin average has
    relative standard deviation ``sqrt(2 / N)``.
    """
    power = np.asarray(power, np.float64)
    rel = width * np.sqrt(2.0 / np.asarray(n_modes, np.float64))
    return power * (1.0 - rel), power * (1.0 + rel)
