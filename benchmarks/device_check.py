"""The prepared GPU check: the four throughputs that paper-scale runs need, under JAX, with no TensorFlow.

Run by ``benchmarks/device_check.sh`` (which installs the carried wheels and
sets the environment); on its own::

    KERAS_BACKEND=jax python benchmarks/device_check.py [--tiny] [--out device_check.json]
                                                       [--sections cnn,subbox,bias,field] [size flags]

Sections (each timed and guarded: one that fails prints its error and the
others still run; the exit status is 1 if any failed, or if a TensorFlow
module was loaded):

``cnn``
    Training samples/s of the deep-halo CNN of Lucie-Smith, Peiris, Pontzen,
    Nord & Thiyagalingam (2020), "Deep learning insights into cosmological
    structure formation", arXiv:2011.10577 (:func:`tfhalo.models.halo_cnn`,
    75^3 inputs, batch 64) for each Keras dtype policy of ``--cnn-policies``
    (``float32`` = mixed precision off; ``mixed_float16`` /
    ``mixed_bfloat16`` = on): ``--cnn-warmup`` steps (the first one compiles)
    then ``--cnn-steps`` timed ``train_on_batch`` steps on random data that
    already sits on the device.
``subbox``
    Boxes/s of :class:`tfhalo.data.device.DeviceSubboxes` (a 256^3 float32
    field resident on the device, 75^3 boxes, raw and shell-averaged) for
    batches of ``--subbox-batch`` random sites, beside the NumPy path
    (:class:`~tfhalo.data.subboxes.SubboxExtractor` + :func:`~tfhalo.data.averaging.shell_average`)
    on the same sites, and the largest difference between the two paths' boxes.
``bias``
    The neural bias model of Charnock, Lavaux, Wandelt, Sarma Boruah, Jasche &
    Hudson (2020), "Neural physical engines for inferring the halo mass
    distribution function", MNRAS 494, 50, arXiv:1909.06379
    (:func:`tfhalo.bias.build_model` + :class:`tfhalo.bias.NeuralBiasLikelihood`,
    float64) on synthetic log-normal grids: log-posterior gradients/s of the
    batched chains under ``jax.jit``, then :func:`tfhalo.inference.sample`
    (HMC by default, as the study's presets) from a MAP found with SciPy's
    L-BFGS on the jitted gradient (``--bias-map fit_map``: the study's
    :func:`tfhalo.bias.fit.fit_map`), in the coordinates of
    :func:`tfhalo.inference.affine_preconditioner` (the Hessian by
    ``jax.hessian``). The sampler runs twice with the same settings and
    another seed: the second run reuses the compiled kernels, so its gradients/s
    and ESS/s (min bulk / tail ESS of ArviZ via
    :func:`tfhalo.inference.convergence_summary`) exclude compilation; the
    first run's extra seconds are reported as ``compile_s``.
``field``
    Time of the field-level log density and its gradient
    (:class:`tfhalo.field.forward.LPTForwardModel` 2LPT + :class:`tfhalo.field.posterior.FieldLevelPosterior`,
    float64, 4 Mpc/h voxels, ``--field-chains`` chains) under ``jax.jit``
    on each grid of ``--field-grids``: first call (trace + compile) and the
    median of ``--field-repeats`` calls.

Sizes are flags; ``--tiny`` sets every size small (15^3 CNN boxes, batch 4,
a 32^3 sub-box field, 8^3 and 16^3 field-level grids, short chains) so that
the whole check runs on a laptop CPU in one to two minutes. An explicit flag
overrides ``--tiny``.

The CNN and sub-box sections run first, with JAX's 64-bit mode off (as the
deep-halo study runs); the bias and field sections import
:mod:`tfhalo.backend`, which switches it on (their states are float64).

Results go to stdout and, after every section (so a run stopped by a timeout
keeps what it measured), to ``--out`` (default ``$OUT/device_check.json`` when
``$OUT`` is set) through :func:`tfhalo.atomic.write_json_atomic`.

``TFHALO_BLOCK_TENSORFLOW=1`` makes ``import tensorflow`` fail from the start
(``sys.modules["tensorflow"] = None``), so a machine with TensorFlow installed
behaves like one without it.
"""

from __future__ import annotations

import os
import sys

