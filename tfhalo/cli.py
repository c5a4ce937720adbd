"""The ``tfhalo`` command line.

Subcommands::

    tfhalo simulate --preset quick|paper|charnock2020 --n-sims N --out DIR --seed S
                    [--n-side N] [--box-size L] [--n-steps K] [--no-progress]
    tfhalo predict  --model DIR --simulation PATH --out FILE.h5 [--batch-size B]

``simulate`` is resumable: rerunning the same command skips finished
simulations and redoes interrupted ones.

Example:
    >>> main(["simulate", "--preset", "quick", "--n-sims", "2", "--out", "suite"])  # doctest: +SKIP
"""

from __future__ import annotations

import argparse
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


def build_parser() -> argparse.ArgumentParser:
    from tfhalo import __version__
    from tfhalo.sim.suite import PRESETS

    parser = argparse.ArgumentParser(prog="tfhalo", description="Simulations and halo-formation models.")
    parser.add_argument("--version", action="version", version=f"tfhalo {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    sim = sub.add_parser("simulate", help="generate a suite of simulations (resumable)")
    sim.add_argument("--preset", choices=sorted(PRESETS), default="quick", help="simulation parameters")
    sim.add_argument("--n-sims", type=_positive_int, default=4, help="number of simulations")
    sim.add_argument("--out", required=True, help="suite directory")
    sim.add_argument("--seed", type=_non_negative_int, default=0, help="master seed")
    sim.add_argument("--n-side", type=_positive_int, default=None, help="override: particles per side")
    sim.add_argument("--box-size", type=_positive_float, default=None, help="override: box side, Mpc/h")
    sim.add_argument("--n-steps", type=_positive_int, default=None, help="override: particle-mesh steps")
    sim.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    pred = sub.add_parser("predict", help="predict halo masses for a simulation with a trained model")
    pred.add_argument("--model", required=True, help="trained model directory")
    pred.add_argument("--simulation", required=True, help="suite .h5 file, simulation directory or snapshot")
    pred.add_argument("--out", required=True, help="output .h5 file")
    pred.add_argument("--batch-size", type=_positive_int, default=64, help="prediction batch size")
    return parser


def _simulate(args) -> int:
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
    )
    print(f"{len(paths)} simulations in {args.out}")
    return 0


def _predict(args) -> int:
    # Imported here: the prediction stack pulls in Keras/TensorFlow, which
    # `tfhalo simulate` does not need.
    from tfhalo.data.prediction import predict_to_file

    out = predict_to_file(args.model, args.simulation, args.out, batch_size=args.batch_size)
    print(f"predictions written to {out if out is not None else args.out}")
    return 0


def main(argv: Optional[List[str]] = None) -> int:
    """Run the ``tfhalo`` command; returns the exit status.

    Errors in the arguments or input files are reported on stderr with status 2.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    handler = {"simulate": _simulate, "predict": _predict}[args.command]
    try:
        return handler(args)
    except (ValueError, OSError) as err:
        parser.exit(2, f"tfhalo {args.command}: error: {err}\n")


if __name__ == "__main__":
    sys.exit(main())
