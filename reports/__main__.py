"""Command line: ``python -m reports build|compare|merge``.

Bad input (a missing, empty, truncated or foreign file, a glob matching nothing) prints one
line naming the file and the problem on stderr and exits with status 2."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m reports", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="write the HTML/Markdown report of result files")
    results = "pytest-benchmark JSON files and/or journals (*.journal.jsonl); globs are expanded"
    build.add_argument("results", nargs="+", help=results)
    build.add_argument("--out", default="reports/out", help="output folder (default %(default)s)")
    compare = sub.add_parser("compare", help="per-benchmark time ratios NEW / BASE")
    compare.add_argument("base", help="the reference run (a JSON file or journal)")
    compare.add_argument("new", help="the run to judge")
    compare.add_argument(
        "--fail-above",
        type=float,
        default=1.10,
        metavar="RATIO",
        help="exit 1 when a benchmark slowed by more than this ratio beyond "
        "the IQR noise (default %(default)s)",
    )
    compare.add_argument("--csv", help="also write the comparison table to this CSV file")
    merge = sub.add_parser("merge", help="one pytest-benchmark file from one machine's shards")
    merge.add_argument("out", help="the merged JSON file to write")
    merge.add_argument("shards", nargs="+", help="--benchmark-json files; globs are expanded")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; return its exit status."""
    args = _parser().parse_args(argv)
    from reports.load import InputError

    try:
        if args.command == "compare":
            from reports.compare import run_compare

            return run_compare(args.base, args.new, args.fail_above, args.csv)
        if args.command == "merge":
            from reports.merge import merge

            merged = merge(args.shards, args.out)
            points, sources = len(merged["benchmarks"]), len(merged["hollowbench"]["merged_from"])
            print(f"wrote {args.out}: {points} benchmarks from {sources} files")
            return 0
        from reports.build import build

        start = time.perf_counter()
        built = build(args.results, args.out)
    except InputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for note in built.skipped:
        print(f"  no data: {note}")
    print(
        f"wrote {built.out / 'index.html'} and report.md: {built.points} points, "
        f"{built.figures} figures, {built.tables} tables in {time.perf_counter() - start:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
