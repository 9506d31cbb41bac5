"""benchmarks/reproduce: the rules that turn measured numbers over seeds into verdicts.

A difference decides a verdict only when it exceeds the seed spread (the two sides' half
min–max ranges, added); word similarity decides only on sets with at least 50 measurable pairs.
"""

import importlib
import math
import sys
from pathlib import Path
from types import SimpleNamespace as NS

import pytest

REPRO = Path(__file__).resolve().parents[1] / "benchmarks" / "reproduce"
MODULES = ("methods", "spread", "claims")


@pytest.fixture(scope="module")
def mods():
    sys.path.insert(0, str(REPRO))
    try:
        yield NS(**{m: importlib.import_module(m) for m in MODULES})
    finally:
        sys.path.remove(str(REPRO))
        for m in MODULES:
            sys.modules.pop(m, None)


def S(mods, *values):
    return mods.spread.stat(values)


# ---------------------------------------------------------------- the spread rule

@pytest.mark.parametrize("a, b, expected", [
    ((5.00, 5.02, 5.04), (5.10, 5.12, 5.14), True),     # margin 0.10 > spread 0.04
    ((5.10, 5.12, 5.14), (5.00, 5.02, 5.04), False),    # reversed: b clearly lower
    ((5.00, 5.05, 5.10), (5.06, 5.08, 5.10), None),     # margin 0.03 < spread 0.07
    ((5.00, 5.01, 5.02), (5.03, 5.04, 5.05), True),     # ranges just apart: 0.03 > 0.02
    ((5.00, 5.02, 5.04), (5.03, 5.05, 5.07), None),     # ranges overlap: 0.03 < 0.04
    ((5.00,), (5.01,), True),                           # one seed: no spread to beat
])
def test_a_lower_loss_counts_only_beyond_the_spread(mods, a, b, expected):
    ok, margin, width = mods.spread.lower(S(mods, *a), S(mods, *b))
    assert ok is expected
    assert width == pytest.approx((max(a) - min(a) + max(b) - min(b)) / 2)
    assert margin == pytest.approx(sum(b) / len(b) - sum(a) / len(a))


def test_stat_drops_missing_values_and_formats_the_range(mods):
    s = S(mods, 5.0, None, math.nan, 5.2, 5.1)
    assert (s.n, s.lo, s.hi) == (3, 5.0, 5.2) and s.mean == pytest.approx(5.1)
    assert s.fmt() == "5.1000 (5.0000–5.2000, 3 seeds)"
    assert S(mods, 0.25).fmt(1, 100, "%") == "25.0% (1 seed)"
    assert mods.spread.stat([None]) is None


@pytest.mark.parametrize("flags, expected", [
    ([True, True], True), ([False, False], False), ([True, False], "partly"),
    ([True, None], "partly"), ([False, None], False), ([None, None], None), ([], None),
])
def test_combining_a_claims_parts(mods, flags, expected):
    assert mods.claims.combine(flags) == expected


# ---------------------------------------------------------------- (a) word similarity

def _ws(pairs, **rhos):
    return {d: {"embedding": r, "head": 0.0, "kept": pairs[d], "total": 1000}
            for d, r in rhos.items()}


def test_word_similarity_decides_only_on_sets_with_enough_pairs(mods):
    pairs = {"simlex999": 60, "men": 25}
    one = [_ws(pairs, simlex999=0.30 + i / 100, men=-0.5) for i in range(3)]
    base = [_ws(pairs, simlex999=0.10 + i / 100, men=0.9) for i in range(3)]
    ok, text = mods.claims.claim_a(one, base)
    assert ok is True  # men (25 pairs) would reverse it, but it cannot decide
    assert "over the 1 sets with ≥ 50 pairs" in text and "simlex999 (60 pairs)" in text
    assert "men 25/1000" in text  # the count stands beside every set


