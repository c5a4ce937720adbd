"""Benchmark of the field-level forward model: the backend's own 3-D FFT and one displacement transform.

The gradient of the field-level posterior (:class:`tfhalo.field.posterior.FieldLevelPosterior`)
is mostly the 2LPT forward model's (:class:`tfhalo.field.forward.LPTForwardModel`),
and that is mostly 3-D FFTs on the particle lattice.  Two choices cut them:

* ``backend_fft``: :func:`tfhalo.field.fft.rfft3` and ``irfft3`` call the
  backend's own 3-D transform (``jax.numpy.fft``; TensorFlow's ``rfft3d`` and
  ``irfft3d`` with tfhalo's custom gradients) instead of Keras's 1-D real and
  2-D complex transforms with axis transposes between them;
* ``one_displacement``: the positions ``q + D1 psi1 + D2 psi2`` take one
  inverse transform of ``D1 delta_k - D2 source_k`` (the displacements are
  linear in their spectra) instead of one per order: 3 of the 13 transforms of
  a 2LPT evaluation.

A third, optional, choice is the arithmetic: ``LPTForwardModel(dtype="float32")``
(the ``field_level`` study's ``forward_dtype``), whose FFTs and cloud-in-cell
sums cost less than float64's while the chains' states stay float64.

This script times, in one process and on the same inputs, the value and
gradient of ``sum(ln rho(omega))`` (the log-density grid the bias model reads)
for 2 chains, compiled (``jax.jit``, or ``tf.function`` with XLA), under five
variants: ``baseline`` (neither choice), each choice alone, ``both`` (what
tfhalo runs by default), all in float64, and ``both_float32``, both choices
with a float32 forward model (its gradient differs from the baseline's by
float32 rounding).  The variants' calls are interleaved over ``--repeats``
rounds, so a drift in the machine's load falls on all of them; each round is
the median of ``--calls`` calls.  Printed per grid: the mean and standard error
over the rounds, the ratio to the baseline measured in the same run (its
standard error by first-order propagation), and the largest relative difference
of each variant's gradient from the baseline's (they compute the same function,
so it must be rounding).

Usage:
    KERAS_BACKEND=jax python benchmarks/bench_forward.py [--grids 16,32] [--particle-factor 2]
                                                          [--repeats 5] [--calls 10] [--json out.json]
    KERAS_BACKEND=tensorflow python benchmarks/bench_forward.py ...
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time

import numpy as np

from tfhalo.validation import output_path_argument

VARIANTS = ("baseline", "backend_fft", "one_displacement", "both", "both_float32")
BASELINE = "baseline"
CHAINS = 2


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--grids", default="16,32", help="comma-separated inference grids per side (even, >= 4)")
    p.add_argument("--particle-factor", type=int, default=2, help="LPT particles per voxel per side (the studies' 2)")
    p.add_argument("--voxel", type=float, default=4.0, help="voxel side in Mpc/h: box = n * voxel")
    p.add_argument("--repeats", type=int, default=5, help="interleaved rounds (>= 2: a standard error)")
    p.add_argument("--calls", type=int, default=10, help="timed calls per round, after a warm call (>= 1)")
    p.add_argument("--json", type=output_path_argument, default=None, help="write the summary to this JSON file")
    args = p.parse_args(argv)
    try:
        args.grids = [int(g) for g in args.grids.split(",") if g.strip()]
    except ValueError:
        p.error(f"--grids must be comma-separated integers. Received: {args.grids!r}")
    bad = [g for g in args.grids if g < 4 or g % 2]
    if not args.grids or bad:
        p.error(f"--grids must be even integers >= 4. Received: {args.grids}")
    for name, low in dict(particle_factor=1, repeats=2, calls=1).items():
        if getattr(args, name) < low:
            p.error(f"--{name.replace('_', '-')} must be at least {low}. Received: {getattr(args, name)}")
    if not args.voxel > 0:
        p.error(f"--voxel must be positive. Received: {args.voxel}")
    return args


def _separate_positions(self, delta):
    """The baseline's positions: ``q + D1 psi1 + D2 psi2``, one inverse transform per order."""
    from keras import ops

    from tfhalo.field.forward import _wrap

    n3 = self.n_particles_side**3
    psi1, psi2 = self.displacements(delta)
    x = self._lattice[None] + self.growth_1 * ops.reshape(psi1, (-1, n3, 3))
    if self.order == 2:
        x = x + self.growth_2 * ops.reshape(psi2, (-1, n3, 3))
    return _wrap(x, self.box_size)


