"""Validation of the simulation engine against colossus: initial P(k) and the FoF mass function.

The study generates a suite exactly as ``tfhalo simulate`` does
(:func:`tfhalo.sim.suite.generate_suite`, per-simulation seeds
:func:`~tfhalo.sim.suite.simulation_seeds`), loads it back (so what is
validated is what the command writes) and compares

* the measured power spectrum of each initial density field (z = 99) with
  colossus' linear Eisenstein & Hu (1998) P(k) scaled by the growth factor;
  the mode-weighted mean ratio below half the Nyquist wavenumber should be 1
  within a few per cent;
* the z = 0 FoF (b = 0.2) halo mass function of all simulations together with
  colossus' FoF fit of Watson, Iliev, D'Aloisio, Knebe, Shapiro & Yepes (2013),
  "The halo mass function through the cosmic ages", MNRAS 433, 1230,
  arXiv:1212.0095 (``massFunction(M, 0, mdef='fof', model='watson13')``),
  integrated over each mass bin, with Poisson errors. Target: within 20% for
  halos above 200 particles;
* ``M200 / M_FoF`` of the halos (how many fell back to the FoF mass because
  their profile is unresolved).

Resumable: the suite is (``generate_suite`` is resumable and atomic), and each
simulation's statistics are cached in ``out/stats/``. Writes
``validate_simulations.json`` and ``validate_simulations.png`` into ``out``.

Example:
    >>> from tfhalo.studies import validate_simulations as vs
    >>> cfg = vs.Config.preset("quick", seed=0)                 # 2 simulations of 32^3
    >>> cfg.n_sims, cfg.n_side
    (2, 32)
    >>> summary = vs.run(cfg, suite="runs/validate/suite", out="runs/validate")  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import datetime
from pathlib import Path
from typing import Optional

import numpy as np

__all__ = ["Config", "PRESETS", "MIN_PARTICLES", "TARGET_PARTICLES", "Z_INITIAL", "run",
           "simulation_statistics", "mass_function_comparison", "plot"]

#: Smallest halo (in particles) in the mass-function bins.
MIN_PARTICLES = 20
#: Halos above this many particles are held to the 20% target.
TARGET_PARTICLES = 200
#: Redshift of the initial conditions the power spectrum is measured at.
Z_INITIAL = 99.0


@dataclasses.dataclass(frozen=True)
class Config:
    """Settings of the validation; every field is checked on construction.

    Args:
        name: preset the settings came from.
        seed: master seed (one independent seed per simulation, as ``tfhalo simulate --seed``).
        n_sims: simulations in the suite.
        n_side: particles per side.
        box_size: box side, Mpc/h.
        n_steps: particle-mesh steps from z = 99 to 0.
        mesh_factor: PM mesh cells per particle per side.

    Raises:
        ValueError: naming the field and the value.
    """

    name: str = "custom"
    seed: int = 0
    n_sims: int = 4
    n_side: int = 128
    box_size: float = 50.0
    n_steps: int = 10
    mesh_factor: int = 2

    def __post_init__(self):
        from tfhalo.validation import check_float, check_int, check_seed

        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty string. Received: name={self.name!r}")
        object.__setattr__(self, "seed", check_seed("seed", self.seed, allow_none=False))
        for field in ("n_sims", "n_side", "n_steps", "mesh_factor"):
            object.__setattr__(self, field, check_int(field, getattr(self, field), minimum=1))
        object.__setattr__(self, "box_size", check_float("box_size", self.box_size, positive=True))
        self.sim_params()  # the simulation engine's own rules (e.g. its smallest grid)

    def sim_params(self):
        """The :class:`tfhalo.sim.suite.SimulationPreset` of the suite (WMAP5 cosmology)."""
        from tfhalo.sim.cosmology import WMAP5
        from tfhalo.sim.suite import SimulationPreset

        return SimulationPreset(n_side=self.n_side, box_size=self.box_size, n_steps=self.n_steps,
                                mesh_factor=self.mesh_factor, cosmology=WMAP5)

    @classmethod
    def preset(cls, name: str = "default", seed: int = 0, **overrides) -> "Config":
        """A preset's settings with ``seed`` and any field replaced.

        Presets:
            default: 4 simulations of 128^3 particles in (50 Mpc/h)^3, 10 PM steps.
            quick: 2 simulations of 32^3 particles (seconds; a smoke test, too small
                for the 20% target above 200 particles).

        Raises:
            ValueError: an unknown preset or field, or an invalid value (named).
        """
        from tfhalo.studies.common import preset_config

        return preset_config(cls, PRESETS, name, seed, overrides)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


PRESETS = {
    "default": dict(n_sims=4, n_side=128, box_size=50.0, n_steps=10, mesh_factor=2),
    "quick": dict(n_sims=2, n_side=32, box_size=50.0, n_steps=10, mesh_factor=2),
}


def simulation_statistics(h5_path, seed: int, out, settings: str = "", verbose: bool = False) -> dict:
    """Statistics of one suite simulation, cached as ``out/stats/<name>_seed<seed>[_<settings>].npz``.

    Args:
        h5_path: the simulation file.
        seed: the seed :func:`~tfhalo.sim.suite.simulation_seeds` gave it (checked).
        out: the study directory.
        settings: a tag of the suite's settings in the cache's name, so that statistics of
            a suite of other settings with the same file names and seeds are not reused.
        verbose: print the simulation's halo count when it is first measured.

    Returns:
        ``k, pk, n_modes`` (initial power), ``k_final, pk_final`` (z = 0 power),
        ``halo_mass, n_members, r200`` (FoF halos) and ``particle_mass``, NumPy arrays.

    Raises:
        ValueError: the file holds another seed.
    """
    from tfhalo.atomic import save_npz_atomic
    from tfhalo.sim.loader import load
    from tfhalo.sim.mesh import power_spectrum

    h5_path = Path(h5_path)
    path = Path(out) / "stats" / f"{h5_path.stem}_seed{seed}{'_' + settings if settings else ''}.npz"
    if not path.exists():
        sim = load(h5_path)  # one at a time: a 128^3 simulation is ~150 MB in memory
        if sim.seed != seed:
            raise ValueError(f"{h5_path} has seed {sim.seed}, expected {seed} from simulation_seeds")
        box, n_side = sim.box_size, sim.n_side
        k, pk, n_modes = power_spectrum(sim.initial_density.astype(np.float64), box)
        kf, pkf, _ = power_spectrum(sim.final_density(n_side), box)
        save_npz_atomic(path, k=k, pk=pk, n_modes=n_modes, k_final=kf, pk_final=pkf,
                        halo_mass=sim.halos.mass, n_members=sim.halos.n_members, r200=sim.halos.r200,
                        particle_mass=sim.particle_mass)
        if verbose:
            print(f"{h5_path.name}: seed {seed}, {len(sim.halos)} halos", flush=True)
    with np.load(path) as f:
        return {key: f[key] for key in f.files}


def _watson13_dndlnm(masses) -> np.ndarray:
    """colossus' Watson et al. (2013) FoF ``dn/dlnM`` at z = 0 in WMAP5, (h/Mpc)^3."""
    from colossus.lss import mass_function

    from tfhalo.sim.cosmology import WMAP5

    WMAP5.to_colossus()  # colossus' current cosmology
    return mass_function.massFunction(np.asarray(masses, np.float64), 0.0, mdef="fof", model="watson13",
                                      q_out="dndlnM")


