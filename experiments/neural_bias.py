"""The neural bias model (Charnock et al. 2020) against the Neyrinck baseline.

Fits n(M | density environment) to the halo catalogues of a simulation suite,
samples its parameters (17 for the paper's two-Gaussian head) with TFP HMC
(4 chains), checks convergence and scores both models on a held-out simulation.

    python experiments/neural_bias.py --preset quick --suite runs/demo/suite --out runs/demo/neural_bias

Quick preset choices (40 Mpc/h box, 64^3 particles, m_p ~ 1.9e10 Msun/h):
  * the paper's model: one l=0 3^3 kernel and a two-Gaussian head, 17 parameters
    (--components 1: a one-Gaussian head, 11 parameters).
  * grid 10^3: 4 Mpc/h voxels, the paper's 3.9 Mpc/h (64^3 over 250 Mpc/h), so
    the 3^3 kernel sees the same ~12 Mpc/h patch; ~0.25 halos per voxel.
  * threshold 50 particles (~9.5e11 Msun/h): FoF masses are noisy below ~50
    particles; this keeps ~250 halos per simulation.
  * train on all simulations but the last, score on the last (held out); works with
    the 6-simulation suite of the deep-halo demo (5 training) or a 4-simulation one.
  * mixture means ordered by softplus increments (NeuralBiasModel default), HMC with
    windowed dense mass-matrix adaptation seeded by the MAP Hessian, XLA-compiled,
    in the local-linear/tail coordinates of tfhalo.bias.reparam (--no-reparametrize
    samples the model's own parameters; replica exchange: --temperatures 4).
Outputs: results.json, report.md, fig2_mass_function.png, fig3_traces.png,
fig4_slices.png, plus resumable caches (map.npz, chains.npz).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tfhalo.atomic import write_json_atomic, write_text_atomic  # noqa: E402
from tfhalo.bias import NeuralBiasLikelihood, bias_data_from_simulation, build_model  # noqa: E402
from tfhalo.bias.diagnostics import split_rhat, summarize_chains  # noqa: E402
from tfhalo.bias.fit import fit_map, hessian_of  # noqa: E402
from tfhalo.bias.flow import ComposedReparametrization, FlowReparametrization  # noqa: E402
from tfhalo.bias.neyrinck import NeyrinckBias  # noqa: E402
from tfhalo.bias.reparam import LocalLinearReparametrization  # noqa: E402
from tfhalo.bias.sampling import preconditioner_from_hessian, preconditioner_from_samples, sample_posterior  # noqa: E402
from tfhalo.evaluation.plots import save_figure  # noqa: E402


@dataclasses.dataclass
class Preset:
    n_grid: int
    threshold_particles: float
    n_sims: int
    sim_preset: str
    map_steps: int
    map_starts: int
    n_chains: int
    n_burnin: int
    n_samples: int
    num_leapfrog_steps: int
    kernel: str = "hmc"
    mass_matrix: str = "hessian"
    jit_compile: bool = True
    reparametrize: bool = False
    n_temperatures: int = 1
    max_temperature: float = 4.0
    target_accept: float = 0.75
    n_components: int = 2
    # M_th in Msun/h; when set it overrides threshold_particles (the paper's cut is a mass).
    threshold_mass: float | None = None
    flow_steps: int = 0
    pilot_samples: int = 200  # pilot draws per chain whose Gaussian starts the flow
    flow_burnin: int = 200  # step-size warm-up on the flow's base space
    flow_leapfrog_steps: int = 12


# Draws per ELBO step of the flow fit.
FLOW_BATCH = 16


# Trajectories of 30 leapfrog steps: longer trajectories gave ~4x the ESS per
# gradient of 10 steps on the quick posterior (model's own parameters: L=10,
# 1000+1000 -> R-hat 1.29, min ESS 13; L=30, 300+300 -> 1.075, 47).  The
# reparametrisation straightens the psi-scale and sub-threshold-tail ridges, and
# reads the head's values at the halos' mean environment instead of the mean
# voxel (reading them at the mean voxel had held the adapted step to 0.04-0.09;
# now 0.08-0.17).
#
# The quick preset samples the paper's 17-parameter two-Gaussian model.  On three
# generated catalogues (seeds 0-2, ~1200 training halos each) 4 chains of 500 +
# 2000 draws at target acceptance 0.9 gave max split R-hat 1.0025 / 1.0026 /
# 1.0007 and min ESS 3499 / 1105 / 4194, with 43 / 86 / 23 divergent transitions
# of 8000 (0.75 gave 131 / 118 / 29 and min ESS 2026 / 2196 / 2958; a 1000-step
# warm-up did not reduce them).  The chains agree on one phase (component
# shares ~0.44 / 0.56 in every chain).
PRESETS = {
    "quick": Preset(n_grid=10, threshold_particles=50, n_sims=6, sim_preset="quick", map_steps=1500,
                    map_starts=3, n_chains=4, n_burnin=500, n_samples=2000, num_leapfrog_steps=30,
                    mass_matrix="adaptive", reparametrize=True, target_accept=0.9),
    # The paper's set-up: 64^3 voxels over (250 Mpc/h)^3 (3.9 Mpc/h) and M_th = 2e12
    # Msun/h, on the "charnock2020" simulations (54 particles at M_th); 3 training
    # boxes and 1 held out.  ~0.8M voxels and ~87k halos per gradient (0.3 s on a
    # loaded 2-core machine): about a day of sampling there.
    "paper": Preset(n_grid=64, threshold_particles=50, threshold_mass=2e12, n_sims=4, sim_preset="charnock2020",
                    map_steps=5000, map_starts=4, n_chains=4, n_burnin=3000, n_samples=5000,
                    num_leapfrog_steps=10, mass_matrix="adaptive", reparametrize=True),
}


def _save_npz(path: Path, **arrays):
    from tfhalo.atomic import atomic_path

    # np.savez appends ".npz" to any other name, so the temporary must end in it.
    with atomic_path(path, suffix=".tmp.npz") as tmp:
        np.savez(tmp, **arrays)


def _data_fingerprint(datas) -> str:
    """SHA-256 of the grids and catalogues the study fits, samples and scores."""
    import hashlib

    h = hashlib.sha256()
    for d in datas:
        for arr in (d.one_plus_delta, d.halo_voxel, d.halo_mass):
            h.update(np.ascontiguousarray(arr).tobytes())
        h.update(repr(d.box_size).encode())
    return h.hexdigest()


def _suite_paths(suite: Path, preset: Preset, seed: int, progress: bool = True):
    """The study's simulations: a generated suite is created or EXTENDED to ``preset.n_sims``.

    Extending is exact: simulation ``i``'s seed depends only on the master seed and
    ``i``, so the deep-halo demo's first simulations are reused unchanged and the
    bias study adds the rest.  A directory of a user's own ``.h5`` files (no
    manifest), or a suite of another preset or seed, is used as it is.
    """
    from tfhalo.sim import generate_suite, list_suite
    from tfhalo.sim.suite import MANIFEST_NAME, read_manifest

    if (suite / MANIFEST_NAME).is_file():
        manifest = read_manifest(suite)
        if manifest.get("preset") == preset.sim_preset and manifest.get("master_seed") == seed:
            if manifest["n_sims"] < preset.n_sims:
                print(f"extending simulation suite {suite} to {preset.n_sims} simulations", flush=True)
            return sorted(generate_suite(suite, preset=preset.sim_preset, n_sims=max(preset.n_sims, 2), seed=seed,
                                         progress=progress))
        paths = list_suite(suite)
        print(f"using the {len(paths)} simulations of {suite} as they are (preset "
              f"{manifest.get('preset')!r}, seed {manifest.get('master_seed')})", flush=True)
    elif suite.is_dir() and any(suite.glob("*.h5")):
        paths = sorted(suite.glob("*.h5"))
    else:
        print(f"generating simulation suite in {suite}", flush=True)
        paths = generate_suite(suite, preset=preset.sim_preset, n_sims=max(preset.n_sims, 2), seed=seed,
                                         progress=progress)
    if len(paths) < 2:
        raise ValueError(f"the study needs at least 2 simulations (training, held out). "
                         f"Received: {len(paths)} in {suite}")
    return sorted(paths)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(PRESETS), default="quick")
    parser.add_argument("--suite", type=Path, default=Path("runs/demo/suite"))
    parser.add_argument("--out", type=Path, default=Path("runs/demo/neural_bias"))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--chains", type=int, default=None)
    parser.add_argument("--n-samples", type=int, default=None)
    parser.add_argument("--n-burnin", type=int, default=None)
    parser.add_argument("--n-grid", type=int, default=None)
    parser.add_argument("--n-sims", type=int, default=None,
                        help="simulations in the study (the last is held out); a generated suite is extended")
    parser.add_argument("--components", type=int, default=None,
                        help="Gaussians in the mixture-density head (the paper's model: 2, 17 parameters)")
    parser.add_argument("--map-steps", type=int, default=None, help="Adam steps per MAP start")
    parser.add_argument("--map-starts", type=int, default=None, help="seeded MAP starts (the best is kept)")
    threshold = parser.add_mutually_exclusive_group()
    threshold.add_argument("--threshold-particles", type=float, default=None,
                           help="halo mass threshold in particles of the suite (replaces the preset's threshold)")
    threshold.add_argument("--threshold-mass", type=float, default=None,
                           help="halo mass threshold in Msun/h (replaces the preset's threshold)")
    parser.add_argument("--field", choices=("nbody", "lpt"), default="nbody",
                        help="z=0 density used for the input: N-body particles or 2LPT-evolved ICs")
    parser.add_argument("--sample-field", choices=("nbody", "lpt"), default=None,
                        help="density the chains sample with (default: --field); the paper fits the N-body "
                             "field and samples with the LPT one: --field nbody --sample-field lpt")
    parser.add_argument("--kernel", choices=("hmc", "nuts"), default=None)
    parser.add_argument("--mass-matrix", choices=("identity", "hessian", "adaptive"), default=None)
    parser.add_argument("--leapfrog-steps", type=int, default=None)
    parser.add_argument("--target-accept", type=float, default=None,
                        help="dual-averaging target acceptance (higher: smaller steps, fewer divergences)")
    parser.add_argument("--reparametrize", action=argparse.BooleanOptionalAction, default=None,
                        help="sample in the local-linear/tail coordinates of tfhalo.bias.reparam (same posterior; "
                             "the presets' default)")
    parser.add_argument("--flow-steps", type=int, default=None,
                        help="ELBO steps of a normalising flow fitted to the posterior and used to precondition "
                             "HMC (tfhalo.bias.flow; 0: none; needs the reparametrisation)")
    parser.add_argument("--pilot-samples", type=int, default=None,
                        help="with a flow: draws per chain of the pilot chains whose Gaussian starts the flow")
    parser.add_argument("--flow-burnin", type=int, default=None,
                        help="with a flow: step-size warm-up steps on the flow's base space")
    parser.add_argument("--flow-leapfrog-steps", type=int, default=None,
                        help="with a flow: leapfrog steps per HMC step on the flow's base space")
    parser.add_argument("--temperatures", type=int, default=None,
                        help="replicas per chain for replica exchange while sampling (1: none)")
    parser.add_argument("--max-temperature", type=float, default=None)
    parser.add_argument("--no-xla", action="store_true",
                        help="run MAP and chains eagerly (XLA compiles for ~10-30 s, then is ~3x faster)")
    parser.add_argument("--no-progress", action="store_true")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    preset = dataclasses.replace(
        PRESETS[args.preset],
        **{k: v for k, v in dict(n_chains=args.chains, n_samples=args.n_samples, n_burnin=args.n_burnin,
                                  map_steps=args.map_steps, map_starts=args.map_starts,
                                  n_grid=args.n_grid, n_sims=args.n_sims, n_components=args.components,
                                  threshold_particles=args.threshold_particles,
                                  threshold_mass=args.threshold_mass,
                                  kernel=args.kernel, mass_matrix=args.mass_matrix,
                                  num_leapfrog_steps=args.leapfrog_steps,
                                  reparametrize=args.reparametrize, flow_steps=args.flow_steps,
                                  pilot_samples=args.pilot_samples, flow_burnin=args.flow_burnin,
                                  flow_leapfrog_steps=args.flow_leapfrog_steps,
                                  n_temperatures=args.temperatures,
                                  max_temperature=args.max_temperature, target_accept=args.target_accept,
                                  jit_compile=False if args.no_xla else None).items() if v is not None})
    for name in ("n_chains", "n_samples", "n_grid", "map_starts", "n_temperatures", "n_components",
                 "pilot_samples", "flow_leapfrog_steps"):
        if getattr(preset, name) < 1:
            raise ValueError(f"{name} must be positive. Received: {name}={getattr(preset, name)}")
    if args.threshold_particles is not None:
        preset = dataclasses.replace(preset, threshold_mass=None)
    if preset.threshold_particles <= 0:
        raise ValueError(f"threshold_particles must be positive. Received: threshold_particles="
                         f"{preset.threshold_particles}")
    if preset.threshold_mass is not None and not preset.threshold_mass > 0:
        raise ValueError(f"threshold_mass must be positive (Msun/h). Received: threshold_mass={preset.threshold_mass}")
    if preset.n_sims < 2:
        raise ValueError(f"n_sims must be at least 2 (training and held out). Received: n_sims={preset.n_sims}")
    if preset.flow_steps < 0:
        raise ValueError(f"flow_steps must be >= 0. Received: flow_steps={preset.flow_steps}")
    if preset.flow_burnin < 0:
        raise ValueError(f"flow_burnin must be >= 0. Received: flow_burnin={preset.flow_burnin}")
    if preset.flow_steps:
        n_params = build_model(0.0, n_grid=4, n_components=preset.n_components).count_params()
        if preset.pilot_samples * preset.n_chains < 2 * n_params:
            raise ValueError("the flow starts from the pilot draws' covariance, which needs at least twice as many "
                             f"draws as parameters. Received: pilot_samples={preset.pilot_samples} with "
                             f"{preset.n_chains} chains for {n_params} parameters")
    if preset.flow_steps and not preset.reparametrize:
        raise ValueError("the flow is fitted in the reparametrised coordinates. Received: flow_steps="
                         f"{preset.flow_steps} with reparametrize=False")
    if not 0 < preset.target_accept < 1:
        raise ValueError(f"target_accept must be in (0, 1). Received: target_accept={preset.target_accept}")
    progress = not args.no_progress
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    timings = {}

    from tfhalo.sim import load

    paths = _suite_paths(args.suite, preset, args.seed, progress)
    sims = [load(p) for p in paths]
    threshold = preset.threshold_mass or preset.threshold_particles * sims[0].particle_mass
    train = [bias_data_from_simulation(s, preset.n_grid, threshold, source=args.field) for s in sims[:-1]]
    test = bias_data_from_simulation(sims[-1], preset.n_grid, threshold, source=args.field)
    sample_field = args.sample_field or args.field
    train_sample = train if sample_field == args.field else [
        bias_data_from_simulation(s, preset.n_grid, threshold, source=sample_field) for s in sims[:-1]]
    timings["data_s"] = time.perf_counter() - t_start
    print(f"{len(train)} training simulations ({sum(d.n_halos for d in train)} halos), held-out "
          f"{test.name} ({test.n_halos} halos); M_th = {threshold:.3g} Msun/h "
          f"({threshold / sims[0].particle_mass:.0f} particles), grid {preset.n_grid}^3", flush=True)

    model = build_model(test.log_mass_threshold, n_grid=preset.n_grid, n_components=preset.n_components,
                        dtype="float64")
    like = NeuralBiasLikelihood(model, train)
    like_test = NeuralBiasLikelihood(model, test)
    like_sample = like if train_sample is train else NeuralBiasLikelihood(model, train_sample)
    names = [n.split("/", 1)[-1] for n in like.layout.names()]
    # The caches are keyed on the data's content as well as on the settings: a suite
    # regenerated (or replaced) at the same path must not reuse old chains.
    data_key = _data_fingerprint([*train, test, *([] if train_sample is train else train_sample)])
    map_key = json.dumps(dict(model=model.get_config()["mean_increment"], components=preset.n_components,
                              n_grid=preset.n_grid,
                              threshold=float(threshold), steps=preset.map_steps,
                              starts=preset.map_starts, field=args.field, seed=args.seed,
                              sims=[str(p) for p in paths], data=data_key,
                              mirror=True), sort_keys=True)  # fit_map also tries the reflected MAP
    config_key = json.dumps(dict(dataclasses.asdict(preset), field=args.field, sample_field=sample_field,
                                 seed=args.seed, model=model.get_config()["mean_increment"],
                                 sims=[str(p) for p in paths], data=data_key), sort_keys=True)

    # MAP (cached).
    t0 = time.perf_counter()
    map_path = out / "map.npz"
    if map_path.exists() and str(np.load(map_path)["config"]) == map_key:
        cached = np.load(map_path)
        theta_map, hess = cached["theta"], cached["hessian"]
        map_evals = int(cached["n_evaluations"])
        other_half = json.loads(str(cached["other_half"]))
        print("MAP: reusing", map_path, flush=True)
    else:
        fit = fit_map(like, steps=preset.map_steps, n_starts=preset.map_starts, seed=args.seed, progress=progress,
                      jit_compile=preset.jit_compile)
        theta_map, hess, map_evals = fit.theta, fit.hessian, fit.n_evaluations
        other_half = None if fit.other_half is None else {
            "log_posterior_below_map": fit.log_posterior - fit.other_half["log_posterior"],
            "log_laplace_mass_ratio": fit.other_half["log_laplace_mass_ratio"]}
        _save_npz(map_path, theta=theta_map, hessian=hess, n_evaluations=map_evals, config=map_key,
                  other_half=json.dumps(other_half))
    if other_half is not None:
        print(f"other half-space of the NPE weights: optimum {other_half['log_posterior_below_map']:.2f} nats below "
              f"the MAP, Laplace mass ratio e^{other_half['log_laplace_mass_ratio']:.1f}", flush=True)
    like.layout.set(model, theta_map)
    timings["map_s"] = time.perf_counter() - t0

    # Neyrinck baseline on the same training halos.
    t0 = time.perf_counter()
    neyrinck = NeyrinckBias(seed=args.seed).fit(train)
    timings["neyrinck_s"] = time.perf_counter() - t0

    scores = {
        "neural_train": float(like.log_likelihood(theta_map)),
        "neural_test": float(like_test.log_likelihood(theta_map)),
        "neyrinck_train": neyrinck.log_likelihood(train),
        "neyrinck_test": neyrinck.log_likelihood(test),
    }
    diff = scores["neural_test"] - scores["neyrinck_test"]
    print(f"held-out ln L: neural {scores['neural_test']:.2f}, Neyrinck {scores['neyrinck_test']:.2f}, "
          f"difference {diff:.2f} nats ({diff / test.n_halos:.4f} per halo)", flush=True)

    # Sampling (cached).
    t0 = time.perf_counter()
    chains_path = out / "chains.npz"
    if chains_path.exists() and str(np.load(chains_path)["config"]) == config_key:
        c = np.load(chains_path)
        samples, accepted, divergent = c["samples"], c["is_accepted"], c["divergent"]
        n_grad, sample_seconds, step = int(c["n_grad"]), float(c["seconds"]), float(c["step_size"])
        swaps = c["swap_acceptance"].tolist() if "swap_acceptance" in c else None
        flow_info = json.loads(str(c["flow"])) if "flow" in c else None
        print("chains: reusing", chains_path, flush=True)
    else:
        rng = np.random.default_rng(args.seed + 1)
        # Dispersed starts around the MAP, at most ~1 unit along the flattest
        # Hessian directions (the floored ones would otherwise throw a chain
        # 10 prior-widths away into a region with no halos).
        rep = None
        flow_info = None
        if preset.reparametrize:
            rep = LocalLinearReparametrization(like_sample, theta_map)
            hess_s = hessian_of(rep.wrap(like_sample.log_posterior), rep.inverse(theta_map))
        elif like_sample is like:
            hess_s = hess
        else:  # the chains' posterior (other field): its curvature at the MAP start
            hess_s = hessian_of(like_sample.log_posterior, theta_map)
        chol = preconditioner_from_hessian(hess_s, 1.0)
        centre_s = theta_map if rep is None else rep.inverse(theta_map)
        init = centre_s + 0.5 * rng.normal(size=(preset.n_chains, theta_map.size)) @ chol.T
        if rep is not None:
            init = rep.forward_np(init)
        sampler_kwargs = dict(kernel=preset.kernel, seed=args.seed, progress=progress, jit_compile=preset.jit_compile,
                              target_accept=preset.target_accept)
        final = dict(num_burnin=preset.n_burnin, mass_matrix=preset.mass_matrix, hessian=hess_s, centre=theta_map,
                     hessian_floor=1.0 / like.prior_scale**2, num_leapfrog_steps=preset.num_leapfrog_steps)
        pilot_seconds, pilot_grad = 0.0, 0
        if preset.flow_steps:
            # Pilot chains in the local-linear coordinates find the posterior's
            # bulk, which lies several Laplace widths from the MAP; the flow
            # starts from the Gaussian of their draws and learns the curvature
            # that a constant metric misses (measured on 24 simulations: within
            # one phase it doubles the step size of the pilot Gaussian alone;
            # pilots also reach phases that chains started at the MAP never leave).
            pilot = sample_posterior(like_sample.log_posterior, init, num_results=preset.pilot_samples,
                                     reparametrization=rep, **final, **sampler_kwargs)
            v_pilot = rep.inverse(pilot.samples.reshape(-1, theta_map.size))
            t_flow = time.perf_counter()
            flow = FlowReparametrization(v_pilot.mean(axis=0), preconditioner_from_samples(v_pilot), seed=args.seed)
            flow.fit(rep.wrap(like_sample.log_posterior), steps=preset.flow_steps, batch_size=FLOW_BATCH,
                     seed=args.seed, progress=progress, jit_compile=preset.jit_compile)
            fit_seconds = time.perf_counter() - t_flow
            flow_info = dict(steps=preset.flow_steps, seconds=fit_seconds,
                             pilot_samples=preset.pilot_samples, pilot_seconds=pilot.seconds,
                             pilot_step_size=pilot.step_size,
                             pilot_gradient_evaluations_per_chain=pilot.n_gradient_evaluations,
                             elbo_first_100=float(np.nanmean(np.where(np.isfinite(flow.elbo[:100]), flow.elbo[:100],
                                                                      np.nan))),
                             elbo_last_100=float(np.mean(flow.elbo[-100:])))
            pilot_seconds = pilot.seconds + fit_seconds
            pilot_grad = pilot.n_gradient_evaluations + preset.flow_steps * FLOW_BATCH // preset.n_chains
            rep = ComposedReparametrization(rep, flow)
            # The flow's base space is whitened already; the chains go on from
            # where the pilot ended (in the bulk), re-adapting only the step size.
            init = pilot.samples[-1]
            final = dict(num_burnin=preset.flow_burnin, mass_matrix="identity",
                         centre=rep.forward_np(np.zeros(theta_map.size)),
                         num_leapfrog_steps=preset.flow_leapfrog_steps)
        result = sample_posterior(
            like_sample.log_posterior, init, num_results=preset.n_samples, reparametrization=rep,
            n_temperatures=preset.n_temperatures, max_temperature=preset.max_temperature,
            log_likelihood_fn=like_sample.log_likelihood, log_prior_fn=like_sample.log_prior, **final,
            **sampler_kwargs)
        samples, accepted, divergent = result.samples, result.is_accepted, result.divergent
        # The sampler's cost includes the pilot chains and the flow fit.
        n_grad = result.n_gradient_evaluations + pilot_grad
        sample_seconds, step = result.seconds + pilot_seconds, result.step_size
        swaps = result.swap_acceptance
        _save_npz(chains_path, samples=samples, is_accepted=accepted, divergent=divergent, n_grad=n_grad,
                  seconds=sample_seconds, step_size=step, config=config_key,
                  flow=json.dumps(flow_info),
                  **({"swap_acceptance": np.asarray(swaps)} if swaps is not None else {}))
    timings["sampling_s"] = time.perf_counter() - t0
    summary = summarize_chains(samples, accepted, divergent, names=names)
    print(f"chains: max R-hat {summary['max_rhat']:.4f}, min ESS {summary['min_ess']:.0f}, "
          f"acceptance {summary['acceptance_rate']:.3f}, divergences {summary['n_divergent']}", flush=True)

    # Draw-level diagnostics read the same 200 draws per chain (split R-hat of
    # 40 well-mixed draws scatters by ~0.03).
    picks = np.linspace(0, samples.shape[0] - 1, min(200, samples.shape[0])).astype(int)

    # Where each chain spends its time: the mixture components' shares of the
    # expected halo count (a share near 0: a vanished, prior-bounded component).
    shares = np.array([[like_sample.component_shares(samples[i, c]) for c in range(samples.shape[1])]
                       for i in picks])  # (D, C, K)
    component_shares = {
        "median_per_chain": np.median(shares, axis=0).tolist(),
        "fraction_of_draws_below_1_percent_per_chain": (shares < 0.01).mean(axis=0).tolist(),
        "map": like_sample.component_shares(theta_map).tolist(),
        # Chains in different phases (component arrangements that fit the
        # catalogue about equally well) disagree on the shares.
        "split_rhat": split_rhat(shares).tolist() if len(picks) >= 4 and preset.n_components > 1 else None,
    }

    # The mass function the model predicts (Fig. 2's curves) may converge where
    # the parameters do not: phases that fit equally well predict nearly alike.
    predictive = np.array([[predictive_mass_function(like_test, samples[i, c]) for c in range(samples.shape[1])]
                           for i in picks])  # (D, C, B * M)
    predictive_rhat = split_rhat(predictive) if len(picks) >= 4 else None

    # The Bayesian held-out score: ln p(held out | training) = ln E_posterior[L_test],
    # per chain too (chains in different phases may predict the held-out halos alike).
    post_test = np.array([[float(like_test.log_likelihood(samples[i, c])) for c in range(samples.shape[1])]
                          for i in picks])  # (D, C)
    predictive_score = heldout_log_predictive(post_test)
    flat = samples.reshape(-1, samples.shape[-1])
    draw_idx = np.random.default_rng(args.seed + 2).choice(len(flat), size=min(100, len(flat)), replace=False)

    t0 = time.perf_counter()
    _figures(out, model, like, like_test, test, neyrinck, theta_map, flat[draw_idx], samples, names)
    timings["figures_s"] = time.perf_counter() - t0
    timings["total_s"] = time.perf_counter() - t_start

    results = {
        "preset": args.preset,
        "config": dataclasses.asdict(preset),
        "field": args.field,
        "sample_field": sample_field,
        "mass_threshold": threshold,
        "train_simulations": [d.name for d in train],
        "test_simulation": test.name,
        "n_halos_train": sum(d.n_halos for d in train),
        "n_halos_test": test.n_halos,
        "n_parameters": int(theta_map.size),
        "log_likelihood": scores,
        "heldout_difference_total": diff,
        "heldout_difference_per_halo": diff / test.n_halos,
        "heldout_neural_posterior_mean_lnL": float(post_test.mean()),
        "heldout_log_predictive": predictive_score,
        "theta_map": dict(zip(names, theta_map.tolist())),
        # The local-linear chains sample the MAP's half-space of the NPE's radial
        # weights; the other half's best point and Laplace mass say what that leaves out.
        "other_half_space": other_half,
        "neyrinck": neyrinck.get_params(),
        "diagnostics": summary,
        "component_shares": component_shares,
        "predictive_mass_function": {
            "draws_per_chain": len(picks),
            "ln_mass_above_threshold": list(PREDICTIVE_LN_MASS_ABOVE_THRESHOLD),
            "density_quantiles": list(DENSITY_QUANTILES),
            "posterior_mean_ln_dn_dlnm": predictive.mean(axis=(0, 1)).reshape(len(DENSITY_QUANTILES) - 1, -1).tolist(),
            "split_rhat": None if predictive_rhat is None else
            predictive_rhat.reshape(len(DENSITY_QUANTILES) - 1, -1).tolist(),
            "max_split_rhat": None if predictive_rhat is None else float(predictive_rhat.max()),
        },
        "sampler": {
            "kernel": preset.kernel, "chains": preset.n_chains, "samples": preset.n_samples, "step_size": step,
            # With a flow the final chains run on its (whitened) base space.
            "mass_matrix": "flow" if preset.flow_steps else preset.mass_matrix,
            "burnin": preset.flow_burnin if preset.flow_steps else preset.n_burnin,
            "leapfrog_steps": preset.flow_leapfrog_steps if preset.flow_steps else preset.num_leapfrog_steps,
            "replicas": preset.n_temperatures, "max_temperature": preset.max_temperature,
            "swap_acceptance_adjacent": swaps,
            "flow": flow_info,
            "gradient_evaluations_per_chain": n_grad, "seconds": sample_seconds,
            "ess_per_second_min": summary["min_ess"] / sample_seconds,
            "map_evaluations": map_evals,
        },
        "timings": timings,
        "acceptance": {
            "rhat_below_1.01": summary["max_rhat"] < 1.01,
            "ess_at_least_400": summary["min_ess"] >= 400,
            "neural_beats_neyrinck_heldout": diff > 0,
        },
    }
    write_json_atomic(out / "results.json", results)
    write_text_atomic(out / "report.md", _report(results))
    print(f"wrote {out / 'results.json'} and {out / 'report.md'} in {timings['total_s']:.0f} s", flush=True)
    return results


# Density bins of the figures and the predictive diagnostic: quantiles of the
# held-out voxels' log density (the lower half, then 30%, 15% and the densest 5%).
DENSITY_QUANTILES = (0, 0.5, 0.8, 0.95, 1.0)
# Masses (ln M - ln M_th) at which the predictive diagnostic reads the mass function.
PREDICTIVE_LN_MASS_ABOVE_THRESHOLD = (0.0, 0.5, 1.0, 2.0, 3.0)


def _density_bins(data):
    """``(V,)`` density-bin index (0-3) of each voxel of ``data`` and the bins' ``ln(1 + delta)`` edges."""
    log_rho = np.log(data.one_plus_delta).ravel()
    edges = np.quantile(log_rho, DENSITY_QUANTILES)
    return np.clip(np.digitize(log_rho, edges[1:-1]), 0, len(DENSITY_QUANTILES) - 2), edges


