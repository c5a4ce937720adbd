"""Benchmark of the simulation engine: ICs, particle mesh, FoF.

For ``--n-side`` particles per side (default 128^3), force mesh
``--mesh-factor`` x finer (default 2) and ``--n-steps`` steps (default 10),
each stage runs in its own subprocess so that its peak memory is clean:

* floor: one real FFT of the force mesh (256^3 float32 by default),
  ``scipy.fft.rfftn(workers=-1)``, best of 3 - the unit of all timings;
* ics: Gaussian field + 2LPT positions and momenta at a = 0.1;
* nbody: particle mesh from a = 0.1 to 1;
* fof: friends-of-friends (b = 0.2, 20 members) + halo properties.

Printed per stage: seconds, seconds / FFT floor, peak resident memory of the
stage process (absolute, and growth during the stage), and the targets
(N-body <= 15 s and <= 2 GB, FoF <= 4 s; flowpm 0.1.1 took 28-38 s and
3.4 GB for the same N-body). A JSON summary goes to ``--json`` if given.

Usage:
    python benchmarks/bench_sim.py [--n-side 128] [--json out.json]
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

import numpy as np

BOX = 50.0
SEED = 0
A_START = 0.1


def _rss_mb() -> float:
    # current resident set size (Linux), in MB
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def run_stage(stage: str, args) -> dict:
    """Run one stage in this process; returns its timing and memory."""
    from tfhalo.sim.cosmology import WMAP5

    n, work = args.n_side, args.workdir
    n_mesh = args.mesh_factor * n
    out = {}
    if stage == "floor":
        import scipy.fft

        a = np.random.default_rng(0).standard_normal((n_mesh,) * 3).astype(np.float32)
        scipy.fft.rfftn(a, workers=-1)  # plan/warm-up
        base = _rss_mb()
        times, cpu = [], []
        for _ in range(3):
            c = time.process_time()
            t = time.perf_counter()
            scipy.fft.rfftn(a, workers=-1)
            times.append(time.perf_counter() - t)
            cpu.append(time.process_time() - c)
        out["seconds"] = min(times)
        out["cpu_seconds"] = min(cpu)
    elif stage == "ics":
        from tfhalo.sim.ics import gaussian_field, lpt_displacements, lpt_state

        base = _rss_mb()
        c = time.process_time()
        t = time.perf_counter()
        delta0 = gaussian_field(n, BOX, WMAP5, SEED)
        psi1, psi2 = lpt_displacements(delta0, BOX)
        x, p = lpt_state(psi1, psi2, BOX, WMAP5, A_START)
        out["seconds"] = time.perf_counter() - t
        out["cpu_seconds"] = time.process_time() - c
        np.save(os.path.join(work, "x.npy"), x)
        np.save(os.path.join(work, "p.npy"), p)
    elif stage == "nbody":
        from tfhalo.sim.pm import run_pm

        x = np.load(os.path.join(work, "x.npy"))
        p = np.load(os.path.join(work, "p.npy"))
        base = _rss_mb()
        c = time.process_time()
        t = time.perf_counter()
        xf, _ = run_pm(x, p, BOX, WMAP5, a_start=A_START, n_steps=args.n_steps, mesh_factor=args.mesh_factor)
        out["seconds"] = time.perf_counter() - t
        out["cpu_seconds"] = time.process_time() - c
        np.save(os.path.join(work, "xf.npy"), xf)
    elif stage == "fof":
        from tfhalo.sim.fof import friends_of_friends, halo_properties

        xf = np.load(os.path.join(work, "xf.npy"))
        base = _rss_mb()
        c = time.process_time()
        t = time.perf_counter()
        labels = friends_of_friends(xf, BOX, 0.2 * BOX / n, min_members=20)
        m_p = WMAP5.rho_mean * BOX**3 / n**3
        cat, _ = halo_properties(xf, labels, BOX, m_p, WMAP5.rho_mean)
        out["seconds"] = time.perf_counter() - t
        out["cpu_seconds"] = time.process_time() - c
        out["n_halos"] = len(cat)
        out["n_halos_200"] = int(np.sum(cat.n_members >= 200))
    else:
        raise ValueError(f"stage must be one of floor, ics, nbody, fof. Received: stage={stage!r}")
    out["peak_rss_mb"] = _peak_mb()
    out["stage_growth_mb"] = _peak_mb() - base
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n-side", type=int, default=128)
    parser.add_argument("--mesh-factor", type=int, default=2)
    parser.add_argument("--n-steps", type=int, default=10)
    parser.add_argument("--json", default=None, help="write the figures to this JSON file")
    parser.add_argument("--stage", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    for name in ("n_side", "mesh_factor", "n_steps"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be positive. Received: {getattr(args, name)}")

    if args.stage is not None:  # child process
        print(json.dumps(run_stage(args.stage, args)))
        return 0

    results = {}
    load_start = os.getloadavg()[0]
    with tempfile.TemporaryDirectory(prefix="bench_sim_") as work:
        for stage in ("floor", "ics", "nbody", "fof"):
            cmd = [sys.executable, os.path.abspath(__file__), "--stage", stage, "--workdir", work,
                   "--n-side", str(args.n_side), "--mesh-factor", str(args.mesh_factor), "--n-steps", str(args.n_steps)]
            proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                sys.stderr.write(proc.stderr)
                raise RuntimeError(f"stage {stage} failed with exit code {proc.returncode}")
            results[stage] = json.loads(proc.stdout.strip().splitlines()[-1])

    floor = results["floor"]["seconds"]
    n, nm = args.n_side, args.n_side * args.mesh_factor
    print(f"tfhalo.sim benchmark: {n}^3 particles, force mesh {nm}^3, {args.n_steps} steps, {os.cpu_count()} CPUs")
    floor_cpu = results["floor"]["cpu_seconds"]
    print(f"floor: one {nm}^3 float32 real FFT = {floor * 1e3:.1f} ms ({floor_cpu * 1e3:.1f} ms CPU)")
    print(f"load average at start: {load_start:.1f} (CPU seconds, summed over threads, are less load-sensitive)")
    print(f"{'stage':8s} {'seconds':>9s} {'x floor':>9s} {'CPU s':>7s} {'peak RSS MB':>12s} {'growth MB':>10s}  target")
    targets = {"nbody": (15.0, 2048.0), "fof": (4.0, None)}
    for stage in ("ics", "nbody", "fof"):
        r = results[stage]
        tgt = targets.get(stage)
        note = ""
        if tgt is not None:
            note = f"<= {tgt[0]:.0f} s ({r['seconds'] / tgt[0]:.2f}x of target)"
            if tgt[1] is not None:
                note += f", <= {tgt[1] / 1024:.0f} GB ({r['peak_rss_mb'] / tgt[1]:.2f}x)"
        print(f"{stage:8s} {r['seconds']:9.2f} {r['seconds'] / floor:9.0f} {r['cpu_seconds']:7.2f} "
              f"{r['peak_rss_mb']:12.0f} {r['stage_growth_mb']:10.0f}  {note}")
    nb = results["nbody"]
    print(f"N-body vs flowpm 0.1.1 reference (28-38 s, 3.4 GB): {28 / nb['seconds']:.2f}-{38 / nb['seconds']:.2f}x "
          f"faster, {nb['peak_rss_mb'] / (3.4 * 1024):.2f}x the memory")
    print(f"N-body per force evaluation: {nb['seconds'] / (args.n_steps + 1) / floor:.1f} FFT floors")
    summary = {"load_average_start": load_start, "n_side": n, "n_mesh": nm, "n_steps": args.n_steps,
               "fft_floor_s": floor, "stages": results}
    if args.json:
        from tfhalo.atomic import write_json_atomic

        write_json_atomic(args.json, summary)
    return 0


if __name__ == "__main__":
    sys.exit(main())
