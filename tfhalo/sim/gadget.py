"""Gadget snapshots and halo-number (``grp``) arrays, written and read through pynbody.

Generated simulations are written in the formats real simulations come in, and
read back by the same code that reads a user's run, so that path is exercised
every time a suite is loaded.

Writing (:func:`write_gadget`), into one directory:

* ``ics``: Gadget-2 binary snapshot at ``z_initial`` (POS, VEL, ID, MASS):
  positions ``sim.initial_positions``; velocities ``sim.initial_velocities``
  (the exact 2LPT velocities for generated simulations), so the file is a
  usable Gadget initial condition. A simulation without them gets the
  linear-theory (Zel'dovich) velocities of the displacement from the lattice,
  ``v = a H(a) f(a) psi`` (first order only);
* ``snapshot_000``: Gadget-2 binary snapshot at z = 0 (POS, VEL, ID, MASS);
  VEL is ``sim.final_velocities``, or all zeros when the simulation has none
  (the block is present because Gadget readers expect it; the reader takes an
  all-zero block as "no velocities");
* ``tfhalo.json``: name, seed and the full cosmology (Gadget headers lack
  Ob0, sigma8, ns);
* ``snapshot_000.grp``: the halo number of each particle of ``snapshot_000``
  in file order, as ASCII (first line: particle count; then one integer per
  line): halo ``k`` of ``sim.halos`` is number ``k + 1``, 0 is "no halo" (the
  SKID/AHF ``.grp`` convention that pynbody's
  :class:`~pynbody.halo.number_array.HaloNumberCatalogue` reads).

Units follow pynbody's ``[gadget-units]`` (by default comoving Mpc/h, km/s
sqrt(a), 1e10 Msun/h); the header carries BoxSize, Omega0, OmegaLambda,
HubbleParam, time (= a) and redshift. Each file is written under a temporary
name and renamed.

Reading (:func:`read_snapshots`): pynbody loads the final and initial
snapshots (Gadget binary or HDF5, GrafIC/GenetIC directories, anything pynbody
reads); dark-matter particles are matched by particle id (``iord``) and put in
lattice order; halos come from a ``grp`` array file, from pynbody's halo
finders' catalogues (SubFind etc., top-level groups), or from friends-of-friends
run here; halo masses, centres and r200 are computed with
:func:`tfhalo.sim.fof.halo_properties`.

Lattice order: particle ids are taken as lattice indices (``id - min(id)``,
C order, the tfhalo and N-GenIC convention) when the initial positions agree
with them (median distance to the assigned lattice site below half a lattice
spacing, after removing a global lattice offset such as GrafIC's
cell-centred grid); otherwise each particle's site is the lattice point nearest
its initial position, which must then be one-to-one.

Velocities: VEL blocks are read as peculiar velocities in km/s
(``initial_velocities``, ``final_velocities``); a missing or all-zero block
gives None.

Ids: ``iord`` is required, except for GrafIC initial conditions without
GenetIC's id file, whose file order is taken as the id (with a warning).

Initial density: given explicitly, else GenetIC's ``deltab`` array when the
initial conditions provide it, else the linear density reconstructed from the
displacement field, ``delta = -div psi`` (spectral derivative on the lattice;
exact for Zel'dovich initial conditions, and for 2LPT ones off by the
second-order term, ~3/7 delta^2, negligible at z ~ 100).

Example:
    >>> write_gadget(sim, "suite/sim_000")                           # doctest: +SKIP
    >>> sim2 = read_snapshots("suite/sim_000/snapshot_000",          # doctest: +SKIP
    ...                       initial="suite/sim_000/ics", halos="suite/sim_000/snapshot_000.grp")
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path
from typing import Optional, Union

import numpy as np
import scipy.fft

from tfhalo.atomic import atomic_path
from tfhalo.sim.cosmology import WMAP5, Cosmology
from tfhalo.sim.grid import derivative_wavenumbers, lattice_positions, minimum_image, wrap_periodic
from tfhalo.sim.simulation import Simulation

ICS_NAME = "ics"
FINAL_NAME = "snapshot_000"
GRP_SUFFIX = ".grp"
METADATA_NAME = "tfhalo.json"

_POS = "Mpc a h^-1"  # comoving Mpc/h
_MASS = "Msol h^-1"

PathLike = Union[str, os.PathLike]


# --------------------------------------------------------------------- writing
def _file_units():
    import pynbody

    get = pynbody.config_parser.get
    return {k: pynbody.units.Unit(get("gadget-units", k)) for k in ("pos", "vel", "mass")}


def _snapshot(sim: Simulation, positions, a: float, velocities=None):
    """A pynbody snapshot in Gadget file units, ready for GadgetSnap writing."""
    import pynbody
    from pynbody.array import SimArray

    units = _file_units()
    context = {"a": a, "h": sim.cosmology.h}
    n = sim.n_particles
    f = pynbody.new(dm=n)
    # The Gadget writer stores raw values, so convert into the file's units here.
    f["pos"] = SimArray(
        np.asarray(positions, np.float64) * pynbody.units.Unit(_POS).ratio(units["pos"], **context),
        units["pos"],
        dtype=np.float32,
    )
    if velocities is not None:
        f["vel"] = SimArray(
            np.asarray(velocities, np.float64) * pynbody.units.Unit("km s^-1").ratio(units["vel"], **context),
            units["vel"],
            dtype=np.float32,
        )
    f["mass"] = SimArray(
        np.full(n, sim.particle_mass * pynbody.units.Unit(_MASS).ratio(units["mass"], **context)),
        units["mass"],
        dtype=np.float32,
    )
    f["iord"] = sim.ids.astype(np.int32 if sim.ids.max(initial=0) < 2**31 else np.int64)
    f.properties["a"] = float(a)
    f.properties["h"] = float(sim.cosmology.h)
    f.properties["omegaM0"] = float(sim.cosmology.Om0)
    f.properties["omegaL0"] = float(1.0 - sim.cosmology.Om0)
    f.properties["boxsize"] = pynbody.units.Unit(f"{float(sim.box_size)!r} {_POS}")
    return f


def _write_atomic_snapshot(snap, path: Path) -> None:
    import pynbody

    with atomic_path(path, unique=False) as tmp:
        snap.write(fmt=pynbody.snapshot.gadget.GadgetSnap, filename=str(tmp))


#: Numbers formatted per write in write_grp: bounds its memory to a few MB whatever N.
GRP_CHUNK = 1 << 16


def write_grp(path: PathLike, numbers) -> Path:
    """Write a halo-number array as an ASCII ``.grp`` file (count line, then one per line), atomically.

    Written ``GRP_CHUNK`` numbers at a time, so memory stays bounded (one string
    of all 256^3 numbers would take ~1.8 GB of Python objects).
    """
    path = Path(path)
    numbers = np.asarray(numbers, dtype=np.int64).ravel()
    with atomic_path(path, unique=False) as tmp, open(tmp, "w") as fh:
        fh.write(f"{numbers.size}\n")
        for start in range(0, numbers.size, GRP_CHUNK):
            chunk = numbers[start : start + GRP_CHUNK].tolist()
            fh.write("\n".join(map(str, chunk)))
            fh.write("\n")
    return path


def read_grp(path: PathLike, n_particles: Optional[int] = None) -> np.ndarray:
    """Read a halo-number array: ASCII ``.grp`` (count line first) or ``.npy``.

    Raises:
        FileNotFoundError: no such file.
        ValueError: unreadable, or its count disagrees with ``n_particles``.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"Halo-number (grp) file not found: {path}")
    try:
        if path.suffix == ".npy":
            numbers = np.load(path).astype(np.int64).ravel()
            declared = numbers.size
        else:
            raw = np.loadtxt(path, dtype=np.int64, ndmin=1)
            declared, numbers = int(raw[0]), raw[1:]
    except (ValueError, OSError, IndexError) as err:
        raise ValueError(f"Cannot read halo-number (grp) file {path}: {err}") from err
    if declared != numbers.size:
        raise ValueError(f"grp file {path} declares {declared} particles but holds {numbers.size} (truncated?)")
    if n_particles is not None and numbers.size != n_particles:
        raise ValueError(f"grp file {path} has {numbers.size} entries but the snapshot has {n_particles} particles")
    return numbers


