"""Benchmark of field-level inference: the joint log density's cost and HMC's cost per effective sample.

Simon-Onfroy, Lanusse & de Mattia (2025), "Benchmarking field-level
cosmological inference from galaxy redshift surveys", arXiv:2504.20130, find
that the cost that matters for field-level samplers is the number of model
(log-density-and-gradient) evaluations per effective sample, and that it is
decided by how the latent field is preconditioned.  This script measures both
factors of that cost for tfhalo's field-level posterior
(:class:`tfhalo.field.posterior.FieldLevelPosterior`: 2LPT forward model, the
neural bias model and the Poisson likelihood of Charnock, Lavaux, Wandelt,
Sarma Boruah, Jasche & Hudson (2020), "Neural physical engines for inferring
the halo mass distribution function", MNRAS 494, 50, arXiv:1909.06379, eq. 16),
in one run:

1. **Evaluation time.**  ``log_prob`` and its gradient for 2 chains (the
   study's batch) at each grid of ``--grids`` (default 32^3 and 64^3, boxes of
   ``--voxel`` = 4 Mpc/h cells, the paper's voxel), TensorFlow backend, in a
   ``tf.function`` with XLA (``jit_compile=True``) and without: the first call
   (tracing + compilation) separately, then the median of ``--repeats`` calls.
2. **Gradient evaluations per effective sample** of (a) the power of the
   linear field in the lowest k bins and (b) the 17 bias parameters
   (min bulk ESS over each set, ArviZ via
   :func:`tfhalo.inference.convergence_summary`), for the preconditioning
   choices of the ``field_level`` study, on one target:

   * ``curvature``: Hartley coordinates scaled per |k| shell by the target's
     curvature at the start (:class:`tfhalo.field.precondition.FourierPreconditioner`
     with :func:`~tfhalo.field.precondition.curvature_scales`), plus the
     sampler's diagonal mass-matrix adaptation;
   * ``prior``: Hartley coordinates with unit scales (the prior's), only the
     sampler's diagonal mass-matrix adaptation;
   * ``none``: plain ``omega`` and ``theta``, HMC with the sampler's
     mass-matrix adaptation only; the baseline of the ratios;
   * ``gibbs`` (joint target only): the study's blocked sampler
     (``sampler="gibbs"``, :class:`tfhalo.inference.GibbsKernel`): per sweep one
     HMC transition of the white noise given the bias in the ``curvature``
     coordinates, its step size adapted by dual averaging, then ``--bias-steps``
     transitions of ``--bias-kernel`` (slice sampling by default; NUTS or HMC)
     on the bias given the field.  Its gradient count is the field block's; the
     bias moves evaluate the bias model on the sweep's density, without the
     forward model, and are not counted.

   The target is a self-consistent mock (``--sample-grid`` 16^3 in a 64 Mpc/h
   box by default): halos drawn from the model's own Poisson process
   (:func:`tfhalo.field.mock.draw_mock_catalogue`) given the 2LPT field of a
   white-noise draw and bias parameters fitted to halos on that field.  Every
   variant starts from the same point, found as the study does it
   (``field_level._map_field``: Adam on the white noise from a prior draw, the
   bias at its fit dispersed by a tenth of its conditional widths,
   ``field_level._conditional_bias_scale``), with the same seeds, HMC
   settings and number of iterations (the study's quick preset: 2 chains, 150
   warm-up + 300 kept iterations of 20 leapfrog steps, target acceptance
   0.75, XLA).  Gradient evaluations are those of all chains, warm-up
   included; the curvature estimate's own gradients are listed apart
   (``setup``); ``sec`` is wall time including tracing and XLA compilation
   (a variant whose functions an earlier seed compiled reuses them).
   ``--seeds`` repeats the chains with other seeds on the same target (then
   the medians over seeds are printed too).

   With ``--field-given-bias`` the same variants also sample the white noise
   alone, the bias fixed at its true values (the field step of a blocked,
   BORG-like sampler): the joint cost minus that of the bias parameters.

Mock data: the bias parameters that set the mock's halo count come from a
short fit (:func:`tfhalo.bias.fit.fit_map`) to synthetic halos Poisson-drawn on
the 2LPT density of a white-noise draw, as many as the Sheth & Tormen (1999)
FoF mass function (colossus) predicts above ``--threshold`` (default the
paper's 2e12 Msun/h: ~500 halos in (64 Mpc/h)^3); the same parameters make the
mocks of the timing grids.  The cost of an evaluation depends on them only
through the halo count.

Usage:
    python benchmarks/bench_field.py [--quick] [--grids 32,64] [--seeds 0,1] [--field-given-bias]
                                     [--variants curvature,prior,none,gibbs] [--out bench_field.json]
    python benchmarks/bench_field.py --quick          # smoke run, ~2 minutes on 2 cores

The default run takes about 6 minutes on 2 CPU cores (each seed of
``--field-given-bias`` adds about 5); ``--skip-timing`` or ``--skip-sampling``
runs one part only.
"""

