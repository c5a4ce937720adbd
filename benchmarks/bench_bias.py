"""Benchmark of the neural bias likelihood and of tfhalo.inference's samplers on it.

Prints, measured in one run on the same data:
  * the gradient's cost with the mixture head applied to a (voxels, features)
    matrix (tfhalo.bias.model.voxelwise, the library's layout) against the
    5-D grid layout, in float32 and float64, inside one XLA while loop as a
    sampler runs it;
  * log-posterior-and-gradient evaluations per second (one parameter vector,
    eager graph and XLA, and a batch of 4 chains with XLA);
  * for NUTS and HMC (4 chains, windowed warm-up, XLA): min bulk / tail ESS,
    ESS per second and per 1000 gradient evaluations, max rank-normalised
    split R-hat, divergences, for the sampling coordinates
      - identity: theta itself (diagonal mass matrix adapted in warm-up),
      - affine: theta = theta_MAP + chol(H^-1) z (tfhalo.inference.affine_preconditioner),
      - reparam+affine: the local-linear coordinates v
        (tfhalo.bias.reparam.LocalLinearReparametrization) followed by the
        affine map built from the Hessian in v (skipped if that class is not a
        tfp Bijector),
    as ratios of ESS/s and ESS per gradient against identity with the same kernel.
Costs include warm-up and XLA compilation (tracing happens once per variant).

Data: a synthetic log-normal density grid (three 10^3-voxel, 40 Mpc/h
realisations) with halos Poisson-drawn from a density-dependent rate, so the
benchmark needs no simulation suite.  ``--components 2`` is the paper's
two-Gaussian head (17 parameters), ``1`` a one-Gaussian head (11 parameters).

    python benchmarks/bench_bias.py [--n-grid 10] [--warmup 500] [--samples 500] [--components 2]
                                    [--kernels nuts,hmc] [--seed 0] [--layout-only]
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
import tensorflow_probability as tfp  # noqa: E402
from scipy.ndimage import gaussian_filter  # noqa: E402

import tfhalo.inference as inf  # noqa: E402
from tfhalo.bias import NeuralBiasLikelihood, build_model, make_bias_data  # noqa: E402
from tfhalo.bias.fit import fit_map, hessian_of, value_and_gradient_fn  # noqa: E402
from tfhalo.sim.grid import wrap_periodic  # noqa: E402
from tfhalo.validation import check_int  # noqa: E402


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
    fn(arg)  # trace / compile
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        out = fn(arg)
        n += 1
    tf.nest.map_structure(lambda t: t.numpy(), out)
    return n / (time.perf_counter() - t0)


def evaluation_rates(like, theta, n_chains):
    """Log-posterior + gradient evaluations per second: one vector (graph, XLA) and a batch (XLA)."""
    theta = tf.constant(theta)
    rate1 = timed_rate(value_and_gradient_fn(like), theta)
    rate1_xla = timed_rate(value_and_gradient_fn(like, jit_compile=True), theta)
    target = inf.batched(like.log_posterior, n_chains)

    @tf.function(jit_compile=True)
    def batch_value_and_grad(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            v = target(x)
        return v, tape.gradient(v, x)

    rate_b = timed_rate(batch_value_and_grad, tf.tile(theta[None], [n_chains, 1])) * n_chains
    return rate1, rate1_xla, rate_b


def _loop_rate(like, theta, n=500):
    """Gradient evaluations per second inside one compiled while loop, as a sampler runs them."""
    theta = tf.constant(theta)

    @tf.function(jit_compile=True)
    def loop(t):
        def body(i, t, acc):
            with tf.GradientTape() as tape:
                tape.watch(t)
                y = tf.cast(like.log_posterior(t), tf.float64)
            return i + 1, t + 1e-12 * tape.gradient(y, t), acc + y

        return tf.while_loop(lambda i, t, a: i < n, body, (0, t, tf.zeros([], tf.float64)))[2]

    loop(theta).numpy()  # compile
    t0 = time.perf_counter()
    loop(theta).numpy()
    return n / (time.perf_counter() - t0)


def layout_rates(data, theta, k):
    """``{dtype: (rate as a 5-D grid, rate as a voxel matrix)}`` of the likelihood's gradient."""
    from tfhalo.bias import likelihood

    rates = {}
    for dtype in ("float32", "float64"):
        pair = []
        for grid in (True, False):
            saved = likelihood.voxelwise
            if grid:  # the baseline: the head on the (B, n, n, n, F) grid as it comes
                likelihood.voxelwise = lambda head_call, psi: head_call(psi)
            try:
                model = build_model(data[0].log_mass_threshold, n_grid=data[0].n_grid, dtype=dtype, n_components=k)
                pair.append(_loop_rate(NeuralBiasLikelihood(model, data), theta))
            finally:
                likelihood.voxelwise = saved
        rates[dtype] = tuple(pair)
    return rates


def local_linear(like, theta_map):
    """The local-linear bijector and the Hessian of -ln p(v) at v_MAP, or None if unavailable."""
    try:
        from tfhalo.bias.reparam import LocalLinearReparametrization
    except ImportError:
        return None
    if not issubclass(LocalLinearReparametrization, tfp.bijectors.Bijector):
        return None
    rep = LocalLinearReparametrization(like, theta_map)
    v_map = np.asarray(rep.inverse(tf.constant(theta_map)), np.float64)

    def log_prob_v(v):
        return like.log_posterior(rep.forward(v)) + rep.forward_log_det_jacobian(v, event_ndims=1)

    return rep, v_map, hessian_of(log_prob_v, v_map)