def write_gadget(sim: Simulation, directory: PathLike) -> dict:
    """Write ``sim``'s initial and final snapshots (Gadget-2 binary) and halo numbers.

    Args:
        sim: the simulation.
        directory: output directory (created if missing).

    Returns:
        dict with the paths ``initial``, ``final`` and ``grp``.
    """
    if not isinstance(sim, Simulation):
        raise TypeError(f"sim must be a tfhalo.sim.Simulation. Received: {type(sim).__name__}")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    cosmo = sim.cosmology
    a_init = 1.0 / (1.0 + sim.z_initial)
    if sim.initial_velocities is not None:
        vel = sim.initial_velocities
    else:
        psi = minimum_image(
            sim.initial_positions.astype(np.float64) - lattice_positions(sim.n_side, sim.box_size), sim.box_size
        )
        # Peculiar velocity of linear growth, v = a H f psi; H0 = 100 km/s per Mpc/h.
        vel = psi * (a_init * 100.0 * float(cosmo.hubble(a_init)) * float(cosmo.growth_rate(a_init)))
    paths = {"initial": directory / ICS_NAME, "final": directory / FINAL_NAME}
    _write_atomic_snapshot(_snapshot(sim, sim.initial_positions, a_init, vel), paths["initial"])
    # At a = 1 Gadget's km/s sqrt(a) equals km/s; _snapshot converts for any a anyway.
    _write_atomic_snapshot(_snapshot(sim, sim.final_positions, 1.0, sim.final_velocities), paths["final"])
    paths["grp"] = write_grp(directory / (FINAL_NAME + GRP_SUFFIX), np.where(sim.halo_id >= 0, sim.halo_id + 1, 0))
    paths["metadata"] = _write_metadata(sim, directory / METADATA_NAME)
    return paths