from __future__ import annotations

import argparse
import datetime
import math
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("KERAS_BACKEND", "tensorflow")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402

# Each variant's bijector is a new object, so the sampler traces its functions again on purpose;
# TensorFlow's retracing warnings say nothing about this benchmark.
tf.get_logger().setLevel("ERROR")

import tfhalo.inference as inf  # noqa: E402
from tfhalo.atomic import write_json_atomic  # noqa: E402
from tfhalo.bias.likelihood import NeuralBiasLikelihood  # noqa: E402
from tfhalo.bias.model import build_model  # noqa: E402
from tfhalo.evaluation.report import jsonable  # noqa: E402
from tfhalo.field import analysis as fa  # noqa: E402
from tfhalo.field.forward import LPTForwardModel  # noqa: E402
from tfhalo.field.mock import draw_mock_catalogue  # noqa: E402
from tfhalo.field.posterior import FieldCatalogue, FieldLevelPosterior  # noqa: E402
from tfhalo.field.precondition import FourierPreconditioner, curvature_scales  # noqa: E402
from tfhalo.sim.cosmology import WMAP5  # noqa: E402
from tfhalo.sim.grid import wrap_periodic  # noqa: E402
from tfhalo.sim.ics import white_noise  # noqa: E402
from tfhalo.studies.common import machine_info  # noqa: E402
# Private helpers of the study, imported so that the chains start exactly as the study's do.
from tfhalo.studies import field_level  # noqa: E402
from tfhalo.studies.field_level import N_LOW_K_BINS, _conditional_bias_scale, _map_field, linear_fields  # noqa: E402
from tfhalo.validation import check_float, check_int, check_output_path  # noqa: E402

VARIANTS = ("curvature", "prior", "none", "gibbs")
BASELINE = "none"
N_CHAINS = 2  # the study's chains, and the batch of the timing

# Settings of the default run and of --quick; any flag given explicitly overrides them.
DEFAULTS = dict(grids="32,64", repeats=5, sample_grid=16, seeds="0", warmup=150, samples=300, leapfrog_steps=20,
                map_field_steps=200, n_probes=8, fit_steps=300, sampler_xla=1, bias_steps=10)
# The smoke run's chains and fit are too short to repay XLA's compilation (~40 s per sampler variant).
QUICK = dict(grids="8", repeats=2, sample_grid=8, seeds="0", warmup=40, samples=30, leapfrog_steps=5,
             map_field_steps=20, n_probes=2, fit_steps=40, sampler_xla=0, bias_steps=3)


# -- data ------------------------------------------------------------------------------------------------------


def halo_number_density(threshold: float, cosmology=WMAP5) -> float:
    """``n(> M_th)`` in (h/Mpc)^3 at z = 0: the Sheth & Tormen (1999) FoF mass function of colossus."""
    from colossus.lss import mass_function

    cosmology.to_colossus(set_current=True)
    masses = np.logspace(math.log10(threshold), 16.5, 256)
    dn_dlnm = mass_function.massFunction(masses, 0.0, mdef="fof", model="sheth99", q_out="dndlnM")
    return float(np.trapezoid(dn_dlnm, np.log(masses)))