def test_word_similarity_without_enough_pairs_gives_no_verdict(mods):
    pairs = {"simlex999": 22, "men": 49}
    one = [_ws(pairs, simlex999=0.9, men=0.9)]
    base = [_ws(pairs, simlex999=0.1, men=0.1)]
    ok, text = mods.claims.claim_a(one, base)
    assert ok is None and "not measurable" in text and "simlex999 22/1000" in text
    assert mods.claims.claim_a([], base)[0] is None  # not evaluated


def test_word_similarity_skips_rhos_eval_json_wrote_as_null(mods):
    """eval.json writes a non-finite rho as null: such a set is not measurable, not an error."""
    pairs = {"simlex999": 60, "men": 60}
    one = [_ws(pairs, simlex999=0.3, men=0.9)]
    base = [_ws(pairs, simlex999=0.1, men=None)]
    ok, text = mods.claims.claim_a(one, base)
    assert ok is True and "over the 1 sets with ≥ 50 pairs" in text and "men (" not in text
    base = [_ws(pairs, simlex999=None, men=math.nan)]
    assert mods.claims.claim_a(one, base)[0] is None


def test_word_similarity_within_the_seed_spread_is_inconclusive(mods):
    pairs = {"simlex999": 900}
    one = [_ws(pairs, simlex999=r) for r in (0.20, 0.25, 0.30)]
    base = [_ws(pairs, simlex999=r) for r in (0.18, 0.23, 0.28)]
    assert mods.claims.claim_a(one, base)[0] is None


# ---------------------------------------------------------------- (b) learning rate

def _method(mods, name, best_lr, final, edge=None, margin=0.05):
    return mods.claims.MethodResult(name=name, best_lr=best_lr, final=S(mods, *final),
                                    search={"edge": edge, "margin": margin})


@pytest.mark.parametrize("reuse_args, expected", [
    ([("0.006", (5.0, 5.01)), ("0.012", (5.0, 5.01))], True),    # both located higher
    ([("0.006", (5.0, 5.01)), ("0.003", (5.0, 5.01))], "partly"),
    ([("0.003", (5.0, 5.01)), ("0.0015", (5.0, 5.01))], False),
    ([("0.006", (5.0, 5.08)), ("0.006", (5.0, 5.09))], None),   # seed range 0.08 > margin 0.05
])
def test_higher_lr_counts_only_where_the_optimum_is_located(mods, reuse_args, expected):
    base = _method(mods, "standard", "0.003", (5.0, 5.01))
    reuse = [_method(mods, f"reuse-{i}", lr, fin) for i, (lr, fin) in enumerate(reuse_args)]
    assert mods.claims.claim_b(base, reuse)[0] == expected


def test_higher_lr_claim_needs_the_baselines_optimum_bracketed(mods):
    reuse = [_method(mods, "reuse-a", "0.012", (5.0, 5.01))]
    for edge in ("high", "low", "unfinished"):
        base = _method(mods, "standard", "0.003", (5.0, 5.01), edge=edge)
        ok, text = mods.claims.claim_b(base, reuse)
        assert ok is None and "not located" in text, edge
    unresolved = _method(mods, "standard", "0.003", (5.0, 5.06), margin=0.05)
    assert mods.claims.claim_b(unresolved, reuse)[0] is None


# ---------------------------------------------------------------- (c)–(e)

def _r(mods, name, final, row=None, to_target=(), reached=0):
    return mods.claims.MethodResult(name=name, final=S(mods, *final), row=row,
                                    to_target=mods.spread.stat(to_target), reached=reached,
                                    n=len(final))


