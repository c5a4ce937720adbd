"""``tfhalo.sim.load``: one entry point for generated and real simulations.

``load(path)`` accepts

* a suite file ``sim_000.h5`` (exact arrays, :mod:`tfhalo.sim.hdf5`);
* a generated simulation directory ``sim_000/`` (Gadget snapshots + ``grp``
  written by :func:`tfhalo.sim.gadget.write_gadget`): read through pynbody,
  exactly like a user's run; cosmology, seed and name come from its
  ``tfhalo.json`` and the exact lattice density from the sibling
  ``sim_000.h5`` when present;
* a real final snapshot with ``initial=`` its initial conditions (anything
  pynbody reads: Gadget binary/HDF5 snapshots, GrafIC/GenetIC directories),
  halos from a ``grp`` array, pynbody's catalogue (SubFind) or FoF.

Example:
    >>> sim = load("suite/sim_000.h5")                                   # doctest: +SKIP
    >>> sim = load("run/snapshot_010", initial="run/ics", halos="fof")   # doctest: +SKIP
"""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path
from typing import List, Optional, Union

import h5py
import numpy as np

from tfhalo.sim import gadget, hdf5
from tfhalo.sim.cosmology import Cosmology
from tfhalo.sim.simulation import Simulation

METADATA_NAME = gadget.METADATA_NAME
SUITE_MANIFEST = "suite.json"

PathLike = Union[str, os.PathLike]


def _hdf5_top_level(path: Path):
    """The top-level entries and ``format`` attribute of an HDF5 file; None if it is not HDF5."""
    try:
        with h5py.File(path, "r") as f:
            return sorted(f.keys()), f.attrs.get("format")
    except OSError:
        return None


def _is_suite_file(path: Path) -> bool:
    # An unreadable .h5 file is treated as a (bad) suite file so that the HDF5
    # reader names it; a readable HDF5 file of another format is a snapshot.
    found = _hdf5_top_level(path)
    if found is None:
        return path.suffix in (".h5", ".hdf5")
    return found[1] == hdf5.FORMAT


_EXPECTED = (
    "expected a tfhalo suite file (sim_000.h5), a simulation directory written by tfhalo "
    f"({gadget.FINAL_NAME} + {gadget.ICS_NAME}), or a final snapshot with its initial conditions "
    "(load(path, initial=<IC path>))"
)


def _describe_unknown(path: Path, with_initial: bool) -> Optional[str]:
    """Why ``path`` is not loadable, saying what was found; None for a plausible snapshot.

    With initial conditions given, a non-empty directory may be another code's
    snapshot directory (pynbody reads e.g. RAMSES outputs), so only an empty one is refused.
    """
    if path.is_dir():
        entries = sorted(p.name for p in path.iterdir())
        if not entries:
            return f"{path} is an empty directory: {_EXPECTED}"
        if with_initial:
            return None
        shown = ", ".join(entries[:8]) + (f", ... ({len(entries)} entries)" if len(entries) > 8 else "")
        return (
            f"{path} is a directory holding {shown}: it is not a tfhalo simulation directory (no "
            f"{gadget.FINAL_NAME} and {gadget.ICS_NAME}); {_EXPECTED}"
        )
    if path.is_file() and path.stat().st_size == 0:
        return f"{path} is an empty file: {_EXPECTED}"
    found = _hdf5_top_level(path) if path.is_file() else None
    if found is not None and "Header" not in found[0]:
        return (
            f"{path} is an HDF5 file with {found[0][:8]} at its top level (format attribute {found[1]!r}): "
            f"neither a tfhalo simulation file (format {hdf5.FORMAT!r}) nor a Gadget HDF5 snapshot (a "
            f"'Header' group); {_EXPECTED}"
        )
    return None


def input_paths(path: PathLike, *, initial: Optional[PathLike] = None, halos=None) -> List[Path]:
    """The existing files and directories :func:`load` may read for these arguments.

    Used to refuse an output path that would overwrite an input: ``path`` and
    ``initial`` with their multi-file parts (``snap.0``, ``snap.1``, ...), the
    default halo file ``<path>.grp``, a halo file given as ``halos``, and for a
    generated simulation directory its sibling suite file ``<dir>.h5``.

    Example:
        >>> input_paths("suite/sim_000")   # doctest: +SKIP
        [PosixPath('suite/sim_000'), PosixPath('suite/sim_000.h5')]
    """
    candidates = []
    for base in (path, initial):
        if base is None:
            continue
        base = Path(os.path.abspath(base))  # "." and "dir/" have no name to build siblings from
        candidates.append(base)
        candidates.extend(sorted(base.parent.glob(glob.escape(base.name) + ".[0-9]*")))
    path = Path(os.path.abspath(path))
    candidates.append(path.with_name(path.name + gadget.GRP_SUFFIX))
    if path.is_dir():
        candidates.append(path.with_name(path.name + ".h5"))
    if isinstance(halos, (str, os.PathLike)) and halos not in ("pynbody", "fof"):
        candidates.append(Path(halos))
    out = []
    for candidate in candidates:
        if candidate.exists() and candidate not in out:
            out.append(candidate)
    return out