def synthetic_catalogue(forward, omega, threshold, n_halos, seed) -> FieldCatalogue:
    """Halos Poisson-drawn on the 2LPT density of ``omega`` with a density-dependent rate (fit data only).

    Rate ``rho^1.8 exp(-0.2 / rho)`` per voxel (suppressed in voids), scaled to
    ``n_halos`` expected halos; ``ln(M / M_th)`` exponential with a mean that
    grows with the density; positions uniform within half a voxel of the grid
    point, the voxel the likelihood bins them to.
    """
    n, box = forward.n_grid, forward.box_size
    rng = np.random.default_rng([seed, 7])
    rho = np.asarray(forward.density(tf.constant(omega[None]))[0], np.float64)
    rate = np.maximum(rho, 1e-3) ** 1.8 * np.exp(-0.2 / np.maximum(rho, 1e-3))
    counts = rng.poisson(rate * n_halos / rate.sum())
    vox = np.repeat(np.arange(n**3), counts.ravel())
    sites = np.stack(np.unravel_index(vox, (n,) * 3), -1).astype(np.float64)
    centres = wrap_periodic((sites + rng.uniform(-0.5, 0.5, size=sites.shape)) * box / n, box)
    ln_excess = rng.exponential(0.7 + 0.3 * np.log(rho.ravel()[vox]).clip(0))
    return FieldCatalogue.from_halos(centres, threshold * np.exp(ln_excess), box, n, threshold)


def fitted_theta(args):
    """Bias parameters fitted (MAP, few Adam steps + L-BFGS) to synthetic halos on the sampling grid."""
    from tfhalo.bias.fit import fit_map

    n = args.sample_grid
    forward = LPTForwardModel(n, n * args.voxel)
    omega = white_noise(n, args.data_seed)
    n_expected = halo_number_density(args.threshold) * forward.box_size**3
    cat = synthetic_catalogue(forward, omega, args.threshold, n_expected, args.data_seed)
    rho = np.asarray(forward.density(tf.constant(omega[None]))[0], np.float64)
    model = build_model(math.log(args.threshold), n, dtype="float64")
    like = NeuralBiasLikelihood(model, cat.to_bias_data(rho))
    t0 = time.perf_counter()
    fit = fit_map(like, steps=args.fit_steps, n_starts=1, seed=args.data_seed, progress=False,
                  jit_compile=bool(args.sampler_xla), mirror=False)
    info = dict(n_halos=cat.n_halos, n_expected=n_expected, log_posterior=float(fit.log_posterior),
                seconds=time.perf_counter() - t0)
    return np.asarray(fit.theta, np.float64), info


def mock_posterior(n, args, theta, seed):
    """``(posterior, omega_true)``: a mock drawn from the model itself on an ``n^3`` grid of ``--voxel`` cells."""
    forward = LPTForwardModel(n, n * args.voxel)
    model = build_model(math.log(args.threshold), n, dtype="float64")
    omega = white_noise(n, seed)
    catalogue = draw_mock_catalogue(forward, model, omega, theta, seed=seed + 1000)
    return FieldLevelPosterior(forward, model, catalogue), omega


# -- 1. evaluation time ----------------------------------------------------------------------------------------


def time_evaluation(posterior, state, jit_compile, repeats):
    """``(first call s, median s)`` of ``log_prob`` and its gradient at ``state (C, size)``."""

    @tf.function(jit_compile=jit_compile)
    def value_and_grad(x):
        with tf.GradientTape() as tape:
            tape.watch(x)
            value = posterior.log_prob(x)
        return value, tape.gradient(value, x)

    def call():
        t0 = time.perf_counter()
        value, grad = value_and_grad(state)
        value.numpy(), grad.numpy()
        return time.perf_counter() - t0

    first = call()
    return first, float(np.median([call() for _ in range(repeats)]))


