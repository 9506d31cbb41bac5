"""`growlm compare RUN_DIR ... --baseline RUN_DIR [--out report/]`."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories written by growlm train")
    parser.add_argument("--baseline", required=True, metavar="RUN_DIR",
                        help="the run the others are measured against (usually standard training)")
    parser.add_argument("--out", default="report", help="output folder (default: ./report)")
    parser.add_argument("--interp", choices=("log", "linear"), default="log",
                        help="interpolate the val curve linearly in log(FLOPs) (default) or in FLOPs")
    parser.add_argument("--flops", choices=("exact", "seed"), default="exact",
                        help="FLOPs count to compare by: exact (default) or the seeds' 6N/2N formula")
    parser.add_argument("--neighbours", type=int, metavar="K", nargs="?", const=100,
                        help="also tabulate top-K neighbour overlap of embedding/head with the "
                             "baseline's (default K 100; reads the checkpoints)")
    parser.add_argument("--title", help="report title")


def run(args: argparse.Namespace) -> int:
    from growlm.errors import GrowlmError
    from growlm.report.write import format_table, write_report

    if args.neighbours is not None and args.neighbours < 1:
        raise GrowlmError(f"--neighbours must be a positive integer, got {args.neighbours}")
    path = write_report(args.runs, args.baseline, args.out, interp=args.interp, flops=args.flops,
                        neighbours=args.neighbours, title=args.title)
    print(format_table(args.runs, args.baseline, interp=args.interp, flops=args.flops))
    print(f"\nreport: {path} (and {path.with_suffix('.html')})")
    return 0
