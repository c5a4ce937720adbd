"""Benchmark of a sampler's start-up: tracing the log-density once for all compiled blocks, or at each call site.

:func:`tfhalo.inference.sample` compiles three functions (the warm-up's
bootstrap, a warm-up block, a sampling block), and TFP's kernels call the
log-density at several places inside them.  In TensorFlow each call site would
trace the log-density and build its gradient again;
:func:`tfhalo.backend.traced_once` makes it one ``tf.function``, traced once
(under JAX it returns the function itself: JAX caches its traces).  This script
measures both in one run, each in its own fresh process (traces are cached per
process), on the same target: the 2LPT forward model of the field-level
inference (:class:`tfhalo.field.forward.LPTForwardModel`: the linear field
from white noise, 2LPT displacements, cloud-in-cell painting) under a Gaussian
likelihood of its density, ``ln p = -|omega|^2 / 2 - |rho(omega) - rho_data|^2 / (2 s^2)``,
sampled by HMC with windowed adaptation (seeded, 2 chains, few draws: what is
measured is the start-up).  Printed per mode: the first call's wall seconds
(tracing, graph building and the short run), the second call's (another seed:
the compiled functions are reused, so this is the run alone), the first call's
overhead (first - second), each the mean and standard error over ``--repeats``
fresh processes per mode (run in turn), how many times each call ran the log-density's Python
code (each trace, and each eager evaluation of the sampler's checks of the start),
and the ratio of the shared mode to the per-call-site baseline measured in the
same run.  A JSON summary goes to ``--json``.

Usage:
    python benchmarks/bench_startup.py [--n-grid 8] [--warmup 20] [--samples 10] [--repeats 3] [--json out.json]
    KERAS_BACKEND=jax python benchmarks/bench_startup.py   # the same under JAX (both modes alike)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

from tfhalo.validation import output_path_argument

MODES = ("per_call_site", "shared")
BASELINE = "per_call_site"


def run_mode(mode: str, args) -> dict:
    """Time two seeded calls of :func:`tfhalo.inference.sample` in this process."""
    from keras import ops

    import tfhalo.inference as inf
    from tfhalo import backend
    from tfhalo.field.forward import LPTForwardModel

    if mode == "per_call_site":
        # The baseline: every call site traces the target itself.  This process runs this mode alone
        # (main starts one per mode), so the patch is not undone.
        backend.traced_once = lambda fn: fn
    n = args.n_grid
    forward = LPTForwardModel(n, 4.0 * n)
    rng = np.random.default_rng(0)
    data = backend.to_numpy(forward.density(backend.constant(rng.normal(size=(1, n, n, n)))))[0]
    noise = 0.3

    calls = []

    def log_prob(x):  # (C, n^3) -> (C,)
        calls.append(1)  # each trace, and each eager evaluation (the sampler's checks of the start)
        rho = forward.density(ops.reshape(x, (-1, n, n, n)))
        misfit = ops.reshape(rho - ops.convert_to_tensor(data), (-1, n**3))
        return -0.5 * ops.sum(x**2, axis=-1) - 0.5 * ops.sum(misfit**2, axis=-1) / noise**2

    start = 0.1 * rng.normal(size=(2, n**3))
    seconds, evaluations = [], []
    for seed in (1, 2):
        config = inf.SamplerConfig(kernel="hmc", num_chains=2, num_warmup=args.warmup, num_samples=args.samples,
                                   num_leapfrog_steps=3, block_size=args.samples, jit_compile=False, seed=seed)
        t0, before = time.perf_counter(), len(calls)
        chains = inf.sample(log_prob, start, config, progress=False)
        seconds.append(time.perf_counter() - t0)
        evaluations.append(len(calls) - before)
        if not np.all(np.isfinite(chains.samples)):
            raise RuntimeError(f"{mode}: non-finite draws")
    return dict(mode=mode, backend=backend.NAME, first_call_s=seconds[0], second_call_s=seconds[1],
                overhead_s=seconds[0] - seconds[1], first_call_python_calls=evaluations[0],
                second_call_python_calls=evaluations[1])


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--n-grid", type=int, default=8, help="white noise grid per side (n^3 parameters)")
    p.add_argument("--warmup", type=int, default=20, help="warm-up steps per call (>= 20: windowed adaptation)")
    p.add_argument("--samples", type=int, default=10, help="kept draws per call (>= 4)")
    p.add_argument("--repeats", type=int, default=3, help="fresh processes per mode (>= 2: a standard error)")
    p.add_argument("--json", type=output_path_argument, default=None, help="write the summary to this JSON file")
    p.add_argument("--mode", choices=MODES, default=None, help=argparse.SUPPRESS)  # one mode, in this process
    args = p.parse_args(argv)
    for name, low in dict(n_grid=4, warmup=20, samples=4, repeats=2).items():
        if getattr(args, name) < low:
            p.error(f"--{name.replace('_', '-')} must be at least {low}. Received: {getattr(args, name)}")
    if args.n_grid % 2:
        p.error(f"--n-grid must be even (2LPT's particle grid). Received: {args.n_grid}")
    return args


def summarise(runs: list) -> list:
    """Per mode: mean and standard error of each timing over the repeats, and the ratios to the baseline.

    The ratio's standard error is the first-order (delta-method) propagation of both means' errors.
    """
    rows = []
    for mode in MODES:
        mine = [r for r in runs if r["mode"] == mode]
        row = dict(mode=mode, backend=mine[0]["backend"], repeats=len(mine),
                   first_call_python_calls=mine[0]["first_call_python_calls"],
                   second_call_python_calls=mine[0]["second_call_python_calls"])
        for key in ("first_call_s", "second_call_s", "overhead_s"):
            x = np.array([r[key] for r in mine])
            row[key] = float(x.mean())
            row[key + "_stderr"] = float(x.std(ddof=1) / np.sqrt(x.size)) if x.size > 1 else float("nan")
        rows.append(row)
    base = next(r for r in rows if r["mode"] == BASELINE)
    for r in rows:
        for key in ("first_call", "overhead"):
            a, b = r[key + "_s"], base[key + "_s"]
            ratio = a / b
            rel = np.hypot(r[key + "_s_stderr"] / a, base[key + "_s_stderr"] / b)
            r[key + "_ratio"] = ratio
            r[key + "_ratio_stderr"] = 0.0 if r is base else float(ratio * rel)
    return rows


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.mode is not None:
        print(json.dumps(run_mode(args.mode, args)))
        return 0
    runs = []
    for repeat in range(args.repeats):
        for mode in MODES:  # interleaved, so that a drift in the machine's load falls on both modes
            cmd = [sys.executable, os.path.abspath(__file__), "--mode", mode, "--n-grid", str(args.n_grid),
                   "--warmup", str(args.warmup), "--samples", str(args.samples)]
            out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
            if out.returncode != 0:
                print(out.stderr[-3000:], file=sys.stderr)
                return 1
            runs.append(json.loads(out.stdout.strip().splitlines()[-1]))
            print(f"repeat {repeat + 1}/{args.repeats}, {mode}: first call {runs[-1]['first_call_s']:.1f} s",
                  file=sys.stderr, flush=True)
    rows = summarise(runs)

    def pm(r, key, digits=1):
        return f"{r[key]:.{digits}f} +- {r[key + '_stderr']:.{digits}f}"

    print(f"sampler start-up on the {rows[0]['backend']} backend: 2LPT target on a {args.n_grid}^3 grid, HMC, "
          f"{args.warmup} + {args.samples} steps, {args.repeats} fresh processes per mode (mean +- standard error)")
    print("| mode | first call (s) | second call (s) | start-up overhead (s) | first call / baseline | "
          "overhead / baseline | Python calls of the log-density, first / second call |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {pm(r, 'first_call_s')} | {pm(r, 'second_call_s')} | {pm(r, 'overhead_s')} | "
              f"{pm(r, 'first_call_ratio', 2)} | {pm(r, 'overhead_ratio', 2)} | {r['first_call_python_calls']} / "
              f"{r['second_call_python_calls']} |")
    if args.json is not None:
        from tfhalo.atomic import write_json_atomic

        write_json_atomic(args.json, dict(n_grid=args.n_grid, warmup=args.warmup, samples=args.samples,
                                          repeats=args.repeats, baseline=BASELINE, rows=rows, runs=runs))
    return 0


if __name__ == "__main__":
    sys.exit(main())
