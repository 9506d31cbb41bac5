"""PNG plots of a comparison (matplotlib's Agg canvas; pyplot's global state is never touched).

Every function takes the loaded runs (the baseline first) and a folder, writes one PNG and
returns (file name, caption). Stage boundaries are dotted vertical lines in the run's colour.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from growlm.report.runs import Run

FIGSIZE = (7.2, 4.2)
DPI = 100
MAX_POINTS = 1500  # per line: enough for the eye, keeps the PNGs small


def _figure():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=FIGSIZE, dpi=DPI)
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot(1, 1, 1)


def _save(fig, ax, path: Path, legend: bool = True) -> None:
    if legend and ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, ncol=2 if len(ax.get_legend_handles_labels()[0]) > 6 else 1)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=DPI)


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


def _boundaries(ax, run: Run, x: str, colour, scale: float = 1.0) -> None:
    for value, _name in run.stage_starts(x):
        ax.axvline(value / scale, color=colour, linestyle=":", linewidth=1, alpha=0.8)


def val_loss(runs: Sequence[Run], out: Path, x: str = "flops") -> tuple[str, str]:
    """Validation loss against cumulative FLOPs (log axis) or tokens."""
    fig, ax = _figure()
    col = colours(runs)
    for r in runs:
        xs, ys = r.curve(x)
        if xs:
            label = r.name + ("" if r.complete else " (in progress)")
            ax.plot(xs, ys, marker="o", markersize=2.5, linewidth=1.3, color=col[r.name], label=label)
            _boundaries(ax, r, x, col[r.name])
    target = runs[0].final_val_loss
    if target is not None:
        ax.axhline(target, color="grey", linestyle="--", linewidth=0.8)
    what = {"flops": "training FLOPs (exact count)", "flops_seed": "training FLOPs (seeds' formula)",
            "tokens": "tokens"}[x]
    ax.set_xlabel(f"cumulative {what}")
    ax.set_ylabel("validation loss")
    if x != "tokens":
        ax.set_xscale("log")
    _clip_y(ax, [v for r in runs for v in r.curve(x)[1]])
    name = f"val_loss_{'tokens' if x == 'tokens' else 'flops'}.png"
    _save(fig, ax, out / name)
    caption = (f"Validation loss vs {what}; dotted lines: stage boundaries; dashed: the "
               f"baseline's final loss ({runs[0].name}).")
    return name, caption


def _clip_y(ax, values: list[float]) -> None:
    """Start-of-training losses dwarf the interesting range: show from the minimum up to well
    above the median, but not the first few steps' spike."""
    if len(values) < 4:
        return
    ordered = sorted(values)
    lo, mid, hi = ordered[0], ordered[len(ordered) // 2], ordered[-1]
    ax.set_ylim(lo - 0.05 * (mid - lo + 1e-9), min(hi, mid + 2.5 * (mid - lo)) + 1e-6)


def train_loss(runs: Sequence[Run], out: Path) -> tuple[str, str]:
    fig, ax = _figure()
    col = colours(runs)
    all_vals = []
    for r in runs:
        xs = [s.get("tokens", 0) for s in r.steps]
        ys = smooth([s["loss"] for s in r.steps if "loss" in s])
        if ys:
            ax.plot(*_thin(xs[: len(ys)], ys), linewidth=1.1, color=col[r.name], label=r.name)
            _boundaries(ax, r, "tokens", col[r.name])
            all_vals += ys
    ax.set_xlabel("tokens")
    ax.set_ylabel("training loss (smoothed)")
    _clip_y(ax, all_vals)
    _save(fig, ax, out / "train_loss.png")
    return "train_loss.png", "Training loss (exponential moving average) vs tokens."


def learning_rate(runs: Sequence[Run], out: Path) -> tuple[str, str]:
    fig, ax = _figure()
    col = colours(runs)
    for r in runs:
        xs = [s.get("tokens", 0) for s in r.steps if "lr" in s]
        ys = [s["lr"] for s in r.steps if "lr" in s]
        if ys:
            ax.plot(*_thin(xs, ys), linewidth=1.1, color=col[r.name], label=r.name)
    ax.set_xlabel("tokens")
    ax.set_ylabel("learning rate")
    _save(fig, ax, out / "lr.png")
    return "lr.png", "Learning-rate schedules vs tokens."


def throughput(runs: Sequence[Run], out: Path) -> tuple[str, str]:
    fig, ax = _figure()
    col = colours(runs)
    for r in runs:
        xs = [s.get("tokens", 0) for s in r.steps if "tokens_per_s" in s]
        ys = smooth([s["tokens_per_s"] for s in r.steps if "tokens_per_s" in s])
        if ys:
            ax.plot(*_thin(xs, ys), linewidth=1.1, color=col[r.name], label=r.name)
            _boundaries(ax, r, "tokens", col[r.name])
    ax.set_xlabel("tokens")
    ax.set_ylabel("tokens / s (smoothed)")
    ax.set_ylim(bottom=0)
    _save(fig, ax, out / "tokens_per_s.png")
    return "tokens_per_s.png", "Training throughput (tokens/s, smoothed) vs tokens."


def memory(runs: Sequence[Run], out: Path) -> tuple[str, str]:
    """Per run, one bar per stage: measured peak (solid) and estimated model state (hatched)."""
    fig, ax = _figure()
    col = colours(runs)
    labels, pos = [], 0.0
    width = 0.38
    for r in runs:
        for s in r.stages():
            ax.bar(pos - width / 2, s["measured_bytes"] / 2**20, width, color=col[r.name])
            ax.bar(pos + width / 2, s["estimated_bytes"] / 2**20, width, color=col[r.name],
                   alpha=0.45, hatch="//", edgecolor="white")
            labels.append((pos, f"{r.name}: {s['name']}"))
            pos += 1
        pos += 0.5
    ax.set_xticks([p for p, _ in labels], [t for _, t in labels], rotation=35, ha="right", fontsize=6)
    ax.set_ylabel("MiB")
    from matplotlib.patches import Patch

    ax.legend(handles=[Patch(color="grey", label="measured peak"),
                       Patch(color="grey", alpha=0.45, hatch="//", label="estimated model state")],
              fontsize=7)
    _save(fig, ax, out / "memory.png", legend=False)
    return "memory.png", ("Peak memory per stage: measured (solid; on CPU the bytes of weights, "
                          "gradients and optimizer state) and estimated (hatched; bf16 weights "
                          "+ fp32 Adam, growlm.plan.memory).")


# What to plot from the benchmarks scored during training, first found first.
TASK_METRICS = (("average/score", "zero-shot average (acc_norm where the task has it)"),
                ("wikitext/word_perplexity", "WikiText-2 word perplexity"),
                ("ppl/loss", "held-out loss"))


def task_scores(runs: Sequence[Run], out: Path) -> tuple[str, str] | None:
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
    for r in runs:
        pts = [(rec["flops"], rec[key]) for rec in r.tasks if key in rec and rec.get("flops")]
        if pts:
            ax.plot(*zip(*pts), marker="o", markersize=3, linewidth=1.3, color=col[r.name], label=r.name)
            _boundaries(ax, r, "flops", col[r.name])
    ax.set_xscale("log")
    if key == "wikitext/word_perplexity":
        ax.set_yscale("log")
    ax.set_xlabel("cumulative training FLOPs (exact count)")
    ax.set_ylabel(label)
    _save(fig, ax, out / "task_scores.png")
    return "task_scores.png", f"{label[0].upper() + label[1:]} during training vs FLOPs ([eval] section)."


def all_plots(runs: Sequence[Run], out: Path) -> list[tuple[str, str]]:
    out.mkdir(parents=True, exist_ok=True)
    made = [val_loss(runs, out, "flops"), val_loss(runs, out, "tokens"), train_loss(runs, out),
            learning_rate(runs, out), throughput(runs, out), memory(runs, out)]
    return made + [p for p in [task_scores(runs, out)] if p is not None]