def _write_metadata(sim: Simulation, path: Path) -> Path:
    """What Gadget headers cannot hold (full cosmology, seed, name), as JSON."""
    import tfhalo

    meta = {
        "format": "tfhalo-gadget-directory",
        "tfhalo_version": tfhalo.__version__,
        "name": sim.name,
        "seed": sim.seed,
        "cosmology": sim.cosmology.to_dict(),
        "n_side": sim.n_side,
        "box_size": sim.box_size,
        "z_initial": sim.z_initial,
        "particle_mass": sim.particle_mass,
        "files": {"initial": ICS_NAME, "final": FINAL_NAME, "grp": FINAL_NAME + GRP_SUFFIX},
    }
    with atomic_path(path, unique=False) as tmp, open(tmp, "w") as fh:
        json.dump(meta, fh, indent=2)
    return path


# --------------------------------------------------------------------- reading
def load_snapshot(path: PathLike):
    """``pynbody.load`` with errors that name the file.

    Raises:
        FileNotFoundError: no such file or directory.
        OSError: pynbody cannot read it (unknown format, truncated, corrupt).
    """
    import pynbody

    path = Path(path)
    if not path.exists() and not Path(str(path) + ".0").exists():
        raise FileNotFoundError(f"Snapshot not found: {path}")
    try:
        snap = pynbody.load(str(path))
        len(snap)
    except Exception as err:  # pynbody raises OSError, RuntimeError, struct.error, ...
        raise OSError(f"Cannot read snapshot {path} through pynbody (truncated or unsupported?): {err}") from err
    return snap


