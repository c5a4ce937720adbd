"""Calibration of the quick field-level study over several simulations and mock catalogues.

For each seed the quick preset of :mod:`tfhalo.studies.field_level` runs on its
own N-body simulation (its own white noise, halos, bias fit and mock catalogue)
and the chains' seed is the same seed. The table gives, per seed and setting,
the halo count, the largest ``|z|`` of the 68% and 95% coverage of the true
white noise's Fourier coefficients over the k bins, in binomial standard errors
from what exact chains of the same draws give (calibrated when every bin is
within 3; the next column is the largest ``|z|`` against the nominal levels,
which finitely many effective draws cannot reach), r(k) at the largest scale, the k where
r falls to 0.5, the largest split R-hat and smallest bulk ESS of the
diagnosed quantities (the low-k power, and the bias parameters where they are
sampled), divergences and the chains' seconds. With ``k`` seeds passing out of
``n``, a calibrated sampler passes each seed with probability about 0.96
(two levels x 8 bins at 3 sigma), so a single failure in a handful is
expected now and then; a biased likelihood or sampler fails most seeds.

    python benchmarks/field_calibration.py --seeds 0 1 2 3 4 --workdir runs/field_calibration
    python benchmarks/field_calibration.py --seeds 0 --settings mock mock_fixed_bias
    python benchmarks/field_calibration.py --seeds 1 2 3 --settings mock --threshold-mass 5e11 \
        --sampler gibbs --bias-kernel hmc --bias-steps 5 --bias-coordinates local_linear \
        --n-warmup 300 --n-samples 1500 --workdir runs/field_calibration_gibbs

The study's flags (``experiments/field_level.py``, less ``--sampler-seed``) override the preset
for every seed; the chains' seed is each catalogue's seed.

Each seed's study is cached and resumable (rerun the command after an
interruption); ``WORKDIR/results.json`` and ``WORKDIR/table.md`` are rewritten
(atomically) as seeds finish. ``python experiments/write_results_doc.py ...
--robustness WORKDIR/results.json`` puts the table in ``docs/results.md``.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tfhalo.atomic import write_json_atomic, write_text_atomic  # noqa: E402
from tfhalo.studies import common, field_level  # noqa: E402
from tfhalo.validation import check_choice, check_int, path_argument  # noqa: E402


#: The study's chain settings each row records (the robustness sections of docs/results.md name them).
CHAIN_FIELDS = ("n_chains", "n_warmup", "n_samples", "leapfrog_steps", "target_accept", "sampler", "bias_coordinates",
                "bias_kernel", "bias_steps", "threshold_mass", "n_components", "bias_carry", "bias_metric",
                "field_metric", "metric_windows", "bias_scale_coordinate")


def seed_row(seed: int, setting: str, result: dict, config: dict = None) -> dict:
    """One table row from a setting's entry of the study's ``results.json`` (and its ``config``)."""
    levels = result["coverage"]["levels"]
    conv, smp = result["convergence"], result["sampler"]
    return {"catalogue": seed, "seed": seed, "setting": setting, "n_halos": result["n_halos"],
            "max_abs_z_68": max(abs(z) for z in field_level.coverage_z(levels["0.68"])),
            "max_abs_z_95": max(abs(z) for z in field_level.coverage_z(levels["0.95"])),
            "max_abs_z_nominal": max(abs(z) for v in levels.values() for z in v["z"]),
            "calibrated": bool(result["calibrated"]),
            "r_largest_scale": result["cross_correlation"]["r_largest_scale"],
            "k_r_half": result["cross_correlation"]["k_r_half"],
            "power_consistent": bool(result["power"]["consistent_with_prior"]),
            "max_rhat": conv["max_rhat"], "min_ess_bulk": conv["min_ess_bulk"], "min_ess_tail": conv["min_ess_tail"],
            "converged": bool(conv.get("converged")), "n_divergent": smp["n_divergent"], "seconds": smp["seconds"],
            "config": {k: config[k] for k in CHAIN_FIELDS if k in config} if config else {}}


def table(rows: list) -> str:
    head = ("| seed | setting | halos | 68% max \\|z\\| | 95% max \\|z\\| | calibrated | max \\|z\\| vs nominal | "
            "r(k_min) | k(r=0.5) | P(k) vs prior | max R-hat | min bulk ESS | divergences | chains' s |")
    lines = [head, "|" + "---|" * 14]
    for r in rows:
        k_half = "n/a" if r["k_r_half"] is None else f"{r['k_r_half']:.3f}"
        nominal = r.get("max_abs_z_nominal")
        lines.append(f"| {r['seed']} | {r['setting']} | {r['n_halos']} | {r['max_abs_z_68']:.2f} | "
                     f"{r['max_abs_z_95']:.2f} | {'yes' if r['calibrated'] else 'no'} | "
                     f"{'n/a' if nominal is None else f'{nominal:.2f}'} | {r['r_largest_scale']:.3f} | "
                     f"{k_half} | {'consistent' if r['power_consistent'] else 'NOT consistent'} | "
                     f"{r['max_rhat']:.3f} | {r['min_ess_bulk']:.0f} | {r['n_divergent']} | {r['seconds']:.0f} |")
    for setting in dict.fromkeys(r["setting"] for r in rows):
        mine = [r for r in rows if r["setting"] == setting]
        lines.append(f"\n{setting}: {sum(r['calibrated'] for r in mine)} of {len(mine)} seeds calibrated.")
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--settings", nargs="+", default=["mock_fixed_bias"],
                        help=f"settings of the study to run, from {field_level.SETTINGS}")
    parser.add_argument("--preset", default="quick", help=f"one of {sorted(field_level.PRESETS)}")
    parser.add_argument("--workdir", type=path_argument, default=Path("runs/field_calibration"))
    field_level.add_override_arguments(parser, exclude=("sampler_seed",))
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    try:
        seeds = [check_int("seeds", s, minimum=0) for s in args.seeds]
        if len(set(seeds)) != len(seeds):
            raise ValueError(f"seeds must be distinct. Received: seeds={seeds}")
        for s in args.settings:
            check_choice("settings", s, field_level.SETTINGS)
        overrides = field_level.overrides_from_args(args)
        configs = [field_level.Config.preset(args.preset, seed=s, settings=tuple(args.settings), **overrides)
                   for s in seeds]
    except ValueError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    rows = []
    for config in configs:
        print(f"seed {config.seed}: running {', '.join(config.settings)}", flush=True)
        result = field_level.run(config, args.workdir / f"suite_seed{config.seed}",
                                 args.workdir / f"seed{config.seed}", progress=not args.no_progress)
        rows += [seed_row(config.seed, s, result["settings"][s], result["config"]) for s in config.settings]
        text = table(rows)
        write_json_atomic(args.workdir / "results.json",
                          {"benchmark": "field_calibration", "preset": args.preset, "settings": args.settings,
                           "overrides": {"study": "field_level", "preset": args.preset,
                                         "settings": ",".join(args.settings), **overrides},
                           "seeds": seeds, "complete": len(rows) == len(seeds) * len(args.settings),
                           "machine": common.machine_info(),
                           "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                           "rows": rows})
        write_text_atomic(args.workdir / "table.md", text)
        print(text, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
