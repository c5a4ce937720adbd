"""The neural bias study (Charnock et al. 2020, arXiv:1909.06379) against the Neyrinck et al. (2014,
arXiv:1309.6641) bias model: a command-line shell over :mod:`tfhalo.studies.neural_bias`.

    python experiments/neural_bias.py --preset quick --suite runs/demo/suite --out runs/demo/neural_bias

Writes results.json, report.md, posterior.nc (ArviZ InferenceData) and figures into --out.
Resumable: rerun the same command after an interruption. Bad arguments exit with
code 2 before anything is written.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tfhalo.studies import common, neural_bias  # noqa: E402
from tfhalo.validation import path_argument  # noqa: E402

# CLI flag -> Config field, for the flags that override a preset's value.
OVERRIDES = {
    "sampler_seed": "sampler_seed", "chains": "n_chains", "n_samples": "n_samples", "n_warmup": "n_warmup",
    "n_grid": "n_grid", "n_sims": "n_sims", "components": "n_components", "map_steps": "map_steps",
    "map_starts": "map_starts", "threshold_particles": "threshold_particles", "threshold_mass": "threshold_mass",
    "field": "field", "sample_field": "sample_field", "kernel": "kernel", "leapfrog_steps": "leapfrog_steps",
    "max_tree_depth": "max_tree_depth", "target_accept": "target_accept", "step_scale": "step_scale",
    "pilot_target_accept": "pilot_target_accept",
    "devices": "devices",
    "chain_groups": "chain_groups", "chains_dtype": "chains_dtype",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="quick", help=f"one of {sorted(neural_bias.PRESETS)}")
    parser.add_argument("--suite", type=path_argument, default=Path("runs/demo/suite"))
    parser.add_argument("--out", type=path_argument, default=Path("runs/demo/neural_bias"))
    parser.add_argument("--seed", type=int, default=0, help="suite, MAP and baseline seed")
    parser.add_argument("--sampler-seed", type=int, default=None, help="chains' seed (default: --seed)")
    parser.add_argument("--chains", type=int, default=None)
    parser.add_argument("--n-samples", type=int, default=None, help="kept draws per chain (>= 4)")
    parser.add_argument("--n-warmup", "--n-burnin", dest="n_warmup", type=int, default=None,
                        help="warm-up iterations per chain")
    parser.add_argument("--n-grid", type=int, default=None)
    parser.add_argument("--n-sims", type=int, default=None,
                        help="simulations in the study (the last is held out); a generated suite is extended")
    parser.add_argument("--components", type=int, default=None,
                        help="Gaussians in the mixture-density head (the paper's model: 2, 17 parameters)")
    parser.add_argument("--map-steps", type=int, default=None, help="Adam steps per MAP start")
    parser.add_argument("--map-starts", type=int, default=None, help="seeded MAP starts (the best is kept)")
    threshold = parser.add_mutually_exclusive_group()
    threshold.add_argument("--threshold-particles", type=float, default=None,
                           help="halo mass threshold in particles of the suite")
    threshold.add_argument("--threshold-mass", type=float, default=None, help="halo mass threshold in Msun/h")
    parser.add_argument("--field", default=None, help="z=0 density of the input: nbody or lpt")
    parser.add_argument("--sample-field", default=None,
                        help="density the chains sample with (default: --field); the paper fits the N-body "
                             "field and samples with the LPT one")
    parser.add_argument("--kernel", default=None, help="nuts, hmc or chees")
    parser.add_argument("--leapfrog-steps", type=int, default=None, help="leapfrog steps per HMC transition")
    parser.add_argument("--max-tree-depth", type=int, default=None, help="NUTS tree depth limit")
    parser.add_argument("--target-accept", type=float, default=None, help="dual-averaging target acceptance")
    parser.add_argument("--pilot-target-accept", type=float, default=None,
                        help="the pilot run's dual-averaging target acceptance")
    parser.add_argument("--step-scale", type=float, default=None,
                        help="fraction of the adapted step size the kept draws take, in (0, 1]")
    parser.add_argument("--no-xla", action="store_true", help="run the MAP fit and the chains without XLA")
    parser.add_argument("--devices", type=int, default=None,
                        help="JAX devices to split the chains over (KERAS_BACKEND=jax)")
    parser.add_argument("--chain-groups", type=int, default=None,
                        help="independent groups of chains run concurrently, one CPU core each")
    parser.add_argument("--per-group-warmup", action="store_true",
                        help="with --chain-groups, let every group adapt its own step size and mass matrix "
                             "(default: one warm-up of all chains)")
    parser.add_argument("--chains-dtype", default=None,
                        help="precision of the chains' likelihood: float64 or float32 (checked against float64)")
    parser.add_argument("--overwrite", action="store_true", help="discard cached steps made with other settings")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def make_config(args) -> neural_bias.Config:
    overrides = {field: getattr(args, flag) for flag, field in OVERRIDES.items() if getattr(args, flag) is not None}
    if args.no_xla:
        overrides["jit_compile"] = False
    if args.per_group_warmup:
        overrides["pool_warmup"] = False
    return neural_bias.Config.preset(args.preset, seed=args.seed, **overrides)


def main(argv=None) -> int:
    return common.run_cli(build_parser(), make_config,
                          lambda config, args: neural_bias.run(config, args.suite, args.out,
                                                               progress=not args.no_progress,
                                                               overwrite=args.overwrite), argv)


if __name__ == "__main__":
    sys.exit(main())
