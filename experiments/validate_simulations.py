"""Validate the simulation engine: initial P(k) and FoF mass function against colossus.

A thin shell over :mod:`tfhalo.studies.validate_simulations` (see it for what is
compared and the targets). Bad arguments exit with code 2 before anything is
written; Ctrl-C exits with 130; rerun the same command to resume.

Example:
    python experiments/validate_simulations.py                  # 4 simulations of 128^3 in 50 Mpc/h
    python experiments/validate_simulations.py --preset quick   # seconds: 2 simulations of 32^3
    python experiments/validate_simulations.py --n-sims 8 --seed 1 --out runs/validate_seed1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from tfhalo.studies import common, validate_simulations
from tfhalo.validation import path_argument

#: command-line flag -> Config field, for the flags that override a preset value when given.
OVERRIDES = ("n_sims", "n_side", "box_size", "n_steps", "mesh_factor")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(validate_simulations.PRESETS), default=None,
                   help="default: 'default'")
    p.add_argument("--quick", action="store_true", help="the same as --preset quick")
    p.add_argument("--n-sims", type=int, default=None)
    p.add_argument("--n-side", type=int, default=None)
    p.add_argument("--box", dest="box_size", type=float, default=None, help="box side in Mpc/h")
    p.add_argument("--n-steps", type=int, default=None)
    p.add_argument("--mesh-factor", type=int, default=None)
    p.add_argument("--seed", type=int, default=0, help="master seed (one independent seed per simulation)")
    p.add_argument("--out", type=path_argument, default=Path("runs/validate_simulations"))
    p.add_argument("--suite", type=path_argument, default=None, help="suite directory (default OUT/suite)")
    p.add_argument("--verbose", action="store_true", help="print each simulation's halo count")
    return p


def make_config(args) -> validate_simulations.Config:
    overrides = {k: getattr(args, k) for k in OVERRIDES if getattr(args, k) is not None}
    if args.quick and args.preset not in (None, "quick"):
        raise ValueError(f"--quick means --preset quick; give one of them. Received: preset={args.preset!r}, "
                         "quick=True")
    preset = "quick" if args.quick else (args.preset or "default")
    return validate_simulations.Config.preset(preset, seed=args.seed, **overrides)


def run(config: validate_simulations.Config, args) -> dict:
    return validate_simulations.run(config, suite=args.suite or args.out / "suite", out=args.out,
                                    verbose=args.verbose)


def main(argv=None) -> int:
    return common.run_cli(build_parser(), make_config, run, argv)


if __name__ == "__main__":
    sys.exit(main())
