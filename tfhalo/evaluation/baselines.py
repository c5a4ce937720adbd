"""Baselines: the GBT on spherical overdensities, and random predictions.

The GBT of Lucie-Smith, Peiris, Pontzen & Lochner (2018), "Machine learning
cosmological structure formation", MNRAS 479, 3405, arXiv:1802.04271, learns halo masses from the mean initial
density in spheres of several radii around each particle's lattice site. Here
the mean over the lattice voxels within radius ``R`` (periodic) is computed
for every site at once as an FFT convolution with the normalised discrete
sphere, then read at the particles' sites.
"""

from __future__ import annotations

import numpy as np
import scipy.fft
from sklearn.ensemble import HistGradientBoostingRegressor

from tfhalo.validation import check_int, check_range


def _check_radii(radii) -> np.ndarray:
    arr = np.asarray(radii, dtype=np.float64).reshape(-1)
    if arr.size == 0 or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise ValueError(f"radii must be a non-empty array of finite positive numbers (Mpc/h). "
                         f"Received: radii={radii!r}")
    return arr


def sphere_kernel(n_side: int, radius_voxels: float) -> np.ndarray:
    """``(n, n, n)`` periodic indicator of voxels within ``radius_voxels`` of the origin, normalised to sum 1."""
    d = np.fft.fftfreq(n_side) * n_side  # signed periodic distance in voxels
    r2 = d[:, None, None] ** 2 + d[None, :, None] ** 2 + d[None, None, :] ** 2
    kernel = (r2 <= float(radius_voxels) ** 2).astype(np.float64)
    return kernel / kernel.sum()


def default_sphere_radii(sim, n_radii: int = 10, log_mass_range=(11.0, 14.5)) -> np.ndarray:
    """Radii (Mpc/h) of spheres enclosing log-spaced masses at the mean density.

    Clipped to at least one lattice spacing and at most a quarter of the box.
    """
    rho_mean = sim.particle_mass * sim.n_particles / sim.box_size**3
    masses = np.logspace(*log_mass_range, int(n_radii))
    radii = (3 * masses / (4 * np.pi * rho_mean)) ** (1.0 / 3.0)
    return np.unique(np.clip(radii, sim.box_size / sim.n_side, sim.box_size / 4))


def sphere_density_features(simulations, particles, radii) -> np.ndarray:
    """Mean initial density in spheres of ``radii`` (Mpc/h) around each particle.

    Args:
        simulations: sequence of simulations indexed by ``particles.sim_index``.
        particles: a :class:`~tfhalo.data.ParticleSet`.
        radii: ``(R,)`` sphere radii in Mpc/h.

    Returns:
        ``(P, R)`` float64 features.
    """
    radii = _check_radii(radii)
    out = np.empty((len(particles), radii.size))
    for i in np.unique(particles.sim_index):
        sim = simulations[int(i)]
        rows = np.flatnonzero(particles.sim_index == i)
        sites = sim.lattice_sites(particles.particle_id[rows])
        field_k = scipy.fft.rfftn(np.asarray(sim.initial_density, dtype=np.float64))
        for j, radius in enumerate(radii):
            kernel_k = scipy.fft.rfftn(sphere_kernel(sim.n_side, radius / sim.lattice_spacing))
            smooth = scipy.fft.irfftn(field_k * kernel_k, s=sim.initial_density.shape)
            out[rows, j] = smooth[sites[:, 0], sites[:, 1], sites[:, 2]]
    return out


class GBTBaseline:
    """Gradient-boosted trees on spherical overdensities (scikit-learn).

    Example:
        >>> gbt = GBTBaseline(radii).fit(sims, sets["train"])          # doctest: +SKIP
        >>> log_m = gbt.predict(sims, sets["test"])                     # doctest: +SKIP
    """

    def __init__(self, radii, seed: int = 0, **hgb_kwargs):
        self.radii = _check_radii(radii)  # at construction, not after the feature work of fit
        params = {"max_iter": 300, "learning_rate": 0.1, "early_stopping": True,
                  "validation_fraction": 0.15, "random_state": int(seed)}
        params.update(hgb_kwargs)
        self.regressor = HistGradientBoostingRegressor(**params)

    def fit(self, simulations, particles) -> "GBTBaseline":
        features = sphere_density_features(simulations, particles, self.radii)
        self.regressor.fit(features, particles.log_mass)
        return self

    def predict(self, simulations, particles) -> np.ndarray:
        """Predicted log10 M for each particle."""
        return self.regressor.predict(sphere_density_features(simulations, particles, self.radii))


def random_predictions(n: int, log_mass_range, seed=0) -> np.ndarray:
    """The paper's hypothetical random model: log10 M uniform over the label range."""
    n = check_int("n", n, minimum=0)
    lo, hi = check_range("log_mass_range", log_mass_range)
    return np.random.default_rng(seed).uniform(lo, hi, n)