def _dm(snap):
    import pynbody

    families = snap.families()
    if families == [pynbody.family.dm]:
        return snap
    if pynbody.family.dm not in families:
        raise ValueError(f"Snapshot {snap.filename} has no dark-matter particles (families: {families})")
    return snap.dm


def _is_grafic(snap) -> bool:
    from pynbody.snapshot.grafic import GrafICSnap

    return isinstance(getattr(snap, "ancestor", snap), GrafICSnap)


def _ids(snap, path) -> np.ndarray:
    """Particle ids (``iord``); file order only for GrafIC ICs without an id file.

    Raises:
        ValueError: a non-GrafIC snapshot whose ids cannot be read.
    """
    try:
        return np.asarray(snap["iord"], dtype=np.int64)
    except (OSError, KeyError) as err:
        if not _is_grafic(snap):
            raise ValueError(
                f"Cannot read the particle ids (iord) of {path}: {err!r}; particles cannot be matched "
                "between snapshots without them"
            ) from err
        warnings.warn(
            f"{path}: GrafIC initial conditions without particle ids (no GenetIC id file); "
            "using the file order as the id",
            stacklevel=3,
        )
        return np.arange(len(snap), dtype=np.int64)


def _velocities(snap, order) -> Optional[np.ndarray]:
    """``(N, 3)`` float32 peculiar velocities in km/s in ``order``, or None when absent or all zero."""
    if "vel" not in snap.loadable_keys() and "vel" not in snap.keys():
        return None
    vel = np.asarray(snap["vel"].in_units("km s^-1"), dtype=np.float32)[order]
    # An all-zero block is a placeholder (write_gadget of a simulation without velocities).
    return vel if np.any(vel) else None


def _redshift(snap) -> float:
    z = snap.properties.get("z", None)
    if z is None:
        a = snap.properties.get("a", 1.0)
        z = 1.0 / a - 1.0
    return float(z)


def _box(snap, path) -> float:
    box = snap.properties.get("boxsize", None)
    if box is None:
        raise ValueError(f"Snapshot {path} has no box size in its header")
    box = float(box.in_units(_POS, **snap.conversion_context()))
    if not box > 0:
        raise ValueError(f"Snapshot {path} has a non-positive box size: {box}")
    return box


def _cosmology_from_header(snap, path) -> Cosmology:
    props = snap.properties
    h, om, ol = props.get("h"), props.get("omegaM0"), props.get("omegaL0")
    if h is None or om is None:
        raise ValueError(f"Snapshot {path} has no cosmology in its header; pass cosmology=Cosmology(...)")
    if ol is not None and abs(om + ol - 1.0) > 1e-3:
        warnings.warn(f"{path}: Omega0 + OmegaLambda = {om + ol:.4f} != 1; tfhalo assumes a flat universe")
    warnings.warn(
        f"{path}: Ob0, sigma8 and ns are not in Gadget headers; using the WMAP5 values "
        f"(pass cosmology=Cosmology(...) to set them)",
        stacklevel=3,
    )
    return Cosmology(h=float(h), Om0=float(om), Ob0=min(WMAP5.Ob0, 0.5 * float(om)), sigma8=WMAP5.sigma8, ns=WMAP5.ns)


