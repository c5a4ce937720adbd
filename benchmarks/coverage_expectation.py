"""How often do exact chains' central intervals hold the truth? The expectation against the nominal level.

The field-level study judges the coverage of the true white noise against
:func:`tfhalo.field.analysis.expected_coverage`, what an exact sampler's intervals from
the same draws hold, rather than against the nominal level (docs/field_level.md,
"Calibration"). This benchmark checks that expectation where the answer is known: chains
of a stationary AR(1) process with unit Gaussian marginals (an exact sampler of N(0, 1)
with lag-one correlation ``rho``), one chain set per mode, and a truth drawn fresh from
N(0, 1) for each mode. Per case (chains, draws per chain, ``rho``, seed) and level it
prints the fraction of modes whose central interval holds the truth, the expectation,
the z of the fraction against the expectation and against the nominal level (binomial
errors over the modes), and the median bulk ESS per mode.

    python benchmarks/coverage_expectation.py --seeds 2 3 --modes 4000 --out runs/coverage_expectation.json

Writes ``--out`` (JSON, atomically) with the rows and the machine. NumPy and ArviZ only:
about a minute on 2 cores.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from tfhalo.atomic import write_json_atomic  # noqa: E402
from tfhalo.validation import check_int, check_output_path, path_argument  # noqa: E402

#: (chains, draws per chain, lag-one correlation): from independent draws to chains of a few
#: effective draws per mode, where the expansion behind the expectation fails.
CASES = ((2, 30, 0.0), (2, 60, 0.5), (2, 120, 0.8), (2, 300, 0.9), (4, 100, 0.7), (2, 60, 0.9))
LEVELS = (0.68, 0.95)


def ar1_chains(rng, chains: int, draws: int, modes: int, rho: float) -> np.ndarray:
    """``(chains, draws, modes)`` stationary AR(1) chains with N(0, 1) marginals."""
    x = np.empty((chains, draws, modes))
    x[:, 0] = rng.standard_normal((chains, modes))
    scale = np.sqrt(1.0 - rho**2)
    for t in range(1, draws):
        x[:, t] = rho * x[:, t - 1] + scale * rng.standard_normal((chains, modes))
    return x


def case_rows(chains: int, draws: int, rho: float, seed: int, modes: int) -> list:
    """The rows of one case, one per level."""
    import arviz as az

    from tfhalo.field.analysis import expected_coverage

    rng = np.random.default_rng(seed)
    x = ar1_chains(rng, chains, draws, modes, rho)
    truth = rng.standard_normal(modes)
    flat = x.reshape(-1, modes)
    ess = np.asarray(az.ess(az.convert_to_dataset(x), method="bulk")["x"].values)
    rows = []
    for level in LEVELS:
        lo, hi = np.quantile(flat, [(1 - level) / 2, (1 + level) / 2], axis=0)
        fraction = float(np.mean((truth >= lo) & (truth <= hi)))
        e = expected_coverage(x, level)
        expected = float(e.mean())
        rows.append({"chains": chains, "draws": draws, "rho": rho, "seed": seed, "modes": modes, "level": level,
                     "fraction": fraction, "expected": expected,
                     "z_expected": (fraction - expected) / float(np.sqrt(np.mean(e * (1 - e)) / modes)),
                     "z_nominal": (fraction - level) / float(np.sqrt(level * (1 - level) / modes)),
                     "median_bulk_ess": float(np.median(ess))})
    return rows


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[2, 3])
    parser.add_argument("--modes", type=int, default=4000, help="modes (independent chain sets) per case")
    parser.add_argument("--out", type=path_argument, default=Path("runs/coverage_expectation.json"))
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        seeds = [check_int("seeds", s, minimum=0) for s in args.seeds]
        modes = check_int("modes", args.modes, minimum=100)
        out = check_output_path("out", args.out)
    except ValueError as err:
        parser.error(str(err))
    from tfhalo.studies import common

    rows = [row for seed in seeds for case in CASES for row in case_rows(*case, seed, modes)]
    print("| chains | draws | rho | seed | level | median bulk ESS | fraction | expected | z vs expected | "
          "z vs nominal |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['chains']} | {r['draws']} | {r['rho']:g} | {r['seed']} | {r['level']:g} | "
              f"{r['median_bulk_ess']:.0f} | {r['fraction']:.4f} | {r['expected']:.4f} | {r['z_expected']:+.2f} | "
              f"{r['z_nominal']:+.2f} |")
    write_json_atomic(out, {"benchmark": "coverage_expectation", "cases": [list(c) for c in CASES],
                            "seeds": seeds, "modes": modes, "rows": rows, "machine": common.machine_info(),
                            "date": datetime.datetime.now(datetime.timezone.utc).isoformat()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