def timing_table(args, theta):
    print(f"\n1. log_prob + gradient, {N_CHAINS} chains, float64, TF backend (median of {args.repeats} calls after "
          "the first; the first call traces and compiles)")
    print(f"{'grid':>5} {'box':>6} {'halos':>6} {'params':>8} {'XLA first s':>11} {'XLA ms':>8} "
          f"{'graph first s':>13} {'graph ms':>9} {'XLA speed-up':>12} {'XLA ms/chain':>12}")
    rows = []
    for n in args.grids:
        posterior, omega = mock_posterior(n, args, theta, args.data_seed)
        omegas = np.stack([omega, white_noise(n, args.data_seed + 1)]).reshape(N_CHAINS, -1)
        state = tf.constant(np.concatenate([omegas, np.tile(theta, (N_CHAINS, 1))], axis=1))
        row = dict(n_grid=n, box_size=posterior.forward.box_size, n_halos=posterior.catalogue.n_halos,
                   n_parameters=posterior.size, n_chains=N_CHAINS)
        for label, jit in (("xla", True), ("graph", False)):
            first, median = time_evaluation(posterior, state, jit, args.repeats)
            row[f"{label}_first_call_s"] = first
            row[f"{label}_median_s"] = median
        rows.append(row)
        print(f"{n:>4}^3 {row['box_size']:6.0f} {row['n_halos']:6d} {row['n_parameters']:8d} "
              f"{row['xla_first_call_s']:11.2f} {1e3 * row['xla_median_s']:8.1f} {row['graph_first_call_s']:13.2f} "
              f"{1e3 * row['graph_median_s']:9.1f} {row['graph_median_s'] / row['xla_median_s']:11.2f}x "
              f"{1e3 * row['xla_median_s'] / N_CHAINS:12.1f}", flush=True)
    return rows


# -- 2. gradient evaluations per effective sample --------------------------------------------------------------


def chain_start(posterior, theta, seed, map_field_steps):
    """The study's ``start="map"``: ``(state0 (C, size), bias_scale (P,), seconds)``."""
    n_field, n_bias = posterior.n_field, posterior.n_bias
    rng = np.random.default_rng([seed, 0, 17])
    omega0 = rng.standard_normal((N_CHAINS, n_field))
    state0 = np.concatenate([omega0, np.tile(theta, (N_CHAINS, 1))], axis=1)
    t0 = time.perf_counter()
    state0 = _map_field(posterior, state0, map_field_steps, progress=False)
    bias_scale = _conditional_bias_scale(posterior, state0[0])
    state0[:, n_field:] += 0.1 * bias_scale[None, :] * rng.standard_normal((N_CHAINS, n_bias))
    return state0, bias_scale, time.perf_counter() - t0


class Target:
    """What the chains sample: the joint posterior, or the field alone with the bias fixed at ``theta``.

    The field-alone target (BORG's field step of a blocked sampler) separates the
    cost of the field, which the Fourier preconditioning addresses, from that of
    the bias parameters.
    """

    def __init__(self, posterior, theta, joint):
        self.posterior, self.theta, self.joint = posterior, theta, joint
        self.n_bias = posterior.n_bias if joint else 0
        fixed = tf.constant(np.tile(theta, (N_CHAINS, 1)))
        # One function object per target, so the sampler's compiled functions are reused across seeds.
        self.log_prob = posterior.log_prob if joint else (lambda x: posterior.log_prob(tf.concat([x, fixed], 1)))

    def start(self, state0):
        return state0 if self.joint else state0[:, :self.posterior.n_field]


def bijector_for(variant, target, state0, bias_scale, seed, n_probes):
    """``(bijector or None, field scales (n, n, n), setup gradient evaluations per chain, setup s)``."""
    n = target.posterior.forward.n_grid
    scales = np.ones((n, n, n))
    if variant == "none":
        return None, scales, 0, 0.0
    t0 = time.perf_counter()
    setup = 0
    if variant == "curvature":
        scales = curvature_scales(target.log_prob, state0, n, n_probes=n_probes, seed=seed)
        setup = 2 * n_probes  # two gradients of the batch per Rademacher probe
    if target.joint:
        bij = FourierPreconditioner(n, target.n_bias, field_scale=scales, bias_loc=target.theta,
                                    bias_scale=bias_scale)
    else:
        bij = FourierPreconditioner(n, 0, field_scale=scales)
    return bij, scales, setup, time.perf_counter() - t0


