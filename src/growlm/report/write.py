"""Assemble the comparison report (report.md, report.html, plots) and the terminal table."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Sequence
from pathlib import Path

import growlm.report.compare as cmp
from growlm.errors import GrowlmError
from growlm.files import atomic_write_text, check_output_dir
from growlm.report.document import Bullets, Document, Heading, Image, Paragraph, Table, plain_table
from growlm.report.fmt import (
    MEMORY_SHORT,
    fmt_bytes,
    fmt_delta,
    fmt_flops,
    fmt_loss,
    fmt_pct,
    fmt_score,
    fmt_time,
)
from growlm.report.plots import FORMATS, all_plots
from growlm.report.runs import Run
from growlm.report.tables import (
    compute_table,
    eval_blocks,
    memory_notes,
    memory_table,
    stage_table,
    to_target,
)

INTERP_TEXT = {"log": "linearly in log(FLOPs)", "linear": "linearly in FLOPs"}


def parse_formats(text: str | Sequence[str]) -> tuple[str, ...]:
    """"png,svg,pdf" → ("png", "svg", "pdf"). The report shows PNG or SVG, so one of them is
    required. GrowlmError naming what is allowed."""
    items = [t.strip().lower().lstrip(".") for t in (text.split(",") if isinstance(text, str) else text)]
    items = list(dict.fromkeys(t for t in items if t))
    unknown = [t for t in items if t not in FORMATS]
    if unknown or not items:
        raise GrowlmError(f"--format {unknown[0] if unknown else text!r}: allowed plot formats are "
                          f"{', '.join(FORMATS)} (a comma-separated list)")
    if not {"png", "svg"} & set(items):
        raise GrowlmError(f"--format {','.join(items)}: add png or svg, the formats the report "
                          "shows (e.g. png,pdf)")
    return tuple(items)


def _short_status(status: str) -> str:
    return status.replace("in progress", "running").split(",")[0] + (")" if "(" in status else "")


def format_table(runs: Sequence[str | Path | Run], baseline: str | Path | Run,
                 interp: str = "log", flops: str = "exact") -> str:
    """The comparison as a compact fixed-width text table (for the terminal)."""
    loaded, base = cmp.load_runs(runs, baseline)
    cmp.check_comparable(loaded)
    rows = cmp.summarize(loaded, base, interp, flops)
    # one estimated and one measured memory figure: the peak where any run measured it
    measured = "peak_measured_bytes" if any(r.memory.get("peak_measured_bytes") for r in rows) \
        else "model_state_bytes"
    mem_keys = ["model_state_estimated_bytes", measured]
    header = ["run", "status", "val loss", "Δ", "FLOPs", "FLOPs to base loss", "saving"]
    for k in mem_keys:
        header += [MEMORY_SHORT[k], "red."]
    header.append("time")
    body = []
    for r in rows:
        cells = [r.name + (" *" if r.is_baseline else ""), _short_status(r.status),
                 fmt_loss(r.final_val_loss), fmt_delta(r.delta_loss),
                 fmt_flops(r.flops if flops == "exact" else r.flops_6nd), to_target(r), fmt_pct(r.saving)]
        for k in mem_keys:
            cells += [fmt_bytes(r.memory.get(k)), fmt_pct(r.memory_reduction.get(k))]
        body.append(cells + [fmt_time(r.wall_time)])
    note = (f"* baseline. FLOPs: {flops} count; FLOPs to base loss: first point of the final "
            f"model's val curve at or below the baseline's final loss, interpolated "
            f"{INTERP_TEXT[interp]}. Memory: model state (weights, gradients, optimizer state) "
            f"estimated by formula, and {'the allocator peak' if measured.startswith('peak') else 'model state'} "
            f"measured; red. = reduction vs the baseline.")
    return plain_table(header, body, "ll" + "r" * (len(header) - 2)) + "\n" + note


def _notes(runs: Sequence[Run], rows: Sequence[cmp.Row], base: Run, warnings: list[str],
           interp: str, flops: str) -> list[str]:
    sha = base.tokenizer_sha
    notes = [f"All runs use the same tokenizer ({sha[:12]}…)" if sha else "Tokenizer not verified",
             f"FLOPs: the trainer's cumulative counts, every stage included; \"exact\" counts "
             f"frozen weights' input gradients and the attention core, the 6·N·D formula is "
             f"6·N_trainable + 2·N_frozen. Comparisons use the {flops} count.",
             f"FLOPs to baseline loss: the first point where the validation curve of the final "
             f"model (the stages that train the final shape; FLOPs of every stage included) "
             f"reaches the baseline's final loss ({fmt_loss(base.final_val_loss)}), interpolated "
             f"{INTERP_TEXT[interp]} between evaluations; '≤' marks a run already below it at its "
             f"first final-model evaluation (an upper bound). Saving = 1 − FLOPs / baseline FLOPs.",
             "Reductions are relative to the baseline; negative = more than the baseline. Train "
             "time is the sum of the optimizer steps' times (evaluations and checkpoints excluded); "
             "tokens/s = tokens / train time."]
    notes += memory_notes(runs, rows)
    notes += [f"{r.name}: **{r.status}** — numbers are up to its latest record" for r in runs
              if not r.complete]
    notes += [f"{r.name}: only {len(r.evals)} validation point{'s' if len(r.evals) != 1 else ''}, "
              f"so its curve and its FLOPs to the baseline's loss are coarse (set run.eval_every "
              f"for more)" for r in runs if len(r.evals) < 5]
    return notes + [p for r in runs for p in r.problems] + warnings


def build_document(runs: Sequence[Run], base: Run, out: Path, interp: str = "log",
                   flops: str = "exact", neighbours: int | None = None,
                   warnings: list[str] | None = None, title: str | None = None,
                   preface: Sequence = (), formats: Sequence[str] = ("png",)) -> Document:
    from growlm import __version__

    rows = cmp.summarize(runs, base, interp, flops)
    doc = Document(title or f"growlm compare: {len(runs)} runs, baseline {base.name}")
    now = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    doc.add(Paragraph(f"Generated {now} by growlm {__version__}."))
    for block in preface:
        doc.add(block)
    doc.add(Heading("Summary"))
    doc.add(compute_table(rows))
    doc.add(memory_table(rows))
    doc.add(Bullets(_notes(runs, rows, base, warnings or [], interp, flops)))
    for block in eval_blocks(runs):
        doc.add(block)
    if neighbours:
        from growlm.report.neighbours import overlap_table

        table = overlap_table(runs, base, neighbours)
        doc.add(Heading(f"Top-{neighbours} neighbour overlap with the baseline", 3))
        doc.add(Paragraph("For each token, the share of its nearest neighbours (cosine) that the "
                          "run's matrix and the baseline's have in common, averaged over the "
                          "vocabulary (reuse paper, Table 5)."))
        doc.add(Table(["run", "embedding", "head"],
                      [[n, fmt_score(e), fmt_score(h)] for n, e, h in table]))
    doc.add(Heading("Stages"))
    doc.add(stage_table(runs))
    doc.add(Heading("Plots"))
    for name, caption in all_plots(runs, out, formats):
        stem, shown = name.rsplit(".", 1)
        others = [f"{stem}.{f}" for f in formats if f != shown]
        doc.add(Image(name, caption + (f" (also {', '.join(others)})" if others else "")))
    return doc


def write_report(runs: Sequence[str | Path | Run], baseline: str | Path | Run, out: str | Path,
                 interp: str = "log", flops: str = "exact", neighbours: int | None = None,
                 title: str | None = None, preface: Sequence = (), extra: Sequence = (),
                 formats: Sequence[str] = ("png",)) -> Path:
    """Write report.md, report.html and the plots into `out`; return the path of report.md.

    `formats`: the plot files written ("png", "svg", "pdf"; see `parse_formats`); the report
    shows the PNGs, else the SVGs. `preface` blocks (document.Heading/Paragraph/Table/...) go
    before the summary, `extra` blocks after the plots, e.g. a benchmark's conclusions and
    hardware notes. GrowlmError for runs that are not comparable or a bad `out`."""
    formats = parse_formats(formats)
    loaded, base = cmp.load_runs(runs, baseline)
    warnings = cmp.check_comparable(loaded)
    out = check_output_dir(out, "--out")
    out.mkdir(parents=True, exist_ok=True)
    doc = build_document(loaded, base, out, interp, flops, neighbours, warnings, title, preface,
                         formats)
    for block in extra:
        doc.add(block)
    from growlm.report.html import to_html

    atomic_write_text(out / "report.html", to_html(doc, out))
    atomic_write_text(out / "report.md", doc.to_markdown())
    return out / "report.md"
