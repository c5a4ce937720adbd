"""Subsets of test particles: position inside the halo and halo mass bins."""

from __future__ import annotations

import numpy as np

#: Position inside the halo by r / r200 (paper: inner, mid, outskirts).
RADIAL_BINS = {"inner": (0.0, 0.2, "(]"), "mid": (0.4, 0.6, "[]"), "outskirts": (0.8, np.inf, "[)")}


def radial_masks(r_over_r200) -> dict:
    """Boolean masks ``{"inner": r in (0, 0.2], "mid": [0.4, 0.6], "outskirts": [0.8, inf)}``.

    NaN (no halo) belongs to none of them.
    """
    r = np.asarray(r_over_r200, dtype=np.float64).reshape(-1)
    out = {}
    for name, (lo, hi, closed) in RADIAL_BINS.items():
        left = r > lo if closed[0] == "(" else r >= lo
        right = r <= hi if closed[1] == "]" else r < hi
        out[name] = left & right
    return out


def mass_bin_edges(log_mass_range, n_bins: int) -> np.ndarray:
    """``n_bins + 1`` evenly spaced edges in log10 M."""
    from tfhalo.validation import check_int, check_range

    n_bins = check_int("n_bins", n_bins, minimum=1)
    lo, hi = check_range("log_mass_range", log_mass_range)
    return np.linspace(lo, hi, n_bins + 1)


def mass_bin_masks(true_log_mass, edges) -> list:
    """One boolean mask per bin ``[e_i, e_{i+1})`` (the last bin closed)."""
    m = np.asarray(true_log_mass, dtype=np.float64).reshape(-1)
    edges = np.asarray(edges, dtype=np.float64)
    masks = []
    for i in range(edges.size - 1):
        upper = m <= edges[i + 1] if i == edges.size - 2 else m < edges[i + 1]
        masks.append((m >= edges[i]) & upper)
    return masks
