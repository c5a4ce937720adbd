"""Robustness of the quick neural-bias study's sampler across catalogues, seeds and BLAS kernels.

For each catalogue (a generated "quick" suite of 6 simulations per catalogue
seed) the MAP is fitted once (cached), then the quick study's chains
(:func:`tfhalo.studies.neural_bias.sample_chains`) run with every sampler seed.
One catalogue is then rerun end to end (MAP and chains) with
``OPENBLAS_CORETYPE=Haswell`` and with it unset: OpenBLAS picks its kernels,
and so its float rounding, from that variable at start-up, so each run is a
subprocess. The table gives, per run, the largest rank-normalised split R-hat,
the smallest bulk and tail ESS over the 17 parameters, the divergent
transitions, the sampler's seconds (warm-up + sampling) and whether every
criterion (R-hat < 1.01, bulk and tail ESS >= 400, no divergences; Vehtari et
al. 2021, arXiv:1903.08008) holds.

    python benchmarks/bias_robustness.py --suites /work/runs/suite_seed0 /work/runs/suite_seed1 \\
        /work/runs/suite_seed2 --parallel 2
    python benchmarks/bias_robustness.py --catalogue-seeds 0 --sampler-seeds 0 --n-warmup 20 \\
        --n-samples 20 --map-steps 200 --map-starts 1 --no-blas-check      # a smoke test

Catalogue ``i`` is ``--suites[i]`` when given, else ``SUITES_ROOT/suite_seed{seed}`` when
that exists, else generated in ``WORKDIR/suite_seed{seed}``. Outputs (atomic, resumable:
a finished run is skipped when the command is repeated):

    WORKDIR/map_cat{seed}[_blas-...]/map.npz          MAP per catalogue (and per BLAS setting)
    WORKDIR/<settings>/cat{seed}_s{sampler seed}[_blas-...]/{posterior.nc, run.json}
    WORKDIR/<settings>/results.json, table.md         every finished run and the table, rewritten as runs
                                                      finish ("complete": false until all have;
                                                      --report-only writes them without starting a run)

``<settings>`` names the sampler settings, so runs with other settings do not mix.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tfhalo.atomic import write_json_atomic, write_text_atomic  # noqa: E402
from tfhalo.studies import common, neural_bias  # noqa: E402
from tfhalo.validation import check_int, path_argument  # noqa: E402

#: Config fields a command-line flag may override (MAP and sampler settings).
OVERRIDES = ("n_pilot", "n_warmup", "n_samples", "n_chains", "kernel", "target_accept", "step_scale", "max_tree_depth",
             "leapfrog_steps", "pilot_target_accept",
             "map_steps", "map_starts", "chain_groups", "chains_dtype")
#: The overrides that take a float (the rest take an int, or a string as named in build_parser).
FLOAT_OVERRIDES = ("target_accept", "step_scale", "pilot_target_accept")
#: The BLAS settings of the check: a value for OPENBLAS_CORETYPE, or None for unset.
BLAS_SETTINGS = (("Haswell", "Haswell"), ("unset", None))


@dataclasses.dataclass(frozen=True)
class Task:
    """One subprocess: the MAP of a catalogue (``stage="map"``) or one set of chains (``stage="chains"``)."""

    stage: str
    catalogue: int
    suite: str
    map_dir: str
    overrides: dict
    sampler_seed: int = 0
    run_dir: str = ""
    blas: str = "inherited"

    @property
    def label(self) -> str:
        tail = "" if self.blas == "inherited" else f" (OPENBLAS_CORETYPE {self.blas})"
        if self.stage == "map":
            return f"MAP of catalogue {self.catalogue}{tail}"
        return f"catalogue {self.catalogue}, sampler seed {self.sampler_seed}{tail}"

    def config(self) -> neural_bias.Config:
        return neural_bias.Config.preset("quick", seed=self.catalogue, sampler_seed=self.sampler_seed,
                                         **self.overrides)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--catalogue-seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--sampler-seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--suites", type=path_argument, nargs="+", default=None,
                        help="suite directories, one per catalogue seed (in the same order)")
    parser.add_argument("--suites-root", type=path_argument, default=Path("runs"),
                        help="where suite_seed{seed} directories are looked for when --suites is not given")
    parser.add_argument("--workdir", type=path_argument, default=Path("runs/bias_robustness"))
    parser.add_argument("--parallel", type=int, default=1, help="runs at once, each a subprocess")
    parser.add_argument("--threads", type=int, default=None,
                        help="threads per run (default: CPU cores / --parallel, at least 1)")
    parser.add_argument("--no-blas-check", action="store_true",
                        help="skip the OPENBLAS_CORETYPE=Haswell / unset pair")
    parser.add_argument("--blas-catalogue", type=int, default=None,
                        help="catalogue seed of the BLAS check (default: the first)")
    for field in OVERRIDES:
        kind = str if field in ("kernel", "chains_dtype") else float if field in FLOAT_OVERRIDES else int
        parser.add_argument("--" + field.replace("_", "-"), dest=field, type=kind, default=None,
                            help=f"the quick preset's {field}")
    parser.add_argument("--per-group-warmup", action="store_true",
                        help="with --chain-groups, let every group adapt its own step size and mass matrix")
    parser.add_argument("--report-only", action="store_true",
                        help="write results.json and table.md from the runs finished so far; start none")
    parser.add_argument("--no-xla", action="store_true")
    parser.add_argument("--task", default=None, help=argparse.SUPPRESS)  # a worker subprocess's task (JSON)
    return parser


def settings_name(overrides: dict) -> str:
    """A directory name for the sampler settings (MAP settings are keyed by the MAP cache)."""
    cfg = neural_bias.Config.preset("quick", **overrides)
    groups = f"_g{cfg.chain_groups}" if cfg.chain_groups > 1 else ""
    return (f"{cfg.kernel}_c{cfg.n_chains}{groups}_w{cfg.n_warmup}_s{cfg.n_samples}_t{cfg.target_accept:g}"
            + (f"_x{cfg.step_scale:g}" if cfg.step_scale != 1.0 else "") +
            f"_{common.fingerprint(cfg.to_dict())[:8]}")


def make_plan(args) -> dict:
    """Every task and output path, built (and every Config validated) before any work."""
    if args.task is not None:
        return {"worker": json.loads(args.task)}
    check_int("parallel", args.parallel, minimum=1)
    threads = args.threads if args.threads is not None else max(1, (os.cpu_count() or 1) // args.parallel)
    check_int("threads", threads, minimum=1)
    seeds = [check_int("catalogue_seeds", s, minimum=0) for s in args.catalogue_seeds]
    sampler_seeds = [check_int("sampler_seeds", s, minimum=0) for s in args.sampler_seeds]
    if len(set(seeds)) != len(seeds) or len(set(sampler_seeds)) != len(sampler_seeds):
        raise ValueError(f"seeds must not repeat. Received: catalogue_seeds={seeds}, sampler_seeds={sampler_seeds}")
    if args.suites is not None and len(args.suites) != len(seeds):
        raise ValueError(f"--suites needs one directory per catalogue seed ({len(seeds)}). Received: "
                         f"{len(args.suites)} directories")
    blas_cat = seeds[0] if args.blas_catalogue is None else args.blas_catalogue
    if not args.no_blas_check and blas_cat not in seeds:
        raise ValueError(f"blas_catalogue must be one of the catalogue seeds {seeds}. Received: "
                         f"blas_catalogue={blas_cat}")
    overrides = {f: getattr(args, f) for f in OVERRIDES if getattr(args, f) is not None}
    if args.no_xla:
        overrides["jit_compile"] = False
    if args.per_group_warmup:
        overrides["pool_warmup"] = False
    workdir = Path(args.workdir)
    if workdir.exists() and not workdir.is_dir():
        raise ValueError(f"workdir must be a directory. Received: workdir={str(workdir)!r} (a file)")
    runs_dir = workdir / settings_name(overrides)

    def suite_of(i, seed):
        if args.suites is not None:
            return str(args.suites[i])
        found = Path(args.suites_root) / f"suite_seed{seed}"
        return str(found if found.is_dir() else workdir / f"suite_seed{seed}")

    maps, chains = [], []
    for i, c in enumerate(seeds):
        common_args = dict(catalogue=c, suite=suite_of(i, c), overrides=overrides)
        maps.append(Task("map", map_dir=str(workdir / f"map_cat{c}"), **common_args))
        for s in sampler_seeds:
            chains.append(Task("chains", map_dir=maps[-1].map_dir, sampler_seed=s,
                               run_dir=str(runs_dir / f"cat{c}_s{s}"), **common_args))
        if not args.no_blas_check and c == blas_cat:
            for tag, _ in BLAS_SETTINGS:
                blas_map = Task("map", map_dir=str(workdir / f"map_cat{c}_blas-{tag}"), blas=tag, **common_args)
                maps.append(blas_map)
                chains.append(Task("chains", map_dir=blas_map.map_dir, sampler_seed=sampler_seeds[0], blas=tag,
                                   run_dir=str(runs_dir / f"cat{c}_s{sampler_seeds[0]}_blas-{tag}"),
                                   **common_args))
    for task in maps + chains:
        task.config()  # every setting checked now
    return {"maps": maps, "chains": chains, "threads": threads, "parallel": args.parallel, "runs_dir": runs_dir,
            "overrides": overrides, "report_only": bool(args.report_only)}


# -- worker ------------------------------------------------------------------------------------------------------


def work(spec: dict) -> None:
    """Run one task in this process (a subprocess of :func:`run_plan`)."""
    threads = int(spec.pop("threads"))
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)
    task = Task(**spec)
    config = task.config()
    paths = common.ensure_suite(task.suite, config.sim_preset, config.n_sims, config.seed, progress=False)
    data = neural_bias.load_data(config, list(paths)[:config.n_sims])
    fit = neural_bias.map_fit(config, data, task.map_dir, progress=False)
    if task.stage == "map":
        return
    import tfhalo.inference as inf

    t0 = time.perf_counter()
    idata, info, _ = neural_bias.sample_chains(config, data, fit, task.run_dir, progress=False)
    conv = inf.convergence_summary(idata)
    record = {
        "catalogue": task.catalogue, "sampler_seed": task.sampler_seed, "blas": task.blas,
        "max_rhat": float(conv["max_rhat"]), "min_ess_bulk": float(conv["min_ess_bulk"]),
        "min_ess_tail": float(conv["min_ess_tail"]), "n_divergent": int(conv["n_divergent"]),
        "converged": bool(conv["converged"]), "seconds": float(info["seconds"]),
        "precision_efficiency": info.get("precision_check", {}).get("importance_efficiency"),
        "wall_seconds": time.perf_counter() - t0, "threads": threads, "n_halos_train": sum(d.n_halos for d in data.train),
        "config": config.to_dict(), "machine": common.machine_info(),
    }
    write_json_atomic(Path(task.run_dir) / "run.json", record)


# -- orchestration -----------------------------------------------------------------------------------------------


def _env(task: Task, threads: int) -> dict:
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "TF_NUM_INTRAOP_THREADS",
                "TF_NUM_INTEROP_THREADS"):
        env[var] = str(threads)
    value = dict(BLAS_SETTINGS).get(task.blas, "inherit")
    if value is None:
        env.pop("OPENBLAS_CORETYPE", None)
    elif value != "inherit":
        env["OPENBLAS_CORETYPE"] = value
    return env


def _finished(task: Task) -> bool:
    if task.stage == "map":
        return False  # cheap to check in the worker: the MAP cache is reused there
    return (Path(task.run_dir) / "run.json").is_file()


def _launch(tasks, threads: int, parallel: int, on_done=None) -> None:
    """Run ``tasks`` as subprocesses, ``parallel`` at a time; raise if one fails.

    ``on_done()`` is called after each run that finishes, so that the table on disk
    grows with the runs and an interrupted benchmark still reports what it finished.
    """
    pending = [t for t in tasks if not _finished(t)]
    for t in tasks:
        if _finished(t):
            print(f"{t.label}: finished earlier, skipped", flush=True)
    running = []
    failed = []
    try:
        while pending or running:
            while pending and len(running) < parallel:
                task = pending.pop(0)
                spec = dict(dataclasses.asdict(task), threads=threads)
                proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--task", json.dumps(spec)],
                                        env=_env(task, threads))
                running.append((task, proc, time.perf_counter()))
                print(f"{task.label}: started", flush=True)
            time.sleep(0.5)
            for item in list(running):
                task, proc, t0 = item
                if proc.poll() is not None:
                    running.remove(item)
                    status = "done" if proc.returncode == 0 else f"FAILED (exit {proc.returncode})"
                    print(f"{task.label}: {status} in {time.perf_counter() - t0:.0f} s", flush=True)
                    if proc.returncode != 0:
                        failed.append(task.label)
                    elif on_done is not None:
                        on_done()
    finally:
        for _, proc, _ in running:  # interrupted: stop this run's own workers
            proc.terminate()
            proc.wait()
    if failed:
        raise RuntimeError(f"{len(failed)} run(s) failed: {'; '.join(failed)}")


def table(records, planned=None) -> str:
    """Markdown table of the runs (``planned``: how many the plan holds, to flag a partial table)."""
    lines = ["| catalogue | sampler seed | OPENBLAS_CORETYPE | max R-hat | min bulk ESS | min tail ESS | divergences "
             "| seconds | converged | p64 / p32 efficiency |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        eff = r.get("precision_efficiency")
        lines.append(f"| {r['catalogue']} | {r['sampler_seed']} | {r['blas']} | {r['max_rhat']:.4f} | "
                     f"{r['min_ess_bulk']:.0f} | {r['min_ess_tail']:.0f} | {r['n_divergent']} | {r['seconds']:.0f} | "
                     f"{'yes' if r['converged'] else 'NO'} | {'-' if eff is None else f'{eff:.4f}'} |")
    main = [r for r in records if r["blas"] == "inherited"]
    lines += ["", f"{sum(r['converged'] for r in main)} of {len(main)} catalogue x seed runs converged; "
                  f"{sum(r['n_divergent'] == 0 for r in main)} of {len(main)} without divergences."]
    if planned is not None and len(records) < planned:
        lines.append(f"Partial: {len(records)} of the {planned} planned runs have finished.")
    return "\n".join(lines) + "\n"


def run_plan(plan: dict, args) -> None:
    if "worker" in plan:
        work(plan["worker"])
        return
    if plan["report_only"]:
        write_report(plan)
        return
    # Suites first, one at a time: several MAP workers may read one catalogue.
    for task in plan["maps"]:
        config = task.config()
        common.ensure_suite(task.suite, config.sim_preset, config.n_sims, config.seed)
    # A MAP whose chains are all finished is not needed again.
    needed = {t.map_dir for t in plan["chains"] if not _finished(t)}
    _launch([t for t in plan["maps"] if t.map_dir in needed], plan["threads"], plan["parallel"])
    _launch(plan["chains"], plan["threads"], plan["parallel"], on_done=lambda: write_report(plan, quiet=True))
    write_report(plan)


def write_report(plan: dict, quiet: bool = False) -> None:
    """``results.json`` and ``table.md`` of the runs finished so far (atomic); ``complete`` says if all are."""
    records = [json.loads((Path(t.run_dir) / "run.json").read_text()) for t in plan["chains"] if _finished(t)]
    planned = len(plan["chains"])
    text = table(records, planned)
    runs_dir = Path(plan["runs_dir"])
    runs_dir.mkdir(parents=True, exist_ok=True)
    write_json_atomic(runs_dir / "results.json", {
        "runs": records, "overrides": plan["overrides"], "planned": planned, "complete": len(records) == planned,
        "machine": common.machine_info(),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")})
    write_text_atomic(runs_dir / "table.md", text)
    if not quiet:
        print(text, flush=True)
        print(f"wrote {runs_dir / 'results.json'} and {runs_dir / 'table.md'}", flush=True)


def main(argv=None) -> int:
    return common.run_cli(build_parser(), make_plan, run_plan, argv)


if __name__ == "__main__":
    sys.exit(main())
