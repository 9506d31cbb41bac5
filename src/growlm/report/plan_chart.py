"""plan.png: memory per stage and FLOPs per stage, estimates beside measured numbers.

Legends sit under the panels (never over a bar), text is 10 points at 10 × 4.6 inches, and a
measured figure is labelled with what it measured: model state (weights, gradients, optimizer
state) or the peak of live bytes (activations included). The bars are in the plan's precision
(the papers' bf16 by default); a measured peak is drawn beside the run's own estimate for its
device, which is the figure it can be compared with.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from pathlib import Path

from growlm.files import atomic_write_bytes

GIB = 2**30
FORMATS = ("png", "svg", "pdf")
STYLE = {"font.size": 10, "axes.titlesize": 11, "axes.labelsize": 10, "xtick.labelsize": 9,
         "ytick.labelsize": 9, "legend.fontsize": 9, "svg.fonttype": "none", "pdf.fonttype": 42,
         "svg.hashsalt": "growlm"}
# What a stage's "measured" entry may hold (growlm.train.plan.measured_by_stage), and its label.
# "peak_bytes" is the older name: the trainer's figure that was model state on CPU and the
# allocator's peak on CUDA.
MEASURED = (("model_state_bytes", "model state, measured", "o"),
            ("peak_measured_bytes", "peak, measured", "D"),
            ("peak_bytes", "measured: model state (CPU) / peak (GPU)", "o"))


def plot_plan(plan: dict, path: Path, formats: Sequence[str] = ()) -> Path:
    """Write the chart for a plan (see growlm.train.plan.plan_recipe) and return its path.

    The format is `path`'s suffix (.png, .svg or .pdf); `formats` adds copies beside it in
    other formats (plan.svg, plan.pdf). Each file is written atomically."""
    from matplotlib import rc_context
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.container import BarContainer
    from matplotlib.figure import Figure

    path = Path(path)
    with rc_context(STYLE):
        fig = Figure(figsize=(10, 5.2), layout="constrained")
        FigureCanvasAgg(fig)
        ax_mem, ax_flops = fig.subplots(1, 2)
        stages = plan["stages"]
        names = [s["name"] for s in stages] + ["baseline\n(same tokens)"]
        precision = (plan.get("memory_precision") or {}).get("name", "bf16 weights, fp32 Adam")
        _memory_panel(ax_mem, stages + [plan["baseline"]], stages, precision)
        _flops_panel(ax_flops, stages + [plan["baseline"]], stages)
        for ax in (ax_mem, ax_flops):
            ax.set_xticks(range(len(names)), names)
            ax.grid(axis="y", alpha=0.3)
            ax.set_axisbelow(True)
            handles, labels = ax.get_legend_handles_labels()
            order = sorted(range(len(handles)), key=lambda i: not isinstance(handles[i], BarContainer))
            ax.legend([handles[i] for i in order], [labels[i] for i in order], loc="upper center",
                      bbox_to_anchor=(0.5, -0.12), ncol=2, frameon=False)  # bars first
        fig.suptitle(f"growlm plan: {plan['run']}")
        for fmt in dict.fromkeys([path.suffix.lstrip(".") or "png", *formats]):
            buffer = io.BytesIO()
            fig.savefig(buffer, format=fmt, dpi=150,
                        metadata={"svg": {"Date": None}, "pdf": {"CreationDate": None}}.get(fmt))
            atomic_write_bytes(path.with_suffix(f".{fmt}"), buffer.getvalue())
    return path


def _memory_panel(ax, entries: list[dict], stages: list[dict], precision: str) -> None:
    """Bars: the estimated model state and the rest of the estimated peak (activations and
    workspace at the step's peak moment; older plans: the activations) in the plan's
    precision. Markers: the peak with activation checkpointing; per stage the run's own
    peak estimate (its device's precision) beside what the run measured."""
    x = range(len(entries))

    def peak(e: dict) -> float:
        m = e["memory"]
        return m.get("total_bytes") or m["model_state_bytes"] + m["activation_bytes"]

    marks = [(s.get("measured") or {}).get(k) for s in stages for k, _, _ in MEASURED]
    marks += [s["as_run"]["peak_bytes"] for s in stages if s.get("as_run") and s.get("measured")]
    top = max([peak(e) for e in entries] + [float(v) for v in marks if v])
    unit, scale = ("GiB", GIB) if top >= GIB else ("MiB", 2**20)
    state = [e["memory"]["model_state_bytes"] / scale for e in entries]
    rest = [peak(e) / scale - s for e, s in zip(entries, state)]
    ckpt = [e["memory"]["total_bytes_checkpointed"] / scale for e in entries]
    ax.bar(x, state, color="#4C72B0", label="model state, est.")
    label = ("+ activations & workspace at peak, est."
             if any("total_bytes" in e["memory"] for e in entries) else "+ activations, est.")
    ax.bar(x, rest, bottom=state, color="#A6BDDB", label=label)
    ax.scatter(x, ckpt, marker="_", s=500, linewidths=2, color="black", zorder=3,
               label="peak with act. checkpointing, est.")
    as_run = [(i, s["as_run"]["peak_bytes"] / scale) for i, s in enumerate(stages)
              if s.get("as_run") and s.get("measured")]
    if as_run:
        names = sorted({s["as_run"]["precision"] for s in stages if s.get("as_run") and s.get("measured")})
        ax.scatter(*zip(*as_run), marker="x", s=40, color="#C44E52", zorder=4,
                   label=f"peak as run ({', '.join(names)}), est.")
    # a measured peak is drawn beside the run's own estimate; measured model state only where
    # no peak was measured (it is in the plan's table either way)
    peaks = any((s.get("measured") or {}).get("peak_measured_bytes") for s in stages)
    current = peaks or any((s.get("measured") or {}).get("model_state_bytes") for s in stages)
    for key, text, marker in (MEASURED[1:2] if peaks else MEASURED[:2] if current else MEASURED):
        _measured(ax, stages, key, scale, text, marker)
    ax.set_ylabel(unit)
    ax.set_title(f"memory per stage ({precision})")


def _flops_panel(ax, entries: list[dict], stages: list[dict]) -> None:
    six_nd = [float(e["flops"]["6nd"]) for e in entries]
    exact = [float(e["flops"]["exact"]) for e in entries]
    top = max(six_nd + exact + [1.0])
    power = int(math.floor(math.log10(top)))  # one scale in the axis label, no offset text
    scale = 10.0**power
    width = 0.38
    x = range(len(entries))
    ax.bar([i - width / 2 for i in x], [v / scale for v in six_nd], width, color="#DD8452",
           label="6·N·D formula")
    ax.bar([i + width / 2 for i in x], [v / scale for v in exact], width, color="#C44E52",
           label="exact (with attention)")
    _measured(ax, stages, "flops", scale, "measured (exact)", "o", offset=width / 2)
    ax.set_ylabel(f"FLOPs (× 1e{power})")
    ax.set_title("training FLOPs per stage")


def _measured(ax, stages: list[dict], key: str, scale: float, label: str, marker: str,
              offset: float = 0.0) -> None:
    points = [(i + offset, float(s["measured"][key]) / scale) for i, s in enumerate(stages)
              if s.get("measured") and s["measured"].get(key)]
    if points:
        ax.scatter(*zip(*points), marker=marker, s=36, color="black", facecolor="white", zorder=4,
                   linewidths=1.5, label=label)
