"""The ``tfhalo`` command line.

Subcommands::

    tfhalo simulate --preset quick|paper|charnock2020 --n-sims N --out DIR --seed S
                    [--n-side N] [--box-size L] [--n-steps K] [--shard I/N] [--no-progress]
    tfhalo predict  --model DIR --simulation PATH --out FILE.h5 [--batch-size B]

``simulate`` is resumable: rerunning the same command skips finished
simulations and redoes interrupted ones. ``--shard I/N`` runs only the
simulations ``j`` with ``j % N == I``, so that the ``N`` tasks of a job array
(any order, concurrently) build the same suite as one unsharded run
(:func:`tfhalo.sim.suite.generate_suite`).

Bad arguments (including an ``--out`` that is empty, an existing directory,
or one of ``predict``'s inputs) give a one-line message and exit status 2
before any work; Ctrl-C gives one line and status 130
(:func:`tfhalo.studies.common.run_cli`).

Example:
    >>> main(["simulate", "--preset", "quick", "--n-sims", "2", "--out", "suite"])  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import List, Optional


def _checked(convert, accept, description: str, name: str):
    """An argparse ``type``: ``convert(text)``, kept when ``accept(value)``, else ``expected <description>``."""

    def parse(text: str):
        try:
            value = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {description}, received {text!r}") from None
        if not accept(value):
            raise argparse.ArgumentTypeError(f"expected {description}, received {text!r}")
        return value

    parse.__name__ = name  # argparse names the type in some messages
    return parse


_positive_int = _checked(int, lambda v: v >= 1, "a positive integer", "positive_int")
_non_negative_int = _checked(int, lambda v: v >= 0, "a non-negative integer", "non_negative_int")
_positive_float = _checked(float, lambda v: v > 0, "a positive number", "positive_float")  # nan > 0 is False


def _path(text: str) -> str:
    """A non-empty path (:func:`tfhalo.validation.path_argument`), as a string."""
    from tfhalo.validation import path_argument

    return str(path_argument(text))


def build_parser() -> argparse.ArgumentParser:
    from tfhalo import __version__
    from tfhalo.sim.suite import PRESETS

    parser = argparse.ArgumentParser(prog="tfhalo", description="Simulations and halo-formation models.")
    parser.add_argument("--version", action="version", version=f"tfhalo {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    sim = sub.add_parser("simulate", help="generate a suite of simulations (resumable)")
    sim.add_argument("--preset", choices=sorted(PRESETS), default="quick", help="simulation parameters")
    sim.add_argument("--n-sims", type=_positive_int, default=4, help="number of simulations")
    sim.add_argument("--out", type=_path, required=True, help="suite directory")
    sim.add_argument("--seed", type=_non_negative_int, default=0, help="master seed")
    sim.add_argument("--n-side", type=_positive_int, default=None, help="override: particles per side")
    sim.add_argument("--box-size", type=_positive_float, default=None, help="override: box side, Mpc/h")
    sim.add_argument("--n-steps", type=_positive_int, default=None, help="override: particle-mesh steps")
    sim.add_argument("--shard", default=None, metavar="I/N",
                     help="run only simulations j with j %% N == I (0 <= I < N), e.g. "
                          "$SLURM_ARRAY_TASK_ID/$SLURM_ARRAY_TASK_COUNT; parts may run concurrently")
    sim.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    pred = sub.add_parser("predict", help="predict halo masses for a simulation with a trained model")
    pred.add_argument("--model", type=_path, required=True, help="trained model directory")
    pred.add_argument("--simulation", type=_path, required=True,
                      help="suite .h5 file, simulation directory or snapshot")
    pred.add_argument("--out", type=_path, required=True, help="output .h5 file (not one of the inputs)")
    pred.add_argument("--batch-size", type=_positive_int, default=64, help="prediction batch size")
    return parser


def _check_arguments(args):
    """What can be checked without work, named by flag (a ValueError becomes exit status 2)."""
    from tfhalo.validation import check_output_path

    if args.command == "simulate":
        from tfhalo.sim.suite import parse_shard, resolve_preset

        resolve_preset(args.preset, n_side=args.n_side, box_size=args.box_size, n_steps=args.n_steps)
        args.shard = parse_shard(args.shard, name="--shard")
        if os.path.exists(args.out) and not os.path.isdir(args.out):
            raise ValueError(f"--out must be a directory. Received: --out={args.out!r} (a file)")
    else:
        from tfhalo.sim.loader import input_paths

        check_output_path("--out", args.out, inputs={"--simulation": input_paths(args.simulation),
                                                     "--model": args.model})
    return args


def _simulate(args) -> None:
    from tfhalo.sim.suite import generate_suite

    paths = generate_suite(
        args.out,
        preset=args.preset,
        n_sims=args.n_sims,
        seed=args.seed,
        progress=not args.no_progress,
        n_side=args.n_side,
        box_size=args.box_size,
        n_steps=args.n_steps,
        shard=args.shard,
    )
    part = "" if args.shard is None else f" (shard {args.shard[0]}/{args.shard[1]} of {args.n_sims})"
    print(f"{len(paths)} simulations{part} in {args.out}")


def _predict(args) -> None:
    # Imported here: the prediction stack pulls in Keras/TensorFlow, which
    # `tfhalo simulate` does not need.
    from tfhalo.data.prediction import predict_to_file

    out = predict_to_file(args.model, args.simulation, args.out, batch_size=args.batch_size)
    print(f"predictions written to {out if out is not None else args.out}")


def _run(args, _args_again) -> None:
    from tfhalo.studies.common import StudyInputError

    handler = {"simulate": _simulate, "predict": _predict}[args.command]
    try:
        handler(args)
    except (ValueError, OSError) as err:
        # Input files (a suite of other parameters, a corrupt model) are found
        # bad only once read: reported like a bad argument, with no traceback.
        raise StudyInputError(f"{args.command}: {err}") from err


def main(argv: Optional[List[str]] = None) -> int:
    """Run the ``tfhalo`` command; returns the exit status.

    Returns:
        0 on success; 2 for bad arguments or input files (one message on
        stderr, nothing written); 130 when interrupted (Ctrl-C).
    """
    from tfhalo.studies.common import run_cli

    return run_cli(build_parser(), _check_arguments, _run, argv)


if __name__ == "__main__":
    sys.exit(main())