def is_simulation_dir(path: PathLike) -> bool:
    """True for a directory laid out by :func:`tfhalo.sim.gadget.write_gadget`."""
    path = Path(path)
    return path.is_dir() and (path / gadget.FINAL_NAME).exists() and (path / gadget.ICS_NAME).exists()


def _read_metadata(directory: Path) -> dict:
    path = directory / METADATA_NAME
    if not path.is_file():
        return {}
    try:
        with open(path) as fh:
            return json.load(fh)
    except (OSError, ValueError) as err:
        raise ValueError(f"Cannot read simulation metadata {path}: {err}") from err


def load(
    path: PathLike,
    *,
    initial: Optional[PathLike] = None,
    halos=None,
    cosmology: Optional[Cosmology] = None,
    initial_density: Optional[np.ndarray] = None,
    linking_length: float = 0.2,
    min_members: int = 20,
    name: Optional[str] = None,
) -> Simulation:
    """Load a simulation from a suite file, a generated directory or real snapshots.

    Args:
        path: a suite ``.h5`` file, a generated simulation directory, or a
            final (z = 0) snapshot pynbody reads.
        initial: the initial conditions of a real snapshot ``path`` (Gadget
            snapshot, GrafIC directory, ...). Required for real snapshots.
        halos: for snapshots: ``None`` (``<path>.grp`` if present, else
            pynbody's catalogue, e.g. SubFind), a ``.grp``/``.npy`` halo-number
            file, ``"pynbody"`` or ``"fof"``.
        cosmology: overrides the cosmology of the snapshot headers.
        initial_density: ``(n, n, n)`` lattice density to use as is.
        linking_length: FoF ``b`` for ``halos="fof"``.
        min_members: FoF minimum group size for ``halos="fof"``.
        name: label (default from the file/directory name).

    Returns:
        A :class:`~tfhalo.sim.simulation.Simulation` in lattice order.

    Raises:
        FileNotFoundError: ``path`` or ``initial`` does not exist.
        OSError: a file cannot be read (truncated, unknown format).
        ValueError: inconsistent snapshots (particle counts, ids, redshift
            order), a suite directory passed as one simulation, an empty
            directory or file, an HDF5 file that is neither a suite file nor a
            snapshot, no initial conditions for a real snapshot, or non-finite
            values (NaN, inf) in the density, positions, velocities or halos.
    """
    path = Path(path)
    if not path.exists() and not Path(str(path) + ".0").exists():
        raise FileNotFoundError(f"Simulation not found: {path}")
    snapshot_options = dict(
        halos=halos,
        cosmology=cosmology,
        initial_density=initial_density,
        linking_length=linking_length,
        min_members=min_members,
    )
    if path.is_file() and _is_suite_file(path):
        if initial is not None:
            raise ValueError(f"initial= is only for snapshots; {path} is a tfhalo suite file. Received: initial={initial}")
        sim = hdf5.read_simulation(path)
        if name is not None:
            sim.name = name
        return sim
    if path.is_dir() and (path / SUITE_MANIFEST).is_file():
        raise ValueError(
            f"{path} is a suite directory; use tfhalo.sim.load_suite({str(path)!r}) or load one of its simulations"
        )
    if is_simulation_dir(path) and initial is None:
        sim = _load_generated_dir(path, name=name, **snapshot_options)
        hdf5.check_finite_simulation(sim, str(path))
        return sim
    unknown = _describe_unknown(path, with_initial=initial is not None)
    if unknown is not None:
        raise ValueError(unknown)
    if initial is None:
        raise ValueError(
            f"{path} is not a tfhalo suite file or simulation directory, so it is read as a final snapshot, "
            f"which needs its initial conditions: load({str(path)!r}, initial=<IC path>)"
        )
    initial = Path(initial)
    if not initial.exists() and not Path(str(initial) + ".0").exists():
        raise FileNotFoundError(f"Initial conditions not found: {initial}")
    sim = gadget.read_snapshots(path, initial, name=name, **snapshot_options)
    hdf5.check_finite_simulation(sim, str(path))
    return sim


def _load_generated_dir(directory: Path, *, name=None, cosmology=None, initial_density=None, **options) -> Simulation:
    meta = _read_metadata(directory)
    if cosmology is None and "cosmology" in meta:
        cosmology = Cosmology.from_dict(meta["cosmology"])
    sibling = directory.parent / (directory.name + ".h5")
    # The sibling suite file holds the exact field; use it only if it is this simulation's.
    if initial_density is None and hdf5.is_complete(sibling):
        sibling_meta = hdf5.read_metadata(sibling)
        if sibling_meta["seed"] == meta.get("seed") and sibling_meta["name"] == meta.get("name"):
            initial_density = hdf5.read_initial_density(sibling)
    return gadget.read_snapshots(
        directory / gadget.FINAL_NAME,
        directory / gadget.ICS_NAME,
        cosmology=cosmology,
        initial_density=initial_density,
        seed=meta.get("seed"),
        name=name or meta.get("name", directory.name),
        **options,
    )
