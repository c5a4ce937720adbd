"""Suites of generated simulations: presets, resumable generation, manifest.

Directory layout written by :func:`generate_suite`::

    OUT/suite.json              manifest: preset parameters, master seed, per-simulation seeds
    OUT/sim_000.h5              exact arrays (tfhalo.sim.hdf5 schema); written last = "finished"
    OUT/sim_000/ics             Gadget-2 snapshot at z_initial     (tfhalo.sim.gadget)
    OUT/sim_000/snapshot_000    Gadget-2 snapshot at z = 0
    OUT/sim_000/snapshot_000.grp  halo numbers (0 = none, halo k -> k + 1)
    OUT/sim_000/tfhalo.json     name, seed, cosmology
    OUT/sim_001.h5, OUT/sim_001/, ...

Resuming: simulation ``i`` is finished when ``sim_{i}.h5`` is complete (its
``complete`` attribute is written last and the file is renamed into place)
with the manifest's seed and its Gadget directory holds every file; a
finished simulation is skipped; anything else (temporary ``*.tmp`` files or
directories from an interrupted run) is removed and the simulation redone.
The Gadget directory is written as ``sim_{i}.tmp/`` and renamed, then the
``.h5`` file is written (temporary name, then rename).

Seeds: ``numpy.random.SeedSequence(master_seed).spawn(n_sims)``; simulation
``i``'s seed is 63 bits drawn from child ``i`` (independent streams, and the
same for any ``n_sims > i``).

Shards (job arrays: SLURM ``--array``, Dask, Ray): ``generate_suite(...,
shard=(i, N))`` (``tfhalo simulate --shard i/N``) runs only the simulations
``j`` with ``j % N == i``. Since a simulation's seed depends only on the
master seed and its index, the parts, run in any order or at the same time,
give the same files, byte for byte, as one unsharded run. Concurrent runs
stay consistent because nothing one simulation writes is shared with
another: a simulation's record is its own ``.h5`` file and Gadget directory,
each renamed into place when whole, and ``list_suite`` derives "finished"
from those files. The manifest depends only on the parameters, the master
seed and ``n_sims``, so parts with the same ``n_sims`` write the same bytes.
It is written (unique temporary name, then rename) only when missing or
shorter than the run's ``n_sims``, then read back, and checked again when
the run ends, so that a concurrent run with a smaller ``n_sims`` that read it
before it grew cannot shrink it for good (a lock-free merge on rename: no
lock file for a killed job to leave behind). Two processes must not run the
same simulation at once (overlapping shards): they share its temporary names.

Example:
    >>> paths = generate_suite("suite", preset="quick", n_sims=2, seed=0)   # doctest: +SKIP
    >>> sims = load_suite("suite")                                          # doctest: +SKIP
    >>> part = generate_suite("big", n_sims=64, seed=0, shard="3/16")       # doctest: +SKIP
    >>> [p.name for p in part]                                              # doctest: +SKIP
    ['sim_003.h5', 'sim_019.h5', 'sim_035.h5', 'sim_051.h5']
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from tfhalo.atomic import atomic_path, write_json_atomic
from tfhalo.sim import gadget, hdf5
from tfhalo.sim.cosmology import WMAP5, Cosmology
from tfhalo.sim.simulation import Simulation
from tfhalo.validation import check_bool, check_int, check_seed

MANIFEST_NAME = "suite.json"
MANIFEST_FORMAT = "tfhalo-suite"

PathLike = Union[str, os.PathLike]


@dataclasses.dataclass(frozen=True)
class SimulationPreset:
    """Parameters of every simulation in a suite (see :func:`tfhalo.sim.run_simulation`).

    Args:
        n_side: particles per side (``n_side**3`` particles).
        box_size: box side, Mpc/h.
        z_initial: redshift of the stored initial density and positions.
        a_start: scale factor where the particle mesh starts (2LPT before).
        n_steps: particle-mesh steps.
        mesh_factor: force-mesh cells per particle per side.
        linking_length: FoF ``b`` in mean inter-particle separations.
        min_members: smallest FoF halo.
        cosmology: the :class:`~tfhalo.sim.cosmology.Cosmology`.
    """

    n_side: int
    box_size: float
    z_initial: float = 99.0
    a_start: float = 0.1
    n_steps: int = 10
    mesh_factor: int = 2
    linking_length: float = 0.2
    min_members: int = 20
    cosmology: Cosmology = WMAP5

    def __post_init__(self):
        from tfhalo.sim.pipeline import validate_arguments

        # run_simulation's own checks (n_side >= 2, linking_length < 1, the k range colossus
        # covers, ...) here, so generate_suite fails before it creates out_dir or suite.json.
        names = ("n_side", "box_size", "z_initial", "a_start", "n_steps", "mesh_factor", "linking_length",
                 "min_members")
        values = validate_arguments(
            self.n_side, self.box_size, self.cosmology, None, self.z_initial, self.a_start, self.n_steps,
            self.mesh_factor, self.linking_length, self.min_members,
        )
        for field, value in zip(names, values):
            object.__setattr__(self, field, value)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["cosmology"] = self.cosmology.to_dict()
        return d

    @classmethod
    def from_dict(cls, d) -> "SimulationPreset":
        """Inverse of :meth:`to_dict`.

        Raises:
            ValueError: ``d`` is not a dict of known fields with valid values.
        """
        if not isinstance(d, dict):
            raise ValueError(f"a SimulationPreset dict must be a JSON object. Received: {d!r:.200}")
        d = dict(d)
        fields = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - fields)
        if unknown:
            raise ValueError(f"Unknown SimulationPreset fields {unknown}. Expected a subset of {sorted(fields)}")
        d["cosmology"] = Cosmology.from_dict(d.get("cosmology", WMAP5.to_dict()))
        return cls(**d)


#: "quick": seconds per simulation on 2 cores; "paper": the resolution of the simulations of
#: Lucie-Smith, Peiris, Pontzen, Nord & Thiyagalingam (2020), arXiv:2011.10577 (256^3 particles
#: in 50 Mpc/h); "charnock2020": the volume of Charnock et al. (2020), "Neural physical engines
#: for inferring the halo mass distribution function", MNRAS 494, 50, arXiv:1909.06379,
#: (250 Mpc/h)^3, at a particle mass (3.7e10 Msun/h) that puts its halo threshold
#: M_th = 2e12 Msun/h at 54 particles (FoF masses are noisy below ~50); it needs ~15 GB.
PRESETS: Dict[str, SimulationPreset] = {
    "quick": SimulationPreset(n_side=64, box_size=40.0, n_steps=10, mesh_factor=2),
    "paper": SimulationPreset(n_side=256, box_size=50.0, z_initial=99.0, n_steps=10, mesh_factor=2),
    "charnock2020": SimulationPreset(n_side=320, box_size=250.0, n_steps=10, mesh_factor=2),
}


def resolve_preset(preset: Union[str, SimulationPreset] = "quick", **overrides) -> SimulationPreset:
    """A preset by name (or as given) with fields replaced by ``overrides``.

    Raises:
        ValueError: unknown preset name or override field, or an invalid value.
    """
    if isinstance(preset, str):
        if preset not in PRESETS:
            raise ValueError(f"Unknown preset. Expected one of {sorted(PRESETS)}. Received: preset={preset!r}")
        preset = PRESETS[preset]
    elif not isinstance(preset, SimulationPreset):
        raise ValueError(f"preset must be a name or a SimulationPreset. Received: preset={preset!r}")
    fields = {f.name for f in dataclasses.fields(SimulationPreset)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"Unknown preset overrides {unknown}. Expected a subset of {sorted(fields)}")
    overrides = {k: v for k, v in overrides.items() if v is not None}
    return dataclasses.replace(preset, **overrides) if overrides else preset


def simulation_seeds(master_seed: int, n_sims: int) -> List[int]:
    """Independent 63-bit seeds for ``n_sims`` simulations from one master seed."""
    children = np.random.SeedSequence(int(master_seed)).spawn(int(n_sims))
    seeds = []
    for child in children:
        lo, hi = child.generate_state(2, dtype=np.uint32)
        seeds.append(int((int(hi) << 32 | int(lo)) & (2**63 - 1)))
    return seeds


def simulation_name(index: int) -> str:
    return f"sim_{index:03d}"


ShardLike = Union[str, Sequence[int], None]


def parse_shard(shard: ShardLike, name: str = "shard") -> Optional[Tuple[int, int]]:
    """``"i/N"`` or ``(i, N)`` as the pair ``(i, N)``, checked; ``None`` stays ``None``.

    Args:
        shard: part ``i`` of ``N`` (``0 <= i < N``), as a string ``"i/N"``
            (what ``SLURM_ARRAY_TASK_ID/SLURM_ARRAY_TASK_COUNT`` give) or a
            pair of integers; ``None`` for the whole suite.
        name: the argument's name in the error message (``"--shard"`` for the CLI).

    Returns:
        ``(i, N)`` as Python ints, or ``None``.

    Raises:
        ValueError: anything else, e.g. ``shard must be 'i/N' with 0 <= i < N.
            Received: shard='3/2'``.

    Example:
        >>> parse_shard("1/4"), parse_shard((0, 2)), parse_shard(None)
        ((1, 4), (0, 2), None)
    """
    if shard is None:
        return None
    pair = None
    if isinstance(shard, str):
        # ASCII digits only: int() would also take "+1", " 1", "1_0" and other scripts' digits.
        match = re.fullmatch(r"([0-9]+)/([0-9]+)", shard)
        if match:
            pair = (int(match[1]), int(match[2]))
    elif (isinstance(shard, (tuple, list)) and len(shard) == 2
          and all(isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) for v in shard)):
        pair = (int(shard[0]), int(shard[1]))
    if pair is None or not 0 <= pair[0] < pair[1]:
        raise ValueError(f"{name} must be 'i/N' with 0 <= i < N. Received: {name}={shard!r}")
    return pair


def shard_indices(n_sims: int, shard: ShardLike = None) -> List[int]:
    """Indices of the simulations part ``shard = (i, N)`` of an ``n_sims`` suite runs.

    Round robin, ``j = i, i + N, i + 2N, ... < n_sims``: the parts differ in
    size by at most one simulation, and parts with ``i >= n_sims`` are empty
    (a job array may be larger than the suite).

    Raises:
        ValueError: invalid ``n_sims`` or ``shard`` (see :func:`parse_shard`).

    Example:
        >>> shard_indices(10, "1/4")
        [1, 5, 9]
    """
    n_sims = check_int("n_sims", n_sims, minimum=1)
    pair = parse_shard(shard)
    i, n = pair if pair is not None else (0, 1)
    return list(range(i, n_sims, n))


def read_manifest(out_dir: PathLike) -> dict:
    """The ``suite.json`` of a suite directory, checked entry by entry.

    Raises:
        FileNotFoundError: no manifest.
        ValueError: naming the file: unreadable, not JSON, not a tfhalo suite
            manifest, or an entry missing or malformed.
    """
    path = Path(out_dir) / MANIFEST_NAME
    if not path.is_file():
        raise FileNotFoundError(f"Suite manifest not found: {path}")
    try:
        with open(path, encoding="utf-8") as fh:
            manifest = json.load(fh)
    except (OSError, ValueError) as err:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ValueError(f"Cannot read suite manifest {path}: {err}") from err
    if not isinstance(manifest, dict) or manifest.get("format") != MANIFEST_FORMAT:
        found = manifest.get("format") if isinstance(manifest, dict) else type(manifest).__name__
        raise ValueError(f"{path} is not a tfhalo suite manifest (format {found!r}, expected {MANIFEST_FORMAT!r})")
    try:
        _check_manifest(manifest)
    except (ValueError, TypeError, KeyError) as err:
        raise ValueError(f"Suite manifest {path} is corrupt: {err}") from None
    return manifest


def _check_manifest(manifest: dict) -> None:
    """Raise on any entry :func:`generate_suite` and :func:`list_suite` could not use."""
    for key in ("parameters", "master_seed", "n_sims", "simulations"):
        if key not in manifest:
            raise ValueError(f"no {key!r} entry")
    SimulationPreset.from_dict(manifest["parameters"])
    check_seed("master_seed", manifest["master_seed"], allow_none=False)
    n_sims = check_int("n_sims", manifest["n_sims"], minimum=1)
    sims = manifest["simulations"]
    if not isinstance(sims, list) or len(sims) != n_sims:
        raise ValueError(f"'simulations' must be a list of n_sims={n_sims} entries. Received: {sims!r:.200}")
    for i, entry in enumerate(sims):
        if not isinstance(entry, dict):
            raise ValueError(f"simulations[{i}] must be an object. Received: {entry!r:.200}")
        check_seed(f"simulations[{i}].seed", entry.get("seed"), allow_none=False)
        for key in ("name", "file"):
            value = entry.get(key)
            # A bare file name: a manifest must not point outside its own directory.
            if not isinstance(value, str) or not value or Path(value).name != value or value in (".", ".."):
                raise ValueError(f"simulations[{i}].{key} must be a file name. Received: {value!r}")


def _manifest(preset_name: str, preset: SimulationPreset, master_seed: int, n_sims: int) -> dict:
    import tfhalo

    seeds = simulation_seeds(master_seed, n_sims)
    return {
        "format": MANIFEST_FORMAT,
        "tfhalo_version": tfhalo.__version__,
        "preset": preset_name,
        "parameters": preset.to_dict(),
        "master_seed": int(master_seed),
        "n_sims": int(n_sims),
        "simulations": [
            {"name": simulation_name(i), "seed": s, "file": simulation_name(i) + ".h5", "gadget": simulation_name(i)}
            for i, s in enumerate(seeds)
        ],
    }


def _check_same_suite(old: dict, new: dict, path: Path) -> None:
    if old["parameters"] != new["parameters"] or old["master_seed"] != new["master_seed"]:
        raise ValueError(
            f"{path} describes another suite (preset parameters {old['parameters']}, "
            f"master seed {old['master_seed']}); use another out_dir. Received: parameters "
            f"{new['parameters']}, seed={new['master_seed']}"
        )


# Each retry needs a concurrent run with a smaller n_sims to have shrunk the manifest in between:
# the bound only turns an impossible livelock into an error.
_MANIFEST_ATTEMPTS = 100


def _publish_manifest(out_dir: Path, manifest: dict) -> dict:
    """Make ``out_dir/suite.json`` list at least ``manifest``'s simulations; return what it holds.

    Lock-free merge on rename: read, keep the manifest when it already lists
    as many simulations (the entries of a suite are a function of its
    parameters, master seed and index), else write the merged one atomically
    and read again, until what is on disk covers ``manifest``. Concurrent
    callers with the same ``n_sims`` write identical bytes.

    Raises:
        ValueError: ``suite.json`` is corrupt or describes another suite.
    """
    path = out_dir / MANIFEST_NAME
    for _ in range(_MANIFEST_ATTEMPTS):
        if not path.is_file():
            merged = manifest
        else:
            old = read_manifest(out_dir)
            _check_same_suite(old, manifest, path)
            if old["n_sims"] >= manifest["n_sims"]:
                return old
            params = SimulationPreset.from_dict(manifest["parameters"])
            # The first writer's preset name stays, so every merge writes the same bytes.
            merged = _manifest(old.get("preset", manifest["preset"]), params, manifest["master_seed"],
                               manifest["n_sims"])
        write_json_atomic(path, merged)
    raise RuntimeError(f"{path} kept being replaced by a smaller suite manifest in {_MANIFEST_ATTEMPTS} attempts")


def is_finished(out_dir: PathLike, name: str, seed: Optional[int] = None) -> bool:
    """True when simulation ``name`` of the suite in ``out_dir`` was written completely."""
    out_dir = Path(out_dir)
    h5 = out_dir / (name + ".h5")
    gdir = out_dir / name
    if not hdf5.is_complete(h5):
        return False
    needed = (gadget.ICS_NAME, gadget.FINAL_NAME, gadget.FINAL_NAME + gadget.GRP_SUFFIX, gadget.METADATA_NAME)
    if not all((gdir / f).is_file() for f in needed):
        return False
    return seed is None or hdf5.read_metadata(h5)["seed"] == seed


def _clean(out_dir: Path, name: str) -> None:
    """Remove whatever an interrupted run left of simulation ``name``."""
    for path in (out_dir / (name + ".h5"), hdf5.temporary_path(out_dir / (name + ".h5"))):
        path.unlink(missing_ok=True)
    for path in (out_dir / name, out_dir / (name + ".tmp")):
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


def write_simulation_files(sim: Simulation, out_dir: PathLike, name: str) -> Path:
    """Write one finished simulation into a suite directory (Gadget dir, then ``.h5``)."""
    out_dir = Path(out_dir)
    _clean(out_dir, name)
    # Fixed name sim_{i}.tmp/: _clean() of a resumed run removes what an interrupted one left.
    with atomic_path(out_dir / name, unique=False) as tmp_dir:
        gadget.write_gadget(sim, tmp_dir)
    return hdf5.write_simulation(sim, out_dir / (name + ".h5"))


def generate_suite(
    out_dir: PathLike,
    preset: Union[str, SimulationPreset] = "quick",
    n_sims: int = 4,
    seed: int = 0,
    progress: bool = True,
    shard: ShardLike = None,
    **overrides,
) -> List[Path]:
    """Generate (or finish) a suite of simulations, or one part of it; resumable and atomic.

    Args:
        out_dir: suite directory (created if missing).
        preset: a name in :data:`PRESETS` (``"quick"``, ``"paper"``, ...) or a
            :class:`SimulationPreset`.
        n_sims: number of simulations.
        seed: master seed; per-simulation seeds are spawned from it.
        progress: show a tqdm progress bar over simulations, with each
            simulation's particle-mesh steps as a nested transient bar.
        shard: ``"i/N"`` or ``(i, N)``: run only simulations ``j`` with
            ``j % N == i`` (see :func:`shard_indices`), e.g. one task of a
            SLURM array; the manifest still lists all ``n_sims``. The ``N``
            parts may run in any order or concurrently (each in its own
            process) and give the same files as ``shard=None`` (all).
        **overrides: preset fields to replace, e.g. ``n_side=16``.

    Returns:
        Paths of the ``.h5`` files of the simulations this call covers
        (all ``n_sims``, or the shard's), in index order.

    Raises:
        ValueError: invalid arguments (checked before anything is written),
            or ``out_dir`` holds a suite made with other parameters or
            another master seed.

    Example:
        >>> generate_suite("suite", n_sims=4, seed=0, shard="1/2", n_side=16)   # doctest: +SKIP
        [PosixPath('suite/sim_001.h5'), PosixPath('suite/sim_003.h5')]
    """
    from tqdm.auto import tqdm

    from tfhalo.sim.pipeline import run_simulation

    n_sims = check_int("n_sims", n_sims, minimum=1)
    seed = check_seed("seed", seed, allow_none=False)
    progress = check_bool("progress", progress)
    shard = parse_shard(shard)
    if not isinstance(out_dir, (str, os.PathLike)) or not os.fspath(out_dir):
        # Path("") is the current directory: an empty name is a mistake, not a request.
        raise ValueError(f"out_dir must be a non-empty path. Received: out_dir={out_dir!r}")
    preset_name = preset if isinstance(preset, str) else "custom"
    params = resolve_preset(preset, **overrides)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"out_dir must be a directory. Received: out_dir={str(out_dir)!r} (a file)")
    manifest = _manifest(preset_name, params, seed, n_sims)
    if (out_dir / MANIFEST_NAME).is_file():  # another suite or a corrupt manifest: refused before mkdir
        _check_same_suite(read_manifest(out_dir), manifest, out_dir / MANIFEST_NAME)
    out_dir.mkdir(parents=True, exist_ok=True)
    _publish_manifest(out_dir, manifest)

    indices = shard_indices(n_sims, shard)
    desc = "simulations" if shard is None else f"simulations (shard {shard[0]}/{shard[1]})"
    paths = []
    bar = tqdm(indices, desc=desc, unit="sim", disable=not progress)
    for index in bar:
        entry = manifest["simulations"][index]
        name, sim_seed = entry["name"], entry["seed"]
        path = out_dir / entry["file"]
        if is_finished(out_dir, name, sim_seed):
            bar.set_postfix_str(f"{name} done (skipped)")
        else:
            bar.set_postfix_str(f"{name} running")
            sim = run_simulation(
                n_side=params.n_side,
                box_size=params.box_size,
                cosmology=params.cosmology,
                seed=sim_seed,
                z_initial=params.z_initial,
                a_start=params.a_start,
                n_steps=params.n_steps,
                mesh_factor=params.mesh_factor,
                linking_length=params.linking_length,
                min_members=params.min_members,
                progress=False,  # no stage-timing prints inside the bar
                pm_progress=progress,  # a transient PM bar nested under the suite's
                name=name,
            )
            write_simulation_files(sim, out_dir, name)
            bar.set_postfix_str(f"{name} written, {len(sim.halos)} halos")
        paths.append(path)
    bar.close()
    # Again at the end: a concurrent run with a smaller n_sims that read the manifest before
    # this one grew it may have written its smaller one since.
    _publish_manifest(out_dir, manifest)
    return paths


def list_suite(out_dir: PathLike, finished_only: bool = True) -> List[Path]:
    """The ``.h5`` files of a suite, in manifest order (only finished ones by default)."""
    out_dir = Path(out_dir)
    manifest = read_manifest(out_dir)
    return [
        out_dir / e["file"]
        for e in manifest["simulations"]
        if not finished_only or is_finished(out_dir, e["name"], e["seed"])
    ]


def load_suite(out_dir: PathLike, via: str = "hdf5") -> List[Simulation]:
    """Load every finished simulation of a suite.

    Args:
        out_dir: suite directory.
        via: ``"hdf5"`` (exact, fast) or ``"gadget"`` (through pynbody).
    """
    from tfhalo.sim.loader import load

    if via not in ("hdf5", "gadget"):
        raise ValueError(f"via must be 'hdf5' or 'gadget'. Received: via={via!r}")
    files = list_suite(out_dir)
    return [load(p if via == "hdf5" else p.with_suffix("")) for p in files]
