"""Benchmark of what field-level chains keep: every draw of the white noise, or every ``thin``-th.

The ``field_level`` study's chains either keep every draw of the white noise
(``keep_field_draws=True``, the quick preset) or only every ``thin``-th, with
its mean over all draws and each draw's binned linear power
(``keep_field_draws=False``, the paper preset:
:func:`tfhalo.studies.field_level.field_reduction`, a
:class:`tfhalo.inference.DrawReduction`).  The paper preset's 64^3 grid, 4
chains and 4,000 draws hold 33 GB of white noise in float64 when every draw is
kept.  This script measures both modes in one run, each in its own process
(so that its peak memory is its own), on the same target: a standard normal of
``n^3 + 17`` coordinates (the white noise and the 17 bias parameters; the
forward model is left out, since what is measured is what the chains keep),
sampled by :func:`tfhalo.inference.sample` (HMC, windowed adaptation, seeded)
with a checkpoint.  Printed per mode: wall seconds, the bytes the returned
chains hold, the checkpoint's bytes on disk, the process's peak resident
memory, and the ratios of the thinned mode to the full one (the baseline,
measured in the same run).  A JSON summary goes to ``--json``.

Usage:
    python benchmarks/bench_chain_memory.py [--n-grid 32] [--draws 400] [--thin 20] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

N_BIAS = 17


def run_mode(mode: str, args) -> dict:
    """Sample in this process with every draw kept (``full``) or the field thinned (``thinned``)."""
    from types import SimpleNamespace

    from keras import ops

    import tfhalo.inference as inf
    from tfhalo.sim.cosmology import WMAP5
    from tfhalo.studies import field_level

    n = args.n_grid
    config = field_level.Config.preset("quick", n_grid=n, n_side=4 * n, box_size=4.0 * n, thin=args.thin,
                                       n_samples=args.draws, keep_field_draws=mode == "full")
    forward = SimpleNamespace(box_size=4.0 * n, cosmology=WMAP5)  # what the reduction's power needs
    reduction = None if config.keep_field_draws else field_level.field_reduction(config, forward)

    def log_prob(x):
        return -0.5 * ops.sum(x**2, axis=-1)

    sampler = inf.SamplerConfig(kernel="hmc", num_chains=args.chains, num_warmup=args.warmup,
                                num_samples=args.draws, num_leapfrog_steps=2, block_size=args.block_size,
                                seed=0, jit_compile=False)
    start = np.random.default_rng(0).standard_normal((args.chains, n**3 + N_BIAS))
    with tempfile.TemporaryDirectory(prefix="bench_chain_memory_") as ckpt:
        t0 = time.perf_counter()
        chains = inf.sample(log_prob, start, sampler, progress=False, checkpoint_dir=ckpt, reduction=reduction)
        seconds = time.perf_counter() - t0
        disk = sum(p.stat().st_size for p in Path(ckpt).rglob("*.npz"))
    held = chains.samples.nbytes
    if chains.thinned is not None:
        t = chains.thinned
        held += t.samples.nbytes + t.mean.nbytes + sum(v.nbytes for v in t.summaries.values())
    return {"seconds": seconds, "chains_bytes": int(held), "checkpoint_bytes": int(disk),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-grid", type=int, default=32, help="white noise grid per side")
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=20)
    parser.add_argument("--draws", type=int, default=400, help="kept draws per chain (>= 20)")
    parser.add_argument("--thin", type=int, default=20, help="the thinned mode keeps every thin-th field draw")
    parser.add_argument("--block-size", type=int, default=100, help="draws per compiled block and checkpoint file")
    parser.add_argument("--json", default=None, help="write the figures to this JSON file")
    parser.add_argument("--mode", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    minima = dict(n_grid=4, chains=1, warmup=0, draws=20, thin=1, block_size=1)
    for name, low in minima.items():
        if getattr(args, name) < low:
            parser.error(f"--{name.replace('_', '-')} must be at least {low}. Received: {getattr(args, name)}")
    if args.n_grid % 2:
        parser.error(f"--n-grid must be even. Received: {args.n_grid}")

    if args.mode is not None:  # child process
        print(json.dumps(run_mode(args.mode, args)))
        return 0

    results = {}
    for mode in ("full", "thinned"):
        cmd = [sys.executable, os.path.abspath(__file__), "--mode", mode] + [
            f"--{k.replace('_', '-')}={getattr(args, k)}" for k in minima]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr)
            raise RuntimeError(f"mode {mode} failed with exit code {proc.returncode}")
        results[mode] = json.loads(proc.stdout.strip().splitlines()[-1])

    n = args.n_grid
    print(f"chains' memory: {n}^3 + {N_BIAS} coordinates, {args.chains} chains, {args.draws} draws, "
          f"thin {args.thin}, {os.cpu_count()} CPUs")
    print(f"{'mode':8s} {'seconds':>8s} {'chains MB':>10s} {'checkpoint MB':>14s} {'peak RSS MB':>12s}")
    for mode, r in results.items():
        print(f"{mode:8s} {r['seconds']:8.1f} {r['chains_bytes'] / 2**20:10.1f} {r['checkpoint_bytes'] / 2**20:14.1f} "
              f"{r['peak_rss_mb']:12.0f}")
    full, thin = results["full"], results["thinned"]
    ratios = {k: thin[k] / full[k] for k in ("seconds", "chains_bytes", "checkpoint_bytes", "peak_rss_mb")}
    print("thinned / full: " + ", ".join(f"{k} {v:.3f}" for k, v in ratios.items()))
    paper = 64**3 * 4 * 4000 * 8
    print(f"at the paper preset (64^3, 4 chains, 4,000 draws, thin 20) the white noise is {paper / 1e9:.1f} GB "
          f"kept whole, {paper / 20 / 1e9:.2f} GB thinned")
    if args.json:
        from tfhalo.atomic import write_json_atomic

        write_json_atomic(args.json, {"n_grid": n, "chains": args.chains, "draws": args.draws, "thin": args.thin,
                                      "modes": results, "ratios": ratios})
    return 0


if __name__ == "__main__":
    sys.exit(main())
