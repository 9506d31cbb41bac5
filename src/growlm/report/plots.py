"""The plots of a comparison (matplotlib's Agg canvas; pyplot's global state is never touched).

Every function takes the loaded runs (the baseline first), a folder and the formats to write
("png", "svg", "pdf"), writes one file per format and returns (the file a report shows: the
PNG, else the SVG; caption). Stage
boundaries are dotted vertical lines in the run's colour. Figures are 7 × 4.3 inches with
10-point text, so they stay readable printed at a paper's full width; the axes always show
every point of every run.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

from growlm.files import atomic_write_bytes
from growlm.report.fmt import MEMORY_LABELS, fmt_bytes
from growlm.report.runs import MEMORY_KEYS, Run
from growlm.units import human_count

FORMATS = ("png", "svg", "pdf")
FIGSIZE = (7.0, 4.3)
PNG_DPI = 150
MAX_POINTS = 1500  # per line: enough for the eye, keeps the files small
STYLE = {"font.size": 10, "axes.titlesize": 10, "axes.labelsize": 10, "xtick.labelsize": 9,
         "ytick.labelsize": 9, "legend.fontsize": 8.5, "svg.fonttype": "none", "pdf.fonttype": 42,
         "svg.hashsalt": "growlm"}


def _figure(figsize: tuple[float, float] = FIGSIZE):
    from matplotlib import rc_context
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    with rc_context(STYLE):  # fonts are read when artists are made, so this scope suffices
        fig = Figure(figsize=figsize, layout="constrained")
        FigureCanvasAgg(fig)
        return fig, fig.add_subplot(1, 1, 1)


def save_figure(fig, out: Path, stem: str, formats: Sequence[str]) -> None:
    """Write `out/stem.<format>` for each format, each atomically."""
    from matplotlib import rc_context

    for fmt in formats:
        buffer = io.BytesIO()
        with rc_context(STYLE):
            fig.savefig(buffer, format=fmt, dpi=PNG_DPI, metadata=_metadata(fmt))
        atomic_write_bytes(out / f"{stem}.{fmt}", buffer.getvalue())


def _metadata(fmt: str) -> dict:
    """No creation date: the same runs give byte-identical SVG and PDF files."""
    return {"svg": {"Date": None}, "pdf": {"CreationDate": None}}.get(fmt, {})


def shown_format(formats: Sequence[str]) -> str:
    """The format a report shows: PNG, else SVG (a PDF cannot be shown inline)."""
    return next((f for f in ("png", "svg") if f in formats), formats[0])


def _finish(fig, ax, out: Path, stem: str, formats: Sequence[str], legend: bool = True) -> str:
    from matplotlib import rc_context

    with rc_context(STYLE):
        handles = ax.get_legend_handles_labels()[0]
        if legend and handles:
            ax.legend(ncol=2 if len(handles) > 5 else 1, framealpha=0.85)
        ax.grid(alpha=0.3)
        ax.set_axisbelow(True)
    save_figure(fig, out, stem, formats)
    return f"{stem}.{shown_format(formats)}"


def colours(runs: Sequence[Run]) -> dict[str, str]:
    """The baseline black, the others from the tab10/tab20 cycle."""
    from matplotlib import colormaps

    cmap = colormaps["tab10" if len(runs) <= 11 else "tab20"]
    out = {runs[0].name: "black"}
    for i, r in enumerate(runs[1:]):
        out[r.name] = cmap(i % cmap.N)
    return out


def _thin(xs: list, ys: list) -> tuple[list, list]:
    step = max(1, len(xs) // MAX_POINTS)
    return xs[::step], ys[::step]


def smooth(values: Sequence[float], span: int | None = None) -> list[float]:
    """Debiased exponential moving average (as TensorBoard's smoothing), span ~ n/40 points."""
    if not values:
        return []
    span = span or max(1, len(values) // 40)
    alpha = 2 / (span + 1)
    out, avg, weight = [], 0.0, 0.0
    for v in values:
        avg = (1 - alpha) * avg + alpha * v
        weight = (1 - alpha) * weight + alpha
        out.append(avg / weight)
    return out


def _boundaries(ax, run: Run, x: str, colour) -> None:
    for value, _name in run.stage_starts(x):
        ax.axvline(value, color=colour, linestyle=":", linewidth=1.1, alpha=0.8)


def log_x(ax, values: Sequence[float]) -> None:
    """A log x-axis whose labels never overlap: powers of ten, and within a span of under two
    decades also 2× and 5× (as 2×10¹³), within one decade 3× and 7× too; the other multiples
    are unlabelled minor ticks."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.set_xscale("log")
    positive = [v for v in values if v > 0]
    span = max(positive) / min(positive) if positive else 1.0
    subs = (1.0, 2.0, 3.0, 5.0, 7.0) if span < 10 else (1.0, 2.0, 5.0) if span < 100 else (1.0,)
    ax.xaxis.set_major_locator(LogLocator(base=10, subs=subs))
    ax.xaxis.set_major_formatter(FuncFormatter(_power_of_ten))
    ax.xaxis.set_minor_locator(LogLocator(base=10, subs=[s for s in range(2, 10) if s not in subs]))
    ax.xaxis.set_minor_formatter(NullFormatter())


def _power_of_ten(value: float, _pos=None) -> str:
    """2e13 → 2×10¹³ (as mathtext), 1e13 → 10¹³."""
    if value <= 0:
        return ""
    exponent = math.floor(math.log10(value) + 1e-9)
    mantissa = round(value / 10**exponent, 6)
    power = f"10^{{{exponent}}}"
    return f"${power}$" if mantissa == 1 else f"${mantissa:g}\\times{power}$"


def count_axis(axis) -> None:
    """Tick labels of a count axis (tokens) in K/M/B/T: 400K rather than 400000."""
    from matplotlib.ticker import FuncFormatter

    axis.set_major_formatter(FuncFormatter(lambda v, _pos=None: human_count(v) if v else "0"))


def fit_y(ax, values: Sequence[float], pad: float = 0.04) -> None:
    """y-limits that hold every value, with a margin."""
    if not values:
        return
    lo, hi = min(values), max(values)
    margin = (hi - lo) * pad or abs(hi) * pad or 1.0
    ax.set_ylim(lo - margin, hi + margin)


# ---------------------------------------------------------------- the plots

X_TEXT = {"flops": "training FLOPs (exact count)", "flops_6nd": "training FLOPs (6·N·D formula)",
          "tokens": "tokens"}


def val_loss_figure(runs: Sequence[Run], x: str = "flops"):
    """(figure, axes) of validation loss against cumulative FLOPs (log axis) or tokens."""
    fig, ax = _figure()
    col = colours(runs)
    xs_all, ys_all = [], []
    for r in runs:
        xs, ys = r.curve(x)
        if xs:
            label = r.name + ("" if r.complete else " (in progress)")
            ax.plot(xs, ys, marker="o", markersize=3.5 if len(xs) < 40 else 2, linewidth=1.4,
                    color=col[r.name], label=label)
            _boundaries(ax, r, x, col[r.name])
            xs_all += xs
            ys_all += ys
    target = runs[0].final_val_loss
    if target is not None:
        ax.axhline(target, color="grey", linestyle="--", linewidth=0.9)
    ax.set_xlabel(f"cumulative {X_TEXT[x]}")
    ax.set_ylabel("validation loss")
    if x == "tokens":
        count_axis(ax.xaxis)
    elif xs_all:
        log_x(ax, xs_all)
    fit_y(ax, ys_all + ([target] if target is not None else []))
    return fig, ax


def val_loss(runs: Sequence[Run], out: Path, x: str = "flops", formats: Sequence[str] = ("png",)):
    """Validation loss against cumulative FLOPs or tokens, every point of every run shown."""
    fig, ax = val_loss_figure(runs, x)
    name = _finish(fig, ax, out, f"val_loss_{'tokens' if x == 'tokens' else 'flops'}", formats)
    caption = (f"Validation loss vs {X_TEXT[x]}; dotted lines: stage boundaries; dashed: the "
               f"baseline's final loss ({runs[0].name}).")
    return name, caption


def train_loss(runs: Sequence[Run], out: Path, formats: Sequence[str] = ("png",)):
    fig, ax = _figure()
    col = colours(runs)
    all_vals = []
    for r in runs:
        pts = [(s.get("tokens", 0), s["loss"]) for s in r.steps if _finite(s.get("loss"))]
        ys = smooth([y for _, y in pts])
        if ys:
            ax.plot(*_thin([x for x, _ in pts], ys), linewidth=1.2, color=col[r.name], label=r.name)
            _boundaries(ax, r, "tokens", col[r.name])
            all_vals += ys
    ax.set_xlabel("tokens")
    count_axis(ax.xaxis)
    ax.set_ylabel("training loss (smoothed)")
    fit_y(ax, all_vals)
    name = _finish(fig, ax, out, "train_loss", formats)
    return name, "Training loss (exponential moving average) vs tokens."


def learning_rate(runs: Sequence[Run], out: Path, formats: Sequence[str] = ("png",)):
    fig, ax = _figure()
    col = colours(runs)
    for r in runs:
        pts = [(s.get("tokens", 0), s["lr"]) for s in r.steps if _finite(s.get("lr"))]
        if pts:
            ax.plot(*_thin(*map(list, zip(*pts))), linewidth=1.2, color=col[r.name], label=r.name)
            _boundaries(ax, r, "tokens", col[r.name])
    ax.set_xlabel("tokens")
    count_axis(ax.xaxis)
    ax.set_ylabel("learning rate")
    ax.ticklabel_format(axis="y", style="sci", scilimits=(-2, 3))
    return _finish(fig, ax, out, "lr", formats), "Learning-rate schedules vs tokens."


def throughput(runs: Sequence[Run], out: Path, formats: Sequence[str] = ("png",)):
    fig, ax = _figure()
    col = colours(runs)
    for r in runs:
        pts = [(s.get("tokens", 0), s["tokens_per_s"]) for s in r.steps if _finite(s.get("tokens_per_s"))]
        ys = smooth([y for _, y in pts])
        if ys:
            ax.plot(*_thin([x for x, _ in pts], ys), linewidth=1.2, color=col[r.name], label=r.name)
            _boundaries(ax, r, "tokens", col[r.name])
    ax.set_xlabel("tokens")
    count_axis(ax.xaxis)
    ax.set_ylabel("tokens / s (smoothed)")
    count_axis(ax.yaxis)
    ax.set_ylim(bottom=0)
    name = _finish(fig, ax, out, "tokens_per_s", formats)
    return name, "Training throughput (tokens/s, smoothed) vs tokens."


MEMORY_STYLE = {"model_state_estimated_bytes": {"alpha": 0.45, "hatch": "//"},
                "model_state_bytes": {"alpha": 1.0},
                "peak_estimated_bytes": {"alpha": 0.25, "hatch": ".."},
                "peak_measured_bytes": {"alpha": 0.75, "hatch": "xx"}}


def memory(runs: Sequence[Run], out: Path, formats: Sequence[str] = ("png",)):
    """Per run and stage, one horizontal bar per memory figure the runs recorded, each under
    its own name (docs/metrics.md) and with its value written at its end."""
    from matplotlib import rc_context
    from matplotlib.patches import Patch

    stages = [(r, s) for r in runs for s in r.stages()]
    keys = [k for k in MEMORY_KEYS if any(s["memory"][k] for _, s in stages)]
    height = 1.3 + 0.22 * len(stages) * max(1, len(keys)) + 0.1 * len(runs)
    fig, ax = _figure((FIGSIZE[0], min(max(height, 2.4), 11.0)))
    col = colours(runs)
    bar = 0.8 / max(1, len(keys))
    labels, pos, top = [], 0.0, 0.0
    with rc_context(STYLE):
        for r, s in stages:
            if labels and labels[-1][1].rsplit(":", 1)[0] != r.name:
                pos += 0.4  # a gap between runs
            for i, k in enumerate(keys):
                value = s["memory"][k]
                if value:
                    y = pos + (i - (len(keys) - 1) / 2) * bar
                    ax.barh(y, value / 2**20, bar * 0.92, color=col[r.name], edgecolor="white",
                            **MEMORY_STYLE[k])
                    ax.text(value / 2**20, y, f" {fmt_bytes(value)}", va="center", fontsize=8)
                    top = max(top, value / 2**20)
            running = "" if s["done"] else " (running)"
            labels.append((pos, f"{r.name}: {s['stage']} {s['name']}{running}"))
            pos += 1
        ax.set_yticks([p for p, _ in labels], [t for _, t in labels])
        ax.set_xlim(0, top * 1.18 or 1)  # room for the value labels
        ax.invert_yaxis()  # the baseline on top, stages in order
        ax.set_xlabel("MiB")
        # under the axes (constrained layout makes room), never over a bar
        fig.legend(handles=[Patch(facecolor="grey", edgecolor="white", label=MEMORY_LABELS[k],
                                  **MEMORY_STYLE[k]) for k in keys],
                   loc="outside lower center", ncol=min(4, max(1, len(keys))), frameon=False)
    name = _finish(fig, ax, out, "memory", formats, legend=False)
    what = "; ".join(MEMORY_LABELS[k] for k in keys) or "none recorded"
    return name, (f"Memory per stage ({what}). Model state is weights, gradients and optimizer "
                  "state; a peak adds activations. Estimates are growlm.plan.memory's; a "
                  "measured peak is the allocator's.")


# What to plot from the benchmarks scored during training, first found first.
TASK_METRICS = (("average/score", "zero-shot average (acc_norm where the task has it)"),
                ("wikitext/word_perplexity", "WikiText-2 word perplexity"),
                ("ppl/loss", "held-out loss"))


def task_scores(runs: Sequence[Run], out: Path, formats: Sequence[str] = ("png",)):
    """The headline benchmark of the runs' [eval] sections against cumulative FLOPs."""
    keys = {k for r in runs for rec in r.tasks for k in rec}
    choice = next(((k, label) for k, label in TASK_METRICS if k in keys), None)
    if choice is None:
        score = sorted(k for k in keys if k.endswith("/score"))
        if not score:
            return None
        choice = (score[0], f"{score[0].split('/')[0]} score")
    key, label = choice
    fig, ax = _figure()
    col = colours(runs)
    xs_all, ys_all = [], []
    for r in runs:
        pts = [(rec["flops"], rec[key]) for rec in r.tasks if _finite(rec.get(key)) and rec.get("flops")]
        if pts:
            ax.plot(*zip(*pts), marker="o", markersize=3.5, linewidth=1.4, color=col[r.name], label=r.name)
            _boundaries(ax, r, "flops", col[r.name])
            xs_all += [p[0] for p in pts]
            ys_all += [p[1] for p in pts]
    if xs_all:
        log_x(ax, xs_all)
    if key == "wikitext/word_perplexity":
        ax.set_yscale("log")
    else:
        fit_y(ax, ys_all)
    ax.set_xlabel("cumulative training FLOPs (exact count)")
    ax.set_ylabel(label)
    name = _finish(fig, ax, out, "task_scores", formats)
    return name, f"{label[0].upper() + label[1:]} during training vs FLOPs ([eval] section)."


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and value == value \
        and abs(value) != float("inf")


def all_plots(runs: Sequence[Run], out: Path, formats: Sequence[str] = ("png",)) -> list[tuple[str, str]]:
    """Write every plot; (shown file name, caption) of each, in report order."""
    out.mkdir(parents=True, exist_ok=True)
    made = [val_loss(runs, out, "flops", formats), val_loss(runs, out, "tokens", formats),
            train_loss(runs, out, formats), learning_rate(runs, out, formats),
            throughput(runs, out, formats), memory(runs, out, formats)]
    return made + [p for p in [task_scores(runs, out, formats)] if p is not None]
