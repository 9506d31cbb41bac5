"""Assemble the comparison report (report.md, report.html, PNGs) and the terminal table."""

from __future__ import annotations

import datetime as _dt
import math
import os
from collections.abc import Sequence
from pathlib import Path

from growlm.report import compare as cmp
from growlm.report.document import Bullets, Document, Heading, Image, Paragraph, Table, plain_table
from growlm.report.runs import Run
from growlm.units import human_bytes, human_count

INTERP_TEXT = {"log": "linearly in log(FLOPs)", "linear": "linearly in FLOPs"}


# ---------------------------------------------------------------- formatting

def fmt_loss(x: float | None) -> str:
    return "-" if x is None or math.isnan(x) else f"{x:.4f}"


def fmt_delta(x: float | None) -> str:
    return "-" if x is None else f"{x:+.4f}"


def fmt_flops(x: float | None) -> str:
    return "-" if not x else f"{x:.3e}"


def fmt_pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:+.1f}%"


def fmt_bytes(x: int) -> str:
    return human_bytes(x) if x else "-"


def fmt_time(seconds: float) -> str:
    if not seconds:
        return "-"
    m, s = divmod(int(round(seconds)), 60)
    h, m = divmod(m, 60)
    return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"


def fmt_score(x: float | None) -> str:
    if x is None or math.isnan(x):
        return "-"
    return f"{x:.1f}" if abs(x) >= 100 else f"{x:.4f}" if abs(x) <= 1 else f"{x:.2f}"


def _short_status(status: str) -> str:
    return status.replace("in progress", "running").split(",")[0] + (")" if "(" in status else "")


def _to_target(row: cmp.Row) -> str:
    if row.flops_to_target is None:
        return "not reached"
    return ("≤ " if row.to_target_bound else "") + fmt_flops(row.flops_to_target)


# ---------------------------------------------------------------- tables

SUMMARY_HEADER = ["run", "status", "stages", "final val loss", "Δ vs baseline", "tokens",
                  "FLOPs (exact)", "FLOPs (seed formula)", "FLOPs to baseline loss", "saving",
                  "peak mem measured", "reduction", "peak mem estimated", "reduction",
                  "train time", "tokens/s"]


def summary_rows(rows: Sequence[cmp.Row]) -> list[list[str]]:
    out = []
    for r in rows:
        name = f"**{r.name}** (baseline)" if r.is_baseline else r.name
        out.append([name, r.status, str(r.n_stages), fmt_loss(r.final_val_loss),
                    fmt_delta(r.delta_loss), human_count(r.tokens), fmt_flops(r.flops),
                    fmt_flops(r.flops_seed), _to_target(r), fmt_pct(r.saving),
                    fmt_bytes(r.peak_measured), fmt_pct(r.mem_reduction_measured),
                    fmt_bytes(r.peak_estimated), fmt_pct(r.mem_reduction_estimated),
                    fmt_time(r.wall_time),
                    f"{r.tokens_per_s:,.0f}" if r.tokens_per_s else "-"])
    return out


def format_table(runs: Sequence[str | Path | Run], baseline: str | Path | Run,
                 interp: str = "log", flops: str = "exact") -> str:
    """The comparison as a compact fixed-width text table (for the terminal)."""
    loaded, base = cmp.load_runs(runs, baseline)
    cmp.check_comparable(loaded)
    rows = cmp.summarize(loaded, base, interp, flops)
    header = ["run", "status", "val loss", "Δ", "FLOPs", "FLOPs to base loss", "saving",
              "mem meas.", "red.", "mem est.", "red.", "time"]
    body = [[r.name + (" *" if r.is_baseline else ""), _short_status(r.status), fmt_loss(r.final_val_loss),
             fmt_delta(r.delta_loss), fmt_flops(r.flops if flops == "exact" else r.flops_seed),
             _to_target(r), fmt_pct(r.saving), fmt_bytes(r.peak_measured),
             fmt_pct(r.mem_reduction_measured), fmt_bytes(r.peak_estimated),
             fmt_pct(r.mem_reduction_estimated), fmt_time(r.wall_time)] for r in rows]
    note = (f"* baseline. FLOPs: {flops} count; FLOPs to base loss: first point of the final "
            f"model's val curve at or below the baseline's final loss, interpolated "
            f"{INTERP_TEXT[interp]}.")
    return plain_table(header, body, "llrrrrrrrrrr") + "\n" + note


def _stage_table(runs: Sequence[Run]) -> Table:
    rows = []
    for r in runs:
        for s in r.stages():
            p, fpt = s["params"], s["flops_per_token"]
            rows.append([r.name, s["name"], str(s["n_layers"] if s["n_layers"] is not None else "-"),
                         str(s["steps"] or "-"), human_count(p.get("trainable", 0)),
                         human_count(p.get("frozen", 0)), human_count(p.get("adapter", 0)),
                         human_count(fpt.get("exact", 0)), fmt_bytes(s["estimated_bytes"]),
                         fmt_bytes(s["measured_bytes"]), "yes" if s["done"] else "no"])
    return Table(["run", "stage", "layers", "steps", "trainable", "frozen", "adapter",
                  "FLOPs/token (exact)", "est. memory", "measured peak", "done"], rows,
                 "llrrrrrrrrl")