if os.environ.get("TFHALO_BLOCK_TENSORFLOW", "") not in ("", "0"):
    sys.modules["tensorflow"] = None  # `import tensorflow` then raises ImportError, as on a machine without it
os.environ.setdefault("KERAS_BACKEND", "jax")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import argparse  # noqa: E402
import datetime  # noqa: E402
import importlib.util  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
import traceback  # noqa: E402
from pathlib import Path  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

SECTIONS = ("cnn", "subbox", "bias", "field")
# Halos per (Mpc/h)^3 above 2e12 Msun/h at z = 0 (about 500 in a (64 Mpc/h)^3 box: Sheth & Tormen
# 1999 as benchmarks/bench_field.py computes it), so the synthetic catalogues have paper-like counts.
HALO_DENSITY = 1.9e-3
THRESHOLD = 2e12
VOXEL = 4.0  # Mpc/h, the paper's 3.9 Mpc/h voxel rounded

# Full sizes (the GPU check) and --tiny sizes; a flag given explicitly overrides both.
FULL = dict(cnn_size=75, cnn_batch=64, cnn_warmup=3, cnn_steps=10, cnn_policies="float32,mixed_float16",
            subbox_field=256, subbox_size=75, subbox_batch=64, subbox_repeats=10, subbox_numpy=1,
            bias_grid=32, bias_sims=2, bias_chains=4, bias_warmup=100, bias_samples=200, bias_kernel="hmc",
            bias_leapfrog=30, bias_map_steps=300, bias_rate_seconds=3.0,
            field_grids="64,128", field_chains=2, field_repeats=5)
