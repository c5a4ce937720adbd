"""Particle sets for the deep-halo study: selection by halo mass and splits.

Training, validation and test particles come from *different* simulations:
validation and test each from their own held-out simulation(s), so no
particle, halo or initial-condition realisation is shared between the sets
(the original code drew validation and test from one simulation, overlapping).
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Sequence

import numpy as np

from tfhalo.validation import check_int, check_range

PAPER_LOG_MASS_RANGE = (11.0, 13.4)


@dataclasses.dataclass(frozen=True)
class ParticleSet:
    """Particles drawn from one or more simulations.

    Attributes:
        sim_index: ``(P,)`` int64 index into the list of simulations.
        particle_id: ``(P,)`` int64 lattice index (the row of the simulation's
            per-particle arrays), not the snapshot's own id: Gadget ids are
            often 1-based; ``sim.ids[particle_id]`` gives the snapshot id.
        log_mass: ``(P,)`` float64 log10 of the particle's z=0 halo mass (Msun/h).
        r_over_r200: ``(P,)`` float64 distance to the halo centre over r200.
    """

    sim_index: np.ndarray
    particle_id: np.ndarray
    log_mass: np.ndarray
    r_over_r200: np.ndarray

    def __post_init__(self):
        n = np.asarray(self.sim_index).shape[0]
        for field, dtype in (("sim_index", np.int64), ("particle_id", np.int64),
                             ("log_mass", np.float64), ("r_over_r200", np.float64)):
            value = np.asarray(getattr(self, field), dtype=dtype).reshape(-1)
            if value.shape[0] != n:
                raise ValueError(
                    f"{field} must have {n} entries like sim_index. Received: {value.shape[0]}"
                )
            object.__setattr__(self, field, value)

    def __len__(self) -> int:
        return int(self.sim_index.shape[0])

    def subset(self, index) -> "ParticleSet":
        """The particles at ``index`` (integer array, slice or boolean mask)."""
        return ParticleSet(self.sim_index[index], self.particle_id[index],
                           self.log_mass[index], self.r_over_r200[index])

    def simulations(self) -> np.ndarray:
        """Sorted unique simulation indices used by this set."""
        return np.unique(self.sim_index)


@dataclasses.dataclass(frozen=True)
class SimulationSplit:
    """Indices of the simulations used for training, validation and test."""

    train: tuple
    validation: tuple
    test: tuple


def check_split(split, n_simulations: int) -> SimulationSplit:
    """Validate a user-supplied split of ``n_simulations`` simulations.

    Each of ``train``, ``validation`` and ``test`` must be a non-empty tuple of
    integers ``0 <= i < n_simulations``, and no simulation may appear twice
    (negative indices are refused: ``-1`` would silently alias the last one).

    Returns:
        The split with plain ``int`` tuples.

    Raises:
        ValueError: naming ``split`` and the value received.
    """
    if not isinstance(split, SimulationSplit):
        raise ValueError(f"split must be a SimulationSplit. Received: split={split!r}")
    parts = {}
    for field in ("train", "validation", "test"):
        value = getattr(split, field)
        try:
            items = tuple(value)
        except TypeError:
            items = None
        if not items:
            raise ValueError(f"split.{field} must be a non-empty tuple of simulation indices. "
                             f"Received: split={split!r}")
        for i in items:
            if isinstance(i, (bool, np.bool_)) or not isinstance(i, (int, np.integer)) \
                    or not 0 <= int(i) < n_simulations:
                raise ValueError(
                    f"split.{field} must hold integers 0 <= i < {n_simulations} (the number of "
                    f"simulations). Received: split={split!r}")
        parts[field] = tuple(int(i) for i in items)
    used = parts["train"] + parts["validation"] + parts["test"]
    if len(set(used)) != len(used):
        raise ValueError(f"split must use each simulation at most once (train, validation and test "
                         f"disjoint). Received: split={split!r}")
    return SimulationSplit(**parts)


def split_simulations(n_simulations: int, n_validation: int = 1, n_test: int = 1,
                      seed=0) -> SimulationSplit:
    """Assign whole simulations to training, validation and test, at random.

    Args:
        n_simulations: number of simulations available.
        n_validation: simulations held out for validation (at least 1).
        n_test: simulations held out for test (at least 1).
        seed: seed or ``numpy.random.Generator``.

    Returns:
        :class:`SimulationSplit` with disjoint, sorted index tuples.

    Example:
        >>> s = split_simulations(5, seed=0)
        >>> len(s.train), len(s.validation), len(s.test)
        (3, 1, 1)
    """
    n_simulations = check_int("n_simulations", n_simulations, minimum=1)
    n_validation = check_int("n_validation", n_validation, minimum=1)
    n_test = check_int("n_test", n_test, minimum=1)
    if int(n_simulations) < n_validation + n_test + 1:
        raise ValueError(
            f"n_simulations must be at least n_validation + n_test + 1 = "
            f"{n_validation + n_test + 1} so that training, validation and test use different "
            f"simulations. Received: n_simulations={n_simulations}"
        )
    order = np.random.default_rng(seed).permutation(int(n_simulations))
    val = tuple(sorted(int(i) for i in order[:n_validation]))
    test = tuple(sorted(int(i) for i in order[n_validation:n_validation + n_test]))
    train = tuple(sorted(int(i) for i in order[n_validation + n_test:]))
    return SimulationSplit(train=train, validation=val, test=test)


def eligible_particles(sim, sim_index: int = 0,
                       log_mass_range=PAPER_LOG_MASS_RANGE) -> ParticleSet:
    """All particles of ``sim`` in a halo with log10 M inside ``log_mass_range``.

    Raises:
        ValueError: the simulation has no halos, or the range selects nobody.
    """
    lo, hi = check_range("log_mass_range", log_mass_range)
    if len(sim.halos) == 0 or not np.any(sim.halo_id >= 0):
        raise ValueError(
            f"simulation {sim.name!r} has no halos: it cannot provide labelled particles. "
            f"Received: {sim!r}"
        )
    in_halo = sim.halo_id >= 0
    log_mass = np.full(sim.halo_mass.shape, -np.inf)
    log_mass[in_halo] = np.log10(sim.halo_mass[in_halo])
    # Rows, not sim.ids: the row is the lattice index for generated and loaded
    # simulations alike, while snapshot ids may start at 1 or be arbitrary.
    ids = np.flatnonzero(in_halo & (log_mass >= lo) & (log_mass <= hi))
    return ParticleSet(np.full(ids.size, sim_index), ids, log_mass[ids],
                       sim.r_over_r200[ids])


def _concat(sets: Sequence[ParticleSet]) -> ParticleSet:
    return ParticleSet(*(np.concatenate([getattr(s, f.name) for s in sets])
                         for f in dataclasses.fields(ParticleSet)))


def sample_particles(pool: ParticleSet, n, rng, balanced: bool = False,
                     n_bins: int = 12, name: str = "set") -> ParticleSet:
    """Draw ``n`` particles from ``pool`` without replacement.

    Args:
        pool: candidate particles.
        n: number wanted (``None`` = all); capped at ``len(pool)`` with a warning.
        rng: ``numpy.random.Generator``.
        balanced: weight particles by the inverse population of their
            log-mass bin so that every mass is about equally represented.
        n_bins: number of equal-width log-mass bins for ``balanced``.
        name: set name; errors about ``n`` call it ``n_<name>`` (e.g. ``n_train``).
    """
    if n is not None:
        n = check_int(f"n_{name}", n, minimum=1)
    n_pool = len(pool)
    if n is None or int(n) >= n_pool:
        if n is not None and int(n) > n_pool:
            warnings.warn(f"{name}: asked for {n} particles but only {n_pool} are eligible; "
                          f"using all of them.", stacklevel=3)
        return pool.subset(rng.permutation(n_pool))
    p = None
    if balanced:
        edges = np.linspace(pool.log_mass.min(), pool.log_mass.max(), n_bins + 1)
        which = np.clip(np.searchsorted(edges, pool.log_mass, side="right") - 1, 0, n_bins - 1)
        counts = np.bincount(which, minlength=n_bins)
        p = 1.0 / counts[which]
        p /= p.sum()
    return pool.subset(rng.choice(n_pool, size=int(n), replace=False, p=p))


def build_particle_sets(simulations, n_train, n_validation, n_test,
                        log_mass_range=PAPER_LOG_MASS_RANGE, balanced: bool = False,
                        split: SimulationSplit | None = None, seed=0) -> dict:
    """Training, validation and test particle sets from disjoint simulations.

    Args:
        simulations: sequence of :class:`~tfhalo.sim.Simulation`.
        n_train, n_validation, n_test: set sizes (``None`` = every eligible particle).
        log_mass_range: ``(low, high)`` in log10 Msun/h (paper: 11 to 13.4).
        balanced: balanced sampling across log mass for the training set only
            (validation and test keep the natural distribution).
        split: which simulations go where; default ``split_simulations(len(sims), seed=seed)``.
        seed: seed for the split and the draws.

    Returns:
        ``{"train": ParticleSet, "validation": ParticleSet, "test": ParticleSet,
        "split": SimulationSplit}``.

    Example:
        >>> sets = build_particle_sets(sims, 2000, 500, 1000, seed=1)  # doctest: +SKIP
    """
    lo_hi = check_range("log_mass_range", log_mass_range)
    for arg, value in (("n_train", n_train), ("n_validation", n_validation), ("n_test", n_test)):
        if value is not None:
            check_int(arg, value, minimum=1)  # before the (slow) halo selection
    rng_split, rng_train, rng_val, rng_test = np.random.default_rng(seed).spawn(4)
    if split is None:
        split = split_simulations(len(simulations), seed=rng_split)
    else:
        split = check_split(split, len(simulations))
    out = {"split": split}
    for name, indices, n, rng, bal in (
        ("train", split.train, n_train, rng_train, balanced),
        ("validation", split.validation, n_validation, rng_val, False),
        ("test", split.test, n_test, rng_test, False),
    ):
        pool = _concat([eligible_particles(simulations[i], i, lo_hi) for i in indices])
        if len(pool) == 0:
            raise ValueError(
                f"no {name} particle lies in a halo with log10 M in {list(lo_hi)} "
                f"(simulations {list(indices)}): widen log_mass_range. "
                f"Received: log_mass_range={log_mass_range!r}"
            )
        out[name] = sample_particles(pool, n, rng, balanced=bal, name=name)
    return out
