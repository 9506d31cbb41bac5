"""STEP's integer program: optimality (vs enumeration), the paper's splits, budget mode."""

import itertools

import pytest

from growlm.errors import GrowlmError
from growlm.model.config import ModelConfig
from growlm.plan.step_ip import (
    StepProblem,
    adapter_params_per_layer,
    is_optimal,
    solve_step,
    solve_step_budget,
    stage_bytes,
    step_problem,
)

# The seed paper's 1.2B shape: d_model 2048, 24 layers, 16 heads, LLaMA SwiGLU width (5632).
PAPER = ModelConfig(d_model=2048, n_layers=24, n_heads=16, vocab_size=50257)
SPLITS = {2: [14, 10], 3: [11, 8, 5]}


def splits(L: int, K: int):
    for cuts in itertools.combinations(range(1, L), K - 1):
        bounds = (0, *cuts, L)
        yield [bounds[i + 1] - bounds[i] for i in range(K)]


def test_paper_formula_by_hand():
    p = StepProblem(n_layers=6, params_per_layer=10, adapter_params_per_layer=1, paper_formula=True)
    # P_i = 16·n_i·P + 2·N_{i-1}·P + 16·N_{i-1}·E
    assert stage_bytes(p, [3, 2, 1]) == [16 * 3 * 10, 16 * 2 * 10 + 2 * 3 * 10 + 16 * 3,
                                         16 * 1 * 10 + 2 * 5 * 10 + 16 * 5]


@pytest.mark.parametrize("rank", [0, 64, 128, 300])
@pytest.mark.parametrize("paper_formula, embed_head", [(True, "frozen"), (False, "frozen"),
                                                       (False, "trainable")])
def test_milp_matches_enumeration(rank, paper_formula, embed_head):
    problem = step_problem(PAPER, rank, paper_formula=paper_formula, embed_head=embed_head)
    for k in (2, 3, 4):
        best = min(max(stage_bytes(problem, s)) for s in splits(24, k))
        sol = solve_step(problem, k)
        assert sol.peak_bytes == best
        assert sum(sol.layers_per_stage) == 24 and min(sol.layers_per_stage) >= 1
        assert sol.per_stage_bytes == stage_bytes(problem, sol.layers_per_stage)


@pytest.mark.parametrize("rank", [32, 128, 256, 512])
@pytest.mark.parametrize("paper_formula", [True, False])
def test_never_worse_than_the_papers_splits(rank, paper_formula):
    problem = step_problem(PAPER, rank, paper_formula=paper_formula)
    for k, split in SPLITS.items():
        assert solve_step(problem, k).peak_bytes <= max(stage_bytes(problem, split))


def test_ranks_for_which_the_papers_splits_are_optimal():
    """With the paper's formula at the 1.2B shape (P_layer = 51.4M, E = 39424·r) the paper's
    {14, 10} is optimal exactly for ranks 138..302 and {11, 8, 5} for 210..311 and 326..385
    (full sweep: benchmarks/plan_step_paper.py). At rank 128 the optimum is {13, 11} and
    {10, 8, 6}: the paper's splits then cost 0.7% and 7.5% more than necessary."""
    def optimal(split, r):
        return is_optimal(step_problem(PAPER, r, paper_formula=True), split)

    for r, expected in [(137, False), (138, True), (302, True), (303, False)]:
        assert optimal(SPLITS[2], r) is expected, r
    for r, expected in [(209, False), (210, True), (311, True), (312, False), (326, True),
                        (385, True), (386, False)]:
        assert optimal(SPLITS[3], r) is expected, r
    p128 = step_problem(PAPER, 128, paper_formula=True)
    assert solve_step(p128, 2).layers_per_stage == [13, 11]
    assert solve_step(p128, 3).layers_per_stage == [10, 8, 6]
    extra = [max(stage_bytes(p128, SPLITS[k])) / solve_step(p128, k).peak_bytes for k in (2, 3)]
    assert extra == pytest.approx([1.007, 1.075], abs=0.001)


def test_adapter_params_per_layer():
    d, f = 2048, PAPER.hidden_dim
    assert f == 5632
    assert adapter_params_per_layer(PAPER, 128) == 128 * (4 * 2 * d + 3 * (d + f))


def test_budget_mode_finds_the_smallest_k():
    problem = step_problem(PAPER, 128)
    peaks = {k: solve_step(problem, k).peak_bytes for k in (1, 2, 3)}
    budget = peaks[3]  # fits with 3 stages, not with 2 (peaks fall with K here)
    assert peaks[2] > budget
    sol = solve_step_budget(problem, budget)
    assert sol.fits is True and sol.stages == 3 and sol.peak_bytes <= budget
    assert set(sol.per_k_peak_bytes) == {1, 2, 3}


def test_budget_below_the_best_split_is_reported_not_raised():
    problem = step_problem(PAPER, 128)
    sol = solve_step_budget(problem, 2**30, max_stages=6)
    assert sol.fits is False
    assert sol.peak_bytes == min(sol.per_k_peak_bytes.values()) > 2**30
    assert len(sol.per_k_peak_bytes) == 6


def test_bad_inputs():
    problem = step_problem(PAPER.with_(n_layers=4), 8)
    with pytest.raises(GrowlmError, match="5 stages for 4 layers"):
        solve_step(problem, 5)
    with pytest.raises(GrowlmError, match="stages must be positive"):
        solve_step(problem, 0)
    with pytest.raises(GrowlmError, match="budget must be positive"):
        solve_step_budget(problem, 0)
    with pytest.raises(GrowlmError, match="layers must be positive"):
        StepProblem(n_layers=0, params_per_layer=10)
    with pytest.raises(GrowlmError, match="parameters per layer"):
        StepProblem(n_layers=4, params_per_layer=-1)
    with pytest.raises(GrowlmError, match="rank"):
        step_problem(PAPER, -1)
