"""STEP's integer program: how many layers each stage adds, to minimise the peak memory.

STEP (Yano et al., 2025) grows a model to L layers in K stages. Stage i trains its n_i new
layers fully and keeps the N_{i-1} = n_1 + … + n_{i-1} inherited layers frozen, each with a
trainable adapter of E parameters. With 16 bytes per trainable and 2 per frozen parameter
(bf16 weights and grads, fp32 Adam moments and master copy) stage i needs

    P_i = 16·n_i·P_layer + 2·N_{i-1}·P_layer + 16·N_{i-1}·E            (the paper's formula)

and the split minimises max_i P_i subject to n_i ≥ 1 integer and Σ n_i = L. We solve it as a
mixed-integer linear program with an auxiliary variable z ≥ P_i for all i (minimise z) using
`scipy.optimize.milp` (HiGHS).

By default we add what the paper's formula leaves out: the embedding, final norm and head,
trainable in stage 1 and afterwards frozen (2 bytes; the default — STEP trains only the added
layers and the adapters after stage 1, and growlm's `freeze = ["inherited"]` freezes the
embedding, norms and head with the old layers) or trainable (16 bytes). Frozen, they make stage
1 relatively heavier and move layers to later stages; kept trainable they add the same amount
to every stage and change the peak but not the split. `paper_formula=True` drops them and
reproduces the paper's P_i exactly.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Literal

import numpy as np
from scipy.optimize import Bounds, LinearConstraint, milp

from growlm.errors import GrowlmError
from growlm.model.config import ModelConfig
from growlm.plan.memory import BYTES_ADAPTER, BYTES_FROZEN, BYTES_TRAINABLE

DEFAULT_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class StepProblem:
    n_layers: int  # L, the final depth
    params_per_layer: int  # P_layer
    adapter_params_per_layer: int = 0  # E, on each frozen (inherited) layer
    embed_head_params: int = 0  # embedding + final norm + head (0 with paper_formula)
    embed_head: Literal["trainable", "frozen"] = "frozen"  # in stages 2..K
    paper_formula: bool = False

    def __post_init__(self):
        if self.n_layers <= 0:
            raise GrowlmError(f"number of layers must be positive, got {self.n_layers}")
        if self.params_per_layer <= 0:
            raise GrowlmError(f"parameters per layer must be positive, got {self.params_per_layer}")
        if self.adapter_params_per_layer < 0 or self.embed_head_params < 0:
            raise GrowlmError("adapter and embedding/head parameter counts must be ≥ 0")

    def constant(self, stage: int) -> int:
        """Bytes of embedding/head state in stage `stage` (0-based)."""
        if self.paper_formula:
            return 0
        per_param = BYTES_TRAINABLE if stage == 0 or self.embed_head == "trainable" else BYTES_FROZEN
        return per_param * self.embed_head_params

    @property
    def new_layer_bytes(self) -> int:
        return BYTES_TRAINABLE * self.params_per_layer

    @property
    def inherited_layer_bytes(self) -> int:
        return BYTES_FROZEN * self.params_per_layer + BYTES_ADAPTER * self.adapter_params_per_layer


@dataclass
class StepSolution:
    layers_per_stage: list[int]
    per_stage_bytes: list[int]
    peak_bytes: int
    stages: int
    budget_bytes: int | None = None
    fits: bool | None = None  # only in budget mode
    per_k_peak_bytes: dict[int, int] = field(default_factory=dict)  # budget mode: optimum per K

    def as_dict(self) -> dict:
        return asdict(self)


def stage_bytes(problem: StepProblem, split: list[int]) -> list[int]:
    """P_i of each stage for a given split (exact integers)."""
    out, inherited = [], 0
    for i, n in enumerate(split):
        out.append(n * problem.new_layer_bytes + inherited * problem.inherited_layer_bytes
                   + problem.constant(i))
        inherited += n
    return out


def check_stages(problem, stages: int) -> None:
    """GrowlmError unless 1 ≤ `stages` ≤ the problem's layer count."""
    if stages <= 0:
        raise GrowlmError(f"number of stages must be positive, got {stages}")
    if stages > problem.n_layers:
        raise GrowlmError(
            f"{stages} stages for {problem.n_layers} layers: each stage must add at least one "
            f"layer, so use at most {problem.n_layers} stages"
        )


