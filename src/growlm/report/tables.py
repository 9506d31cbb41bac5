"""The tables of a comparison report: loss and compute, memory and time, stages, evaluations.

Memory appears under the four names of docs/metrics.md (model state estimated / measured,
peak estimated / measured); a figure no run recorded gets no column, and the notes say why.
"""

from __future__ import annotations

from collections.abc import Sequence

import growlm.report.compare as cmp
from growlm.report.document import Heading, Paragraph, Table
from growlm.report.fmt import (
    MEMORY_LABELS,
    MEMORY_MEANING,
    fmt_bytes,
    fmt_delta,
    fmt_flops,
    fmt_loss,
    fmt_pct,
    fmt_rate,
    fmt_score,
    fmt_time,
)
from growlm.report.runs import MEMORY_KEYS, Run
from growlm.units import human_count


def to_target(row: cmp.Row) -> str:
    if row.flops_to_target is None:
        return "not reached"
    return ("≤ " if row.to_target_bound else "") + fmt_flops(row.flops_to_target)


def display_name(row: cmp.Row) -> str:
    return f"**{row.name}** (baseline)" if row.is_baseline else row.name


def compute_table(rows: Sequence[cmp.Row]) -> Table:
    header = ["run", "status", "stages", "final val loss", "Δ vs baseline", "tokens",
              "FLOPs (exact)", "FLOPs (6·N·D)", "FLOPs to baseline loss", "saving"]
    body = [[display_name(r), r.status, str(r.n_stages), fmt_loss(r.final_val_loss),
             fmt_delta(r.delta_loss), human_count(r.tokens), fmt_flops(r.flops),
             fmt_flops(r.flops_6nd), to_target(r), fmt_pct(r.saving)] for r in rows]
    return Table(header, body, "llrrrrrrrr")


def memory_keys(rows: Sequence[cmp.Row]) -> list[str]:
    """The memory figures at least one run recorded, in MEMORY_KEYS order."""
    return [k for k in MEMORY_KEYS if any(r.memory.get(k) for r in rows)]


def memory_table(rows: Sequence[cmp.Row]) -> Table:
    keys = memory_keys(rows)
    header = ["run"]
    for k in keys:
        header += [MEMORY_LABELS[k], "reduction"]
    header += ["train time", "tokens/s"]
    body = []
    for r in rows:
        cells = [display_name(r)]
        for k in keys:
            cells += [fmt_bytes(r.memory.get(k)), fmt_pct(r.memory_reduction.get(k))]
        body.append(cells + [fmt_time(r.wall_time), fmt_rate(r.tokens_per_s)])
    return Table(header, body)


def memory_notes(runs: Sequence[Run], rows: Sequence[cmp.Row]) -> list[str]:
    """What each memory column means, which figures are missing and why."""
    keys = memory_keys(rows)
    notes = ["Memory (each run's largest stage): " + "; ".join(
        f"{MEMORY_LABELS[k]} = {MEMORY_MEANING[k]}" for k in keys) + "."] if keys else []
    by = sorted({r.memory.get("peak_measured_by") for r in rows if r.memory.get("peak_measured_by")})
    if by:
        notes.append(f"Peak measured by: {', '.join(by)}.")
    if "peak_measured_bytes" not in keys:
        notes.append("No run recorded a measured peak (runs from an older growlm, or with "
                     "run.memory_probe_steps = 0), so no measured peak is shown; what was measured "
                     "is model state.")
    legacy = [r.name for r in runs if r.legacy_memory]
    if legacy:
        notes.append(f"{', '.join(legacy)}: memory records from an older growlm; their "
                     "\"measured_peak_bytes\" is shown as model state measured on CPU and as "
                     "peak measured on CUDA (run.device, or an MFU in the steps).")
    return notes


def stage_table(runs: Sequence[Run]) -> Table:
    stages = [(r, s) for r in runs for s in r.stages()]
    keys = [k for k in MEMORY_KEYS if any(s["memory"][k] for _, s in stages)]
    ratio = any(_peak_ratio(s["memory"]) for _, s in stages)
    rows = []
    for r, s in stages:
        p, fpt = s["params"], s["flops_per_token"]
        rows.append([r.name, f"{s['stage']}: {s['name']}",
                     str(s["n_layers"] if s["n_layers"] is not None else "-"),
                     str(s["steps"] or "-"), human_count(p.get("trainable", 0)),
                     human_count(p.get("frozen", 0)), human_count(p.get("adapter", 0)),
                     human_count(fpt.get("exact", 0)),
                     *(fmt_bytes(s["memory"][k]) for k in keys),
                     *([_peak_ratio(s["memory"]) or "-"] if ratio else []), "yes" if s["done"] else "no"])
    header = ["run", "stage", "layers", "steps", "trainable", "frozen", "adapter",
              "FLOPs/token (exact)", *(MEMORY_LABELS[k] for k in keys),
              *(["peak measured / estimated"] if ratio else []), "done"]
    return Table(header, rows, "ll" + "r" * (len(header) - 3) + "l")


def _peak_ratio(memory: dict) -> str | None:
    """Measured / estimated peak of a stage, only where the estimate names its precision (the
    run's own; older records held the papers' bf16 figure, not comparable with a measurement)."""
    measured, estimated = memory.get("peak_measured_bytes"), memory.get("peak_estimated_bytes")
    if not (measured and estimated and memory.get("estimate_precision")):
        return None
    return f"{measured / estimated:.3f}"


def eval_blocks(runs: Sequence[Run]) -> list:
    cols = cmp.eval_columns(runs)
    blocks: list = []
    if cols:
        rows = [[r.name, *(fmt_score(cmp.eval_value(r, key)) for _, key in cols)]
                for r in runs if r.eval_results]
        blocks += [Heading("Evaluation"),
                   Paragraph("From each run's `eval.json` (`growlm eval RUN --json RUN/eval.json`), "
                             "else the last benchmarks its recipe's [eval] section scored. "
                             "Zero-shot scores are the papers' headline metric (acc_norm where it "
                             "exists); word similarity is the mean Spearman rho over the datasets."),
                   Table(["run", *(c for c, _ in cols)], rows)]
    datasets, ws_rows = cmp.wordsim_rows(runs)
    if ws_rows:
        header = ["run", *(f"{d} emb / head (pairs)" for d in datasets)]
        rows = [[name, *(f"{fmt_score(e)} / {fmt_score(h)} ({'-' if n is None else n})"
                         for e, h, n in vals)] for name, vals in ws_rows]
        blocks += [Heading("Word similarity", 3),
                   Paragraph("Spearman rho between human ratings and the cosine similarity of the "
                             "input embedding (emb) and output head vectors (reuse paper, Table 3), "
                             "and the number of word pairs it rests on (both words single tokens "
                             "of the vocabulary): a rho over a few dozen pairs is mostly noise."),
                   Table(header, rows)]
    return blocks