def _lattice_offset(pos: np.ndarray, spacing: float) -> np.ndarray:
    """Global offset of the lattice (e.g. half a cell for GrafIC), circular mean per axis."""
    # A strided sample of ~100k particles pins the offset to far below a spacing.
    sample = pos[:: max(1, pos.shape[0] // 100_000)]
    phase = np.exp(2j * np.pi * sample / spacing).mean(axis=0)
    offset = np.angle(phase) / (2.0 * np.pi) * spacing
    # Site i sits at i * spacing + offset with offset in [-spacing/4, 3 spacing/4), so a
    # cell-centred grid (offset spacing/2, either sign from the angle) keeps site 0 at the origin cell.
    return np.mod(offset + 0.25 * spacing, spacing) - 0.25 * spacing


def _is_permutation(values: np.ndarray, n: int) -> bool:
    """True when ``values`` (ints in [0, n)) hold each of 0..n-1 once (O(n), no sort)."""
    return values.size == n and bool(np.all(np.bincount(values, minlength=n) == 1))


def lattice_order(ids, initial_positions, n_side: int, box_size: float, name: str = "initial") -> np.ndarray:
    """Permutation putting particles in lattice order (see the module docstring).

    Args:
        ids: ``(N,)`` particle ids.
        initial_positions: ``(N, 3)`` positions at the initial redshift, Mpc/h.
        n_side: particles per side.
        box_size: box side, Mpc/h.
        name: how to name the data in error messages.

    Returns:
        ``(N,)`` int64 ``order`` such that ``initial_positions[order][p]`` is the
        particle of lattice site ``p``.

    Raises:
        ValueError: neither the ids nor the positions define a lattice.
    """
    ids = np.asarray(ids, dtype=np.int64)
    pos = np.asarray(initial_positions, dtype=np.float64)
    n = ids.size
    spacing = box_size / n_side
    offset = _lattice_offset(pos, spacing)
    # Assigned sites' positions, compared to each particle's position.
    if n and ids.max() - ids.min() == n - 1 and _is_permutation(ids - ids.min(), n):
        site = ids - ids.min()
        q = np.stack(np.unravel_index(site, (n_side,) * 3), axis=-1) * spacing + offset
        dist = np.sqrt((minimum_image(pos - q, box_size) ** 2).sum(axis=1))
        if np.median(dist) < 0.5 * spacing:
            order = np.empty(n, dtype=np.int64)
            order[site] = np.arange(n)
            return order
    cell = np.mod(np.round((pos - offset) / spacing).astype(np.int64), n_side)
    site = np.ravel_multi_index(tuple(cell.T), (n_side,) * 3)
    if not _is_permutation(site, n):
        raise ValueError(
            f"Cannot put the particles of {name} in lattice order: their ids are not lattice indices and "
            "their positions are not within half a lattice spacing of distinct lattice sites"
        )
    order = np.empty(n, dtype=np.int64)
    order[site] = np.arange(n)
    return order


def density_from_displacement(initial_positions, n_side: int, box_size: float) -> np.ndarray:
    """Linear density contrast ``-div psi`` of lattice-ordered initial positions.

    Args:
        initial_positions: ``(n^3, 3)`` positions in lattice order, Mpc/h.
        n_side: particles per side.
        box_size: box side, Mpc/h.

    Returns:
        ``(n, n, n)`` float32 density contrast on the lattice (Nyquist planes
        have no well-defined derivative and are set to zero).
    """
    pos = np.asarray(initial_positions, dtype=np.float64)
    spacing = box_size / n_side
    q = lattice_positions(n_side, box_size) + _lattice_offset(pos, spacing)
    psi = minimum_image(pos - q, box_size).reshape(n_side, n_side, n_side, 3)
    div = np.zeros((n_side, n_side, n_side // 2 + 1), dtype=np.complex128)
    for axis, kk in enumerate(derivative_wavenumbers(n_side, box_size)):
        div += 1j * kk * scipy.fft.rfftn(psi[..., axis], workers=-1)
    return (-scipy.fft.irfftn(div, s=(n_side,) * 3, workers=-1)).astype(np.float32)


def _halo_labels(final, final_path, halos, n_dm: int, dm_slice) -> Optional[np.ndarray]:
    """Per-particle halo index (file order of the dm particles) or None for 'fof'."""
    from pynbody.halo.number_array import HaloNumberCatalogue

    if isinstance(halos, str) and halos == "fof":
        return None
    grp_path = None
    if halos is not None and not (isinstance(halos, str) and halos == "pynbody"):
        grp_path = Path(halos)
    elif halos is None and Path(str(final_path) + GRP_SUFFIX).is_file():
        grp_path = Path(str(final_path) + GRP_SUFFIX)
    if grp_path is not None:
        numbers = read_grp(grp_path, len(final))
        # Any non-positive number means "no halo" (SKID/AHF use 0, others -1).
        numbers = np.where(numbers > 0, numbers, 0)
        final["grp"] = numbers
        ignore = 0 if numbers.min(initial=1) == 0 else None
        cat = HaloNumberCatalogue(final, array="grp", ignore=ignore)
        labels = np.asarray(cat.get_group_array(use_index=True, fill_value=-1), dtype=np.int64)
    else:
        try:
            cat = final.halos()
        except Exception as err:
            raise ValueError(
                f"No halo catalogue found for {final_path} ({err}). Pass halos=<grp file> or halos='fof' "
                "to find friends-of-friends halos"
            ) from err
        labels = np.full(len(final), -1, dtype=np.int64)
        # Top-level groups (for SubFind: the FoF groups), in catalogue order.
        for index, number in enumerate(cat.keys()):
            labels[np.asarray(cat[number].get_index_list(final))] = index
    return labels[dm_slice] if dm_slice is not None else labels


def _consecutive(labels: np.ndarray) -> np.ndarray:
    """Relabel so that the labels present are 0..H-1 in their original order."""
    present = np.unique(labels[labels >= 0])
    out = np.full(labels.shape, -1, dtype=np.int64)
    mask = labels >= 0
    out[mask] = np.searchsorted(present, labels[mask])
    return out


def read_snapshots(
    final: PathLike,
    initial: PathLike,
    *,
    halos=None,
    cosmology: Optional[Cosmology] = None,
    initial_density: Optional[np.ndarray] = None,
    linking_length: float = 0.2,
    min_members: int = 20,
    seed: Optional[int] = None,
    name: Optional[str] = None,
) -> Simulation:
    """Read a final snapshot and its initial conditions through pynbody into a Simulation.

    Args:
        final: the z = 0 (latest) snapshot, any format pynbody reads.
        initial: the initial conditions (Gadget snapshot, GrafIC directory, ...).
        halos: ``None`` (a ``<final>.grp`` file next to the snapshot, else the
            catalogue ``pynbody`` finds, e.g. SubFind), a path to a ``.grp``/``.npy``
            halo-number array in the final snapshot's particle order,
            ``"pynbody"`` (only pynbody's catalogue) or ``"fof"``
            (friends-of-friends here).
        cosmology: overrides the header's (which lacks Ob0, sigma8, ns).
        initial_density: ``(n, n, n)`` lattice density to use instead of
            reconstructing it.
        linking_length: FoF linking length in mean inter-particle separations (``halos="fof"``).
        min_members: FoF minimum group size (``halos="fof"``).
        seed: recorded in the Simulation.
        name: label, default the final snapshot's parent directory or stem.

    Returns:
        The :class:`Simulation`, arrays in lattice order.

    Raises:
        FileNotFoundError / OSError: a file is missing or unreadable.
        ValueError: particle counts or ids disagree, the count is not a cube,
            redshifts are in the wrong order, no halos are found.
    """
    from tfhalo.sim.fof import friends_of_friends, halo_properties

    final_path, initial_path = Path(final), Path(initial)
    fsnap = load_snapshot(final_path)
    isnap = load_snapshot(initial_path)
    fdm, idm = _dm(fsnap), _dm(isnap)
    if len(fdm) != len(idm):
        raise ValueError(
            f"Particle count mismatch: {final_path} has {len(fdm)} dark-matter particles but "
            f"{initial_path} has {len(idm)}"
        )
    n = len(fdm)
    n_side = int(round(n ** (1.0 / 3.0)))
    if n_side**3 != n or n == 0:
        raise ValueError(f"{final_path} has {n} particles, not a cube n_side**3; tfhalo needs a full lattice")
    z_final, z_initial = _redshift(fsnap), _redshift(isnap)
    if not z_initial > z_final:
        raise ValueError(
            f"Redshift order wrong: initial {initial_path} is at z={z_initial:g} but final {final_path} is at "
            f"z={z_final:g}; pass the initial conditions as initial="
        )
    if abs(z_final) > 1e-3:
        warnings.warn(f"{final_path} is at z={z_final:g}, not 0; it is used as the final snapshot")
    box = _box(fsnap, final_path)
    box_i = _box(isnap, initial_path)
    if not math.isclose(box, box_i, rel_tol=1e-4):
        raise ValueError(f"Box size mismatch: {final_path} has {box} Mpc/h, {initial_path} has {box_i} Mpc/h")
    if cosmology is None:
        cosmology = _cosmology_from_header(fsnap, final_path)
    elif not isinstance(cosmology, Cosmology):
        raise TypeError(f"cosmology must be a tfhalo.sim.Cosmology. Received: {type(cosmology).__name__}")

    fid, iid = _ids(fdm, final_path), _ids(idm, initial_path)
    f_sort, i_sort = np.argsort(fid, kind="stable"), np.argsort(iid, kind="stable")
    if not np.array_equal(fid[f_sort], iid[i_sort]):
        raise ValueError(f"Particle ids of {final_path} and {initial_path} differ; cannot match the snapshots")
    ids = iid[i_sort]
    ipos = np.asarray(idm["pos"].in_units(_POS), dtype=np.float64)[i_sort]
    fpos = np.asarray(fdm["pos"].in_units(_POS), dtype=np.float64)[f_sort]
    order = lattice_order(ids, ipos, n_side, box, name=str(initial_path))
    ids, ipos, fpos = ids[order], ipos[order], fpos[order]
    ivel = _velocities(idm, i_sort[order])
    fvel = _velocities(fdm, f_sort[order])
    # Wrapped in float32, the precision a Simulation keeps, so halos are found on the stored positions.
    fpos = wrap_periodic(fpos, box, dtype=np.float32)

    masses = np.asarray(fdm["mass"].in_units(_MASS), dtype=np.float64)
    particle_mass = float(masses.mean())
    if not np.allclose(masses, particle_mass, rtol=1e-5):
        raise ValueError(f"{final_path} has unequal dark-matter particle masses; tfhalo needs a uniform lattice")

    if initial_density is None:
        deltab = None
        if "deltab" in idm.loadable_keys():
            deltab = np.asarray(idm["deltab"], dtype=np.float32)[i_sort][order]
        initial_density = (
            deltab.reshape((n_side,) * 3) if deltab is not None else density_from_displacement(ipos, n_side, box)
        )

    dm_slice = None if fdm is fsnap else fsnap._get_family_slice(fdm.families()[0])
    labels = _halo_labels(fsnap, final_path, halos, n, dm_slice)
    if labels is None:
        labels = friends_of_friends(fpos, box, linking_length * box / n_side, min_members=min_members)
    else:
        labels = _consecutive(labels[f_sort][order])
    catalogue, r_rel = halo_properties(fpos, labels, box, particle_mass, cosmology.rho_mean)
    halo_mass = np.where(labels >= 0, catalogue.mass[np.maximum(labels, 0)] if len(catalogue) else 0.0, 0.0)
    if name is None:
        name = final_path.parent.name if final_path.name == FINAL_NAME else final_path.stem
    return Simulation(
        box_size=box,
        n_side=n_side,
        cosmology=cosmology,
        z_initial=z_initial,
        particle_mass=particle_mass,
        initial_density=initial_density,
        ids=ids,
        initial_positions=wrap_periodic(ipos, box, dtype=np.float32),
        final_positions=fpos,
        halo_id=labels,
        halo_mass=halo_mass,
        r_over_r200=r_rel,
        halos=catalogue,
        seed=seed,
        name=name,
        initial_velocities=ivel,
        final_velocities=fvel,
    )