def test_step_needs_the_loss_within_tolerance_beyond_the_spread_and_lower_memory(mods):
    base = _r(mods, "standard", (5.00, 5.01, 5.02))
    lower_mem = NS(mem_reduction_estimated=0.4, mem_reduction_measured=0.38)
    close = _r(mods, "step-2stage", (5.00, 5.01, 5.02), lower_mem)  # 0.05 under base + 1%
    far = _r(mods, "step-3stage", (5.20, 5.21, 5.22), lower_mem)
    ok, text = mods.claims.claim_c({"step-2stage": close, "step-3stage": far}, base)
    assert ok == "partly" and "40.0% lower (estimated) / 38.0% lower (measured)" in text
    noisy = _r(mods, "step-2stage", (4.95, 5.10, 5.25), lower_mem)  # spread 0.16 > margin
    assert mods.claims.claim_c({"step-2stage": noisy}, base)[0] is None
    more = _r(mods, "step-2stage", (4.9, 4.9),
              NS(mem_reduction_estimated=0.1, mem_reduction_measured=-0.05))
    ok, text = mods.claims.claim_c({"step-2stage": more}, base)
    assert ok is False and "5.0% higher (measured)" in text


def test_gstack_verdict_accounts_for_the_spread(mods):
    base = _r(mods, "standard", (5.00, 5.02, 5.04))
    ahead = _r(mods, "gstack", (4.90, 4.91, 4.92), to_target=(8e11, 9e11), reached=2)
    ok, text = mods.claims.claim_d(ahead, base, 1e12)
    assert ok is True and "in 2 of 3 seeds" in text and "saving of 15.0% (10.0%–20.0%" in text
    within = _r(mods, "gstack", (4.97, 5.00, 5.03), to_target=(9e11,), reached=1)
    assert mods.claims.claim_d(within, base, 1e12)[0] is None
    behind = _r(mods, "gstack", (5.2, 5.21, 5.22))
    ok, text = mods.claims.claim_d(behind, base, 1e12)
    assert ok is False and "in none of its 3 seeds" in text
    assert mods.claims.claim_d(None, base, 1e12)[0] is None


def test_baselines_trail_only_beyond_the_spread(mods):
    base = _r(mods, "standard", (5.00, 5.01, 5.02))
    trail = _r(mods, "relora", (5.20, 5.21, 5.22))
    beat = _r(mods, "galore", (4.80, 4.81, 4.82))
    tie = _r(mods, "galore", (4.99, 5.01, 5.03))
    e = mods.claims.claim_e
    assert e({"relora": trail, "galore": beat}, base)[0] == "partly"
    assert e({"relora": trail, "galore": trail}, base)[0] is True
    ok, text = e({"relora": trail, "galore": tie}, base)
    assert ok == "partly" and "within the spread of the baseline" in text
    assert e({"galore": beat}, base)[0] is False
    assert e({}, base)[0] is None


def test_check_claims_adds_the_side_run_as_its_own_claim(mods):
    pairs = {"simlex999": 900}
    base = _r(mods, "standard", (5.0, 5.01))
    base.wordsim = [_ws({"simlex999": 10}, simlex999=0.1)]
    side = {"vocab": 50257, "steps": 300,
            "runs": {"one-layer": [_ws(pairs, simlex999=0.5), _ws(pairs, simlex999=0.52)],
                     "standard": [_ws(pairs, simlex999=0.1), _ws(pairs, simlex999=0.12)]}}
    found = {k: (ok, d) for k, _, ok, d in mods.claims.check_claims({"standard": base}, 1e12, side)}
    assert found["a"][0] is None  # the main scale's sets are too small
    assert found["a, side run"][0] is True and "50257-token GPT-2 BPE" in found["a, side run"][1]
    assert "a, side run" not in {k for k, *_ in mods.claims.check_claims({"standard": base}, 1e12)}


# ---------------------------------------------------------------- (f), (g) the operator study

def _ops(mods, lr_source=None, **finals):
    """Study members by method name → final losses over their seeds."""
    return {n: mods.claims.MethodResult(name=n, final=S(mods, *f), n=len(f),
                                        lr_source=None if n == "gstack" else lr_source)
            for n, f in finals.items()}


