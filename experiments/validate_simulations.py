"""Validate the simulation engine: initial P(k) and FoF mass function vs colossus.

Generates a suite exactly as ``tfhalo simulate`` does
(:func:`tfhalo.sim.suite.generate_suite`, per-simulation seeds
``simulation_seeds(--seed, --n-sims)``; default 4 simulations of 128^3
particles in 50 Mpc/h, WMAP5) into ``--out/suite`` and loads it back, so what
is validated is what the command writes. It compares

* the measured power spectrum of each initial density field (z = 99) with
  colossus' linear Eisenstein-Hu P(k) scaled by the growth factor;
* the z = 0 FoF (b = 0.2) halo mass function of all simulations together with
  colossus' FoF fit of Watson et al. (2013), "The halo mass function through
  the cosmic ages", MNRAS 433, 1230, arXiv:1212.0095,
  ``mass_function.massFunction(M, 0, mdef='fof', model='watson13', q_out='dndlnM')``,
  integrated over each mass bin, with Poisson errors. Target: within 20%
  for halos above 200 particles.

Resumable: the suite is (generate_suite is resumable and atomic), and each
simulation's statistics are cached in ``--out/stats/`` (temporary name, then
rename). Writes ``validate_simulations.png`` and ``validate_simulations.json``
into ``--out``.

Usage:
    python experiments/validate_simulations.py [--n-sims 4 --n-side 128 --box 50 --seed 0] [--out DIR]
    python experiments/validate_simulations.py --quick     # seconds: 2 sims of 32^3
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from tfhalo.atomic import atomic_path, save_npz_atomic, write_json_atomic
from tfhalo.sim.cosmology import WMAP5
from tfhalo.sim.loader import load
from tfhalo.sim.mesh import power_spectrum
from tfhalo.sim.suite import SimulationPreset, generate_suite, read_manifest, simulation_seeds
from tfhalo.validation import check_seed, path_argument

MIN_PARTICLES = 20
TARGET_PARTICLES = 200


def simulation_statistics(h5_path: Path, seed: int, out: Path, verbose: bool = False) -> dict:
    """Statistics of one suite simulation (cached per file name and seed)."""
    path = out / "stats" / f"{h5_path.stem}_seed{seed}.npz"
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


def mass_function_comparison(masses, particle_mass, volume, bins_per_dex=5):
    """Observed vs Watson13 FoF halo counts in log-mass bins."""
    from colossus.lss import mass_function

    WMAP5.to_colossus()  # make the WMAP5 object colossus' current cosmology
    lo = np.log10(MIN_PARTICLES * particle_mass)
    hi = np.log10(max(masses.max(), 10 ** lo) * 1.0001)
    n_bins = max(int(np.ceil((hi - lo) * bins_per_dex)), 1)
    edges = lo + np.arange(n_bins + 1) / bins_per_dex
    counts, _ = np.histogram(np.log10(masses), bins=edges)
    expected = np.empty(n_bins)
    for i in range(n_bins):
        # integrate dn/dlnM over the bin (the mass function is steep)
        m = np.logspace(edges[i], edges[i + 1], 33)
        dndlnm = mass_function.massFunction(m, 0.0, mdef="fof", model="watson13", q_out="dndlnM")
        expected[i] = volume * np.trapezoid(dndlnm, np.log(m))
    dlnm = np.log(10) / bins_per_dex
    centres = 10 ** (0.5 * (edges[1:] + edges[:-1]))
    return {
        "log10_mass_edges": edges.tolist(),
        "mass_centre": centres.tolist(),
        "counts": counts.tolist(),
        "expected_watson13": expected.tolist(),
        "ratio": (counts / expected).tolist(),
        "ratio_poisson_error": (np.sqrt(counts) / expected).tolist(),
        "dndlnm": (counts / volume / dlnm).tolist(),
        "dndlnm_watson13_bin_mean": (expected / volume / dlnm).tolist(),
        "min_particles_lower_edge": (10 ** edges[:-1] / particle_mass).tolist(),
    }


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n-sims", type=int, default=4)
    p.add_argument("--n-side", type=int, default=128)
    p.add_argument("--box", type=float, default=50.0, help="box side in Mpc/h")
    p.add_argument("--n-steps", type=int, default=10)
    p.add_argument("--mesh-factor", type=int, default=2)
    p.add_argument("--seed", type=int, default=0, help="master seed (one independent seed per simulation)")
    p.add_argument("--out", type=path_argument, default=Path("runs/validate_simulations"))
    p.add_argument("--quick", action="store_true", help="tiny run: 2 simulations of 32^3 in 50 Mpc/h")
    p.add_argument("--verbose", action="store_true", help="print each simulation's halo count")
    args = p.parse_args(argv)
    if args.quick:
        args.n_sims, args.n_side = 2, 32
    for name in ("n_sims", "n_side", "n_steps", "mesh_factor"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be positive. Received: {getattr(args, name)}")
    if not args.box > 0:
        p.error(f"--box must be positive. Received: {args.box}")
    try:
        check_seed("--seed", args.seed, allow_none=False)
        # Exactly what `tfhalo simulate --seed S` writes (same per-simulation seeds), resumable.
        preset = SimulationPreset(n_side=args.n_side, box_size=args.box, n_steps=args.n_steps,
                                  mesh_factor=args.mesh_factor, cosmology=WMAP5)
    except ValueError as err:  # argparse-style message and exit code 2, before anything is written
        p.error(str(err))
    args.out.mkdir(parents=True, exist_ok=True)
    suite_dir = args.out / "suite"
    paths = generate_suite(suite_dir, preset, n_sims=args.n_sims, seed=args.seed, progress=True)
    seeds = simulation_seeds(args.seed, args.n_sims)
    manifest_seeds = [e["seed"] for e in read_manifest(suite_dir)["simulations"][: args.n_sims]]
    if manifest_seeds != seeds:
        raise RuntimeError(f"{suite_dir} manifest seeds {manifest_seeds} differ from simulation_seeds {seeds}")
    stats = [simulation_statistics(p, s, args.out, args.verbose) for p, s in zip(paths, seeds)]

    # --- initial power spectrum vs colossus, z = 99
    z_init = 99.0
    cc = WMAP5.to_colossus()
    k = stats[0]["k"]
    pk_mean = np.mean([s["pk"] for s in stats], axis=0)
    theory = cc.matterPowerSpectrum(k, 0.0) * cc.growthFactor(z_init) ** 2
    ratio_pk = pk_mean / theory
    k_nyq = np.pi * args.n_side / args.box
    half = k < 0.5 * k_nyq
    n_modes = stats[0]["n_modes"] * len(stats)
    pk_err = ratio_pk * np.sqrt(2.0 / n_modes)  # Gaussian field: var(P) = 2 P^2 / modes
    mean_ratio_half = float(np.average(ratio_pk[half], weights=n_modes[half]))

    # --- mass function
    particle_mass = float(stats[0]["particle_mass"])
    masses = np.concatenate([s["halo_mass"] for s in stats])
    volume = args.n_sims * args.box**3
    hmf = mass_function_comparison(masses, particle_mass, volume)
    above = 10 ** np.array(hmf["log10_mass_edges"][:-1]) >= TARGET_PARTICLES * particle_mass * 0.999
    n_above = int(np.sum(masses >= TARGET_PARTICLES * particle_mass))
    from colossus.lss import mass_function

    WMAP5.to_colossus()
    m_grid = np.logspace(np.log10(TARGET_PARTICLES * particle_mass), np.log10(masses.max() * 1.5 + 1), 200)
    exp_above = volume * np.trapezoid(
        mass_function.massFunction(m_grid, 0.0, mdef="fof", model="watson13", q_out="dndlnM"), np.log(m_grid))

    # r200 of FoF halos: M200 / M_FoF (1 where r200 fell back to the FoF mass)
    r200 = np.concatenate([s["r200"] for s in stats])
    m200 = 4.0 / 3.0 * np.pi * 200.0 * WMAP5.rho_mean * r200**3
    big = masses >= TARGET_PARTICLES * particle_mass
    m200_ratio = m200 / masses
    fallback = np.isclose(m200_ratio, 1.0, rtol=1e-9)

    summary = {
        "config": {"suite": str(suite_dir), "n_sims": args.n_sims, "n_side": args.n_side, "box_size": args.box, "n_steps": args.n_steps,
                   "mesh_factor": args.mesh_factor, "master_seed": args.seed, "seeds": seeds,
                   "cosmology": WMAP5.to_dict(), "particle_mass": particle_mass},
        "initial_power": {
            "z": z_init, "k": k.tolist(), "pk_measured_mean": pk_mean.tolist(), "pk_colossus": theory.tolist(),
            "ratio": ratio_pk.tolist(), "ratio_error": pk_err.tolist(),
            "mode_weighted_mean_ratio_below_half_nyquist": mean_ratio_half,
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
            "n_halos": n_above, "expected_watson13": float(exp_above), "ratio": float(n_above / exp_above),
            "ratio_poisson_error": float(np.sqrt(n_above) / exp_above),
            "bin_ratios": [r for r, a in zip(hmf["ratio"], above) if a],
            "bin_lower_edge_particles": [m for m, a in zip(hmf["min_particles_lower_edge"], above) if a],
            "max_abs_bin_deviation_with_10_or_more_halos": float(max(
                [abs(r - 1) for r, c, a in zip(hmf["ratio"], hmf["counts"], above) if a and c >= 10], default=np.nan)),
            "target": "within 20%",
        },
    }
    write_json_atomic(args.out / "validate_simulations.json", summary)
    plot(summary, args.out / "validate_simulations.png", k_nyq)
    print(f"initial P(k)/colossus below k_Nyq/2: {mean_ratio_half:.4f}")
    print(f"FoF halos >= {TARGET_PARTICLES} particles: {n_above} vs Watson13 {exp_above:.1f} "
          f"(ratio {n_above / exp_above:.3f} +- {np.sqrt(n_above) / exp_above:.3f})")
    for lo_p, r, e, c in zip(hmf["min_particles_lower_edge"], hmf["ratio"], hmf["ratio_poisson_error"], hmf["counts"]):
        print(f"  M >= {lo_p:8.0f} particles: N = {c:5d}, N/Watson13 = {r:.3f} +- {e:.3f}")
    print(f"median M200/M_FoF: {summary['r200']['median_m200_over_mfof_all']:.3f} (all), "
          f"{np.median(m200_ratio[big]) if big.any() else np.nan:.3f} (>= {TARGET_PARTICLES} particles); "
          f"r200 from the FoF mass (unresolved profile): {100 * fallback.mean():.1f}% of halos")
    print(f"wrote {args.out / 'validate_simulations.png'} and {args.out / 'validate_simulations.json'}")
    return 0


def plot(summary, path: Path, k_nyq: float):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ip, hmf, cfg = summary["initial_power"], summary["mass_function"], summary["config"]
    fig, ax = plt.subplots(2, 2, figsize=(11, 7), sharex="col", gridspec_kw={"height_ratios": [3, 1.3]})
    k = np.array(ip["k"])
    ax[0, 0].loglog(k, ip["pk_measured_mean"], "o", ms=3, label=f"measured, mean of {cfg['n_sims']} ICs (z=99)")
    ax[0, 0].loglog(k, ip["pk_colossus"], "-", label="colossus EH98 x D(z=99)^2")
    ax[0, 0].axvline(0.5 * k_nyq, color="grey", ls=":", label="k_Nyq / 2")
    ax[0, 0].set_ylabel("P(k) [(Mpc/h)^3]")
    ax[0, 0].legend(fontsize=8)
    ax[0, 0].set_title(f"{cfg['n_side']}^3 particles, {cfg['box_size']:g} Mpc/h, WMAP5")
    ax[1, 0].errorbar(k, ip["ratio"], yerr=ip["ratio_error"], fmt="o", ms=3)
    ax[1, 0].axhline(1, color="k", lw=0.8)
    ax[1, 0].axhspan(0.95, 1.05, color="grey", alpha=0.2)
    ax[1, 0].axvline(0.5 * k_nyq, color="grey", ls=":")
    ax[1, 0].set_xscale("log")
    ax[1, 0].set_xlabel("k [h/Mpc]")
    ax[1, 0].set_ylabel("measured / colossus")

    m = np.array(hmf["mass_centre"])
    c = np.array(hmf["counts"], dtype=float)
    dn, dn_th = np.array(hmf["dndlnm"]), np.array(hmf["dndlnm_watson13_bin_mean"])
    err = np.where(c > 0, dn / np.sqrt(np.maximum(c, 1)), 0)
    ax[0, 1].errorbar(m, dn, yerr=err, fmt="o", ms=3, label="FoF b=0.2, this PM")
    ax[0, 1].loglog(m, dn_th, "-", label="Watson+13 FoF (colossus)")
    m200 = TARGET_PARTICLES * cfg["particle_mass"]
    ax[0, 1].axvline(m200, color="grey", ls=":", label=f"{TARGET_PARTICLES} particles")
    ax[0, 1].set_ylabel("dn/dlnM [(h/Mpc)^3]")
    ax[0, 1].legend(fontsize=8)
    ax[0, 1].set_title("z = 0 halo mass function")
    ax[1, 1].errorbar(m, hmf["ratio"], yerr=hmf["ratio_poisson_error"], fmt="o", ms=3)
    ax[1, 1].axhline(1, color="k", lw=0.8)
    ax[1, 1].axhspan(0.8, 1.2, color="grey", alpha=0.2)
    ax[1, 1].axvline(m200, color="grey", ls=":")
    ax[1, 1].set_xscale("log")
    ax[1, 1].set_ylim(0, 2)
    ax[1, 1].set_xlabel("M_FoF [Msun/h]")
    ax[1, 1].set_ylabel("N / Watson13")
    from matplotlib.ticker import NullFormatter

    for a in ax.ravel():
        a.xaxis.set_minor_formatter(NullFormatter())
    fig.tight_layout()
    try:
        with atomic_path(path, suffix=".tmp.png") as tmp:  # matplotlib picks the format from the extension
            fig.savefig(tmp, dpi=120)
    finally:
        plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