@contextlib.contextmanager
def variant(name: str):
    """Patch the forward model to ``name`` while functions are traced inside the block."""
    from tfhalo.field import fft, forward

    saved = fft._backend_transforms, forward.LPTForwardModel._positions_from_delta
    if name in ("baseline", "one_displacement"):  # "both" and "both_float32" keep both choices
        fft._backend_transforms = lambda: None
    if name in ("baseline", "backend_fft"):
        forward.LPTForwardModel._positions_from_delta = _separate_positions
    try:
        yield
    finally:
        fft._backend_transforms, forward.LPTForwardModel._positions_from_delta = saved


def compiled_value_and_gradient(model):
    """``omega -> (sum ln rho, d/d omega)``, compiled, traced under the variant active at the call."""
    from keras import ops

    from tfhalo import backend
    from tfhalo.field.posterior import log_density_of

    def f(omega):
        return ops.cast(ops.sum(log_density_of(model.density(omega), 1e-4), axis=(1, 2, 3)), "float64")

    if backend.NAME == "jax":
        import jax

        return jax.jit(jax.value_and_grad(lambda w: f(w).sum()))
    import tensorflow as tf

    @tf.function(jit_compile=True, autograph=False)
    def vg(omega):
        with tf.GradientTape() as tape:
            tape.watch(omega)
            value = tf.reduce_sum(f(omega))
        return value, tape.gradient(value, omega)

    return vg


def time_grid(n: int, args) -> dict:
    from tfhalo import backend
    from tfhalo.field.forward import LPTForwardModel

    models = {dtype: LPTForwardModel(n, args.voxel * n, particle_factor=args.particle_factor, dtype=dtype)
              for dtype in ("float64", "float32")}
    omega = backend.constant(np.random.default_rng(n).normal(size=(CHAINS, n, n, n)))
    fns, grads = {}, {}
    for name in VARIANTS:
        with variant(name):
            fns[name] = compiled_value_and_gradient(models["float32" if name.endswith("float32") else "float64"])
            _, g = fns[name](omega)  # traced and compiled here, under the patch
        grads[name] = backend.to_numpy(g)
    times = {name: [] for name in VARIANTS}
    for _ in range(args.repeats):
        for name in VARIANTS:
            calls = []
            for _ in range(args.calls):
                start = time.perf_counter()
                backend.to_numpy(fns[name](omega)[1])
                calls.append(time.perf_counter() - start)
            times[name].append(float(np.median(calls)) * 1e3)
    def mean_and_stderr(name):
        t = np.array(times[name])
        return float(t.mean()), float(t.std(ddof=1) / np.sqrt(t.size))

    rows = []
    b_mean, b_err = mean_and_stderr(BASELINE)
    scale = np.abs(grads[BASELINE]).max()
    for name in VARIANTS:
        mean, err = mean_and_stderr(name)
        ratio = b_mean / mean
        rows.append(dict(grid=n, particles=models["float64"].n_particles_side, variant=name, ms=mean, ms_stderr=err,
                         speed_up=ratio,
                         speed_up_stderr=0.0 if name == BASELINE else float(ratio * np.hypot(err / mean, b_err / b_mean)),
                         max_gradient_difference=float(np.abs(grads[name] - grads[BASELINE]).max() / scale)))
    return dict(grid=n, rows=rows, times_ms=times)


def main(argv=None) -> int:
    args = parse_args(argv)
    from tfhalo import backend
    from tfhalo.studies.common import machine_info

    print(f"machine: {machine_info()}")
    print(f"sum ln rho(omega) and its gradient, {CHAINS} chains, float64 states, compiled, {backend.NAME} backend, "
          f"particle factor {args.particle_factor}, {args.repeats} interleaved rounds of {args.calls} calls "
          "(mean +- standard error of the rounds' medians)")
    print("| grid | particles | variant | ms per call | speed-up over the baseline | max gradient difference |")
    print("|---|---|---|---|---|---|")
    results = []
    for n in args.grids:
        res = time_grid(n, args)
        results.append(res)
        for r in res["rows"]:
            print(f"| {n}^3 | {r['particles']}^3 | {r['variant']} | {r['ms']:.2f} +- {r['ms_stderr']:.2f} | "
                  f"{r['speed_up']:.2f} +- {r['speed_up_stderr']:.2f} | {r['max_gradient_difference']:.1e} |",
                  flush=True)
    if args.json is not None:
        from tfhalo.atomic import write_json_atomic

        write_json_atomic(args.json, dict(backend=backend.NAME, machine=machine_info(), chains=CHAINS,
                                          particle_factor=args.particle_factor, voxel=args.voxel,
                                          repeats=args.repeats, calls=args.calls, baseline=BASELINE,
                                          results=results))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.exit(main())
