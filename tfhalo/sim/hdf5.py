"""One simulation per HDF5 file: the suite file format (h5py).

A suite file holds everything a :class:`~tfhalo.sim.simulation.Simulation`
holds, exactly (float32/float64/int64 arrays are stored in their in-memory
dtypes), so ``read_simulation(write_simulation(sim, path))`` is bit-identical.

Schema (format version 1; also in ``docs/simulation_format.md``)::

    /                                   attributes
        format            "tfhalo-simulation"
        format_version    1
        tfhalo_version    package version that wrote the file, e.g. "0.1.0"
        name              simulation label
        box_size          comoving box side, Mpc/h                      float64
        n_side            particles per side (N = n_side**3)           int64
        z_initial         redshift of the initial density/positions    float64
        particle_mass     Msun/h                                       float64
        seed              initial-conditions seed (absent if unknown)  int64
        complete          True, written last (a file without it is an
                          interrupted write and is rejected)
    /cosmology                          attributes h, Om0, Ob0, sigma8, ns
    /initial_density    (n, n, n) float32  linear density contrast at z_initial
                                           on the lattice, index (i, j, k)
    /particles/                         all (N, ...) in lattice order (row r = lattice site
                                        unravel_index(r, (n, n, n)))
        ids               (N,)   int64     the snapshot's own particle ids (arange(N) when generated)
        initial_positions (N, 3) float32   Mpc/h, at z_initial
        final_positions   (N, 3) float32   Mpc/h, at z = 0
        halo_id           (N,)   int64     row of /halos, -1 = no halo
        halo_mass         (N,)   float64   Msun/h, 0 = no halo
        r_over_r200       (N,)   float32   distance to halo centre / r200, nan = no halo
        initial_velocities (N, 3) float32  OPTIONAL peculiar velocity at z_initial, km/s
        final_velocities  (N, 3) float32   OPTIONAL peculiar velocity at z = 0, km/s
                                           (absent: the Simulation field is None)
    /halos/                             the z = 0 halo table, H rows
        mass              (H,)   float64   Msun/h
        centre            (H, 3) float64   Mpc/h, in [0, box_size)
        r200              (H,)   float64   Mpc/h
        n_members         (H,)   int64

Non-finite values (NaN, inf) in the density, positions, velocities, halo
masses or halo table are refused on write and on read (``r_over_r200`` is NaN
outside halos by design).

Files are written to ``<name>.tmp`` in the same directory and renamed with
:func:`os.replace` (:func:`tfhalo.atomic.atomic_path`), so a reader never sees a partial file.

Example:
    >>> write_simulation(sim, "suite/sim_000.h5")          # doctest: +SKIP
    >>> sim2 = read_simulation("suite/sim_000.h5")         # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

import h5py
import numpy as np

from tfhalo.atomic import atomic_path, fixed_temporary_path
from tfhalo.sim.cosmology import Cosmology
from tfhalo.sim.simulation import HaloCatalogue, Simulation
from tfhalo.validation import check_finite_array

FORMAT = "tfhalo-simulation"
FORMAT_VERSION = 1

_PARTICLE_FIELDS = ("ids", "initial_positions", "final_positions", "halo_id", "halo_mass", "r_over_r200")
# Optional (N, 3) datasets: written when the Simulation has them, None when absent.
_OPTIONAL_PARTICLE_FIELDS = ("initial_velocities", "final_velocities")
_HALO_FIELDS = ("mass", "centre", "r200", "n_members")
# Halo membership arrays are mostly -1/0/nan: cheap gzip level 1 shrinks them ~10x;
# positions are incompressible and left raw so writing stays fast.
_COMPRESSED = {"halo_id", "halo_mass", "r_over_r200"}

PathLike = Union[str, os.PathLike]


def _version() -> str:
    import tfhalo

    return str(tfhalo.__version__)


# Arrays that must hold finite values (r_over_r200 is NaN outside halos by design).
_FINITE_FIELDS = ("initial_density", "initial_positions", "final_positions", "halo_mass") + _OPTIONAL_PARTICLE_FIELDS
_FINITE_HALO_FIELDS = ("mass", "centre", "r200")


def check_finite_simulation(sim: Simulation, source: str) -> Simulation:
    """``sim`` if its density, positions, velocities and halo table are finite.

    Args:
        sim: the simulation.
        source: where it came from, named in the message (a file, ``"simulation 'sim_000'"``).

    Raises:
        ValueError: naming the first non-finite field and entry, e.g.
            ``initial_density of v.h5 must be finite. Received: 1 non-finite of
            512 values, first initial_density[4, 4, 4]=nan``.
    """
    for field in _FINITE_FIELDS:
        if getattr(sim, field) is not None:
            check_finite_array(field, getattr(sim, field), source)
    for field in _FINITE_HALO_FIELDS:
        check_finite_array(field, getattr(sim.halos, field), f"the halo table of {source}")
    return sim


def temporary_path(path: PathLike) -> Path:
    """The temporary name a file is written under before being renamed to ``path``."""
    return fixed_temporary_path(path)


def write_simulation(sim: Simulation, path: PathLike) -> Path:
    """Write ``sim`` to an HDF5 suite file, atomically.

    Args:
        sim: the simulation.
        path: destination ``.h5`` file; its directory must exist.

    Returns:
        The destination path.

    Raises:
        TypeError: ``sim`` is not a :class:`Simulation`.
        OSError: the directory does not exist.
        ValueError: a non-finite value in ``sim`` (nothing is written).
    """
    if not isinstance(sim, Simulation):
        raise TypeError(f"sim must be a tfhalo.sim.Simulation. Received: {type(sim).__name__}")
    check_finite_simulation(sim, f"simulation {sim.name!r}")
    path = Path(path)
    if not path.parent.is_dir():
        raise OSError(f"Cannot write {path}: directory {path.parent} does not exist")
    # Fixed name <name>.tmp: tfhalo.sim.suite removes it when resuming an interrupted run.
    with atomic_path(path, unique=False) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["format"] = FORMAT
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["tfhalo_version"] = _version()
        f.attrs["name"] = str(sim.name)
        f.attrs["box_size"] = np.float64(sim.box_size)
        f.attrs["n_side"] = np.int64(sim.n_side)
        f.attrs["z_initial"] = np.float64(sim.z_initial)
        f.attrs["particle_mass"] = np.float64(sim.particle_mass)
        if sim.seed is not None:
            f.attrs["seed"] = np.int64(sim.seed)
        cosmo = f.create_group("cosmology")
        for key, value in sim.cosmology.to_dict().items():
            cosmo.attrs[key] = np.float64(value)
        f.create_dataset("initial_density", data=sim.initial_density)
        particles = f.create_group("particles")
        for field in _PARTICLE_FIELDS:
            kwargs = {"compression": "gzip", "compression_opts": 1, "shuffle": True} if field in _COMPRESSED else {}
            particles.create_dataset(field, data=getattr(sim, field), **kwargs)
        for field in _OPTIONAL_PARTICLE_FIELDS:
            if getattr(sim, field) is not None:
                particles.create_dataset(field, data=getattr(sim, field))
        halos = f.create_group("halos")
        for field in _HALO_FIELDS:
            halos.create_dataset(field, data=getattr(sim.halos, field))
        # Written last: its presence certifies the file is whole.
        f.attrs["complete"] = True
    return path


def _open(path: Path) -> h5py.File:
    if not path.exists():
        raise FileNotFoundError(f"Simulation file not found: {path}")
    if not path.is_file():
        raise OSError(f"Simulation file {path} is not a regular file")
    try:
        return h5py.File(path, "r")
    except OSError as err:
        raise OSError(f"Cannot read simulation file {path} as HDF5 (truncated or corrupt?): {err}") from err


def is_complete(path: PathLike) -> bool:
    """True when ``path`` is a readable suite file whose write finished."""
    path = Path(path)
    try:
        with _open(path) as f:
            return bool(f.attrs.get("complete", False)) and f.attrs.get("format") == FORMAT
    except OSError:
        return False


def read_metadata(path: PathLike) -> dict:
    """The scalar attributes and cosmology of a suite file, without the arrays.

    Returns:
        dict with keys ``name, box_size, n_side, z_initial, particle_mass, seed,
        cosmology (Cosmology), tfhalo_version, format_version``.
    """
    path = Path(path)
    with _open(path) as f:
        return _metadata(f, path)


def _metadata(f: h5py.File, path: Path) -> dict:
    if f.attrs.get("format") != FORMAT:
        raise ValueError(f"{path} is not a tfhalo simulation file (format attribute {f.attrs.get('format')!r})")
    if not f.attrs.get("complete", False):
        raise ValueError(f"{path} is incomplete (its write was interrupted); delete it and regenerate")
    version = int(f.attrs["format_version"])
    if version > FORMAT_VERSION:
        raise ValueError(f"{path} has format_version {version}; this tfhalo reads up to {FORMAT_VERSION}")
    return {
        "name": str(f.attrs["name"]),
        "box_size": float(f.attrs["box_size"]),
        "n_side": int(f.attrs["n_side"]),
        "z_initial": float(f.attrs["z_initial"]),
        "particle_mass": float(f.attrs["particle_mass"]),
        "seed": int(f.attrs["seed"]) if "seed" in f.attrs else None,
        "cosmology": Cosmology.from_dict({k: float(v) for k, v in f["cosmology"].attrs.items()}),
        "tfhalo_version": str(f.attrs["tfhalo_version"]),
        "format_version": version,
    }


def read_initial_density(path: PathLike) -> np.ndarray:
    """Only the ``(n, n, n)`` float32 lattice density of a suite file."""
    path = Path(path)
    with _open(path) as f:
        _metadata(f, path)
        return check_finite_array("initial_density", f["initial_density"][...], str(path))


def read_simulation(path: PathLike) -> Simulation:
    """Read a suite file written by :func:`write_simulation`.

    Raises:
        FileNotFoundError: no such file.
        OSError: not readable as HDF5 (e.g. truncated).
        ValueError: not a tfhalo file, an interrupted write, a missing dataset,
            or a non-finite value (NaN, inf) in the density, positions, velocities or halos.
    """
    path = Path(path)
    with _open(path) as f:
        meta = _metadata(f, path)
        try:
            density = f["initial_density"][...]
            particles = {field: f["particles"][field][...] for field in _PARTICLE_FIELDS}
            for field in _OPTIONAL_PARTICLE_FIELDS:
                particles[field] = f["particles"][field][...] if field in f["particles"] else None
            halos = HaloCatalogue(**{field: f["halos"][field][...] for field in _HALO_FIELDS})
        except KeyError as err:
            raise ValueError(f"{path} lacks a dataset required by format {FORMAT_VERSION}: {err}") from err
    sim = Simulation(
        box_size=meta["box_size"],
        n_side=meta["n_side"],
        cosmology=meta["cosmology"],
        z_initial=meta["z_initial"],
        particle_mass=meta["particle_mass"],
        initial_density=density,
        halos=halos,
        seed=meta["seed"],
        name=meta["name"],
        **particles,
    )
    return check_finite_simulation(sim, str(path))
