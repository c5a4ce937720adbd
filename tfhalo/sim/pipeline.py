"""One simulation end to end: ICs -> 2LPT -> particle mesh -> FoF -> Simulation.

Example:
    >>> from tfhalo.sim.pipeline import run_simulation
    >>> sim = run_simulation(n_side=32, box_size=50.0, seed=1)   # ~1 s
    >>> sim.initial_density.shape
    (32, 32, 32)
    >>> bool(len(sim.halos) > 0)
    True
"""

from __future__ import annotations

import time
from typing import Optional

import numpy as np

from tfhalo.sim.cosmology import WMAP5, Cosmology
from tfhalo.sim.fof import friends_of_friends, halo_properties
from tfhalo.sim.grid import wrap_periodic
from tfhalo.sim.ics import gaussian_field, lpt_displacements, lpt_state, peculiar_velocity
from tfhalo.sim.pm import run_pm
from tfhalo.sim.simulation import Simulation
from tfhalo.validation import MAX_SEED, check_bool, check_float, check_int, check_seed


def validate_arguments(
    n_side, box_size, cosmology, seed, z_initial, a_start, n_steps, mesh_factor, linking_length, min_members
):
    """Check :func:`run_simulation` arguments; raise ``ValueError`` naming the culprit.

    Also checks that colossus gives P(k) over the grid's wave numbers
    (``2 pi / box_size`` to ``sqrt(3) pi n_side / box_size``).

    Returns:
        The normalised ``(n_side, box_size, z_initial, a_start, n_steps,
        mesh_factor, linking_length, min_members)``.
    """
    n_side = check_int("n_side", n_side, minimum=2)
    box_size = check_float("box_size", box_size, positive=True)
    if not isinstance(cosmology, Cosmology):
        raise ValueError(f"cosmology must be a tfhalo.sim.Cosmology. Received: cosmology={cosmology!r}")
    check_seed("seed", seed)
    z_initial = check_float("z_initial", z_initial, positive=True)
    a_initial = 1.0 / (1.0 + z_initial)
    a_start = check_float("a_start", a_start, positive=True)
    if not a_initial <= a_start < 1.0:
        raise ValueError(
            f"a_start must lie in [1/(1+z_initial), 1) = [{a_initial:.4g}, 1): the N-body starts at or after "
            f"the initial redshift and before z = 0. Received: a_start={a_start}, z_initial={z_initial}"
        )
    n_steps = check_int("n_steps", n_steps, minimum=1)
    mesh_factor = check_int("mesh_factor", mesh_factor, minimum=1)
    linking_length = check_float("linking_length", linking_length, positive=True)
    if linking_length >= 1.0:
        raise ValueError(
            "linking_length is in units of the mean inter-particle separation and must be < 1. "
            f"Received: linking_length={linking_length}"
        )
    min_members = check_int("min_members", min_members, minimum=1)
    _check_k_range(n_side, box_size, cosmology)
    return n_side, box_size, z_initial, a_start, n_steps, mesh_factor, linking_length, min_members


def _check_k_range(n_side: int, box_size: float, cosmology: Cosmology) -> None:
    """Fail now, not after files are written, if colossus cannot give P(k) on this grid.

    The field needs P(k) from the fundamental ``2 pi / L`` to the corner of the
    FFT grid ``sqrt(3) pi n / L`` (sqrt(3) times the Nyquist frequency).
    """
    k_min = 2.0 * np.pi / box_size
    k_max = np.sqrt(3.0) * np.pi * n_side / box_size
    try:
        cosmology.linear_power(np.array([k_min, k_max]))
    except ValueError as err:
        raise ValueError(
            f"box_size and n_side give wave numbers k in [{k_min:.3g}, {k_max:.3g}] h/Mpc (2 pi / box_size to "
            f"sqrt(3) pi n_side / box_size) where the linear power spectrum is unavailable ({err}). "
            f"Received: box_size={box_size}, n_side={n_side}"
        ) from err