def _expected_count(log10_low: float, log10_high: float, volume: float, n_points: int = 33) -> float:
    """Watson13 halo count between two masses: ``V * int dn/dlnM dlnM`` (the function is steep)."""
    m = np.logspace(log10_low, log10_high, n_points)
    return float(volume * np.trapezoid(_watson13_dndlnm(m), np.log(m)))


def mass_function_comparison(masses, particle_mass: float, volume: float, bins_per_dex: int = 5,
                             min_particles: int = MIN_PARTICLES) -> dict:
    """Halo counts against the Watson et al. (2013) FoF fit in log-mass bins.

    Bins of ``1 / bins_per_dex`` dex start at ``min_particles`` particle masses
    and reach past the heaviest halo. Each bin's expected count is the fit's
    ``dn/dlnM`` integrated over the bin (33-point trapezoid in ``ln M``) times
    ``volume``.

    Args:
        masses: ``(H,)`` FoF masses, Msun/h (at least one halo; all finite and positive).
        particle_mass: Msun/h.
        volume: total comoving volume of the simulations, (Mpc/h)^3.
        bins_per_dex: bins per decade of mass.
        min_particles: lower edge of the first bin, in particles.

    Returns:
        dict of lists: ``log10_mass_edges``, ``mass_centre``, ``counts``,
        ``expected_watson13``, ``ratio`` (counts / expected) and its Poisson error
        ``ratio_poisson_error``, ``dndlnm`` and ``dndlnm_watson13_bin_mean``
        ((h/Mpc)^3), ``min_particles_lower_edge``.

    Raises:
        ValueError: naming the argument: no halos, non-finite or non-positive values.

    Example:
        >>> hmf = mass_function_comparison([3e12, 5e12, 2e13], particle_mass=1e11, volume=50.0**3)
        >>> sum(hmf["counts"])
        3
    """
    from tfhalo.validation import check_finite_array, check_float, check_float_array, check_int

    masses = check_finite_array("masses", check_float_array("masses", masses)).ravel()
    if masses.size == 0 or np.any(masses <= 0):
        raise ValueError(f"masses must hold at least one positive halo mass. Received: {masses.size} masses, "
                         f"smallest {masses.min() if masses.size else None}")
    particle_mass = check_float("particle_mass", particle_mass, positive=True)
    volume = check_float("volume", volume, positive=True)
    bins_per_dex = check_int("bins_per_dex", bins_per_dex, minimum=1)
    min_particles = check_int("min_particles", min_particles, minimum=1)
    lo = np.log10(min_particles * particle_mass)
    hi = np.log10(max(masses.max(), 10**lo) * 1.0001)
    n_bins = max(int(np.ceil((hi - lo) * bins_per_dex)), 1)
    edges = lo + np.arange(n_bins + 1) / bins_per_dex
    counts, _ = np.histogram(np.log10(masses), bins=edges)
    expected = np.array([_expected_count(edges[i], edges[i + 1], volume) for i in range(n_bins)])
    dlnm = np.log(10) / bins_per_dex
    return {
        "log10_mass_edges": edges.tolist(),
        "mass_centre": (10 ** (0.5 * (edges[1:] + edges[:-1]))).tolist(),
        "counts": counts.tolist(),
        "expected_watson13": expected.tolist(),
        "ratio": (counts / expected).tolist(),
        "ratio_poisson_error": (np.sqrt(counts) / expected).tolist(),
        "dndlnm": (counts / volume / dlnm).tolist(),
        "dndlnm_watson13_bin_mean": (expected / volume / dlnm).tolist(),
        "min_particles_lower_edge": (10 ** edges[:-1] / particle_mass).tolist(),
    }


