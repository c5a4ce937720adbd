"""Inputs of the neural bias model: a coarse z=0 density grid and binned halos.

The model of Charnock, Lavaux, Wandelt, Sarma Boruah, Jasche & Hudson (2020),
"Neural physical engines for inferring the halo mass distribution function",
MNRAS 494, 50, arXiv:1909.06379, sees ``log(1 + delta)`` of the z = 0 matter
density on a coarse grid and the catalogue of halos above a mass threshold,
each halo attached to the voxel that contains its centre.  This module builds
those inputs from a :class:`~tfhalo.sim.simulation.Simulation` (density from
the N-body particles or from the 2LPT-evolved initial conditions) or from plain
arrays, and rejects inputs the likelihood cannot score (halos outside the grid,
non-finite densities, an empty catalogue) before any work starts.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from tfhalo.validation import check_choice, check_float, check_float_array, check_int

#: Default floor on ``1 + delta``: an empty voxel of a CIC-painted grid would
#: give ``log(0)``; 1e-2 is far below any occupied voxel of the coarse grids
#: used here (tens of particles per voxel on average).
DEFAULT_DENSITY_FLOOR = 1e-2

DENSITY_SOURCES = ("nbody", "lpt")


@dataclasses.dataclass
class BiasData:
    """One simulation's inputs to the bias likelihood.

    Attributes:
        one_plus_delta: ``(n, n, n)`` float64 ``1 + delta`` (floored).
        log_density: ``(n, n, n)`` float32 ``log(1 + delta)``: the model input.
        halo_voxel: ``(H,)`` int64 flat (C-order) index of each halo's voxel.
        halo_mass: ``(H,)`` float64 halo masses (all above ``mass_threshold``), Msun/h.
        box_size: side of the periodic box, Mpc/h.
        mass_threshold: ``M_th`` in Msun/h.
        name: a label.
    """

    one_plus_delta: np.ndarray
    log_density: np.ndarray
    halo_voxel: np.ndarray
    halo_mass: np.ndarray
    box_size: float
    mass_threshold: float
    name: str = "data"

    @property
    def n_grid(self) -> int:
        return int(self.log_density.shape[0])

    @property
    def n_halos(self) -> int:
        return int(self.halo_mass.shape[0])

    @property
    def voxel_volume(self) -> float:
        """Volume of one voxel, (Mpc/h)^3."""
        return float((self.box_size / self.n_grid) ** 3)

    @property
    def log_mass_threshold(self) -> float:
        return float(np.log(self.mass_threshold))

    @property
    def halo_ln_mass(self) -> np.ndarray:
        return np.log(self.halo_mass)

    def halo_counts(self) -> np.ndarray:
        """``(n, n, n)`` number of halos per voxel."""
        counts = np.bincount(self.halo_voxel, minlength=self.n_grid**3)
        return counts.reshape((self.n_grid,) * 3)

    def halo_mass_field(self) -> np.ndarray:
        """``(n, n, n)`` total halo mass per voxel, Msun/h."""
        field = np.bincount(self.halo_voxel, weights=self.halo_mass, minlength=self.n_grid**3)
        return field.reshape((self.n_grid,) * 3)


def make_bias_data(
    one_plus_delta: np.ndarray,
    halo_centres: np.ndarray,
    halo_masses: np.ndarray,
    box_size: float,
    mass_threshold: float,
    density_floor: float = DEFAULT_DENSITY_FLOOR,
    name: str = "data",
) -> BiasData:
    """Validate a density grid and a halo catalogue and bin the halos to voxels.

    Every argument is checked before anything is computed; no array is
    reshaped to fit, so a transposed ``(3, H)`` catalogue is refused rather
    than binned into the wrong voxels.

    Args:
        one_plus_delta: ``(n, n, n)`` density in units of the mean (``1 + delta``),
            ``n >= 1``, finite and non-negative.
        halo_centres: ``(H, 3)`` finite halo centres in Mpc/h, inside ``[0, box_size)``.
        halo_masses: ``(H,)`` finite positive halo masses in Msun/h.
        box_size: box side in Mpc/h (finite, positive).
        mass_threshold: only halos with ``mass >= mass_threshold`` are kept
            (finite, positive).
        density_floor: ``1 + delta`` is clipped from below at this value
            (finite, positive).
        name: a label (string).

    Returns:
        A :class:`BiasData`.

    Raises:
        ValueError: naming the argument: a non-cubic, empty or non-finite
            density grid, centres not of shape ``(H, 3)``, non-finite or
            outside the box, masses not of shape ``(H,)``, non-finite or
            non-positive, a non-finite or non-positive ``box_size``,
            ``mass_threshold`` or ``density_floor``, or no halo above the
            threshold.

    Example:
        >>> rho = np.ones((4, 4, 4))
        >>> d = make_bias_data(rho, [[1.0, 1.0, 9.0]], [2e12], 10.0, 1e12)
        >>> int(d.halo_voxel[0])  # grid points at 0, 2.5, 5, 7.5: nearest (0, 0, 0), wrapped from 4
        0
    """
    box_size = check_float("box_size", box_size, positive=True)
    mass_threshold = check_float("mass_threshold", mass_threshold, positive=True)
    density_floor = check_float("density_floor", density_floor, positive=True)
    if not isinstance(name, str):
        raise ValueError(f"name must be a string. Received: name={name!r}")
    rho = check_float_array("one_plus_delta", one_plus_delta)
    if rho.ndim != 3 or len(set(rho.shape)) != 1 or rho.shape[0] < 1:
        raise ValueError(
            f"one_plus_delta must be a non-empty cubic (n, n, n) grid. Received: one_plus_delta.shape={rho.shape}"
        )
    bad = ~np.isfinite(rho)
    if bad.any():
        raise ValueError(
            f"one_plus_delta must be finite everywhere. Received: {int(bad.sum())} non-finite "
            f"(NaN or inf) voxels out of {rho.size}"
        )
    if (rho < 0).any():
        raise ValueError(
            f"one_plus_delta must be non-negative (it is a density over the mean). "
            f"Received: min(one_plus_delta)={rho.min()}"
        )
    centres = check_float_array("halo_centres", halo_centres)
    if centres.ndim != 2 or centres.shape[1] != 3:
        raise ValueError(f"halo_centres must have shape (H, 3). Received: halo_centres.shape={centres.shape}")
    masses = check_float_array("halo_masses", halo_masses)
    if masses.ndim != 1:
        raise ValueError(f"halo_masses must have shape (H,). Received: halo_masses.shape={masses.shape}")
    if centres.shape[0] != masses.shape[0]:
        raise ValueError(
            f"halo_centres and halo_masses must describe the same halos. Received: "
            f"halo_centres.shape={centres.shape}, halo_masses.shape={masses.shape}"
        )
    bad = ~np.isfinite(centres).all(axis=1)
    if bad.any():
        raise ValueError(
            f"halo_centres must be finite. Received: {int(bad.sum())} halos with a NaN or infinite "
            f"coordinate, e.g. halo_centres[{int(np.argmax(bad))}]={centres[np.argmax(bad)].tolist()}"
        )
    bad = ~(np.isfinite(masses) & (masses > 0))
    if bad.any():
        raise ValueError(
            f"halo_masses must be finite and positive. Received: {int(bad.sum())} non-finite or non-positive masses, "
            f"e.g. halo_masses[{int(np.argmax(bad))}]={masses[np.argmax(bad)]}"
        )
    outside = ~np.all((centres >= 0) & (centres < box_size), axis=1)
    if outside.any():
        first = centres[np.argmax(outside)]
        raise ValueError(
            f"halo_centres must lie inside the grid [0, box_size={box_size}). Received: "
            f"{int(outside.sum())} halos outside, e.g. centre={first.tolist()}"
        )
    keep = masses >= mass_threshold
    if not keep.any():
        raise ValueError(
            f"no halo above the mass threshold: the likelihood needs at least one. Received: "
            f"mass_threshold={mass_threshold:.4g}, {masses.size} halos, max mass="
            f"{masses.max() if masses.size else None}"
        )
    voxel = halo_voxels(centres[keep], box_size, rho.shape[0])
    rho = np.maximum(rho, density_floor)
    return BiasData(
        one_plus_delta=rho,
        log_density=np.log(rho).astype(np.float32),
        halo_voxel=voxel,
        halo_mass=masses[keep],
        box_size=float(box_size),
        mass_threshold=float(mass_threshold),
        name=name,
    )


def halo_voxels(centres: np.ndarray, box_size: float, n_grid: int) -> np.ndarray:
    """``(H,)`` int64 flat (C-order) index of the voxel of each ``(H, 3)`` centre in ``[0, box_size)``.

    Grid value ``i`` is the cloud-in-cell density AT ``x = i * box_size / n`` (as
    painted by :func:`tfhalo.sim.mesh.cic_paint`), so a halo belongs to its
    NEAREST grid point, wrapped periodically; the cell ``[i, i + 1)`` would score it
    against density half a voxel away per axis.  Inputs are not checked here: the
    callers (:func:`make_bias_data`, :class:`tfhalo.field.posterior.FieldCatalogue`)
    validate them first.

    Example:
        >>> int(halo_voxels(np.array([[1.0, 1.0, 9.0]]), 10.0, 4)[0])
        0
    """
    n = int(n_grid)
    idx = np.floor(np.asarray(centres, np.float64) / box_size * n + 0.5).astype(np.int64) % n
    return np.ravel_multi_index(idx.T, (n, n, n)).astype(np.int64)


def _check_simulation(simulation):
    from tfhalo.sim.simulation import Simulation

    if not isinstance(simulation, Simulation):
        raise ValueError(
            f"simulation must be a tfhalo.sim.Simulation. Received: simulation of type {type(simulation).__name__}"
        )
    return simulation


def density_field(simulation, n_grid: int, source: str = "nbody") -> np.ndarray:
    """``1 + delta`` at z = 0 on an ``n_grid**3`` grid (CIC, periodic).

    Args:
        simulation: a :class:`~tfhalo.sim.simulation.Simulation`.
        n_grid: voxels per side.
        source: ``"nbody"`` (the simulation's z = 0 particles) or ``"lpt"``
            (the 2LPT evolution of its initial density to a = 1, as the
            forward model of the paper uses).

    Returns:
        ``(n_grid,)*3`` float64 array with mean 1.

    Raises:
        ValueError: ``n_grid`` is not an integer >= 1, ``source`` is unknown,
            or ``simulation`` is not a Simulation.
    """
    _check_simulation(simulation)
    n_grid = check_int("n_grid", n_grid, minimum=1)
    check_choice("source", source, DENSITY_SOURCES)
    if source == "nbody":
        return simulation.final_density(n_grid) + 1.0
    from tfhalo.sim.ics import lpt_positions
    from tfhalo.sim.mesh import cic_paint

    a_initial = 1.0 / (1.0 + simulation.z_initial)
    positions = lpt_positions(
        simulation.initial_density, simulation.box_size, simulation.cosmology, a_initial, 1.0
    )
    mesh = cic_paint(positions, n_grid, simulation.box_size)
    return mesh / mesh.mean()


def bias_data_from_simulation(
    simulation,
    n_grid: int,
    mass_threshold: float,
    source: str = "nbody",
    density_floor: float = DEFAULT_DENSITY_FLOOR,
) -> BiasData:
    """The bias-model inputs of one simulation.

    Args:
        simulation: a :class:`~tfhalo.sim.simulation.Simulation`.
        n_grid: voxels per side of the coarse grid.
        mass_threshold: halo mass threshold ``M_th`` in Msun/h.
        source: ``"nbody"`` or ``"lpt"`` (see :func:`density_field`).
        density_floor: floor on ``1 + delta``.

    Returns:
        A :class:`BiasData` named after the simulation.

    Raises:
        ValueError: an argument is invalid (checked before the density is painted).
    """
    from tfhalo.sim.grid import wrap_periodic

    _check_simulation(simulation)
    n_grid = check_int("n_grid", n_grid, minimum=1)
    mass_threshold = check_float("mass_threshold", mass_threshold, positive=True)
    check_choice("source", source, DENSITY_SOURCES)
    density_floor = check_float("density_floor", density_floor, positive=True)
    rho = density_field(simulation, n_grid, source)
    halos = simulation.halos
    centres = wrap_periodic(halos.centre, simulation.box_size)
    return make_bias_data(
        rho, centres, halos.mass, simulation.box_size, mass_threshold, density_floor,
        name=f"{simulation.name}:{source}",
    )


def as_data_list(data) -> list:
    """Accept one :class:`BiasData` or a sequence of them."""
    if isinstance(data, BiasData):
        return [data]
    data = list(data)
    if not data or not all(isinstance(d, BiasData) for d in data):
        raise ValueError(f"data must be a BiasData or a non-empty sequence of them. Received: {data!r:.200}")
    thresholds = {d.mass_threshold for d in data}
    if len(thresholds) != 1:
        raise ValueError(f"all data must share one mass_threshold. Received: {sorted(thresholds)}")
    return data