def gibbs_config(args, n, box_size, seed):
    """The ``field_level`` study's settings of the gibbs variant (its checks name the bad argument)."""
    # The quick preset's data with the Config's joint-sampler defaults, then this variant's blocked sampler.
    settings = dict(field_level.JOINT_SAMPLER, sampler_seed=seed, n_side=2 * n, box_size=box_size, n_grid=n,
                    sampler="gibbs", bias_kernel=args.bias_kernel, bias_steps=args.bias_steps, n_chains=N_CHAINS,
                    n_warmup=args.warmup, n_samples=args.samples, leapfrog_steps=args.leapfrog_steps,
                    target_accept=args.target_accept, jit_compile=bool(args.sampler_xla), thin=1)
    return field_level.Config.preset("quick", seed=args.data_seed, **settings)


def gibbs_chains(args, target, state0, bias_scale, seed):
    """The study's blocked sampler on the joint target: ``(chains, field scales, setup gradients, setup s)``."""
    posterior = target.posterior
    n = posterior.forward.n_grid
    t0 = time.perf_counter()
    scales = curvature_scales(target.log_prob, state0, n, n_probes=args.n_probes, seed=seed)
    setup_s = time.perf_counter() - t0
    config = gibbs_config(args, n, posterior.forward.box_size, seed)
    bias_bijector, _ = field_level._bias_bijector(config, posterior, state0, target.theta, bias_scale, 0, None, False)
    chains = field_level._gibbs_chains(config, posterior, state0, scales, bias_bijector, 0, None, False)
    return chains, scales, 2 * args.n_probes, setup_s


def low_k_power(samples, posterior):
    """``(C, S, N_LOW_K_BINS)`` power of the linear field in the lowest k bins (the study's bins), and their k."""
    n, box = posterior.forward.n_grid, posterior.forward.box_size
    s, c, _ = samples.shape
    bins = fa.k_bins(n, box)
    omega = samples[..., :posterior.n_field].reshape(s * c, n, n, n)
    power = np.concatenate([fa.binned_power(linear_fields(omega[i:i + 64], box, posterior.forward.cosmology), bins)
                            for i in range(0, s * c, 64)])
    return power.reshape(s, c, -1)[:, :, :N_LOW_K_BINS].transpose(1, 0, 2), bins.centres[:N_LOW_K_BINS]


def chain_costs(chains, target):
    """ESS, R-hat and gradient counts of one run, with ArviZ as the study computes them."""
    import xarray as xr

    posterior = target.posterior
    # The field-alone target has no bias draws; its InferenceData carries one field value, unused.
    variables = ({"bias": (slice(posterior.n_field, None), (posterior.n_bias,))} if target.joint
                 else {"omega_0": ([0], (1,))})
    idata = chains.to_inference_data(variables=variables)
    power, k = low_k_power(np.asarray(chains.samples), posterior)
    idata.posterior["power_low_k"] = xr.DataArray(power, dims=("chain", "draw", "low_k_bin"),
                                                  coords={"low_k_bin": np.arange(power.shape[-1])})
    summary = inf.convergence_summary(idata, var_names=["bias", "power_low_k"] if target.joint else ["power_low_k"])
    params = summary["parameters"]
    ess_power = min(v["ess_bulk"] for name, v in params.items() if name.startswith("power"))
    ess_bias = min((v["ess_bulk"] for name, v in params.items() if name.startswith("bias")), default=None)
    # Chains.n_gradient_evaluations counts per chain (warm-up included); the pooled ESS costs
    # the gradients of all chains.
    n_grad = float(chains.n_gradient_evaluations) * chains.config.num_chains
    return dict(ess_power=ess_power, ess_bias=ess_bias, max_rhat=summary["max_rhat"], n_gradients=n_grad,
                gradients_per_ess_power=n_grad / max(ess_power, 1e-9),
                gradients_per_ess_bias=None if ess_bias is None else n_grad / max(ess_bias, 1e-9),
                low_k=k.tolist())


