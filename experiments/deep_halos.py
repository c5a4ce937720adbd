"""The deep-halo study of Lucie-Smith et al. (2020, arXiv:2011.10577) from the command line.

A thin shell over :mod:`tfhalo.studies.deep_halos` (see it for the presets,
configurations, caches and resuming). Bad arguments exit with code 2 before
anything is written; Ctrl-C exits with 130; rerun the same command to resume.

Example:
    python experiments/deep_halos.py --preset quick --suite runs/demo/suite --out runs/demo/deep_halos
    python experiments/deep_halos.py --preset paper --suite /data/suite --out runs/paper
    python experiments/deep_halos.py --preset paper --suite /data/suite --out runs/paper --devices 4
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from tfhalo.studies import common, deep_halos  # noqa: E402
from tfhalo.validation import path_argument  # noqa: E402

#: command-line flag -> Config field, for the flags that override a preset value when given.
OVERRIDES = ("epochs", "batch_size", "learning_rate", "n_sims", "n_train", "n_validation", "n_test", "subbox_size",
             "patience", "workers", "balanced", "n_boot", "log_mass_range", "configs", "devices")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", choices=sorted(deep_halos.PRESETS), default="quick")
    p.add_argument("--suite", type=path_argument, default=None,
                   help="suite directory; generated or extended there when it is a generated one (default OUT/suite)")
    p.add_argument("--out", type=path_argument, default=None, help="study directory (default runs/deep_halos_PRESET)")
    p.add_argument("--configs", nargs="+", choices=deep_halos.CONFIGS, default=None)
    p.add_argument("--seed", type=int, default=0)
    for flag, kind in (("epochs", int), ("batch-size", int), ("learning-rate", float), ("n-sims", int),
                       ("n-train", int), ("n-validation", int), ("n-test", int), ("subbox-size", int),
                       ("patience", int), ("workers", int), ("n-boot", int)):
        p.add_argument(f"--{flag}", type=kind, default=None)
    p.add_argument("--log-mass-range", type=float, nargs=2, default=None, metavar=("LOW", "HIGH"))
    p.add_argument("--devices", type=int, default=None,
                   help="train each CNN data parallel on this many devices (GPUs, or CPUs without GPUs; "
                        "default 1). Batch sizes and the last batches must split evenly over them")
    p.add_argument("--balanced", action="store_true", default=None, help="balanced sampling across mass")
    p.add_argument("--use-multiprocessing", action="store_true")
    p.add_argument("--no-gbt", action="store_true", help="skip the GBT baseline")
    p.add_argument("--no-export", action="store_true", help="skip the SavedModel export")
    p.add_argument("--overwrite", action="store_true", help="discard caches in --out made with other settings")
    return p


def make_config(args) -> deep_halos.Config:
    overrides = {k: getattr(args, k) for k in OVERRIDES if getattr(args, k) is not None}
    return deep_halos.Config.preset(args.preset, seed=args.seed, use_multiprocessing=args.use_multiprocessing,
                                    gbt=not args.no_gbt, export=not args.no_export, **overrides)


def run(config: deep_halos.Config, args) -> dict:
    out = args.out or Path("runs") / f"deep_halos_{config.preset_name}"
    return deep_halos.run(config, suite=args.suite or out / "suite", out=out, overwrite=args.overwrite)


def main(argv=None) -> int:
    return common.run_cli(build_parser(), make_config, run, argv)


if __name__ == "__main__":
    sys.exit(main())
