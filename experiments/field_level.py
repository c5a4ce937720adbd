"""Field-level inference (Charnock et al. 2020, arXiv:1909.06379, sections 4-5): the initial white noise
sampled jointly with the neural bias model; a command-line shell over :mod:`tfhalo.studies.field_level`.

    python experiments/field_level.py --preset quick --suite runs/demo/field_suite --out runs/demo/field_level

Writes results.json, report.md, figures and, per setting, samples.h5 and posterior.nc into --out.
Resumable: rerun the same command after an interruption. Bad arguments exit with
code 2 before anything is written.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tfhalo.studies import common, field_level  # noqa: E402
from tfhalo.validation import path_argument  # noqa: E402

# CLI flag -> Config field, for the flags that override a preset's value.
OVERRIDES = {
    "sampler_seed": "sampler_seed", "chains": "n_chains", "n_samples": "n_samples", "n_warmup": "n_warmup",
    "n_grid": "n_grid", "n_side": "n_side", "box_size": "box_size", "threshold_mass": "threshold_mass",
    "order": "order", "start": "start", "preconditioner": "preconditioner", "leapfrog_steps": "leapfrog_steps",
    "target_accept": "target_accept", "map_steps": "map_steps", "bias_coordinates": "bias_coordinates",
    "devices": "devices", "sampler": "sampler", "bias_kernel": "bias_kernel", "bias_steps": "bias_steps",
    "bias_pilot": "n_bias_pilot",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="quick", help=f"one of {sorted(field_level.PRESETS)}")
    parser.add_argument("--suite", type=path_argument, default=Path("runs/demo/field_suite"))
    parser.add_argument("--out", type=path_argument, default=Path("runs/demo/field_level"))
    parser.add_argument("--seed", type=int, default=0, help="simulation, bias-fit and mock seed")
    parser.add_argument("--sampler-seed", type=int, default=None, help="chains' seed (default: --seed)")
    parser.add_argument("--settings", nargs="+", default=None, help="mock and/or nbody (default: both)")
    parser.add_argument("--chains", type=int, default=None)
    parser.add_argument("--n-samples", type=int, default=None, help="kept draws per chain (>= 20)")
    parser.add_argument("--n-warmup", type=int, default=None, help="warm-up iterations per chain")
    parser.add_argument("--n-grid", type=int, default=None, help="inference grid per side")
    parser.add_argument("--n-side", type=int, default=None, help="N-body particles per side")
    parser.add_argument("--box-size", type=float, default=None, help="box side, Mpc/h")
    parser.add_argument("--threshold-mass", type=float, default=None, help="halo mass threshold, Msun/h")
    parser.add_argument("--order", type=int, default=None, help="LPT order: 1 or 2")
    parser.add_argument("--start", default=None, help="prior or map")
    parser.add_argument("--preconditioner", default=None, help="curvature, prior or none")
    parser.add_argument("--bias-coordinates", default=None,
                        help="diagonal, local_linear or pilot (a dense metric from NUTS draws of the bias given "
                        "the starting fields)")
    parser.add_argument("--bias-pilot", type=int, default=None,
                        help="warm-up iterations and draws per chain of the bias pilot (--bias-coordinates pilot)")
    parser.add_argument("--sampler", default=None, help="joint (one HMC kernel) or gibbs (field by HMC, bias by "
                        "--bias-kernel, alternately)")
    parser.add_argument("--bias-kernel", default=None, help="slice, nuts or hmc: the bias block's kernel (--sampler gibbs)")
    parser.add_argument("--bias-steps", type=int, default=None, help="transitions of the bias kernel per Gibbs sweep")
    parser.add_argument("--leapfrog-steps", type=int, default=None)
    parser.add_argument("--target-accept", type=float, default=None)
    parser.add_argument("--map-steps", type=int, default=None, help="Adam steps of the bias fit")
    parser.add_argument("--no-xla", action="store_true", help="run the chains without XLA")
    parser.add_argument("--devices", type=int, default=None,
                        help="JAX devices to split the chains over (KERAS_BACKEND=jax)")
    parser.add_argument("--overwrite", action="store_true", help="discard cached steps made with other settings")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def make_config(args) -> field_level.Config:
    overrides = {field: getattr(args, flag) for flag, field in OVERRIDES.items() if getattr(args, flag) is not None}
    if args.settings is not None:
        overrides["settings"] = tuple(args.settings)
    if args.no_xla:
        overrides["jit_compile"] = False
    return field_level.Config.preset(args.preset, seed=args.seed, **overrides)


def main(argv=None) -> int:
    return common.run_cli(build_parser(), make_config,
                          lambda config, args: field_level.run(config, args.suite, args.out,
                                                               progress=not args.no_progress,
                                                               overwrite=args.overwrite), argv)


if __name__ == "__main__":
    sys.exit(main())