def test_stacking_in_depth_ends_lowest_only_beyond_the_spread(mods):
    f = mods.claims.claim_f
    results = _ops(mods, gstack=(4.80, 4.81), **{"ops-depth-learn": (4.90, 4.91),
                                                 "ops-width-direct": (5.10, 5.11)})
    ok, text = f(results)
    assert ok is True and text.startswith("final val loss, best first: G_direct ↑ 4.8050")
    assert "lower beyond the spread than 2 of 2; 5 of the 8 missing" in text
    results["ops-width-zero"] = _ops(mods, **{"ops-width-zero": (4.70, 4.71)})["ops-width-zero"]
    assert f(results)[0] is False  # G_zero → beats it beyond the spread
    results["ops-width-zero"] = _ops(mods, **{"ops-width-zero": (4.75, 4.85)})["ops-width-zero"]
    assert f(results)[0] is None  # within the spread of G_zero →
    assert f(_ops(mods, **{"ops-width-zero": (4.7,)}))[0] is None  # gstack missing
    ok, text = f(_ops(mods, gstack=(4.8,)))
    assert ok is None and text.startswith("not run")
    assert mods.claims.claim_g(_ops(mods, gstack=(4.8,)))[1].startswith("not run")


def test_depth_beats_width_per_operator_beyond_the_spread(mods):
    results = _ops(mods, gstack=(4.80, 4.81), **{
        "ops-width-direct": (5.10, 5.11),                                  # depth wins
        "ops-depth-learn": (4.90, 4.91), "ops-width-learn": (4.84, 4.85),  # width wins
        "ops-depth-zero": (4.90, 5.00), "ops-width-zero": (4.95, 4.96)})   # within the spread
    ok, text = mods.claims.claim_g(results)
    assert ok == "partly" and "G_learn: depth vs width 4.9050" in text
    assert mods.claims.combine([True, False, None]) == ok
    results.pop("ops-width-learn")
    results.pop("ops-width-zero")
    assert mods.claims.claim_g(results)[0] is True
    assert mods.claims.claim_g(_ops(mods, **{"ops-width-zero": (4.7,)}))[0] is None


def test_operators_at_gstacks_lr_are_compared_on_single_runs(mods):
    """Where the other operators ran once at gstack's LR, every member is compared on its
    seed-1 run, and the verdict says it is not beyond a spread."""
    results = _ops(mods, "gstack", gstack=(4.80, 4.95, 4.96),  # mean 4.903: would lose to 4.85
                   **{"ops-depth-learn": (4.85,), "ops-width-direct": (4.90,)})
    ok, text = mods.claims.claim_f(results)
    assert ok is True and "G_direct ↑ 4.8000 (1 seed)" in text and "lower than 2 of 2" in text
    assert "ran once each at gstack's best LR" in text and "not decided beyond a seed spread" in text
    ok, text = mods.claims.claim_g(results)
    assert ok is True and "spread not measured" in text


def test_operator_table_lays_out_operators_by_direction(mods):
    results = _ops(mods, gstack=(4.80, 4.82), **{"ops-width-direct": (5.1, 5.2),
                                                 "ops-width-zero": (4.7,)})
    results["gstack"].to_target, results["gstack"].reached = S(mods, 8e11), 1
    body = mods.claims.operator_table(results, 1e12)[-1].rows
    assert [row[0] for row in body] == ["G_direct", "G_learn", "G_zero", "G_random"]
    assert body[0] == ["G_direct", "4.8100 (4.8000–4.8200, 2 seeds) (saving 20.0% (1 seed), 1/2)",
                       "5.1500 (5.1000–5.2000, 2 seeds) (never reaches it)"]
    assert body[2] == ["G_zero", "-", "4.7000 (1 seed) (never reaches it)"]
    assert mods.claims.operator_table({}, 1e12) == []


def test_check_claims_states_every_claim(mods):
    base = _r(mods, "standard", (5.0, 5.01))
    keys = [k for k, *_ in mods.claims.check_claims({"standard": base}, 1e12)]
    assert keys == ["a", "b", "c", "d", "e", "f", "g"]