def solve_step(problem: StepProblem, stages: int) -> StepSolution:
    """The split n_1..n_K (K = `stages`) with the smallest peak, by MILP (HiGHS)."""
    check_stages(problem, stages)
    L, K = problem.n_layers, stages
    if K == 1:
        split = [L]
    else:
        # Work in units of one new layer's bytes so the coefficients stay O(1..L).
        scale = float(problem.new_layer_bytes)
        ratio = problem.inherited_layer_bytes / scale
        rows = np.zeros((K, K + 1))
        upper = np.empty(K)
        for i in range(K):
            rows[i, :i] = ratio
            rows[i, i] = 1.0
            rows[i, K] = -1.0  # P_i - z ≤ -constant_i
            upper[i] = -problem.constant(i) / scale
        total = np.concatenate([np.ones(K), [0.0]])
        res = milp(
            c=np.concatenate([np.zeros(K), [1.0]]),
            constraints=[LinearConstraint(rows, -np.inf, upper), LinearConstraint(total, L, L)],
            integrality=np.concatenate([np.ones(K), [0]]),
            bounds=Bounds(np.concatenate([np.ones(K), [0.0]]),
                          np.concatenate([np.full(K, L - K + 1), [np.inf]])),
            options={"mip_rel_gap": 0.0},
        )
        if res.x is None:  # cannot happen for K ≤ L; keep the failure readable
            raise RuntimeError(f"HiGHS found no split of {L} layers into {K} stages: {res.message}")
        split = [int(round(v)) for v in res.x[:K]]
        if sum(split) != L or min(split) < 1:
            raise RuntimeError(f"HiGHS returned an infeasible split {split}")
    per_stage = stage_bytes(problem, split)
    return StepSolution(split, per_stage, max(per_stage), K)


def solve_step_budget(problem, budget_bytes: int, max_stages: int | None = None,
                      solve=None) -> StepSolution:
    """The smallest K (≤ `max_stages`, default L) whose optimal split fits `budget_bytes`.
    `solve(problem, K)` finds the optimal split for K stages: `solve_step` (the default, for a
    StepProblem) or growlm.plan.step_peak.solve_step_peak (for a PeakTable).

    When none fits, returns the split with the lowest peak over all K with ``fits=False``
    (callers report it; it is an answer, not an error)."""
    if budget_bytes <= 0:
        raise GrowlmError(f"memory budget must be positive, got {budget_bytes} bytes")
    solve = solve or solve_step
    max_stages = problem.n_layers if max_stages is None else max_stages
    check_stages(problem, max_stages)
    best: StepSolution | None = None
    peaks: dict[int, int] = {}
    for k in range(1, max_stages + 1):
        sol = solve(problem, k)
        peaks[k] = sol.peak_bytes
        if sol.peak_bytes <= budget_bytes:
            sol.fits, sol.budget_bytes, sol.per_k_peak_bytes = True, budget_bytes, peaks
            return sol
        if best is None or sol.peak_bytes < best.peak_bytes:
            best = sol
    assert best is not None
    best.fits, best.budget_bytes, best.per_k_peak_bytes = False, budget_bytes, peaks
    return best


# ---------------------------------------------------------------- from a model shape

def adapter_params_per_layer(cfg: ModelConfig, rank: int,
                             targets: tuple[str, ...] = DEFAULT_TARGETS) -> int:
    """rank·(in + out) summed over a layer's targeted linears (LoRA A and B)."""
    if rank < 0:
        raise GrowlmError(f"adapter rank must be ≥ 0, got {rank}")
    d, f = cfg.d_model, cfg.hidden_dim
    q, kv = cfg.q_dim, cfg.kv_dim
    sizes = {"q_proj": d + q, "k_proj": d + kv, "v_proj": d + kv, "o_proj": q + d}
    if cfg.block == "full":
        sizes |= {"gate_proj": d + f, "up_proj": d + f, "down_proj": f + d}
    return rank * sum(sizes.get(t, 0) for t in targets)


def step_problem(cfg: ModelConfig, adapter_rank: int = 0, *, paper_formula: bool = False,
                 embed_head: Literal["trainable", "frozen"] = "frozen",
                 targets: tuple[str, ...] = DEFAULT_TARGETS) -> StepProblem:
    """The integer program's inputs for a final model shape `cfg`."""
    eh = cfg.params_embedding + cfg.params_head + cfg.d_model
    return StepProblem(
        n_layers=cfg.n_layers,
        params_per_layer=cfg.params_per_layer,
        adapter_params_per_layer=adapter_params_per_layer(cfg, adapter_rank, targets),
        embed_head_params=0 if paper_formula else eh,
        embed_head=embed_head,
        paper_formula=paper_formula,
    )


def is_optimal(problem: StepProblem, split: list[int]) -> bool:
    """Whether `split` attains the optimal peak (ties count as optimal)."""
    return max(stage_bytes(problem, split)) == solve_step(problem, len(split)).peak_bytes


def optimal_rank_ranges(cfg: ModelConfig, split: list[int], ranks: range,
                        paper_formula: bool = True) -> list[tuple[int, int]]:
    """Closed intervals of adapter ranks (within `ranks`) for which `split` is optimal."""
    ranges: list[tuple[int, int]] = []
    for r in ranks:
        if is_optimal(step_problem(cfg, r, paper_formula=paper_formula), split):
            if ranges and ranges[-1][1] == r - ranks.step:
                ranges[-1] = (ranges[-1][0], r)
            else:
                ranges.append((r, r))
    return ranges
