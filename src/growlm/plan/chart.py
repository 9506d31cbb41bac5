"""plan.png: memory per stage and FLOPs per stage, estimates beside measured numbers."""

from __future__ import annotations

import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # headless: the planner runs on servers without a display
import matplotlib.pyplot as plt  # noqa: E402

GIB = 2**30


def plot_plan(plan: dict, path: Path) -> Path:
    """Write the chart for a plan (see recipe_plan.plan_recipe) and return its path."""
    stages = plan["stages"]
    names = [s["name"] for s in stages] + ["baseline\n(same tokens)"]
    entries = stages + [plan["baseline"]]
    x = range(len(entries))
    fig, (ax_mem, ax_flops) = plt.subplots(1, 2, figsize=(max(8, 2.2 * len(entries)), 4.2))

    state = [e["memory"]["model_state_bytes"] / GIB for e in entries]
    act = [e["memory"]["activation_bytes"] / GIB for e in entries]
    ckpt = [e["memory"]["total_bytes_checkpointed"] / GIB for e in entries]
    ax_mem.bar(x, state, color="#4C72B0", label="model state (16/2 bytes per param)")
    ax_mem.bar(x, act, bottom=state, color="#A6BDDB", label="activations")
    ax_mem.scatter(x, ckpt, marker="_", s=400, color="black", label="total, act. checkpointing")
    _measured(ax_mem, stages, "peak_bytes", GIB, "measured peak")
    ax_mem.set_ylabel("GiB")
    ax_mem.set_title("memory per stage (estimate)")

    width = 0.38
    six_nd = [float(e["flops"]["6nd"]) for e in entries]
    exact = [float(e["flops"]["exact"]) for e in entries]
    ax_flops.bar([i - width / 2 for i in x], six_nd, width, color="#DD8452", label="6·N·D formula")
    ax_flops.bar([i + width / 2 for i in x], exact, width, color="#C44E52",
                 label="exact (with attention)")
    _measured(ax_flops, stages, "flops", 1.0, "measured (exact)")
    ax_flops.set_ylabel("FLOPs")
    ax_flops.set_title("training FLOPs per stage")

    for ax in (ax_mem, ax_flops):
        ax.set_xticks(list(x), names, fontsize=8)
        ax.legend(fontsize=7)
    fig.suptitle(f"growlm plan: {plan['run']}", fontsize=10)
    fig.tight_layout()
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp.png")
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _measured(ax, stages: list[dict], key: str, scale: float, label: str) -> None:
    points = [(i, float(s["measured"][key]) / scale) for i, s in enumerate(stages)
              if s.get("measured") and s["measured"].get(key)]
    if points:
        ax.scatter(*zip(*points), marker="o", color="black", zorder=3, label=label)
