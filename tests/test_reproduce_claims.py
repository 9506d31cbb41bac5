"""benchmarks/reproduce/claims.py: the rules that turn measured numbers into verdicts."""

import importlib.util
import math
import sys
from pathlib import Path
from types import SimpleNamespace as NS

import pytest

REPRO = Path(__file__).resolve().parents[1] / "benchmarks" / "reproduce"


@pytest.fixture(scope="module")
def claims():
    sys.path.insert(0, str(REPRO))  # claims.py imports its sibling methods.py
    try:
        spec = importlib.util.spec_from_file_location("reproduce_claims", REPRO / "claims.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(REPRO))
        sys.modules.pop("methods", None)


def _ws(**rhos):
    return {"wordsim": {d: {"embedding": r, "head": 0.0, "kept": 10, "total": 100}
                        for d, r in rhos.items()}}


def test_word_similarity_counts_only_measurable_sets(claims):
    runs = {"reuse-one-layer-attn": NS(eval_results=_ws(a=0.5, b=0.1, c=math.nan)),
            "standard": NS(eval_results=_ws(a=0.2, b=0.3, c=math.nan))}
    ok, text = claims.claim_a(runs)
    assert ok is True and "higher on 1 of 2 measurable datasets" in text
    runs["standard"] = NS(eval_results=_ws(a=0.2, b=None, c=None))  # eval.json writes NaN as null
    ok, text = claims.claim_a(runs)
    assert ok is True and "higher on 1 of 1 measurable datasets" in text
    runs["standard"] = NS(eval_results=None)
    assert claims.claim_a(runs)[0] is None  # not evaluated: no verdict


def test_higher_lr_claim_is_inconclusive_at_the_grid_top(claims):
    scale = claims.M.SCALES["cpu"]
    top = claims.M.lr_values(scale, claims.M.METHODS[0].grid)[-1]
    reuse = {"reuse-a": {"best_lr": "0.006"}, "reuse-b": {"best_lr": "0.003"}}
    assert claims.claim_b({"standard": {"best_lr": "0.003"}, **reuse}, scale)[0] == claims.PARTLY
    ok, text = claims.claim_b({"standard": {"best_lr": top}, **reuse}, scale)
    assert ok is None and "inconclusive" in text


def test_step_needs_both_the_loss_and_the_memory(claims):
    base = NS(final_val_loss=5.0)
    close = NS(final_val_loss=5.04, mem_reduction_estimated=0.4, mem_reduction_measured=0.38)
    far = NS(final_val_loss=5.2, mem_reduction_estimated=0.4, mem_reduction_measured=0.38)
    ok, text = claims.claim_c({"step-2stage": close, "step-3stage": far}, base)
    assert ok == claims.PARTLY and "40.0% lower (estimated) / 38.0% lower (measured)" in text
    more = NS(final_val_loss=4.9, mem_reduction_estimated=0.1, mem_reduction_measured=-0.05)
    ok, text = claims.claim_c({"step-2stage": more}, base)
    assert ok is False and "5.0% higher (measured)" in text


def test_gstack_and_baselines_verdicts(claims):
    base = NS(final_val_loss=5.0, flops=1e12)
    never = NS(flops_to_target=None, final_val_loss=5.3)
    assert claims.claim_d({"gstack": never}, base)[0] is False
    assert claims.claim_d({"gstack": NS(flops_to_target=8e11, saving=0.2)}, base)[0] is True
    trail = NS(final_val_loss=5.4, delta_loss=0.4)
    beat = NS(final_val_loss=4.7, delta_loss=-0.3)
    assert claims.claim_e({"relora": trail, "galore": beat}, base)[0] == claims.PARTLY
    assert claims.claim_e({"relora": trail, "galore": trail}, base)[0] is True
    assert claims.claim_e({}, base)[0] is None


def test_operator_study_verdicts(claims):
    def row(loss, to_target=None, saving=0.0):
        return NS(final_val_loss=loss, flops_to_target=to_target, saving=saving)
    rows = {"gstack": row(4.8, 8e11, 0.2), "ops-depth-learn": row(4.9), "ops-width-direct": row(5.1),
            "ops-width-learn": row(4.85), "ops-depth-zero": row(None)}
    ok, text = claims.claim_f(rows)
    assert ok is True and text.startswith("final val loss, best first: G_direct ↑ 4.8000") and "4 of the 8 missing" in text
    rows["ops-width-zero"] = row(4.7)
    assert claims.claim_f(rows)[0] is False
    ok, text = claims.claim_g(rows)  # G_direct: depth wins; G_learn: width wins; G_zero: depth missing
    assert ok == claims.PARTLY and "G_learn: depth 4.9000 vs width 4.8500" in text
    assert claims.claim_f({"ops-width-zero": row(4.7)})[0] is None
    table = claims.operator_table(rows)
    body = table[-1].rows
    assert body[0] == ["G_direct", "4.8000 (saving +20.0%)", "5.1000 (never reaches it)"]
    assert body[2] == ["G_zero", "-", "4.7000 (never reaches it)"]
