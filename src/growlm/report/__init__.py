"""Run comparison at equal FLOPs: tables, plots, report.md and report.html.

    from growlm.report import write_report, format_table
    print(format_table(["runs/gstack"], baseline="runs/standard"))
    write_report(["runs/gstack"], baseline="runs/standard", out="report/")
"""

from growlm.report.compare import check_comparable, flops_to_target, summarize
from growlm.report.runs import Run, load_run
from growlm.report.write import format_table, write_report

__all__ = ["Run", "check_comparable", "flops_to_target", "format_table", "load_run", "summarize",
           "write_report"]