def _eval_blocks(runs: Sequence[Run]) -> list:
    cols = cmp.eval_columns(runs)
    blocks: list = []
    if cols:
        rows = [[r.name, *(fmt_score(cmp.eval_value(r, key)) for _, key in cols)]
                for r in runs if r.eval_results]
        blocks += [Heading("Evaluation"),
                   Paragraph("From each run's `eval.json` (`growlm eval RUN --json RUN/eval.json`), "
                             "else the last benchmarks its recipe's [eval] section scored. "
                             "Zero-shot scores are the seeds' headline metric (acc_norm where it "
                             "exists); word similarity is the mean Spearman rho over the datasets."),
                   Table(["run", *(c for c, _ in cols)], rows)]
    datasets, ws_rows = cmp.wordsim_rows(runs)
    if ws_rows:
        header = ["run", *(f"{d} emb / head" for d in datasets)]
        rows = [[name, *(f"{fmt_score(e)} / {fmt_score(h)}" for e, h in vals)] for name, vals in ws_rows]
        blocks += [Heading("Word similarity", 3),
                   Paragraph("Spearman rho between human ratings and the cosine similarity of the "
                             "input embedding (emb) and output head vectors (reuse paper, Table 3)."),
                   Table(header, rows)]
    return blocks


def _notes(runs: Sequence[Run], base: Run, warnings: list[str], interp: str, flops: str) -> list[str]:
    sha = base.tokenizer_sha
    notes = [f"All runs use the same tokenizer ({sha[:12]}…)" if sha else "Tokenizer not verified",
             f"FLOPs: the trainer's cumulative counts, every stage included; \"exact\" counts "
             f"frozen weights' input gradients and the attention core, the seed formula is "
             f"6·N_trainable + 2·N_frozen. Comparisons use the {flops} count.",
             f"FLOPs to baseline loss: the first point where the validation curve of the final "
             f"model (the stages that train the final shape; FLOPs of every stage included) "
             f"reaches the baseline's final loss ({fmt_loss(base.final_val_loss)}), interpolated "
             f"{INTERP_TEXT[interp]} between evaluations; '≤' marks a run already below it at its "
             f"first final-model evaluation (an upper bound). Saving = 1 − FLOPs / baseline FLOPs.",
             "Reductions are relative to the baseline; negative = more than the baseline. Train "
             "time is the sum of the optimizer steps' times (evaluations and checkpoints excluded); "
             "tokens/s = tokens / train time."]
    notes += [f"{r.name}: **{r.status}** — numbers are up to its latest record" for r in runs
              if not r.complete]
    return notes + warnings


def build_document(runs: Sequence[Run], base: Run, out: Path, interp: str = "log",
                   flops: str = "exact", neighbours: int | None = None,
                   warnings: list[str] | None = None, title: str | None = None,
                   preface: Sequence = ()) -> Document:
    from growlm import __version__
    from growlm.report import plots

    rows = cmp.summarize(runs, base, interp, flops)
    doc = Document(title or f"growlm compare: {len(runs)} runs, baseline {base.name}")
    now = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    doc.add(Paragraph(f"Generated {now} by growlm {__version__}."))
    for block in preface:
        doc.add(block)
    doc.add(Heading("Summary"))
    doc.add(Table(SUMMARY_HEADER, summary_rows(rows), "lllrrrrrrrrrrrrr"))
    doc.add(Bullets(_notes(runs, base, warnings or [], interp, flops)))
    for block in _eval_blocks(runs):
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
    doc.add(_stage_table(runs))
    doc.add(Heading("Plots"))
    for name, caption in plots.all_plots(runs, out):
        doc.add(Image(name, caption))
    return doc


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_report(runs: Sequence[str | Path | Run], baseline: str | Path | Run, out: str | Path,
                 interp: str = "log", flops: str = "exact", neighbours: int | None = None,
                 title: str | None = None, preface: Sequence = (), extra: Sequence = ()) -> Path:
    """Write report.md, report.html and the PNGs into `out`; return the path of report.md.

    `preface` blocks (document.Heading/Paragraph/Table/...) go before the summary, `extra`
    blocks after the plots, e.g. a benchmark's conclusions and hardware notes. GrowlmError for
    runs that are not comparable."""
    loaded, base = cmp.load_runs(runs, baseline)
    warnings = cmp.check_comparable(loaded)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    doc = build_document(loaded, base, out, interp, flops, neighbours, warnings, title, preface)
    for block in extra:
        doc.add(block)
    from growlm.report.html import to_html

    _write_atomic(out / "report.html", to_html(doc, out))
    _write_atomic(out / "report.md", doc.to_markdown())
    return out / "report.md"