_MEDIAN_KEYS = ("step_size", "acceptance", "ess_power", "ess_bias", "max_rhat", "n_gradients",
                "gradients_per_ess_power", "gradients_per_ess_bias", "power_cost_vs_none", "bias_cost_vs_none",
                "setup_gradients", "seconds")


def _median(rows, key):
    values = [r[key] for r in rows]
    return None if any(v is None for v in values) else float(np.median(values))


def sampling_table(args, theta, posterior, starts, joint):
    """Rows of one target (joint, or the field given the bias) for every seed and variant."""
    target = Target(posterior, theta, joint)
    header = (f"{'seed':>4} {'variant':>9} {'step':>7} {'accept':>6} {'div':>7} {'ESS P':>6} {'ESS b':>6} "
              f"{'R-hat':>6} {'grads':>7} {'grad/ESS P':>10} {'grad/ESS b':>10} {'P / none':>8} {'b / none':>8} "
              f"{'setup':>5} {'sec':>5}")
    print(header)
    rows = []
    # The blocked sampler has no field-alone form: it is the joint sampler with the bias moved apart.
    variants = [v for v in args.variants if joint or v != "gibbs"]
    for seed in args.seeds:
        state0, bias_scale, start_s = starts[seed]
        seed_rows = {}
        for variant in variants:
            if variant == "gibbs":
                chains, scales, setup, setup_s = gibbs_chains(args, target, state0, bias_scale, seed)
            else:
                bij, scales, setup, setup_s = bijector_for(variant, target, target.start(state0), bias_scale, seed,
                                                           args.n_probes)
                config = inf.SamplerConfig(kernel="hmc", num_chains=N_CHAINS, num_warmup=args.warmup,
                                           num_samples=args.samples, target_accept=args.target_accept,
                                           num_leapfrog_steps=args.leapfrog_steps, seed=seed,
                                           jit_compile=bool(args.sampler_xla),
                                           block_size=max(args.warmup, args.samples))
                chains = inf.sample(target.log_prob, target.start(state0), config, bijector=bij, progress=False)
            seed_rows[variant] = dict(
                seed=seed, variant=variant, step_size=float(chains.step_size),
                acceptance=float(np.mean(chains.sample_stats["acceptance_rate"])),
                n_divergent=int(np.sum(chains.sample_stats["diverging"])),
                n_warmup_divergent=int(chains.n_warmup_divergent), setup_gradients=setup * N_CHAINS,
                setup_s=setup_s, start_s=start_s, seconds=float(chains.seconds),
                field_scale_min=float(scales.min()), field_scale_max=float(scales.max()),
                **chain_costs(chains, target))
        base = seed_rows.get(BASELINE)
        for variant, row in seed_rows.items():
            for key in ("power", "bias"):
                mine = row[f"gradients_per_ess_{key}"]
                row[f"{key}_cost_vs_{BASELINE}"] = (None if base is None or mine is None
                                                    else mine / base[f"gradients_per_ess_{key}"])
            rows.append(row)
            print(_row_line(row), flush=True)
    if len(args.seeds) > 1:
        print("median over seeds (divergences: total):")
        for variant in variants:
            mine = [r for r in rows if r["variant"] == variant]
            med = {k: _median(mine, k) for k in _MEDIAN_KEYS}
            med.update(seed="all", variant=variant, n_divergent=sum(r["n_divergent"] for r in mine),
                       n_warmup_divergent=sum(r["n_warmup_divergent"] for r in mine))
            print(_row_line(med), flush=True)
    return rows