def _dn_dlnm(like_test, theta, ln_m) -> np.ndarray:
    """``(V, M)`` dn/dln M per unit volume in each voxel of the held-out grid."""
    head = like_test.model.head
    params = like_test.per_voxel(theta)["params"].reshape(-1, 3 * head.n_components)
    ln_n = np.asarray(head.log_number_density(params[:, None, :], ln_m[None, :]))
    return np.exp(ln_n + ln_m[None, :])


def predictive_mass_function(like_test, theta) -> np.ndarray:
    """``(B * M,)`` ln of the bin-averaged dn/dln M on the held-out grid (bins x masses, row-major)."""
    ln_m = like_test.data[0].log_mass_threshold + np.asarray(PREDICTIVE_LN_MASS_ABOVE_THRESHOLD)
    bins, _ = _density_bins(like_test.data[0])
    dn = _dn_dlnm(like_test, theta, ln_m)
    return np.log(np.stack([dn[bins == b].mean(axis=0) for b in range(len(DENSITY_QUANTILES) - 1)])).ravel()


def _figures(out, model, like, like_test, test, neyrinck, theta_map, draws, samples, names):
    # Fig 2: n(M | delta) in density bins of the held-out simulation.
    lmt = test.log_mass_threshold
    ln_m = np.linspace(lmt, lmt + 4.5, 60)
    bins, edges = _density_bins(test)

    curves = np.stack([_dn_dlnm(like_test, t, ln_m) for t in draws[:40]])  # (D, V, M)
    best = _dn_dlnm(like_test, theta_map, ln_m)
    fig, axes = plt.subplots(1, 4, figsize=(16, 4), sharey=True)
    hbins = np.linspace(lmt, lmt + 4.5, 10)
    halo_bin = bins[test.halo_voxel]
    for b, ax in enumerate(axes):
        sel = bins == b
        vol = sel.sum() * test.voxel_volume
        counts, _ = np.histogram(test.halo_ln_mass[halo_bin == b], hbins)
        centres = 0.5 * (hbins[1:] + hbins[:-1])
        width = np.diff(hbins)
        y = counts / vol / width
        ax.errorbar(np.exp(centres), np.where(y > 0, y, np.nan), yerr=np.sqrt(counts) / vol / width, fmt="ko",
                    ms=4, label="catalogue (held out)")
        band = curves[:, sel].mean(axis=1)
        lo, hi = np.percentile(band, [16, 84], axis=0)
        ax.fill_between(np.exp(ln_m), lo, hi, color="C0", alpha=0.4, label="neural bias 68%")
        ax.plot(np.exp(ln_m), best[sel].mean(axis=0), "C0-", label="neural bias MAP")
        ney = np.exp(np.log(neyrinck.rate(test.one_plus_delta.ravel()[sel])).mean()) if False else \
            neyrinck.rate(test.one_plus_delta.ravel()[sel]).mean()
        ax.plot(np.exp(ln_m), ney / test.voxel_volume * np.exp(neyrinck.log_mass_pdf(ln_m) + ln_m), "C3--",
                label="Neyrinck")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel(r"$M$ [$M_\odot/h$]")
        ax.set_title(f"ln(1+δ) ∈ [{edges[b]:.2f}, {edges[b + 1]:.2f}]")
    axes[0].set_ylabel(r"$dn/d\ln M$ [$(h^{-1}$Mpc$)^{-3}$]")
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    save_figure(fig, out / "fig2_mass_function.png", dpi=100)

    # Fig 3: traces of every parameter.
    p = samples.shape[-1]
    cols = 4
    rows = int(np.ceil(p / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(16, 2.2 * rows), sharex=True)
    for i, ax in enumerate(axes.ravel()):
        if i >= p:
            ax.axis("off")
            continue
        ax.plot(samples[:, :, i], lw=0.4)
        ax.set_title(names[i], fontsize=8)
    fig.tight_layout()
    save_figure(fig, out / "fig3_traces.png", dpi=90)

    # Fig 4: slices of density, psi and halo mass field.
    fields = like_test.per_voxel(theta_map)
    k = test.n_grid // 2
    panels = [(np.log(test.one_plus_delta)[:, :, k], "ln(1+δ)"), (fields["psi"][:, :, k, 0], "NPE ψ"),
              (fields["expected"].reshape((test.n_grid,) * 3)[:, :, k], "expected halos / voxel"),
              (np.log10(1 + test.halo_mass_field()[:, :, k]), "log10(1 + halo mass)")]
    fig, axes = plt.subplots(1, 4, figsize=(16, 4))
    for ax, (img, title) in zip(axes, panels):
        im = ax.imshow(img.T, origin="lower", cmap="viridis")
        ax.set_title(title)
        fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    save_figure(fig, out / "fig4_slices.png", dpi=100)


def heldout_log_predictive(log_likelihoods) -> dict:
    """The held-out log predictive density from posterior draws.

    Args:
        log_likelihoods: ``(D, C)`` held-out ln L of ``D`` draws from each of ``C`` chains.

    Returns:
        ``{"all_chains": ln mean_{d,c} L, "per_chain": [ln mean_d L for each chain],
        "draws_per_chain": D}``, each mean taken with log-sum-exp so that ln L of
        thousands of nats does not overflow.
    """
    from scipy.special import logsumexp

    x = np.asarray(log_likelihoods, dtype=np.float64)
    if x.ndim != 2 or x.size == 0:
        raise ValueError(f"log_likelihoods must be a non-empty (draws, chains) array. Received shape {x.shape}")
    return {"all_chains": float(logsumexp(x) - np.log(x.size)),
            "per_chain": (logsumexp(x, axis=0) - np.log(x.shape[0])).tolist(),
            "draws_per_chain": int(x.shape[0])}


def _report(r):
    s = r["diagnostics"]
    ll = r["log_likelihood"]
    lines = [
        "# Neural bias model (Charnock et al. 2020) vs Neyrinck et al. (2014)",
        "",
        f"Preset `{r['preset']}`: mixture-density head with {r['config']['n_components']} Gaussian"
        f"{'s' if r['config']['n_components'] > 1 else ''} ({r['n_parameters']} parameters; the paper's model has "
        "2 Gaussians, 17 parameters), input field "
        f"`{r['field']}` (chains sampled with `{r['sample_field']}`), grid {r['config']['n_grid']}^3, "
        f"M_th = {r['mass_threshold']:.3g} Msun/h. Trained on {', '.join(r['train_simulations'])} "
        f"({r['n_halos_train']} halos); held out {r['test_simulation']} ({r['n_halos_test']} halos).",
        "",
        "## Log-likelihood at the maxima (Poisson point process, paper eq. 16)",
        "",
        "| model | params | train ln L | held-out ln L |",
        "|---|---|---|---|",
        f"| neural bias (MAP) | {r['n_parameters']} | {ll['neural_train']:.2f} | {ll['neural_test']:.2f} |",
        f"| Neyrinck x global mass function (ML) | 4 + 5 | {ll['neyrinck_train']:.2f} | {ll['neyrinck_test']:.2f} |",
        "",
        f"Held-out difference (neural - Neyrinck): **{r['heldout_difference_total']:.2f} nats** in total, "
        f"{r['heldout_difference_per_halo']:.4f} per halo (the paper reports ~2000 nats in its "
        "(250 Mpc/h)^3 volume). Posterior-mean held-out ln L of the neural model: "
        f"{r['heldout_neural_posterior_mean_lnL']:.2f}; held-out log predictive density "
        f"ln E_posterior[L_test] = **{r['heldout_log_predictive']['all_chains']:.2f}** "
        f"({r['heldout_log_predictive']['all_chains'] - ll['neyrinck_test']:+.2f} nats over Neyrinck at its "
        "maximum; per chain: " + ", ".join(f"{x:.2f}" for x in r["heldout_log_predictive"]["per_chain"])
        + f"; {r['heldout_log_predictive']['draws_per_chain']} draws per chain).",
        *(["", "The reparametrised chains sample the half-space of the NPE's radial weights that holds the MAP "
            "(psi rising or falling with density). The best point of the other half (fit_map starts an optimiser "
            f"from the reflected MAP) is {r['other_half_space']['log_posterior_below_map']:.2f} nats lower in ln "
            f"posterior; its Laplace mass relative to the MAP's half is "
            f"e^{r['other_half_space']['log_laplace_mass_ratio']:.1f}"
            + (", so the chains leave out a non-negligible part of the posterior: sample it with "
               "--no-reparametrize or read the chains as conditional on the sign." if
               r["other_half_space"]["log_laplace_mass_ratio"] > math.log(0.01) else ".")]
          if r.get("other_half_space") and r["config"]["reparametrize"] else []),
        "",
        "## Sampling",
        "",
        f"{r['sampler']['chains']} chains, {r['sampler']['kernel'].upper()} with mass matrix "
        f"`{r['sampler']['mass_matrix']}`, {r['sampler']['burnin']} warm-up + {r['sampler']['samples']} draws, "
        f"step size {r['sampler']['step_size']:.3f} x {r['sampler']['leapfrog_steps']} leapfrog steps, "
        f"{r['sampler']['gradient_evaluations_per_chain']} "
        f"gradient evaluations per chain in {r['sampler']['seconds']:.1f} s; min ESS/s "
        f"{r['sampler']['ess_per_second_min']:.1f}. Acceptance rate {s['acceptance_rate']:.3f}, "
        f"{s['n_divergent']} divergences ({100 * s['n_divergent'] / (s['n_draws'] * s['n_chains']):.1f}% of the "
        f"kept transitions). Max split R-hat {s['max_rhat']:.4f}, min ESS {s['min_ess']:.0f}: the targets "
        f"(R-hat < {s['rhat_max']}, ESS >= {s['ess_min']:.0f}) are "
        f"{'met' if s['max_rhat'] < s['rhat_max'] and s['min_ess'] >= s['ess_min'] else 'NOT met'}"
        f"{'; divergences mark regions the chains may under-sample' if s['n_divergent'] else ''}.",
        *([f"Chains ran on the base space of a normalising flow (tfhalo.bias.flow) started from the Gaussian "
           f"of {r['sampler']['flow']['pilot_samples']} pilot draws per chain (local-linear coordinates, "
           f"{r['sampler']['flow']['pilot_seconds']:.0f} s, step size {r['sampler']['flow']['pilot_step_size']:.3f}) "
           f"and fitted by {r['sampler']['flow']['steps']} ELBO steps in {r['sampler']['flow']['seconds']:.0f} s "
           f"(ELBO {r['sampler']['flow']['elbo_first_100']:.2f} over the first 100 steps, "
           f"{r['sampler']['flow']['elbo_last_100']:.2f} over the last 100); the cost above includes both."]
          if r["sampler"].get("flow") else []),
        "",
        "Share of the expected halo count per mixture component (MAP: "
        + ", ".join(f"{x:.3f}" for x in r["component_shares"]["map"]) + "); per chain, median over draws: "
        + "; ".join("(" + ", ".join(f"{x:.3f}" for x in c) + ")" for c in r["component_shares"]["median_per_chain"])
        + ". Fraction of draws where a component's share is below 1% (it has vanished and its other "
        "parameters are bounded only by the prior): "
        + "; ".join("(" + ", ".join(f"{x:.2f}" for x in c) + ")"
                    for c in r["component_shares"]["fraction_of_draws_below_1_percent_per_chain"]) + "."
        + (" Split R-hat of the shares: " + ", ".join(f"{x:.3f}" for x in r["component_shares"]["split_rhat"])
           + (" (above 1.01: the chains sit in different phases of the posterior, component arrangements "
              "that fit the catalogue about equally well)." if max(r["component_shares"]["split_rhat"]) > 1.01
              else ".") if r["component_shares"].get("split_rhat") else ""),
        *(["", "Predicted mass function (Fig. 2's curves: ln of dn/dln M averaged over the held-out voxels of each "
           "density bin, at ln M - ln M_th = " + ", ".join(f"{x:g}" for x in r["predictive_mass_function"][
               "ln_mass_above_threshold"]) + f", {r['predictive_mass_function']['draws_per_chain']} draws per "
           "chain): max split R-hat "
           f"{r['predictive_mass_function']['max_split_rhat']:.3f} over bins and masses"
           + (" (the parameters are not converged but the predictions are: read Fig. 2's bands, not the "
              "parameters' tables)." if r["predictive_mass_function"]["max_split_rhat"] < 1.01 < s["max_rhat"]
              else ".")] if r["predictive_mass_function"].get("max_split_rhat") is not None else []),
        "",
        "| parameter | MAP | mean | std | R-hat | ESS |",
        "|---|---|---|---|---|---|",
    ]
    for i, name in enumerate(s["names"]):
        lines.append(f"| {name} | {r['theta_map'][name]:.4g} | {s['mean'][i]:.4g} | {s['std'][i]:.3g} | "
                     f"{s['rhat'][i]:.4f} | {s['ess'][i]:.0f} |")
    lines += [
        "",
        *([f"Parameters with split R-hat >= {s['rhat_max']} or ESS < {s['ess_min']:.0f}: "
           + ", ".join(n for n, rh, e in zip(s["names"], s["rhat"], s["ess"])
                       if rh >= s["rhat_max"] or e < s["ess_min"]) + ".", ""] if not s["converged"] else []),
        "## Acceptance",
        "",
        *[f"- {k}: {v}" for k, v in r["acceptance"].items()],
        "",
        f"Total wall time {r['timings']['total_s']:.0f} s.",
        "",
        "Figures: `fig2_mass_function.png` (n(M|δ) in density bins, catalogue vs model with 68% posterior "
        "band), `fig3_traces.png` (all parameters, all chains), `fig4_slices.png` (density, ψ, expected "
        "halo counts, halo mass field).",
        "",
    ]
    return "\n".join(lines)


if __name__ == "__main__":
    main()
