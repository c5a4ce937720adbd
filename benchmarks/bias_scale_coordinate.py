"""Which scale coordinate samples the bias given the true field faster: the NPE's curvature or its log scale?

Given a finished field-level study (``experiments/field_level.py ... --out OUT``), holds the white
noise at the truth, takes the setting's halo catalogue, and runs NUTS on the bias parameters alone in
the local-linear coordinates with each scale coordinate (``curvature``: ``xi``, the default;
``log_scale``: ``lambda``; :func:`tfhalo.studies.field_level.local_linear_bias_bijector`, the Laplace
map at the bias fitted to the N-body field). Prints per coordinate the leapfrog steps per iteration,
the adapted step, divergences, the smallest bulk and tail ESS over the parameters, the largest R-hat,
gradient evaluations per effective sample, and the 95% quantile of the NPE's mean pre-activation m
(how far the posterior reaches into softplus's linear regime), then the ratio of gradients per
effective sample against ``curvature`` measured in the same run (docs/sampling_coordinates.md,
"Which scale coordinate").

    python benchmarks/bias_scale_coordinate.py runs/field_level --setting mock --out runs/scale_coordinate.json

Writes ``--out`` (JSON, atomically) with the table and the machine.
"""

from __future__ import annotations

import argparse
import datetime
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402

from tfhalo.atomic import write_json_atomic  # noqa: E402
from tfhalo.studies import common, field_level  # noqa: E402
from tfhalo.validation import check_int, check_output_path, path_argument  # noqa: E402


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("study_out", type=path_argument, help="a finished field-level study's --out")
    parser.add_argument("--setting", default="mock", help=f"one of {field_level.SETTINGS} that the study ran")
    parser.add_argument("--chains", type=int, default=2)
    parser.add_argument("--n-warmup", type=int, default=300)
    parser.add_argument("--n-samples", type=int, default=600)
    parser.add_argument("--max-tree-depth", type=int, default=8)
    parser.add_argument("--seed", type=int, default=7, help="the chains' seed (the same for both coordinates)")
    parser.add_argument("--out", type=path_argument, default=Path("runs/scale_coordinate.json"))
    parser.add_argument("--no-xla", action="store_true", help="run the chains without XLA")
    parser.add_argument("--no-progress", action="store_true")
    return parser


def measure(posterior, state, target, scale, n_chains, sampling, progress):
    """One coordinate's row of the table: NUTS on ``target``, the bias given the field of ``state``.

    ``sampling``: :func:`tfhalo.studies.field_level.sample_bias_given_fields`'s keyword arguments.
    """
    import arviz as az

    from tfhalo import backend

    bijector, rep = field_level.local_linear_bias_bijector(posterior, state, return_rep=True, scale_coordinate=scale)
    start = np.tile(state[posterior.n_field:], (n_chains, 1))
    t0 = time.perf_counter()
    chains = field_level.sample_bias_given_fields(target, start, bijector, progress=progress, **sampling)
    seconds = time.perf_counter() - t0
    theta = np.asarray(chains.samples, np.float64)                                      # (S, C, n_bias)
    idata = az.from_dict(posterior={"theta": theta.transpose(1, 0, 2)})
    bulk = az.ess(idata, method="bulk")["theta"].values
    tail = az.ess(idata, method="tail")["theta"].values
    m = np.asarray(backend.to_numpy(rep.inverse(backend.constant(theta.reshape(-1, theta.shape[-1])))))[:, rep.b_index]
    steps = np.asarray(chains.sample_stats["n_steps"])
    return {"scale_coordinate": scale, "steps_per_iteration": float(steps.mean()),
            "step_size": float(np.asarray(chains.step_size).mean()),
            "divergences": int(np.sum(chains.sample_stats["diverging"])), "draws": int(theta.shape[0] * theta.shape[1]),
            "min_bulk_ess": float(bulk.min()), "min_tail_ess": float(tail.min()),
            "max_rhat": float(az.rhat(idata)["theta"].values.max()),
            "gradients_per_ess": float(steps.sum() / bulk.min()),
            "m_q95": np.quantile(m, 0.95, axis=0).tolist(), "seconds": seconds}


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        chains = check_int("chains", args.chains, minimum=2)
        n_warmup = check_int("n_warmup", args.n_warmup, minimum=20)  # the shortest windowed adaptation
        n_samples = check_int("n_samples", args.n_samples, minimum=10)
        depth = check_int("max_tree_depth", args.max_tree_depth, minimum=1, maximum=12)
        seed = check_int("seed", args.seed, minimum=0)
        check_output_path("out", args.out, inputs={"study_out": args.study_out})
        study = field_level.load_finished_study(args.study_out, args.setting)
    except ValueError as err:
        parser.error(str(err))
    from tfhalo.field.posterior import FieldLevelPosterior

    config = study.config
    posterior = FieldLevelPosterior(field_level.forward_model(config, study.simulation), field_level.bias_model(config),
                                    study.catalogue)
    state = np.concatenate([study.omega_true.reshape(-1), study.theta_fit])
    sampling = dict(num_warmup=n_warmup, num_samples=n_samples, seed=seed, max_tree_depth=depth,
                    jit_compile=not args.no_xla)
    # The field is the same for both coordinates: its LPT density and the conditional are built once.
    target = field_level.bias_given_fields_target(posterior, study.omega_true, n_chains=chains)
    rows = [measure(posterior, state, target, scale, chains, sampling, not args.no_progress)
            for scale in field_level.BIAS_SCALE_COORDINATES]
    base = rows[0]["gradients_per_ess"]
    print(f"{study.catalogue.n_halos} halos ({args.setting}), {config.n_components}-Gaussian head; NUTS, {chains} "
          f"chains of {n_warmup} + {n_samples}, seed {seed}")
    print("| scale coordinate | leapfrog steps / iteration | step | divergences | min bulk / tail ESS | max R-hat | "
          "gradients per min bulk ESS | ratio to curvature | m 95% quantile |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        r["ratio_to_curvature"] = r["gradients_per_ess"] / base
        print(f"| {r['scale_coordinate']} | {r['steps_per_iteration']:.0f} | {r['step_size']:.3g} | "
              f"{r['divergences']} of {r['draws']} | {r['min_bulk_ess']:.0f} / {r['min_tail_ess']:.0f} | "
              f"{r['max_rhat']:.3f} | {r['gradients_per_ess']:.0f} | {r['ratio_to_curvature']:.2f} | "
              f"{', '.join(f'{q:+.1f}' for q in r['m_q95'])} |")
    write_json_atomic(args.out, {"benchmark": "bias_scale_coordinate", "study_out": str(args.study_out),
                                 "setting": args.setting, "n_halos": int(study.catalogue.n_halos),
                                 "n_components": config.n_components, "chains": chains, "n_warmup": n_warmup,
                                 "n_samples": n_samples, "max_tree_depth": depth, "seed": seed, "rows": rows,
                                 "machine": common.machine_info(),
                                 "date": datetime.datetime.now(datetime.timezone.utc).isoformat()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
