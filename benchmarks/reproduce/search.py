"""The smallest LR sweep that still finds a best LR: walk a ×2 ladder until the best is bracketed.

The ladder's rungs are lr0 · 2^k for k in [LOW, HIGH]. The search runs rung 0, then rung 1, and
then always the untried neighbour of the best rung so far (the lower one first), until both
neighbours of the best rung have run — the best is bracketed — or the best sits on an end of
the ladder ("at the edge": its true optimum may lie beyond). A run that diverged counts as
worse than every finished one. Three runs bracket an optimum at rung 0 or 1; each further
rung outwards costs one more. A fixed grid needs as many runs to bracket one optimum and
misses it whenever the optimum is outside the grid, which is where the first CPU scale's grids
put four of nine methods.

Each step runs the chosen rung through `growlm sweep` (run_sweep with `only`), so the search is
resumable like any sweep: the rungs it runs next depend only on the finished rungs' losses.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

LOW, HIGH = -4, 4  # lr0/16 … 16·lr0


def next_rung(losses: dict[int, float | None], low: int = LOW, high: int = HIGH) -> int | None:
    """The rung to run next, or None when the search is done.

    `losses`: finished rungs → final validation loss (None: the run diverged or has no loss)."""
    if 0 not in losses:
        return 0
    if len(losses) == 1:
        return 1 if high >= 1 else -1 if low <= -1 else None
    best = best_rung(losses)
    for k in (best - 1, best + 1):
        if low <= k <= high and k not in losses:
            return k
    return None


def _key(loss: float | None) -> float:
    return math.inf if loss is None or not math.isfinite(loss) else loss


def best_rung(losses: dict[int, float | None]) -> int | None:
    """The rung with the lowest loss (the lower rung on a tie); None if none finished."""
    finite = {k: v for k, v in losses.items() if _key(v) < math.inf}
    return min(finite, key=lambda k: (finite[k], k)) if finite else None


def edge(losses: dict[int, float | None], low: int = LOW, high: int = HIGH) -> str | None:
    """"low"/"high" when the best rung is an end of the ladder (its optimum may lie beyond),
    "unfinished" when a neighbour of the best was not run, else None (bracketed)."""
    best = best_rung(losses)
    if best is None:
        return "unfinished"
    if best == low:
        return "low"
    if best == high:
        return "high"
    if any(k not in losses for k in (best - 1, best + 1)):
        return "unfinished"
    return None


def margin(losses: dict[int, float | None]) -> float | None:
    """How much worse the best rung's closest tried neighbour is (loss units); None without
    one. A best LR counts as found only when this exceeds the seed-to-seed spread."""
    best = best_rung(losses)
    if best is None:
        return None
    near = [_key(losses[k]) for k in (best - 1, best + 1) if k in losses]
    return min(near) - losses[best] if near else None


# ---------------------------------------------------------------- running it

def rung_of(value: str, lr0: float) -> int:
    return round(math.log2(float(value) / lr0))


def finished_losses(summary: dict, key: str, lr0: float) -> dict[int, float | None]:
    """Rung → loss of the variants that completed or failed, from a sweep summary."""
    out = {}
    for v in summary.get("variants", []):
        if v.get("status") not in ("complete", "failed"):
            continue
        value = next(o.split("=", 1)[1] for o in v["overrides"] if o.startswith(key + "="))
        out[rung_of(value, lr0)] = v.get("final_val_loss") if v["status"] == "complete" else None
    return out


def read_summary(sweep_dir: Path) -> dict:
    from growlm.sweep import SWEEP_FILE

    path = sweep_dir / SWEEP_FILE
    return json.loads(path.read_text()) if path.is_file() else {"variants": [], "best": None}


def run_search(recipe: Path, key: str, values: list[str], sweep_dir: Path, lr0: float, log,
               max_runs: int | None = None, low: int = LOW) -> dict:
    """Run the search in `sweep_dir` (at most `max_runs` new rungs); return the sweep summary.

    `values`: the ladder's rungs low…high as recipe strings (rung k is values[k - low])."""
    from growlm.sweep import run_sweep, variants

    grid = variants([(key, values)])
    summary = read_summary(sweep_dir)
    ran = 0
    while max_runs is None or ran < max_runs:
        k = next_rung(finished_losses(summary, key, lr0), low, low + len(values) - 1)
        if k is None:
            break
        log(f"{sweep_dir.name}: {key} = {values[k - low]} (ladder rung {k:+d})")
        summary = run_sweep(recipe, [f"{key}={','.join(values)}"], sweep_dir, quiet=True, log=log,
                            only=[grid[k - low]["name"]])
        if k not in finished_losses(summary, key, lr0):  # a run ends complete, failed or raising
            raise RuntimeError(f"{sweep_dir}: rung {k} did not finish")
        ran += 1
    return summary