TINY = dict(cnn_size=15, cnn_batch=4, cnn_warmup=2, cnn_steps=3,
            subbox_field=32, subbox_size=15, subbox_batch=8, subbox_repeats=3,
            bias_grid=6, bias_sims=1, bias_chains=2, bias_warmup=20, bias_samples=20, bias_leapfrog=5,
            bias_map_steps=30, bias_rate_seconds=0.5,
            field_grids="8,16", field_chains=2, field_repeats=2)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--tiny", action="store_true", help="small sizes: proves the check end to end on a CPU")
    p.add_argument("--out", default=None, help="JSON file of the results (default $OUT/device_check.json)")
    p.add_argument("--sections", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--cnn-size", type=int, help="CNN input box side (75)")
    p.add_argument("--cnn-batch", type=int, help="training batch (64)")
    p.add_argument("--cnn-warmup", type=int, help="untimed steps, the first compiles (3)")
    p.add_argument("--cnn-steps", type=int, help="timed steps (10)")
    p.add_argument("--cnn-policies", help="Keras dtype policies (float32,mixed_float16; mixed_bfloat16 too)")
    p.add_argument("--subbox-field", type=int, help="field side (256)")
    p.add_argument("--subbox-size", type=int, help="box side (75)")
    p.add_argument("--subbox-batch", type=int, help="sites per call (64)")
    p.add_argument("--subbox-repeats", type=int, help="timed calls (10)")
    p.add_argument("--subbox-numpy", type=int, help="1: time the NumPy path on the same sites too (1)")
    p.add_argument("--bias-grid", type=int, help="voxels per side of each density grid (32)")
    p.add_argument("--bias-sims", type=int, help="density grids (2)")
    p.add_argument("--bias-chains", type=int, help="chains (4)")
    p.add_argument("--bias-warmup", type=int, help="warm-up steps per chain (100)")
    p.add_argument("--bias-samples", type=int, help="draws per chain (200)")
    p.add_argument("--bias-kernel", choices=("hmc", "nuts"), help="sampler kernel (hmc, as the study's presets)")
    p.add_argument("--bias-leapfrog", type=int, help="HMC leapfrog steps (30)")
    p.add_argument("--bias-map", choices=("lbfgs", "fit_map"), default="lbfgs",
                   help="how the MAP start is found (lbfgs: SciPy on the jitted gradient; fit_map: the study's)")
    p.add_argument("--bias-map-steps", type=int, help="L-BFGS iterations (fit_map: Adam steps) of the MAP start (300)")
    p.add_argument("--bias-rate-seconds", type=float, help="seconds of the gradients/s loop (3)")
    p.add_argument("--field-grids", help="comma-separated grid sides (64,128)")
    p.add_argument("--field-chains", type=int, help="chains per evaluation (2, the study's)")
    p.add_argument("--field-repeats", type=int, help="timed calls per grid (5)")
    args = p.parse_args(argv)
    for key, value in {**FULL, **(TINY if args.tiny else {})}.items():
        if getattr(args, key) is None:
            setattr(args, key, value)

    from tfhalo.validation import check_float, check_int

    try:
        args.sections = [s.strip() for s in args.sections.split(",") if s.strip()]
        bad = [s for s in args.sections if s not in SECTIONS]
        if bad or not args.sections:
            raise ValueError(f"sections must be a comma-separated subset of {SECTIONS}. "
                             f"Received: sections={','.join(args.sections)!r}")
        check_int("seed", args.seed, minimum=0)
        for name in ("cnn_size", "cnn_batch", "cnn_steps", "subbox_size", "subbox_batch", "subbox_repeats",
                     "bias_sims", "bias_chains", "bias_samples", "bias_leapfrog", "field_chains", "field_repeats"):
            check_int(name, getattr(args, name), minimum=1)
        check_int("cnn_warmup", args.cnn_warmup, minimum=1)
        check_int("subbox_field", args.subbox_field, minimum=args.subbox_size)
        check_int("subbox_numpy", args.subbox_numpy, minimum=0, maximum=1)
        check_int("bias_grid", args.bias_grid, minimum=3)
        check_int("bias_map_steps", args.bias_map_steps, minimum=1)
        check_float("bias_rate_seconds", args.bias_rate_seconds, positive=True)
        args.cnn_policies = [s.strip() for s in args.cnn_policies.split(",") if s.strip()]
        for policy in args.cnn_policies:
            if policy not in ("float32", "mixed_float16", "mixed_bfloat16"):
                raise ValueError("cnn_policies must be float32, mixed_float16 or mixed_bfloat16. "
                                 f"Received: cnn_policies={policy!r}")
        args.field_grids = [check_int("field_grids", int(s), minimum=4) for s in args.field_grids.split(",")]
        # SamplerConfig's rules, checked here because importing tfhalo.inference switches JAX to 64 bits.
        check_int("bias_samples", args.bias_samples, minimum=4)
        if check_int("bias_warmup", args.bias_warmup, minimum=0) in range(1, 20):
            raise ValueError(f"bias_warmup must be 0 or at least 20. Received: bias_warmup={args.bias_warmup}")
    except ValueError as err:
        p.error(str(err))
    if args.out is None and os.environ.get("OUT"):
        args.out = str(Path(os.environ["OUT"]) / "device_check.json")
    return args


# -- helpers -------------------------------------------------------------------------------------------------


def block(x):
    """Wait for ``x`` (a nest of JAX arrays) to be computed on the device; returns it."""
    import jax

    return jax.block_until_ready(x)


def rate_loop(fn, seconds, min_calls=2):
    """Calls of ``fn()`` (each waited for) per second over at least ``seconds`` and ``min_calls``."""
    n, t0 = 0, time.perf_counter()
    while n < min_calls or time.perf_counter() - t0 < seconds:
        block(fn())
        n += 1
    return n / (time.perf_counter() - t0), n


def median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        block(fn())
        times.append(time.perf_counter() - t0)
    return float(np.median(times)), times


def jsonable(value):
    """``value`` with NumPy scalars and arrays as Python numbers and lists, non-finite floats as None."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
    if isinstance(value, (np.integer, np.bool_)):
        return value.item()
    if isinstance(value, (float, np.floating)):
        value = float(value)
        return value if math.isfinite(value) else None
    return value


def say(text):
    print(text, flush=True)


# -- sections ------------------------------------------------------------------------------------------------


def section_cnn(args):
    """Training samples/s of the paper CNN for each dtype policy."""
    import jax
    import keras

    from tfhalo.models import halo_cnn

    rng = np.random.default_rng(args.seed)
    s, b = args.cnn_size, args.cnn_batch
    # The batch sits on the device, as a device-side data path delivers it: the rate is the model's alone.
    x = jax.device_put(rng.normal(size=(b, s, s, s, 1)).astype(np.float32))
    y = jax.device_put(rng.uniform(-0.9, 0.9, size=(b, 1)).astype(np.float32))
    out = {"input": [s, s, s, 1], "batch": b, "warmup_steps": args.cnn_warmup, "timed_steps": args.cnn_steps,
           "jax_enable_x64": bool(jax.config.jax_enable_x64)}
    previous = keras.mixed_precision.dtype_policy().name
    try:
        for policy in args.cnn_policies:
            keras.mixed_precision.set_dtype_policy(policy)
            keras.backend.clear_session()
            model = halo_cnn(input_shape=(s, s, s, 1), seed=args.seed)
            t0 = time.perf_counter()
            first = model.train_on_batch(x, y, return_dict=True)
            compile_s = time.perf_counter() - t0
            for _ in range(args.cnn_warmup - 1):
                model.train_on_batch(x, y, return_dict=True)
            t0 = time.perf_counter()
            for _ in range(args.cnn_steps):
                logs = model.train_on_batch(x, y, return_dict=True)
            seconds = time.perf_counter() - t0
            loss = float(logs["loss"])
            row = dict(samples_per_s=b * args.cnn_steps / seconds, step_s=seconds / args.cnn_steps,
                       first_step_s=compile_s, loss_first=float(first["loss"]), loss_last=loss,
                       n_parameters=int(sum(np.prod(w.shape) for w in model.trainable_weights)),
                       optimizer=type(model.optimizer).__name__)
            if not math.isfinite(loss):
                raise FloatingPointError(f"non-finite training loss under policy {policy}: {loss}")
            out[policy] = row
            say(f"  cnn {policy:>14}: {row['samples_per_s']:9.1f} samples/s  ({1e3 * row['step_s']:.1f} ms/step, "
                f"first step {compile_s:.1f} s, loss {row['loss_first']:.3g} -> {loss:.3g}, {row['optimizer']})")
    finally:
        keras.mixed_precision.set_dtype_policy(previous)
        keras.backend.clear_session()
    if "float32" in out:
        for policy in args.cnn_policies:
            if policy != "float32" and policy in out:
                out[policy]["speedup_vs_float32"] = out[policy]["samples_per_s"] / out["float32"]["samples_per_s"]
    return out


def section_subbox(args):
    """Device-side sub-box rate (raw and averaged), beside the NumPy path on the same sites."""
    import jax

    from tfhalo.data.averaging import shell_average
    from tfhalo.data.device import DeviceSubboxes
    from tfhalo.data.subboxes import SubboxExtractor

    rng = np.random.default_rng(args.seed)
    n, s, b = args.subbox_field, args.subbox_size, args.subbox_batch
    field = rng.normal(size=(n, n, n)).astype(np.float32)
    t0 = time.perf_counter()
    device = DeviceSubboxes(field, size=s)
    block(device._field)
    upload_s = time.perf_counter() - t0
    batches = [rng.integers(0, n, size=(b, 3)) for _ in range(args.subbox_repeats)]
    out = {"field": [n, n, n], "size": s, "batch": b, "upload_s": upload_s,
           "devices": [str(d) for d in jax.devices()]}
    for average in (False, True):
        kind = "averaged" if average else "raw"
        t0 = time.perf_counter()
        block(device(batches[0], average=average))
        first_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for sites in batches:
            boxes = block(device(sites, average=average))
        rate = b * len(batches) / (time.perf_counter() - t0)
        row = dict(device_boxes_per_s=rate, first_call_s=first_s)
        if args.subbox_numpy:
            extractor = SubboxExtractor(field, size=s)
            sites = batches[-1]
            t0 = time.perf_counter()
            ref = extractor(sites)
            if average:
                ref = shell_average(ref)
            row["numpy_boxes_per_s"] = b / (time.perf_counter() - t0)
            row["max_abs_diff_vs_numpy"] = float(np.max(np.abs(np.asarray(boxes, np.float64) - ref)))
            row["speedup_vs_numpy"] = rate / row["numpy_boxes_per_s"]
        out[kind] = row
        extra = (f", NumPy {row['numpy_boxes_per_s']:.1f} boxes/s (x{row['speedup_vs_numpy']:.1f}), "
                 f"max |device - NumPy| {row['max_abs_diff_vs_numpy']:.2g}") if args.subbox_numpy else ""
        say(f"  subbox {kind:>8}: {rate:9.1f} boxes/s on the device (first call {first_s:.2f} s){extra}")
    return out


def synthetic_bias_data(seed, n):
    """A log-normal density grid with halos Poisson-drawn from a density-dependent rate (as bench_bias.py)."""
    from scipy.ndimage import gaussian_filter

    from tfhalo.bias.fields import make_bias_data
    from tfhalo.sim.grid import wrap_periodic

    box = VOXEL * n
    n_halos = HALO_DENSITY * box**3
    rng = np.random.default_rng([seed, 11])
    g = gaussian_filter(rng.normal(size=(n, n, n)), 0.8, mode="wrap")
    rho = np.exp(0.9 * g / g.std())
    rho /= rho.mean()
    lam = rho**1.8 * np.exp(-0.2 / rho)
    counts = rng.poisson(lam * n_halos / lam.sum())
    vox = np.repeat(np.arange(n**3), counts.ravel())
    centres = (np.stack(np.unravel_index(vox, (n,) * 3), -1) + rng.uniform(-0.5, 0.5, size=(vox.size, 3))) * box / n
    ln_m = np.log(THRESHOLD) + rng.exponential(0.7 + 0.3 * np.log(rho.ravel()[vox]).clip(0))
    return make_bias_data(rho, wrap_periodic(centres, box), np.exp(ln_m), box, THRESHOLD)


def informed_start(likelihood, rng, jitter=0.1):
    """``(theta, source)``: the library's seeded start (:func:`tfhalo.bias.fit.informed_start`)."""
    from tfhalo.bias.fit import informed_start as library

    return library(likelihood, rng, jitter=jitter), "tfhalo.bias.fit.informed_start"


def map_start(like, theta0, args):
    """``(theta_MAP, Hessian of -ln p there, how)``: the sampler's start and preconditioner.

    ``--bias-map lbfgs`` (default): SciPy's L-BFGS on the jitted gradient and a jitted
    ``jax.hessian``, seconds at any size. ``--bias-map fit_map``: the study's
    :func:`tfhalo.bias.fit.fit_map` (Adam + L-BFGS polish, one start), slower, and
    falling back to the former where it fails.
    """
    import jax
    from scipy import optimize

    from tfhalo import backend

    reason = "--bias-map lbfgs"
    if args.bias_map == "fit_map":
        try:
            from tfhalo.bias.fit import fit_map

            fit = fit_map(like, steps=args.bias_map_steps, n_starts=1, seed=args.seed, progress=False,
                          jit_compile=True, mirror=False)
            return (np.asarray(fit.theta, np.float64), np.asarray(fit.hessian, np.float64),
                    f"tfhalo.bias.fit.fit_map ({args.bias_map_steps} Adam steps + L-BFGS)")
        except Exception as err:  # report it, and fall back to L-BFGS
            reason = f"fit_map failed ({type(err).__name__}: {str(err)[:200]})"
            say(f"  bias: {reason}; SciPy L-BFGS instead")
    neg = backend.jit(lambda t: backend.value_and_gradient(lambda u: -like.log_posterior(u), t))

    def objective(t):
        v, g = neg(backend.constant(t))
        return float(v), np.asarray(g, np.float64)

    res = optimize.minimize(objective, theta0, jac=True, method="L-BFGS-B", options=dict(maxiter=args.bias_map_steps))
    theta = np.asarray(res.x, np.float64)
    hess = backend.jit(jax.hessian(lambda t: -like.log_posterior(t)))(backend.constant(theta))
    return theta, np.asarray(hess, np.float64), f"SciPy L-BFGS ({res.nit} iterations); {reason}"


def section_bias(args):
    """Gradients/s and ESS/s of the bias-model sampler under JAX."""
    import jax

    import tfhalo.inference as inf
    from tfhalo import backend
    from tfhalo.bias.likelihood import NeuralBiasLikelihood
    from tfhalo.bias.model import build_model

    out = {"backend": backend.NAME, "jax_enable_x64": bool(jax.config.jax_enable_x64)}
    config = inf.SamplerConfig(kernel=args.bias_kernel, num_chains=args.bias_chains, num_warmup=args.bias_warmup,
                               num_samples=args.bias_samples, num_leapfrog_steps=args.bias_leapfrog,
                               target_accept=0.9, seed=args.seed, jit_compile=True,
                               block_size=max(args.bias_warmup, args.bias_samples))
    t0 = time.perf_counter()
    data = [synthetic_bias_data(args.seed + i, args.bias_grid) for i in range(args.bias_sims)]
    model = build_model(data[0].log_mass_threshold, n_grid=args.bias_grid, dtype="float64")
    like = NeuralBiasLikelihood(model, data)
    theta0, start = informed_start(like, np.random.default_rng(args.seed))
    theta0 = np.asarray(theta0, np.float64)
    lp0 = like.log_posterior(backend.constant(theta0))
    out.update(n_grid=args.bias_grid, n_sims=args.bias_sims, n_halos=like.n_halos, n_parameters=int(theta0.size),
               log_posterior_dtype=str(lp0.dtype), start=start, setup_s=time.perf_counter() - t0)
    if str(lp0.dtype) != "float64" or not np.isfinite(float(lp0)):
        raise FloatingPointError(f"log_posterior at the start is {float(lp0)} of dtype {lp0.dtype}; "
                                 "float64 and finite expected")
    say(f"  bias: {args.bias_sims} x {args.bias_grid}^3 voxels, {like.n_halos} halos, {theta0.size} parameters, "
        f"ln p(start) {float(lp0):.1f} ({lp0.dtype}; start: {start})")

    t0 = time.perf_counter()
    theta_map, hess, how = map_start(like, theta0, args)
    lp_map = float(like.log_posterior(backend.constant(theta_map)))
    out.update(map_s=time.perf_counter() - t0, log_posterior_map=lp_map, map_method=how)
    say(f"  bias: MAP ln p {lp_map:.1f} by {how} ({out['map_s']:.1f} s, compilation included)")

    # Gradients/s of the batched target, as the sampler calls it.
    c = args.bias_chains
    target = inf.batched(like.log_posterior, c)
    value_and_grad = backend.jit(lambda t: backend.value_and_gradient(target, t))
    states = backend.constant(np.tile(theta_map, (c, 1)))
    t0 = time.perf_counter()
    block(value_and_grad(states))
    first_s = time.perf_counter() - t0
    calls_per_s, n_calls = rate_loop(lambda: value_and_grad(states), args.bias_rate_seconds)
    out.update(gradient_first_call_s=first_s, gradients_per_s=calls_per_s * c, batched_calls_per_s=calls_per_s)
    say(f"  bias: {calls_per_s * c:.0f} gradients/s ({c} chains batched, jax.jit; {n_calls} calls; first call "
        f"{first_s:.1f} s)")

    floor = 1.0 / like.prior_scale**2
    try:
        bijector = inf.affine_preconditioner(theta_map, hess, floor=floor)
        out["coordinates"] = "affine (Hessian at the MAP)"
    except np.linalg.LinAlgError as err:  # a start far from the MAP can give a useless Hessian
        bijector = backend.tfp.bijectors.Identity()
        out["coordinates"] = f"identity (affine_preconditioner failed: {err})"
    z = 0.5 * np.random.default_rng(args.seed).normal(size=(c, theta_map.size))
    init = np.asarray(bijector.forward(backend.constant(z)), np.float64)
    runs = []
    for run, seed in enumerate((args.seed, args.seed + 1)):
        cfg = config if run == 0 else type(config)(**{**config.to_dict(), "seed": seed})
        chains = inf.sample(target, init, cfg, bijector=bijector, progress=False)
        summary = inf.convergence_summary(chains.to_inference_data())
        ess = min(summary["min_ess_bulk"], summary["min_ess_tail"])
        grads = chains.n_gradient_evaluations * c
        runs.append(dict(seed=seed, seconds=chains.seconds, n_gradients=grads, gradients_per_s=grads / chains.seconds,
                         min_ess_bulk=summary["min_ess_bulk"], min_ess_tail=summary["min_ess_tail"],
                         ess_per_s=ess / chains.seconds, max_rhat=summary["max_rhat"],
                         n_divergent=summary["n_divergent"], step_size=chains.step_size,
                         acceptance=float(np.mean(chains.sample_stats["acceptance_rate"]))))
    timed = runs[1]
    out.update(sampler=config.to_dict(), runs=runs, compile_s=runs[0]["seconds"] - timed["seconds"],
               sampler_gradients_per_s=timed["gradients_per_s"], ess_per_s=timed["ess_per_s"])
    say(f"  bias: {config.kernel.upper()} {c} chains x ({config.num_warmup} warm-up + {config.num_samples}), "
        f"leapfrog {config.num_leapfrog_steps}: {timed['gradients_per_s']:.0f} gradients/s, ESS/s "
        f"{timed['ess_per_s']:.2f} (min ESS bulk {timed['min_ess_bulk']:.0f}, tail {timed['min_ess_tail']:.0f}, "
        f"R-hat {timed['max_rhat']:.3f}, {timed['n_divergent']} divergent, accept {timed['acceptance']:.2f}) in "
        f"{timed['seconds']:.1f} s; compilation {out['compile_s']:.1f} s")
    return out


def field_posterior(n, seed, threshold=THRESHOLD):
    """A :class:`FieldLevelPosterior` on ``n^3`` voxels of 4 Mpc/h, halos Poisson-drawn on the 2LPT density."""
    import jax.numpy as jnp

    from tfhalo.bias.likelihood import NeuralBiasLikelihood
    from tfhalo.bias.model import build_model
    from tfhalo.field.forward import LPTForwardModel
    from tfhalo.field.posterior import FieldCatalogue, FieldLevelPosterior
    from tfhalo.sim.grid import wrap_periodic
    from tfhalo.sim.ics import white_noise

    box = VOXEL * n
    forward = LPTForwardModel(n, box)
    omega = white_noise(n, seed)
    rho = np.maximum(np.asarray(forward.density(jnp.asarray(omega[None]))[0], np.float64), 1e-3)
    rng = np.random.default_rng([seed, 7])
    rate = rho**1.8 * np.exp(-0.2 / rho)
    counts = rng.poisson(rate * HALO_DENSITY * box**3 / rate.sum())
    vox = np.repeat(np.arange(n**3), counts.ravel())
    sites = np.stack(np.unravel_index(vox, (n,) * 3), -1).astype(np.float64)
    centres = wrap_periodic((sites + rng.uniform(-0.5, 0.5, size=sites.shape)) * box / n, box)
    masses = threshold * np.exp(rng.exponential(0.7 + 0.3 * np.log(rho.ravel()[vox]).clip(0)))
    catalogue = FieldCatalogue.from_halos(centres, masses, box, n, threshold)
    model = build_model(math.log(threshold), n, dtype="float64")
    posterior = FieldLevelPosterior(forward, model, catalogue)
    # Bias parameters with the catalogue's halo density (the layer defaults predict ~1e16 times too many halos).
    theta, _ = informed_start(NeuralBiasLikelihood(model, catalogue.to_bias_data(rho)), np.random.default_rng(seed))
    return posterior, omega, np.asarray(theta, np.float64)


def section_field(args):
    """Field-level log density and gradient time under jax.jit at each grid.

    Uses JAX directly rather than :mod:`tfhalo.backend` (which loads TFP's JAX
    substrate): the field-level model needs no TFP, so this section still
    measures where TFP does not import with the machine's JAX.
    """
    import jax
    import jax.numpy as jnp

    # float64 states, as tfhalo.backend sets it for the samplers.
    jax.config.update("jax_enable_x64", True)

    def value_and_gradient(fn, x):
        value, pullback = jax.vjp(fn, x)
        return value, pullback(jnp.ones_like(value))[0]

    out = {"voxel_mpc_h": VOXEL, "chains": args.field_chains, "jax_enable_x64": bool(jax.config.jax_enable_x64)}
    for n in args.field_grids:
        t0 = time.perf_counter()
        posterior, omega, theta = field_posterior(n, args.seed + n)
        c = args.field_chains
        state = posterior.join(np.repeat(omega[None], c, 0), np.repeat(theta[None], c, 0))
        setup_s = time.perf_counter() - t0
        log_prob = jax.jit(posterior.log_prob)
        value_and_grad = jax.jit(lambda x: value_and_gradient(posterior.log_prob, x))
        t0 = time.perf_counter()
        lp = block(log_prob(state))
        lp_first = time.perf_counter() - t0
        t0 = time.perf_counter()
        value, grad = block(value_and_grad(state))
        grad_first = time.perf_counter() - t0
        lp_s, _ = median_time(lambda: log_prob(state), args.field_repeats)
        grad_s, times = median_time(lambda: value_and_grad(state), args.field_repeats)
        finite = bool(np.all(np.isfinite(np.asarray(value))) and np.all(np.isfinite(np.asarray(grad))))
        row = dict(n_grid=n, n_halos=posterior.catalogue.n_halos, state_size=posterior.size, dtype=str(value.dtype),
                   setup_s=setup_s, log_prob_first_s=lp_first, log_prob_s=lp_s, gradient_first_s=grad_first,
                   gradient_s=grad_s, gradient_times_s=times, log_prob=np.asarray(lp), finite=finite)
        out[f"{n}^3"] = row
        say(f"  field {n:>4}^3: log_prob+gradient {1e3 * grad_s:9.2f} ms ({c} chains; first call {grad_first:.1f} s), "
            f"log_prob {1e3 * lp_s:.2f} ms; {row['n_halos']} halos, {value.dtype}")
        if not finite:
            raise FloatingPointError(f"non-finite log_prob or gradient at {n}^3")
    return out


RUNNERS = {"cnn": section_cnn, "subbox": section_subbox, "bias": section_bias, "field": section_field}


def tensorflow_modules():
    """Names of loaded TensorFlow modules (TFP's own ``tensorflow_probability`` package excluded)."""
    return sorted(k for k, v in sys.modules.items()
                  if v is not None and (k == "tensorflow" or k.startswith("tensorflow.") or k.startswith("tf_keras")))


def environment():
    import jax
    import keras

    info = dict(python=platform.python_version(), platform=platform.platform(), jax=jax.__version__,
                keras=keras.__version__, keras_backend=keras.backend.backend(),
                devices=[f"{d.platform}:{getattr(d, 'device_kind', '')}" for d in jax.devices()],
                tensorflow_blocked=sys.modules.get("tensorflow", 0) is None,
                time=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"))
    spec = importlib.util.find_spec("tensorflow_probability")
    info.update(keras_file=keras.__file__, tfp_file=spec.origin if spec else None)
    try:
        from importlib.metadata import version

        info["tfp"] = version("tfp-nightly")
    except Exception:  # tfp-nightly absent: the bias and field sections say why when they import it
        info["tfp"] = None
    return info


def main(argv=None):
    args = parse_args(argv)
    import keras

    from tfhalo.atomic import write_json_atomic

    if keras.backend.backend() != "jax":
        say(f"device_check needs KERAS_BACKEND=jax. Received: Keras backend {keras.backend.backend()!r}")
        return 2
    t_start = time.perf_counter()
    result = dict(environment=environment(), tiny=bool(args.tiny), args={k: v for k, v in vars(args).items()},
                  sections={}, errors={})
    say(f"device_check: jax {result['environment']['jax']} on {result['environment']['devices']}, keras "
        f"{result['environment']['keras']}, tfp {result['environment']['tfp']}, python "
        f"{result['environment']['python']}{' (tiny sizes)' if args.tiny else ''}")

    def save():
        result["seconds"] = time.perf_counter() - t_start
        if args.out:
            write_json_atomic(args.out, jsonable(result))

    # Fixed order: the sections that do not need 64-bit JAX run before tfhalo.backend switches it on.
    for name in SECTIONS:
        if name not in args.sections:
            continue
        say(f"[{name}]")
        t0 = time.perf_counter()
        try:
            result["sections"][name] = RUNNERS[name](args)
            status = "ok"
        except Exception as err:  # each section is guarded so that the others still run
            result["errors"][name] = "".join(traceback.format_exception(err)[-6:])
            status = f"FAILED: {type(err).__name__}: {err}"
            traceback.print_exc()
        seconds = time.perf_counter() - t0
        result.setdefault("section_seconds", {})[name] = seconds
        say(f"[{name}] {status} ({seconds:.1f} s)")
        save()

    loaded = tensorflow_modules()
    result["tensorflow_modules_loaded"] = loaded
    result["third_party_modules"] = sorted({k.split(".")[0] for k, v in sys.modules.items() if v is not None
                                            and not k.startswith("_") and "." not in k
                                            and k not in sys.stdlib_module_names})
    if loaded:
        result["errors"]["tensorflow"] = f"TensorFlow modules were loaded: {loaded[:5]}"
    result["ok"] = not result["errors"]
    save()
    say(f"device_check: {'all sections ok' if result['ok'] else 'FAILED: ' + ', '.join(result['errors'])}; "
        f"no TensorFlow module loaded: {not loaded}; {result['seconds']:.0f} s"
        + (f"; results in {args.out}" if args.out else ""))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