def _summary(config: Config, suite_dir: Path, seeds, stats) -> dict:
    """The validation's numbers from the simulations' statistics."""
    from tfhalo.sim.cosmology import WMAP5
    from tfhalo.studies.common import machine_info

    cc = WMAP5.to_colossus()
    k = stats[0]["k"]
    pk_mean = np.mean([s["pk"] for s in stats], axis=0)
    theory = cc.matterPowerSpectrum(k, 0.0) * cc.growthFactor(Z_INITIAL) ** 2
    ratio_pk = pk_mean / theory
    k_nyquist = np.pi * config.n_side / config.box_size
    half = k < 0.5 * k_nyquist
    n_modes = stats[0]["n_modes"] * len(stats)
    pk_err = ratio_pk * np.sqrt(2.0 / n_modes)  # Gaussian field: var(P) = 2 P^2 / modes

    particle_mass = float(stats[0]["particle_mass"])
    masses = np.concatenate([s["halo_mass"] for s in stats])
    if masses.size == 0:
        raise ValueError(f"the suite in {suite_dir} has no FoF halos; validate a larger box or more particles. "
                         f"Received: n_side={config.n_side}, box_size={config.box_size}")
    volume = config.n_sims * config.box_size**3
    hmf = mass_function_comparison(masses, particle_mass, volume)
    above = 10 ** np.array(hmf["log10_mass_edges"][:-1]) >= TARGET_PARTICLES * particle_mass * 0.999
    big = masses >= TARGET_PARTICLES * particle_mass
    n_above = int(np.sum(big))
    exp_above = _expected_count(np.log10(TARGET_PARTICLES * particle_mass), np.log10(masses.max() * 1.5 + 1),
                                volume, n_points=200)

    # r200 of FoF halos: M200 / M_FoF (1 where r200 fell back to the FoF mass)
    r200 = np.concatenate([s["r200"] for s in stats])
    m200_ratio = 4.0 / 3.0 * np.pi * 200.0 * WMAP5.rho_mean * r200**3 / masses
    fallback = np.isclose(m200_ratio, 1.0, rtol=1e-9)
    return {
        "study": "validate_simulations",
        "config": {**config.to_dict(), "suite": str(suite_dir), "seeds": list(seeds),
                   "cosmology": WMAP5.to_dict(), "particle_mass": particle_mass},
        "machine": machine_info(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "initial_power": {
            "z": Z_INITIAL, "k": k.tolist(), "k_nyquist": k_nyquist, "pk_measured_mean": pk_mean.tolist(),
            "pk_colossus": theory.tolist(), "ratio": ratio_pk.tolist(), "ratio_error": pk_err.tolist(),
            "mode_weighted_mean_ratio_below_half_nyquist": float(np.average(ratio_pk[half], weights=n_modes[half])),
        },
        "r200": {
            "median_m200_over_mfof_all": float(np.median(m200_ratio)),
            "median_m200_over_mfof_above_200_particles": float(np.median(m200_ratio[big])) if big.any() else None,
            "fraction_fof_mass_fallback_all": float(fallback.mean()),
            "fraction_fof_mass_fallback_above_200_particles": float(fallback[big].mean()) if big.any() else None,
        },
        "final_power": {"k": stats[0]["k_final"].tolist(),
                        "pk_measured_mean": np.mean([s["pk_final"] for s in stats], axis=0).tolist()},
        "mass_function": hmf,
        "above_200_particles": {
            "n_halos": n_above, "expected_watson13": exp_above, "ratio": n_above / exp_above,
            "ratio_poisson_error": float(np.sqrt(n_above) / exp_above),
            "bin_ratios": [r for r, a in zip(hmf["ratio"], above) if a],
            "bin_lower_edge_particles": [m for m, a in zip(hmf["min_particles_lower_edge"], above) if a],
            "max_abs_bin_deviation_with_10_or_more_halos": float(max(
                [abs(r - 1) for r, c, a in zip(hmf["ratio"], hmf["counts"], above) if a and c >= 10], default=np.nan)),
            "target": "within 20%",
        },
    }


def _report_lines(summary: dict) -> list:
    ip, hmf, above, r2 = (summary["initial_power"], summary["mass_function"], summary["above_200_particles"],
                          summary["r200"])
    lines = [f"initial P(k)/colossus below k_Nyq/2: {ip['mode_weighted_mean_ratio_below_half_nyquist']:.4f}",
             f"FoF halos >= {TARGET_PARTICLES} particles: {above['n_halos']} vs Watson13 "
             f"{above['expected_watson13']:.1f} (ratio {above['ratio']:.3f} +- {above['ratio_poisson_error']:.3f})"]
    for lo_p, r, e, c in zip(hmf["min_particles_lower_edge"], hmf["ratio"], hmf["ratio_poisson_error"],
                             hmf["counts"]):
        lines.append(f"  M >= {lo_p:8.0f} particles: N = {c:5d}, N/Watson13 = {r:.3f} +- {e:.3f}")
    big = r2["median_m200_over_mfof_above_200_particles"]
    lines.append(f"median M200/M_FoF: {r2['median_m200_over_mfof_all']:.3f} (all), "
                 f"{np.nan if big is None else big:.3f} (>= {TARGET_PARTICLES} particles); r200 from the FoF mass "
                 f"(unresolved profile): {100 * r2['fraction_fof_mass_fallback_all']:.1f}% of halos")
    return lines


def run(config: Config, suite, out, progress: bool = True, verbose: bool = False) -> dict:
    """Generate (or resume) the suite, compare it with colossus, write the JSON summary and the figure.

    Args:
        config: a :class:`Config`.
        suite: suite directory, generated (or finished) there by
            :func:`tfhalo.sim.suite.generate_suite`, which refuses a suite of other
            settings or another seed: what is validated is what the config describes.
        out: study directory: cached statistics go to ``out/stats``, the results to
            ``out/validate_simulations.{json,png}``.
        progress: progress bars and the summary lines on stdout.
        verbose: also one line per simulation measured.

    Returns:
        The summary dict (also ``out/validate_simulations.json``).

    Raises:
        ValueError: a config of another type, or a ``suite`` or ``out`` that is empty or an
            existing file (before any work); a suite of other settings or seeds; a suite
            without FoF halos.
    """
    from tfhalo.atomic import write_json_atomic
    from tfhalo.sim.suite import generate_suite, simulation_seeds
    from tfhalo.studies.common import StudyInputError, check_run_paths, fingerprint

    if not isinstance(config, Config):
        raise ValueError(f"config must be a validate_simulations.Config. Received: config={type(config).__name__}")
    suite, out = check_run_paths(suite, out)
    params = config.sim_params()
    try:
        paths = generate_suite(suite, params, n_sims=config.n_sims, seed=config.seed, progress=progress)
    except ValueError as err:  # a suite of other settings or seed there: a usage error (exit 2 from the CLI)
        raise StudyInputError(str(err)) from None
    seeds = simulation_seeds(config.seed, config.n_sims)
    out.mkdir(parents=True, exist_ok=True)
    tag = fingerprint(params.to_dict())[:12]
    stats = [simulation_statistics(p, s, out, settings=tag, verbose=verbose) for p, s in zip(paths, seeds)]
    summary = _summary(config, suite, seeds, stats)
    write_json_atomic(out / "validate_simulations.json", summary)
    plot(summary, out / "validate_simulations.png")
    if progress:
        for line in _report_lines(summary):
            print(line, flush=True)
        print(f"wrote {out / 'validate_simulations.png'} and {out / 'validate_simulations.json'}", flush=True)
    return summary


def plot(summary: dict, path, k_nyquist: Optional[float] = None) -> None:
    """The figure of a summary: P(k) and the mass function against colossus, with their ratios (PNG, atomic)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    from tfhalo.evaluation.plots import save_figure

    ip, hmf, cfg = summary["initial_power"], summary["mass_function"], summary["config"]
    k_nyquist = ip["k_nyquist"] if k_nyquist is None else k_nyquist
    fig, ax = plt.subplots(2, 2, figsize=(11, 7), sharex="col", gridspec_kw={"height_ratios": [3, 1.3]})
    k = np.array(ip["k"])
    ax[0, 0].loglog(k, ip["pk_measured_mean"], "o", ms=3, label=f"measured, mean of {cfg['n_sims']} ICs (z=99)")
    ax[0, 0].loglog(k, ip["pk_colossus"], "-", label="colossus EH98 x D(z=99)^2")
    ax[0, 0].axvline(0.5 * k_nyquist, color="grey", ls=":", label="k_Nyq / 2")
    ax[0, 0].set_ylabel("P(k) [(Mpc/h)^3]")
    ax[0, 0].legend(fontsize=8)
    ax[0, 0].set_title(f"{cfg['n_side']}^3 particles, {cfg['box_size']:g} Mpc/h, WMAP5")
    ax[1, 0].errorbar(k, ip["ratio"], yerr=ip["ratio_error"], fmt="o", ms=3)
    ax[1, 0].axhline(1, color="k", lw=0.8)
    ax[1, 0].axhspan(0.95, 1.05, color="grey", alpha=0.2)
    ax[1, 0].axvline(0.5 * k_nyquist, color="grey", ls=":")
    ax[1, 0].set_xscale("log")
    ax[1, 0].set_xlabel("k [h/Mpc]")
    ax[1, 0].set_ylabel("measured / colossus")

    m = np.array(hmf["mass_centre"])
    c = np.array(hmf["counts"], dtype=float)
    dn, dn_th = np.array(hmf["dndlnm"]), np.array(hmf["dndlnm_watson13_bin_mean"])
    err = np.where(c > 0, dn / np.sqrt(np.maximum(c, 1)), 0)
    ax[0, 1].errorbar(m, dn, yerr=err, fmt="o", ms=3, label="FoF b=0.2, this PM")
    ax[0, 1].loglog(m, dn_th, "-", label="Watson+13 FoF (colossus)")
    m_target = TARGET_PARTICLES * cfg["particle_mass"]
    ax[0, 1].axvline(m_target, color="grey", ls=":", label=f"{TARGET_PARTICLES} particles")
    ax[0, 1].set_ylabel("dn/dlnM [(h/Mpc)^3]")
    ax[0, 1].legend(fontsize=8)
    ax[0, 1].set_title("z = 0 halo mass function")
    ax[1, 1].errorbar(m, hmf["ratio"], yerr=hmf["ratio_poisson_error"], fmt="o", ms=3)
    ax[1, 1].axhline(1, color="k", lw=0.8)
    ax[1, 1].axhspan(0.8, 1.2, color="grey", alpha=0.2)
    ax[1, 1].axvline(m_target, color="grey", ls=":")
    ax[1, 1].set_xscale("log")
    ax[1, 1].set_ylim(0, 2)
    ax[1, 1].set_xlabel("M_FoF [Msun/h]")
    ax[1, 1].set_ylabel("N / Watson13")
    for a in ax.ravel():
        a.xaxis.set_minor_formatter(NullFormatter())
    fig.tight_layout()
    save_figure(fig, path, dpi=120)
