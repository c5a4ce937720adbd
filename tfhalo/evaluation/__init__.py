"""Evaluation of the deep-halo study: metrics, splits, baselines, plots, report.

Example:
    >>> from tfhalo.evaluation import kl_divergence, pearson_r
    >>> r = pearson_r(pred_log_m, true_log_m)              # doctest: +SKIP
    >>> d = kl_divergence(res_raw, res_averaged)            # doctest: +SKIP
"""

from tfhalo.evaluation.analysis import PAPER_VALUES, evaluate_predictions
from tfhalo.evaluation.baselines import (GBTBaseline, default_sphere_radii, random_predictions,
                                         sphere_density_features, sphere_kernel)
from tfhalo.evaluation.metrics import (gaussian_kl, kl_divergence, pearson_r, residual_kde, residuals,
                                       summary_statistics)
from tfhalo.evaluation.plots import residual_histograms, training_curves, violin_plot
from tfhalo.evaluation.report import headline_numbers, write_report, write_results_json
from tfhalo.evaluation.splits import RADIAL_BINS, mass_bin_edges, mass_bin_masks, radial_masks

__all__ = [
    "GBTBaseline", "PAPER_VALUES", "RADIAL_BINS", "default_sphere_radii", "evaluate_predictions",
    "gaussian_kl", "headline_numbers", "kl_divergence", "mass_bin_edges", "mass_bin_masks",
    "pearson_r", "radial_masks", "random_predictions", "residual_histograms", "residual_kde",
    "residuals", "sphere_density_features", "sphere_kernel", "summary_statistics",
    "training_curves", "violin_plot", "write_report", "write_results_json",
]
