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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="quick", help=f"one of {sorted(field_level.PRESETS)}")
    parser.add_argument("--suite", type=path_argument, default=Path("runs/demo/field_suite"))
    parser.add_argument("--out", type=path_argument, default=Path("runs/demo/field_level"))
    parser.add_argument("--seed", type=int, default=0, help="simulation, bias-fit and mock seed")
    parser.add_argument("--settings", nargs="+", default=None, help=f"of {field_level.SETTINGS} (default: the preset's)")
    field_level.add_override_arguments(parser)
    parser.add_argument("--overwrite", action="store_true", help="discard cached steps made with other settings")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def make_config(args) -> field_level.Config:
    overrides = field_level.overrides_from_args(args)
    if args.settings is not None:
        overrides["settings"] = tuple(args.settings)
    return field_level.Config.preset(args.preset, seed=args.seed, **overrides)


def main(argv=None) -> int:
    return common.run_cli(build_parser(), make_config,
                          lambda config, args: field_level.run(config, args.suite, args.out,
                                                               progress=not args.no_progress,
                                                               overwrite=args.overwrite), argv)


if __name__ == "__main__":
    sys.exit(main())