def sampler_table(like, fit, args):
    """ESS/s and ESS per gradient of each (kernel, coordinates) pair, as ratios against identity."""
    floor = 1.0 / like.prior_scale**2
    affine = inf.affine_preconditioner(fit.theta, fit.hessian, floor=floor)
    variants = [("identity", None), ("affine", affine)]
    ll = local_linear(like, fit.theta)
    if ll is None:
        print("reparam+affine: skipped (tfhalo.bias.reparam.LocalLinearReparametrization is not a tfp Bijector)")
    else:
        rep, v_map, h_v = ll
        variants.append(("reparam+affine", tfp.bijectors.Chain([rep, inf.affine_preconditioner(v_map, h_v, floor)])))
    # Dispersed starts, the same for every variant: half a Laplace width around the MAP, drawn in the
    # last variant's coordinates so they lie in every bijector's domain (the local-linear map covers
    # one half-space of the radial weights only).
    z = 0.5 * np.random.default_rng(args.seed).normal(size=(args.chains, fit.theta.size))
    init = np.asarray(variants[-1][1].forward(tf.constant(z)), np.float64)
    log_prob = inf.batched(like.log_posterior, args.chains)
    print(f"{args.chains} chains, {args.warmup} warm-up + {args.samples} draws, XLA; costs include warm-up and "
          "compilation")
    print(f"{'kernel':>6} {'coordinates':>15} {'ESS bulk':>8} {'ESS tail':>8} {'seconds':>8} {'ESS/s':>7} "
          f"{'ESS/1k grad':>11} {'vs identity (s, grad)':>22} {'R-hat':>7} {'diverg.':>7} {'step':>7}")
    for kernel in args.kernels:
        base = None
        for label, bijector in variants:
            config = inf.SamplerConfig(kernel=kernel, num_chains=args.chains, num_warmup=args.warmup,
                                       num_samples=args.samples, num_leapfrog_steps=args.leapfrog_steps,
                                       target_accept=0.8, seed=args.seed, jit_compile=True,
                                       block_size=max(args.warmup, args.samples))
            chains = inf.sample(log_prob, init, config, bijector=bijector, progress=False)
            s = inf.convergence_summary(chains.to_inference_data())
            ess = min(s["min_ess_bulk"], s["min_ess_tail"])
            per_s = ess / chains.seconds
            per_grad = 1000.0 * ess / (chains.n_gradient_evaluations * args.chains)
            base = base or (per_s, per_grad)
            print(f"{kernel:>6} {label:>15} {s['min_ess_bulk']:8.0f} {s['min_ess_tail']:8.0f} {chains.seconds:8.1f} "
                  f"{per_s:7.2f} {per_grad:11.2f} {per_s / base[0]:10.2f}x {per_grad / base[1]:9.2f}x "
                  f"{s['max_rhat']:7.4f} {s['n_divergent']:7d} {chains.step_size:7.4f}", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n-grid", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--samples", type=int, default=500)
    parser.add_argument("--chains", type=int, default=4)
    parser.add_argument("--leapfrog-steps", type=int, default=16, help="HMC's leapfrog steps per draw")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kernels", default="nuts,hmc", help="comma-separated: nuts, hmc")
    parser.add_argument("--layout-only", action="store_true", help="only the head-layout comparison")
    parser.add_argument("--components", default="2",
                        help="comma-separated mixture components (2 = the paper's 17-parameter default)")
    args = parser.parse_args(argv)
    try:
        check_int("n_grid", args.n_grid, minimum=2)
        check_int("seed", args.seed, minimum=0)
        args.kernels = [k.strip() for k in args.kernels.split(",")]
        components = [check_int("components", int(c), minimum=1) for c in args.components.split(",")]
        # The sampler's own checks, before any data or MAP fit.
        inf.SamplerConfig(num_chains=args.chains, num_warmup=args.warmup, num_samples=args.samples,
                          num_leapfrog_steps=args.leapfrog_steps, seed=args.seed)
        for k in args.kernels:
            inf.SamplerConfig(kernel=k)
    except ValueError as err:
        parser.error(str(err))

    data = [synthetic(args.seed + i, args.n_grid) for i in range(3)]
    for k in components:
        model = build_model(data[0].log_mass_threshold, n_grid=args.n_grid, dtype="float64", n_components=k)
        like = NeuralBiasLikelihood(model, data)
        fit = fit_map(like, steps=800, n_starts=2, seed=args.seed, progress=False, jit_compile=True)
        print(f"{k} Gaussian(s), {like.layout.size} parameters; data: {len(data)} x {args.n_grid}^3 voxels, "
              f"{like.n_halos} halos; MAP ln posterior {fit.log_posterior:.2f}")
        for dtype, (grid, matrix) in layout_rates(data, fit.theta, k).items():
            print(f"gradient in a compiled loop, {dtype}: {matrix:.0f}/s with the head on the voxel matrix, "
                  f"{grid:.0f}/s on the 5-D grid (x{matrix / grid:.2f})", flush=True)
        if args.layout_only:
            continue
        rate1, rate1_xla, rate_b = evaluation_rates(like, fit.theta, args.chains)
        print(f"log-posterior+gradient evaluations/s: {rate1:.0f} (1 vector), {rate1_xla:.0f} (1 vector, XLA, "
              f"x{rate1_xla / rate1:.2f}), {rate_b:.0f} ({args.chains} chains batched, XLA, x{rate_b / rate1:.2f})",
              flush=True)
        sampler_table(like, fit, args)


if __name__ == "__main__":
    main()
