"""Is the bias's maximum-likelihood estimate centred on the bias a mock was drawn with?

Given a finished field-level study (``experiments/field_level.py ... --out OUT`` with the
``mock`` setting), draws ``--mocks`` catalogues at its true white noise and the bias fitted to
its N-body field (the mock's bias), maximises the bias's log posterior given the true field
for each (L-BFGS-B, prior sd ``--prior-scale``, wide by default so that it is the
likelihood's maximum; :func:`tfhalo.field.mock.bias_recovery`), and prints per parameter the
mean offset of the estimates from the mock's bias, its standard error over the mocks and
their ratio t, and the t of the likelihood's mean score at the mock's bias (Bartlett's
identity: zero mean, whatever the optimiser does). A mock and a likelihood that agree give
both t of order 1 (Student t with ``mocks - 1`` degrees of freedom); a posterior mean need
not be centred (the head's prior-bounded ridge, docs/field_level.md, "Calibration").

    python benchmarks/bias_recovery.py runs/field_level --mocks 24 --out runs/bias_recovery.json

Writes ``--out`` (JSON, atomically) with the estimates, the table's numbers and the machine.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tfhalo.atomic import write_json_atomic  # noqa: E402
from tfhalo.studies import common, field_level  # noqa: E402
from tfhalo.validation import check_float, check_int, check_output_path, path_argument  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study_out", type=path_argument, help="a field-level study's --out with the mock setting")
    parser.add_argument("--mocks", type=int, default=24, help="number of mock catalogues (at least 2)")
    parser.add_argument("--first-seed", type=int, default=100, help="the mocks' seeds are first-seed, first-seed+1, ...")
    parser.add_argument("--prior-scale", type=float, default=1e3, help="the bias prior's sd in the fits")
    parser.add_argument("--out", type=path_argument, default=Path("runs/bias_recovery.json"))
    parser.add_argument("--no-progress", action="store_true")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        mocks = check_int("mocks", args.mocks, minimum=2)
        first = check_int("first_seed", args.first_seed, minimum=0)
        prior = check_float("prior_scale", args.prior_scale, positive=True)
        out = args.study_out
        check_output_path("out", args.out, inputs={"study_out": out})
        study = field_level.load_finished_study(out, "mock")
    except ValueError as err:
        parser.error(str(err))
    from tfhalo.field.mock import bias_recovery

    config, sim, omega, theta = study.config, study.simulation, study.omega_true, study.theta_fit
    names = list(study.parameter_names)
    model, forward = field_level.bias_model(config), field_level.forward_model(config, sim)
    r = bias_recovery(forward, model, omega, theta, range(first, first + mocks), prior_scale=prior,
                      progress=not args.no_progress)
    print(f"{mocks} mocks (seeds {first}-{first + mocks - 1}) of {min(r['n_halos'])}-{max(r['n_halos'])} halos; "
          f"{sum(r['converged'])} fits converged; prior sd {prior:g}")
    print("| parameter | generating | mean offset | standard error | t | sd over mocks | score t |")
    print("|---|---|---|---|---|---|---|")
    for i, name in enumerate(names):
        print(f"| {name} | {theta[i]:.4g} | {r['mean_offset'][i]:+.4g} | {r['standard_error'][i]:.3g} | "
              f"{r['t'][i]:+.2f} | {r['sd'][i]:.3g} | {r['score_t'][i]:+.2f} |")
    write_json_atomic(args.out, {"benchmark": "bias_recovery", "study_out": str(out), "parameters": names,
                                 "theta": theta.tolist(), **r, "machine": common.machine_info(),
                                 "date": datetime.datetime.now(datetime.timezone.utc).isoformat()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
