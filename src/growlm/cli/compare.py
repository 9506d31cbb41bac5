"""`growlm compare RUN_DIR ... --baseline RUN_DIR [--out report/] [--format png,svg,pdf] [--json [FILE]]`."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN_DIR", help="run directories written by growlm train")
    parser.add_argument("--baseline", required=True, metavar="RUN_DIR",
                        help="the run the others are measured against (usually standard training)")
    parser.add_argument("--out", default="report", help="output folder (default: ./report)")
    parser.add_argument("--interp", choices=("log", "linear"), default="log",
                        help="interpolate the val curve linearly in log(FLOPs) (default) or in FLOPs")
    parser.add_argument("--flops", choices=("exact", "6nd"), default="exact",
                        help="FLOPs count to compare by: exact (default) or the papers' 6·N·D formula (6·N_trainable + 2·N_frozen per token)")
    parser.add_argument("--neighbours", type=int, metavar="K", nargs="?", const=100,
                        help="also tabulate top-K neighbour overlap of embedding/head with the "
                             "baseline's (default K 100; reads the checkpoints)")
    parser.add_argument("--format", default="png", metavar="LIST",
                        help="plot files to write, comma-separated from png, svg, pdf (default: "
                             "png); the report shows the PNGs, else the SVGs")
    parser.add_argument("--json", nargs="?", const="-", metavar="FILE",
                        help="the comparison's numbers as JSON: printed instead of the table, or "
                             "written to FILE")
    parser.add_argument("--title", help="report title")


def run(args: argparse.Namespace) -> int:
    import growlm.report.compare as cmp
    from growlm.errors import GrowlmError
    from growlm.files import check_output_file, check_path
    from growlm.report.neighbours import check_neighbours
    from growlm.report.write import format_table, parse_formats, write_report

    if args.neighbours is not None and args.neighbours < 1:
        raise GrowlmError(f"--neighbours must be a positive integer, got {args.neighbours}")
    formats = parse_formats(args.format)
    out = check_path(args.out, "--out")  # outputs are checked before the runs are read
    if args.json is not None and args.json != "-":
        check_output_file(args.json, "--json")
    runs, base = cmp.load_runs(args.runs, args.baseline)
    if args.neighbours is not None:
        check_neighbours(args.neighbours, runs)
    for problem in [p for r in runs for p in r.problems] + cmp.check_comparable(runs):
        print(f"warning: {problem}", file=sys.stderr)
    path = write_report(runs, base, out, interp=args.interp, flops=args.flops,
                        neighbours=args.neighbours, title=args.title, formats=formats)
    if args.json is not None:
        _write_json(args.json, comparison_json(runs, base, args.interp, args.flops))
    if args.json != "-":
        print(format_table(runs, base, interp=args.interp, flops=args.flops))
        print(f"\nreport: {path} (and {path.with_suffix('.html')})"
              + (f"; numbers: {args.json}" if args.json else ""))
    return 0


def comparison_json(runs, base, interp: str, flops: str) -> dict:
    """The summary rows as a JSON-ready dict (standard JSON: unknown or non-finite → null)."""
    import growlm.report.compare as cmp
    from growlm.files import to_json_safe

    rows = cmp.summarize(runs, base, interp, flops)
    paths = {r.name: str(r.path) for r in runs}
    out_rows = []
    for row in rows:
        d = dataclasses.asdict(row)
        out_rows.append({"name": d.pop("name"), "path": paths.get(row.name), **d,
                         "tokens_per_s": row.tokens_per_s})
    return to_json_safe({"baseline": base.name, "interp": interp, "flops_count": flops,
                         "runs": out_rows})


def _write_json(target: str, data: dict) -> None:
    from growlm.files import atomic_write_json, check_path

    if target == "-":
        print(json.dumps(data, indent=1, allow_nan=False))
    else:
        atomic_write_json(check_path(target, "--json"), data)