def run_simulation(
    n_side: int,
    box_size: float,
    cosmology: Cosmology = WMAP5,
    seed: Optional[int] = 0,
    z_initial: float = 99.0,
    a_start: float = 0.1,
    n_steps: int = 10,
    mesh_factor: int = 2,
    linking_length: float = 0.2,
    min_members: int = 20,
    progress: bool = False,
    name: Optional[str] = None,
    pm_progress: Optional[bool] = None,
) -> Simulation:
    """Generate one simulation.

    1. Linear density at z = 0 from ``seed`` (:func:`~tfhalo.sim.ics.gaussian_field`),
       stored scaled to ``z_initial`` as ``initial_density`` (float32).
    2. 2LPT positions and velocities at ``z_initial`` (``initial_positions``,
       ``initial_velocities``) and 2LPT positions and momenta at ``a_start``.
    3. Particle mesh (:func:`~tfhalo.sim.pm.run_pm`) from ``a_start`` to a = 1
       (``final_positions``, ``final_velocities``).
    4. FoF with linking length ``linking_length * box_size / n_side``,
       ``min_members`` particles or more, and halo properties.

    Args:
        n_side: particles per side (``n_side**3`` particles).
        box_size: box side, Mpc/h.
        cosmology: the cosmology.
        seed: seed of the initial conditions, an integer in ``[0, 2**63 - 1]``
            (simulation files store it as int64); None: fresh entropy.
        z_initial: redshift of the stored initial density and positions.
        a_start: scale factor where the N-body starts from 2LPT.
        n_steps: PM kick-drift-kick steps.
        mesh_factor: force-mesh cells per particle per side.
        linking_length: FoF ``b`` in units of the mean inter-particle separation.
        min_members: smallest FoF halo.
        progress: print stage timings and show a tqdm bar for the PM.
        name: label of the simulation (default ``"sim_seed{seed}"``).
        pm_progress: show the PM's tqdm bar (transient, ``leave=False``, so it
            can nest under a suite's bar); default ``progress``.

    Returns:
        A fully populated :class:`~tfhalo.sim.simulation.Simulation`.

    Raises:
        ValueError: an argument is invalid (every one is checked before any work).
    """
    (n_side, box_size, z_initial, a_start, n_steps, mesh_factor, linking_length, min_members) = validate_arguments(
        n_side, box_size, cosmology, seed, z_initial, a_start, n_steps, mesh_factor, linking_length, min_members
    )
    progress = check_bool("progress", progress)
    pm_progress = progress if pm_progress is None else check_bool("pm_progress", pm_progress)
    if name is not None and (not isinstance(name, str) or not name):
        raise ValueError(f"name must be a non-empty string or None. Received: name={name!r}")
    seed = check_seed("seed", seed)
    if seed is None:
        seed = int(np.random.SeedSequence().entropy % (MAX_SEED + 1))
    a_initial = 1.0 / (1.0 + z_initial)
    timer = _StageTimer(progress)

    delta0 = gaussian_field(n_side, box_size, cosmology, seed, z=0.0)
    initial_density = (delta0 * cosmology.growth_factor(a_initial)).astype(np.float32)
    psi1, psi2 = lpt_displacements(delta0, box_size)
    del delta0
    initial_positions, initial_momenta = lpt_state(psi1, psi2, box_size, cosmology, a_initial)
    initial_positions = wrap_periodic(initial_positions, box_size, dtype=np.float32)
    # Exact 2LPT velocities (f1 D1 psi1 + f2 D2 psi2), kept for the Gadget ICs.
    initial_velocities = peculiar_velocity(initial_momenta, a_initial).astype(np.float32)
    del initial_momenta
    x_start, p_start = lpt_state(psi1, psi2, box_size, cosmology, a_start)
    del psi1, psi2
    timer.stage("initial conditions")

    final_positions, final_velocities = run_pm(
        x_start, p_start, box_size, cosmology, a_start=a_start, a_end=1.0, n_steps=n_steps,
        mesh_factor=mesh_factor, progress=pm_progress,
    )
    del x_start, p_start
    timer.stage("particle mesh")

    particle_mass = cosmology.rho_mean * box_size**3 / n_side**3
    labels = friends_of_friends(final_positions, box_size, linking_length * box_size / n_side, min_members)
    halos, r_rel = halo_properties(final_positions, labels, box_size, particle_mass, cosmology.rho_mean)
    halo_mass = np.where(labels >= 0, halos.mass[np.maximum(labels, 0)] if len(halos) else 0.0, 0.0)
    timer.stage("friends of friends")

    return Simulation(
        box_size=box_size,
        n_side=n_side,
        cosmology=cosmology,
        z_initial=z_initial,
        particle_mass=particle_mass,
        initial_density=initial_density,
        ids=np.arange(n_side**3, dtype=np.int64),
        initial_positions=initial_positions,
        final_positions=final_positions,
        halo_id=labels,
        halo_mass=halo_mass,
        r_over_r200=r_rel.astype(np.float32),
        halos=halos,
        seed=seed,
        name=name if name is not None else f"sim_seed{seed}",
        initial_velocities=initial_velocities,
        final_velocities=final_velocities,
    )


class _StageTimer:
    def __init__(self, verbose: bool):
        self.verbose = verbose
        self.t = time.perf_counter()

    def stage(self, what: str):
        now = time.perf_counter()
        if self.verbose:
            print(f"[tfhalo.sim] {what}: {now - self.t:.2f} s", flush=True)
        self.t = now