def sampling_tables(args, theta):
    posterior, _ = mock_posterior(args.sample_grid, args, theta, args.data_seed)
    n = args.sample_grid
    print(f"\n2. gradient evaluations per effective sample: self-consistent mock on a {n}^3 grid in "
          f"({posterior.forward.box_size:g} Mpc/h)^3, {posterior.catalogue.n_halos} halos above "
          f"{args.threshold:.3g} Msun/h, {posterior.size} parameters")
    print(f"   HMC, {N_CHAINS} chains, {args.warmup} warm-up + {args.samples} kept iterations of "
          f"{args.leapfrog_steps} leapfrog steps, target acceptance {args.target_accept}, "
          f"{'XLA' if args.sampler_xla else 'no XLA'}; chains start from the field MAP ({args.map_field_steps} "
          f"Adam steps); ESS: min bulk over the {N_LOW_K_BINS} lowest k bins' power (P) and over the bias "
          "parameters (b); grads: all chains, warm-up included")
    starts = {seed: chain_start(posterior, theta, seed, args.map_field_steps) for seed in args.seeds}
    out = dict(n_grid=n, box_size=posterior.forward.box_size, n_halos=posterior.catalogue.n_halos,
               n_parameters=posterior.size)
    print("2a. joint posterior of the white noise and the bias parameters")
    out["joint"] = sampling_table(args, theta, posterior, starts, joint=True)
    if args.field_given_bias:
        print("2b. the white noise alone, bias parameters fixed at the mock's true values (the field step of a "
              "blocked sampler)")
        out["field_given_bias"] = sampling_table(args, theta, posterior, starts, joint=False)
    print(f"   div: divergences while sampling / in warm-up; P / none, b / none: gradients per ESS relative to "
          f"'none' (below 1 is cheaper); setup: the curvature estimate's gradients ({args.n_probes} probes)")
    return out


def _row_line(r):
    def num(x, spec, width):
        return f"{x:{width}{spec}}" if x is not None else f"{'n/a':>{width}}"

    return (f"{r['seed']:>4} {r['variant']:>9} {r['step_size']:7.4f} {r['acceptance']:6.2f} "
            f"{r['n_divergent']:>3}/{r['n_warmup_divergent']:<3} {r['ess_power']:6.0f} {num(r['ess_bias'], '.0f', 6)} "
            f"{r['max_rhat']:6.3f} {r['n_gradients']:7.0f} {r['gradients_per_ess_power']:10.0f} "
            f"{num(r['gradients_per_ess_bias'], '.0f', 10)} {num(r['power_cost_vs_' + BASELINE], '.2f', 8)} "
            f"{num(r['bias_cost_vs_' + BASELINE], '.2f', 8)} {r['setup_gradients']:5.0f} {r['seconds']:5.0f}")


# -- command line ----------------------------------------------------------------------------------------------


