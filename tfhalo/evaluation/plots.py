"""Figures of the deep-halo study (matplotlib, Agg backend, PNG).

Figure numbers refer to Lucie-Smith, Peiris, Pontzen, Nord & Thiyagalingam
(2020), "Deep learning insights into cosmological structure formation",
arXiv:2011.10577.

* :func:`violin_plot`: predicted vs true log mass in 12 bins (paper Fig. 2B, Fig. 4).
* :func:`residual_histograms`: residuals of two models in mass bins x halo
  regions (paper Fig. 3B).
* :func:`training_curves`: loss, validation loss and gamma per epoch.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from tfhalo.atomic import atomic_path  # noqa: E402
from tfhalo.evaluation.splits import mass_bin_edges, mass_bin_masks, radial_masks  # noqa: E402


def save_figure(fig, path, dpi: int = 110, **savefig_kwargs) -> Path:
    """Write ``fig`` to ``path`` atomically (a temporary name, then a rename) and close it.

    Example:
        >>> save_figure(plt.figure(), "out/empty.png")  # doctest: +SKIP
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with atomic_path(path, suffix=path.suffix or ".png") as tmp:  # matplotlib picks the format from it
            fig.savefig(tmp, dpi=dpi, **savefig_kwargs)
    finally:
        plt.close(fig)
    return path


def _save(fig, path) -> Path:
    return save_figure(fig, path, dpi=110, bbox_inches="tight")


def violin_plot(true_log_mass, predicted_log_mass, path, n_bins: int = 12,
                log_mass_range=None, title: str = "", r: float | None = None) -> Path:
    """Violins of predicted log10 M in ``n_bins`` evenly spaced bins of true log10 M."""
    true = np.asarray(true_log_mass, dtype=np.float64)
    pred = np.asarray(predicted_log_mass, dtype=np.float64)
    rng = log_mass_range or (true.min(), true.max())
    edges = mass_bin_edges(rng, n_bins)
    centres = 0.5 * (edges[1:] + edges[:-1])
    data, pos = [], []
    for c, m in zip(centres, mass_bin_masks(true, edges)):
        if m.sum() >= 2 and np.ptp(pred[m]) > 0:
            data.append(pred[m])
            pos.append(c)
    fig, ax = plt.subplots(figsize=(6, 5))
    width = 0.8 * (edges[1] - edges[0])
    if data:
        parts = ax.violinplot(data, positions=pos, widths=width, showmedians=True, showextrema=False)
        for body in parts["bodies"]:
            body.set_alpha(0.6)
    ax.plot(edges[[0, -1]], edges[[0, -1]], "k-", lw=1, label="y = x")
    ax.set_xlabel(r"true $\log_{10}(M / M_\odot h^{-1})$")
    ax.set_ylabel(r"predicted $\log_{10}(M / M_\odot h^{-1})$")
    label = title + (f"  (r = {r:.3f})" if r is not None else "")
    ax.set_title(label)
    ax.legend(loc="upper left")
    return _save(fig, path)


def residual_histograms(true_log_mass, r_over_r200, residuals_by_model: dict, path,
                        mass_edges, bins=None) -> Path:
    """Residual histograms of several models: rows = mass bins, columns = halo regions.

    Args:
        true_log_mass: ``(P,)`` true log10 M of the test particles.
        r_over_r200: ``(P,)`` position inside the halo.
        residuals_by_model: ``{label: (P,) residuals}``, e.g. raw and averaged.
        mass_edges: edges of the mass bins (3 bins in the paper).
    """
    true = np.asarray(true_log_mass)
    bins = np.linspace(-1.5, 1.5, 41) if bins is None else bins
    regions = radial_masks(r_over_r200)
    columns = {"all": np.ones(true.shape, bool), **regions}
    mass_masks = mass_bin_masks(true, mass_edges)
    fig, axes = plt.subplots(len(mass_masks), len(columns), figsize=(3.2 * len(columns), 2.6 * len(mass_masks)),
                             squeeze=False, sharex=True)
    for i, mm in enumerate(mass_masks):
        for j, (cname, cm) in enumerate(columns.items()):
            ax = axes[i, j]
            sel = mm & cm
            for label, res in residuals_by_model.items():
                if sel.sum() > 0:
                    ax.hist(np.asarray(res)[sel], bins=bins, density=True, histtype="step", lw=1.5, label=label)
            ax.axvline(0, color="k", lw=0.5)
            ax.set_title(f"{mass_edges[i]:.1f}-{mass_edges[i + 1]:.1f}, {cname} (n={int(sel.sum())})", fontsize=8)
            if i == len(mass_masks) - 1:
                ax.set_xlabel(r"$\Delta = \log_{10}(M_{pred}/M_{true})$")
    axes[0, 0].legend(fontsize=7)
    return _save(fig, path)


def training_curves(histories: dict, path) -> Path:
    """Loss, validation loss and gamma per epoch for each configuration."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, hist in histories.items():
        if "loss" in hist:
            line, = axes[0].plot(hist["loss"], label=f"{name} train")
            if "val_loss" in hist:
                axes[0].plot(hist["val_loss"], "--", color=line.get_color(), label=f"{name} val")
        if "gamma" in hist:
            axes[1].plot(hist["gamma"], label=name)
    axes[0].set_xlabel("epoch")
    axes[0].set_ylabel("loss")
    axes[0].legend(fontsize=7)
    axes[1].set_xlabel("epoch")
    axes[1].set_ylabel(r"Cauchy scale $\gamma$")
    axes[1].legend(fontsize=7)
    return _save(fig, path)
