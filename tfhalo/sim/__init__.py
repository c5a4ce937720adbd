"""Simulations: initial conditions, particle mesh, FoF halos, I/O and suites.

Generate::

    >>> from tfhalo.sim import run_simulation, generate_suite
    >>> sim = run_simulation(n_side=32, box_size=25.0, seed=1)        # doctest: +SKIP
    >>> paths = generate_suite("suite", preset="quick", n_sims=2)      # doctest: +SKIP

Load (suite file, generated directory, or real snapshots through pynbody)::

    >>> from tfhalo.sim import load
    >>> sim = load("suite/sim_000.h5")                                 # doctest: +SKIP
    >>> sim = load("run/snapshot_010", initial="run/ics", halos="fof") # doctest: +SKIP

Periodic-box and lattice helpers (wrap, minimum image, lattice positions, FFT
wave vectors) live in :mod:`tfhalo.sim.grid`, the bottom of the package.
"""

from tfhalo.sim.cosmology import WMAP5, Cosmology
from tfhalo.sim.fof import friends_of_friends, halo_properties
from tfhalo.sim.gadget import read_snapshots, write_gadget
from tfhalo.sim.grid import lattice_positions, minimum_image, wrap_periodic
from tfhalo.sim.hdf5 import read_simulation, write_simulation
from tfhalo.sim.ics import gaussian_field, lpt_displacements, lpt_positions
from tfhalo.sim.loader import load
from tfhalo.sim.mesh import cic_paint, cic_readout, power_spectrum
from tfhalo.sim.pipeline import run_simulation
from tfhalo.sim.pm import run_pm
from tfhalo.sim.simulation import HaloCatalogue, Simulation
from tfhalo.sim.suite import PRESETS, SimulationPreset, generate_suite, list_suite, load_suite, resolve_preset

save = write_simulation

__all__ = [
    "Cosmology",
    "WMAP5",
    "Simulation",
    "HaloCatalogue",
    "run_simulation",
    "load",
    "save",
    "read_simulation",
    "write_simulation",
    "write_gadget",
    "read_snapshots",
    "generate_suite",
    "list_suite",
    "load_suite",
    "PRESETS",
    "SimulationPreset",
    "resolve_preset",
    "friends_of_friends",
    "halo_properties",
    "cic_paint",
    "cic_readout",
    "power_spectrum",
    "gaussian_field",
    "lpt_displacements",
    "lpt_positions",
    "run_pm",
    "wrap_periodic",
    "minimum_image",
    "lattice_positions",
]