def _int_list(name, text, minimum):
    try:
        values = [int(v) for v in str(text).split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"{name} must be comma-separated integers. Received: {name}={text!r}") from None
    if not values:
        raise ValueError(f"{name} must list at least one integer. Received: {name}={text!r}")
    return [check_int(name, v, minimum=minimum) for v in values]


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny grids and chains (< 2 min)")
    parser.add_argument("--grids", help=f"timing grids per side (default {DEFAULTS['grids']}; quick {QUICK['grids']})")
    parser.add_argument("--repeats", type=int, help="timed calls after the first (default 5)")
    parser.add_argument("--voxel", type=float, default=4.0, help="voxel side in Mpc/h: box = n * voxel")
    parser.add_argument("--threshold", type=float, default=2e12, help="halo mass threshold, Msun/h")
    parser.add_argument("--data-seed", type=int, default=0, help="seed of the white noise and the mock halos")
    parser.add_argument("--sample-grid", type=int, help="grid of the sampling comparison (default 16)")
    parser.add_argument("--seeds", help="comma-separated chain seeds (default 0)")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of "
                        f"{', '.join(VARIANTS)}")
    parser.add_argument("--warmup", type=int, help="warm-up iterations (default 150)")
    parser.add_argument("--samples", type=int, help="kept iterations (default 300)")
    parser.add_argument("--leapfrog-steps", type=int, help="HMC leapfrog steps per iteration (default 20)")
    parser.add_argument("--target-accept", type=float, default=0.75)
    parser.add_argument("--map-field-steps", type=int, help="Adam steps of the field MAP start (default 200)")
    parser.add_argument("--n-probes", type=int, help="Hutchinson probes of the curvature estimate (default 8)")
    parser.add_argument("--fit-steps", type=int, help="Adam steps of the bias fit (default 300)")
    parser.add_argument("--sampler-xla", type=int, choices=(0, 1),
                        help="compile the bias fit and the chains with XLA (default 1; quick 0)")
    parser.add_argument("--bias-kernel", default="slice",
                        help="the gibbs variant's bias kernel: slice, nuts or hmc (the study's bias_kernel)")
    parser.add_argument("--bias-steps", type=int,
                        help="bias transitions per sweep of the gibbs variant (default 10; quick 3)")
    parser.add_argument("--field-given-bias", action="store_true",
                        help="also sample the white noise alone, the bias fixed at its true values (2b)")
    parser.add_argument("--skip-timing", action="store_true")
    parser.add_argument("--skip-sampling", action="store_true")
    parser.add_argument("--out", help="JSON file for the results (written atomically)")
    args = parser.parse_args(argv)
    preset = QUICK if args.quick else DEFAULTS
    for key, value in preset.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    try:
        args.grids = _int_list("grids", args.grids, minimum=4)
        args.seeds = _int_list("seeds", args.seeds, minimum=0)
        args.repeats = check_int("repeats", args.repeats, minimum=1)
        args.voxel = check_float("voxel", args.voxel, positive=True)
        args.threshold = check_float("threshold", args.threshold, positive=True)
        args.data_seed = check_int("data_seed", args.data_seed, minimum=0)
        args.sample_grid = check_int("sample_grid", args.sample_grid, minimum=4)
        args.variants = [v.strip() for v in args.variants.split(",") if v.strip()]
        bad = [v for v in args.variants if v not in VARIANTS]
        if bad or not args.variants or len(set(args.variants)) != len(args.variants):
            raise ValueError(f"variants must be distinct names from {VARIANTS}. Received: variants={args.variants}")
        args.map_field_steps = check_int("map_field_steps", args.map_field_steps, minimum=1)
        args.n_probes = check_int("n_probes", args.n_probes, minimum=1)
        args.fit_steps = check_int("fit_steps", args.fit_steps, minimum=1)
        args.bias_steps = check_int("bias_steps", args.bias_steps, minimum=1)
        # The sampler's own checks (warm-up 0 or >= 20, samples >= 4, ...), before any work.
        inf.SamplerConfig(kernel="hmc", num_chains=N_CHAINS, num_warmup=args.warmup, num_samples=args.samples,
                          num_leapfrog_steps=args.leapfrog_steps, target_accept=args.target_accept)
        if "gibbs" in args.variants:
            gibbs_config(args, args.sample_grid, args.sample_grid * args.voxel, args.seeds[0])
        if args.out is not None:
            args.out = check_output_path("out", args.out)
    except ValueError as err:
        message = str(err)
        for theirs, ours in (("num_warmup", "warmup"), ("num_samples", "samples"), ("n_warmup", "warmup"),
                             ("n_samples", "samples"), ("num_leapfrog_steps", "leapfrog_steps")):
            message = message.replace(theirs, ours)
        parser.error(message)
    return args


def main(argv=None):
    args = parse_args(argv)
    t0 = time.perf_counter()
    print(f"machine: {machine_info()}")
    theta, fit = fitted_theta(args)
    print(f"bias parameters: MAP fit ({args.fit_steps} Adam steps + L-BFGS, {fit['seconds']:.0f} s) to "
          f"{fit['n_halos']} synthetic halos (Sheth-Tormen n(>{args.threshold:.3g}) x V = {fit['n_expected']:.0f}) "
          f"on the 2LPT density of a {args.sample_grid}^3 white-noise draw; ln posterior {fit['log_posterior']:.1f}",
          flush=True)
    timing = None if args.skip_timing else timing_table(args, theta)
    sampling = None if args.skip_sampling else sampling_tables(args, theta)
    total = time.perf_counter() - t0
    print(f"\ntotal {total:.0f} s")
    if args.out is not None:
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        write_json_atomic(args.out, jsonable({
            "benchmark": "bench_field", "machine": machine_info(),
            "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "settings": settings, "n_chains": N_CHAINS, "bias_fit": dict(fit, theta=theta.tolist()),
            "timing": timing, "sampling": sampling, "total_s": total,
            "reference": "Simon-Onfroy, Lanusse & de Mattia (2025), arXiv:2504.20130"}))
        print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
