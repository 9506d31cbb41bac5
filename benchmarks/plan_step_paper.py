"""STEP's integer program against the splits chosen in the STEP paper.

For every STEP recipe in recipes/step/ (the paper's 368M, 680M and 1.2B shapes, 2 and 3
stages), print the recipe's split, the integer program's optimum at the recipe's adapter rank,
both peaks and their ratio, and the adapter ranks (0..1024) for which the recipe's split is
optimal under the paper's formula. Run: python benchmarks/plan_step_paper.py
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from growlm.config import load_recipe
from growlm.plan.step_ip import optimal_rank_ranges, solve_step, stage_bytes, step_problem
from growlm.stages import resolve_stages

GIB = 2**30


def recipe_split(path: Path) -> tuple[object, list[int], int]:
    cfg = load_recipe(path)
    stages = resolve_stages(cfg)
    depths = [s.model.n_layers for s in stages]
    split = [b - a for a, b in zip([0] + depths[:-1], depths)]
    ranks = [s.spec.adapters.rank for s in stages if s.spec.adapters is not None]
    return cfg.model, split, ranks[0] if ranks else 0


def main() -> int:
    from growlm.recipe_library import library_root

    root = library_root() / "step"
    paths = sorted(p for p in root.glob("*stage.toml"))
    if not paths:
        print(f"no STEP recipes under {root}", file=sys.stderr)
        return 1
    print(f"{'recipe':<22}{'rank':>5}  {'paper split':<14}{'optimum':<14}"
          f"{'paper peak':>11}{'opt peak':>10}{'ratio':>7}  formula")
    for path in paths:
        model, split, rank = recipe_split(path)
        for paper_formula in (True, False):
            problem = step_problem(model, rank, paper_formula=paper_formula)
            sol = solve_step(problem, len(split))
            paper_peak = max(stage_bytes(problem, split))
            print(f"{path.stem:<22}{rank:>5}  {str(split):<14}{str(sol.layers_per_stage):<14}"
                  f"{paper_peak / GIB:>10.2f}G{sol.peak_bytes / GIB:>9.2f}G"
                  f"{paper_peak / sol.peak_bytes:>7.3f}  {'paper' if paper_formula else 'growlm'}")
    print("\nadapter ranks (0..1024) for which each recipe's split is optimal (paper formula):")
    start = time.perf_counter()
    solves = 0
    for path in paths:
        model, split, _ = recipe_split(path)
        ranges = optimal_rank_ranges(model, split, range(0, 1025))
        solves += 1025
        text = ", ".join(f"{a}..{b}" for a, b in ranges) or "none"
        print(f"  {path.stem:<22}{str(split):<14}{text}")
    elapsed = time.perf_counter() - start
    print(f"\n{solves} MILP solves in {elapsed:.1f} s ({1000 * elapsed / solves:.1f} ms each)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
