"""Write docs/results.md from the studies' results.json files.

    python experiments/write_results_doc.py runs/demo/deep_halos runs/demo/neural_bias \
        [--robustness runs/robustness.json ...] --out docs/results.md

A thin shell over :func:`tfhalo.studies.results_doc.write_results_doc`. A bad
argument or a missing / malformed results.json is reported as a usage error
(exit 2) and nothing is written.
"""

import argparse
import sys

from tfhalo.studies.results_doc import write_results_doc
from tfhalo.validation import path_argument


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", help="study run directories or their results.json files")
    parser.add_argument("--robustness", nargs="+", default=None,
                        help="JSON tables written by benchmarks/bias_robustness.py (one section each)")
    parser.add_argument("--out", type=path_argument, default="docs/results.md",
                        help="Markdown file to write (default docs/results.md)")
    parser.add_argument("--no-copy-figures", action="store_true",
                        help="link the figures where they are instead of copying them next to --out")
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        path = write_results_doc(args.runs, out=args.out, robustness=args.robustness,
                                 copy_figures=not args.no_copy_figures)
    except (ValueError, FileNotFoundError) as err:
        parser.error(str(err))
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
