"""All the study's numbers for one test set, each with its definition.

:func:`evaluate_predictions` takes the test particles' true masses, positions
inside their halos and every model's predictions, and returns a JSON-able
dict: per-model statistics (overall, by halo region, by mass bin) and the KL
divergences between residual distributions that the paper reports.
"""

from __future__ import annotations

import itertools

import numpy as np

from tfhalo.evaluation.metrics import KL_BANDWIDTH, KL_SUPPORT, kl_divergence, residuals, summary_statistics
from tfhalo.evaluation.splits import mass_bin_edges, mass_bin_masks, radial_masks

#: The numbers of Lucie-Smith, Peiris, Pontzen, Nord & Thiyagalingam (2020), "Deep learning
#: insights into cosmological structure formation", arXiv:2011.10577, and what they measure.
PAPER_VALUES = {
    "pearson_r/z0": (0.96, "Pearson r of the z=0-density CNN's predicted vs true log10 M (Fig. 4)"),
    "kl/raw||averaged": (0.03, "D_KL(n_raw || n_avg) of residual distributions (Fig. 3)"),
    "kl/raw||gbt": (0.03, "D_KL(n_CNN || n_GBT), CNN on raw density vs GBT on spherical overdensities"),
    "kl/raw||random": (0.40, "D_KL(n_CNN || n_H), CNN vs a model returning random halo masses"),
}

KL_DEFINITION = (
    f"D_KL(p||q) = int p ln(p/q) dDelta over {list(KL_SUPPORT)}, p and q Gaussian KDEs "
    f"(kernel std {KL_BANDWIDTH} dex) of the residuals Delta = log10(M_pred/M_true) on the same test particles"
)

MIN_SUBSET = 20  # fewer particles than this give no meaningful KDE or r


def _safe_kl(p, q):
    if p.size < MIN_SUBSET or q.size < MIN_SUBSET:
        return None
    return kl_divergence(p, q)


def evaluate_predictions(true_log_mass, r_over_r200, predictions: dict, kl_pairs,
                         log_mass_range, n_mass_bins: int = 3) -> dict:
    """Statistics and KL divergences of several models on one test set.

    Args:
        true_log_mass: ``(P,)`` true log10 M.
        r_over_r200: ``(P,)`` position of each particle inside its halo.
        predictions: ``{model_name: (P,) predicted log10 M}``.
        kl_pairs: ``[(p_name, q_name), ...]`` for ``D_KL(p || q)``.
        log_mass_range: range split into ``n_mass_bins`` equal bins.

    Returns:
        ``{"models": {...}, "kl": {"p||q": {"all": x, "by_region": ..., "by_mass_bin": ...}},
        "definitions": {...}}``.
    """
    true = np.asarray(true_log_mass, dtype=np.float64)
    regions = radial_masks(r_over_r200)
    edges = mass_bin_edges(log_mass_range, n_mass_bins)
    mass_masks = mass_bin_masks(true, edges)
    bin_names = [f"[{edges[i]:.2f},{edges[i + 1]:.2f}]" for i in range(n_mass_bins)]
    res = {name: residuals(pred, true) for name, pred in predictions.items()}

    models = {}
    for name, pred in predictions.items():
        pred = np.asarray(pred, dtype=np.float64)
        entry = {"all": summary_statistics(pred, true), "by_region": {}, "by_mass_bin": {}}
        for rname, m in regions.items():
            entry["by_region"][rname] = summary_statistics(pred[m], true[m]) if m.sum() >= MIN_SUBSET else None
        for bname, m in zip(bin_names, mass_masks):
            entry["by_mass_bin"][bname] = summary_statistics(pred[m], true[m]) if m.sum() >= MIN_SUBSET else None
        models[name] = entry

    kl = {}
    for p, q in kl_pairs:
        if p not in res or q not in res:
            continue
        entry = {"all": _safe_kl(res[p], res[q]), "by_region": {}, "by_mass_bin_and_region": {}}
        for rname, m in regions.items():
            entry["by_region"][rname] = _safe_kl(res[p][m], res[q][m])
        for (bname, mm), (rname, rm) in itertools.product(zip(bin_names, mass_masks), regions.items()):
            sel = mm & rm
            entry["by_mass_bin_and_region"][f"{bname}/{rname}"] = _safe_kl(res[p][sel], res[q][sel])
        kl[f"{p}||{q}"] = entry

    return {
        "models": models,
        "kl": kl,
        "mass_bins": bin_names,
        "definitions": {
            "residual": "Delta = log10(M_pred / M_true), M in Msun/h",
            "pearson_r": "Pearson correlation of predicted and true log10 M over the test particles",
            "residual_68_half_width": "half of the 16th-84th percentile range of Delta",
            "kl": KL_DEFINITION,
            "regions": "inner r/r200 in (0,0.2], mid [0.4,0.6], outskirts [0.8,inf) at z=0",
            "mass_bins": f"{n_mass_bins} equal bins of true log10 M over {list(map(float, log_mass_range))}",
            "subsets": f"subsets with fewer than {MIN_SUBSET} particles are reported as null",
        },
    }
