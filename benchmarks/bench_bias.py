"""Benchmark of the neural bias likelihood and its TFP samplers.

Prints, measured in one run on the same data:
  * log-posterior-and-gradient evaluations per second (one parameter vector,
    and a batch of 4 chains);
  * min-over-parameters ESS per second of HMC (4 chains) with an identity
    mass matrix, with the windowed-adapted one and with the Hessian at the MAP,
    as ratios against the identity baseline; and the adapted one in the
    local-linear coordinates (tfhalo.bias.reparam), on top of those with a
    normalising flow (tfhalo.bias.flow, fit time included in its cost), and
    with 4 replicas (replica exchange), whose cost includes every replica.

Data: a synthetic log-normal density grid (10^3 voxels, 40 Mpc/h, three
realisations) with halos Poisson-drawn from a density-dependent rate, so the
benchmark needs no simulation suite.

Two posteriors: a one-Gaussian head (11 parameters), which the synthetic
catalogue (exponential mass tails above the threshold) identifies well; and the paper's
two-Gaussian default (17 parameters), whose second component this catalogue
does not need, so its posterior is far from Gaussian: a harder case, for the
record.

    python benchmarks/bench_bias.py [--n-grid 10] [--samples 600] [--components 1,2] [--flow-steps 600]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
from scipy.ndimage import gaussian_filter  # noqa: E402

from tfhalo.bias import NeuralBiasLikelihood, build_model, make_bias_data  # noqa: E402
from tfhalo.bias.diagnostics import summarize_chains  # noqa: E402
from tfhalo.bias.fit import fit_map, hessian_of, value_and_gradient_fn  # noqa: E402
from tfhalo.bias.flow import ComposedReparametrization, FlowReparametrization  # noqa: E402
from tfhalo.bias.reparam import LocalLinearReparametrization  # noqa: E402
from tfhalo.bias.sampling import batched, preconditioner_from_hessian, sample_posterior  # noqa: E402
from tfhalo.sim.fof import wrap_periodic  # noqa: E402


def synthetic(seed, n, box=40.0, threshold=1e12, n_halos=250):
    rng = np.random.default_rng(seed)
    g = gaussian_filter(rng.normal(size=(n, n, n)), 0.8, mode="wrap")
    rho = np.exp(0.9 * g / g.std())
    rho /= rho.mean()
    lam = rho**1.8 * np.exp(-0.2 / rho)
    lam *= n_halos / lam.sum()
    counts = rng.poisson(lam)
    vox = np.repeat(np.arange(n**3), counts.ravel())
    # Voxel i is the grid point i * box / n (the likelihood bins halos to the nearest one):
    # scatter each halo within half a voxel of it, wrapping periodically.
    centres = (np.stack(np.unravel_index(vox, (n,) * 3), -1) + rng.uniform(-0.5, 0.5, size=(vox.size, 3))) * box / n
    centres = wrap_periodic(centres, box)
    # Heavier halos in denser voxels: the environment dependence the NPE can learn.
    ln_m = np.log(threshold) + rng.exponential(0.7 + 0.3 * np.log(rho.ravel()[vox]).clip(0))
    return make_bias_data(rho, centres, np.exp(ln_m), box, threshold)


def timed_rate(fn, arg, seconds=2.0):
    fn(arg)  # trace
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        out = fn(arg)
        n += 1
    tf.nest.map_structure(lambda t: t.numpy(), out)
    return n / (time.perf_counter() - t0)


def sampler_table(like, fit, args, title):
    """ESS/s of each sampler variant on one posterior, as ratios against identity-mass HMC."""
    # Dispersed starts as in experiments/neural_bias.py: half a posterior width, at most ~1 unit.
    chol = preconditioner_from_hessian(fit.hessian, 1.0)
    init = fit.theta + 0.5 * np.random.default_rng(args.seed).normal(size=(4, fit.theta.size)) @ chol.T
    rep = LocalLinearReparametrization(like, fit.theta)
    # NeuTra: a flow fitted on the local-linear coordinates; its fit time is
    # added to the sampler's, so ESS/s compares total cost.
    target_v = rep.wrap(like.log_posterior)
    v_map = rep.inverse(fit.theta)
    t0 = time.perf_counter()
    flow = FlowReparametrization(v_map, 0.5 * preconditioner_from_hessian(hessian_of(target_v, v_map), 1e-2),
                                 seed=args.seed)
    flow.fit(target_v, steps=args.flow_steps, seed=args.seed, progress=False, jit_compile=False)
    flow_seconds = time.perf_counter() - t0
    variants = [("identity", "identity", {}), ("adaptive", "adaptive", {}), ("hessian", "hessian", {}),
                ("adaptive+local-linear", "adaptive", dict(reparametrization=rep)),
                ("adaptive+l-l+flow", "adaptive", dict(reparametrization=ComposedReparametrization(rep, flow))),
                ("adaptive+4 replicas", "adaptive", dict(n_temperatures=4, log_likelihood_fn=like.log_likelihood,
                                                        log_prior_fn=like.log_prior))]
    rows = []
    for label, mass, extra in variants:
        res = sample_posterior(like.log_posterior, init, num_results=args.samples, num_burnin=args.burnin,
                               mass_matrix=mass, hessian=fit.hessian if mass == "hessian" else None,
                               centre=fit.theta, hessian_floor=1.0 / like.prior_scale**2,
                               num_leapfrog_steps=6, seed=args.seed, progress=False, jit_compile=True, **extra)
        s = summarize_chains(res.samples, res.is_accepted, res.divergent, warn=False)
        seconds = res.seconds + (flow_seconds if "flow" in label else 0.0)
        rows.append((label, s["min_ess"], seconds, s["min_ess"] / seconds, s["max_rhat"],
                     s["acceptance_rate"], res.step_size))
    base = rows[0][3]
    print(f"{title}: HMC, 4 chains, {args.burnin} warm-up + {args.samples} draws, 6 leapfrog steps:")
    print(f"{'sampler':>22} {'min ESS':>8} {'seconds':>8} {'ESS/s':>8} {'vs identity':>12} "
          f"{'max R-hat':>9} {'accept':>7} {'step':>7}")
    for label, ess, sec, eps_rate, rhat, acc, step in rows:
        print(f"{label:>22} {ess:8.1f} {sec:8.1f} {eps_rate:8.2f} {eps_rate / base:11.1f}x {rhat:9.4f} "
              f"{acc:7.3f} {step:7.4f}", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-grid", type=int, default=10)
    parser.add_argument("--samples", type=int, default=600)
    parser.add_argument("--burnin", type=int, default=400)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--flow-steps", type=int, default=600, help="ELBO steps of the flow variant")
    parser.add_argument("--components", default="1,2",
                        help="mixture components of the models to sample (2 = the paper's 17-parameter default)")
    args = parser.parse_args(argv)
    if args.flow_steps < 1:
        raise ValueError(f"flow_steps must be positive. Received: flow_steps={args.flow_steps}")
    components = [int(c) for c in args.components.split(",")]
    if not components or min(components) < 1:
        raise ValueError(f"components must be positive integers. Received: components={args.components!r}")

    data = [synthetic(args.seed + i, args.n_grid) for i in range(3)]
    for k in components:
        model = build_model(data[0].log_mass_threshold, n_grid=args.n_grid, dtype="float64", n_components=k)
        like = NeuralBiasLikelihood(model, data)
        fit = fit_map(like, steps=800, n_starts=2, seed=args.seed, progress=False, jit_compile=True)
        title = f"{k} Gaussian(s), {like.layout.size} parameters"
        print(f"{title}; data: {len(data)} x {args.n_grid}^3 voxels, {like.n_halos} halos; "
              f"MAP ln post {fit.log_posterior:.2f}")
        theta = tf.constant(fit.theta)
        rate1 = timed_rate(value_and_gradient_fn(like), theta)
        rate1_xla = timed_rate(value_and_gradient_fn(like, jit_compile=True), theta)
        target4 = batched(like.log_posterior, 4)

        @tf.function
        def vg4(x):
            with tf.GradientTape() as tape:
                tape.watch(x)
                v = target4(x)
            return v, tape.gradient(v, x)

        rate4 = timed_rate(vg4, tf.tile(theta[None], [4, 1])) * 4
        print(f"log-posterior+gradient evaluations/s: {rate1:.0f} (1 vector), {rate1_xla:.0f} (1 vector, XLA, "
              f"x{rate1_xla / rate1:.2f}), {rate4:.0f} (4 chains batched, x{rate4 / rate1:.2f})", flush=True)
        sampler_table(like, fit, args, title)


if __name__ == "__main__":
    main()
