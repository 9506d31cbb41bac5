"""The seeds' claims (a)–(g) checked against the measured numbers, each verdict accounting for the
seed-to-seed spread (spread.py): a difference decides a verdict only when it exceeds the spread;
otherwise the claim is inconclusive at this scale, which is a result too."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import methods as M
from spread import Stat, lower, seeds_note, stat

from growlm.report.document import Paragraph, Table

MATCH_TOLERANCE = 0.01  # "matches the baseline": mean final val loss within 1% of the baseline's
MIN_PAIRS = 50  # word pairs a similarity set needs before its Spearman rho can decide a verdict
PARTLY = "partly"  # held for some of the claim's runs, not for others


@dataclass
class MethodResult:
    """A method's numbers over its seeds (the best LR of its search, run with each seed)."""

    name: str
    final: Stat | None = None  # final validation loss
    to_target: Stat | None = None  # FLOPs to the baseline's mean final loss, seeds that reached it
    reached: int = 0  # seeds that reached the baseline's mean final loss
    n: int = 0  # seeds finished
    best_lr: str | None = None
    search: dict = field(default_factory=dict)  # the LR search's record (edge, margin, rungs)
    wordsim: list = field(default_factory=list)  # word-similarity results, one per seed
    row: object = None  # seed 1's growlm compare Row (memory, FLOPs)
    lr_source: str | None = None  # run once at this method's best LR instead of a search


def verdict(ok: bool | str | None) -> str:
    return {True: "**held**", False: "**did not hold**", PARTLY: "**partly held**",
            None: "**inconclusive**"}[ok]


def combine(flags: list) -> bool | str | None:
    """All held → held; all decided ones failed → did not hold; none decided → inconclusive;
    anything else → partly held."""
    known = [f for f in flags if f is not None]
    if not known:
        return None
    if all(f is True for f in flags):
        return True
    if all(f is False for f in known):
        return False
    return PARTLY


def _compare_text(a: Stat, b: Stat, margin: float, width: float) -> str:
    return (f"{a.fmt()} vs {b.fmt()}: margin {margin:+.4f}, spread {width:.4f}"
            f"{seeds_note(a, b)}")


# ---------------------------------------------------------------- (a) word similarity

def _rho(ws: dict, name: str) -> float | None:
    value = (ws.get(name) or {}).get("embedding")
    return value if isinstance(value, (int, float)) and math.isfinite(value) else None


def pair_counts(results: list[dict]) -> dict[str, tuple[int, int]]:
    """Dataset → (pairs measurable, pairs in the file), from the first result that has it."""
    counts: dict[str, tuple[int, int]] = {}
    for ws in results:
        for name, r in (ws or {}).items():
            counts.setdefault(name, (int(r.get("kept") or 0), int(r.get("total") or 0)))
    return counts


def claim_a(one: list[dict], base: list[dict], what: str = "") -> tuple[bool | None, str]:
    """One Layer's (frozen stage-1) input embedding vs the baseline's, mean Spearman rho over the
    similarity sets with at least MIN_PAIRS measurable pairs; one result per seed."""
    one, base = [w for w in one if w], [w for w in base if w]
    if not one or not base:
        return None, f"word similarity was not evaluated{what}"
    counts = pair_counts(base + one)
    listing = ", ".join(f"{d} {k}/{t}" for d, (k, t) in counts.items())
    sets = [d for d, (k, _) in counts.items() if k >= MIN_PAIRS
            and all(_rho(w, d) is not None for w in one + base)]
    if not sets:
        return None, (f"not measurable{what}: no similarity set has {MIN_PAIRS} pairs whose words "
                      f"are single tokens of the vocabulary (pairs measurable / in the set: "
                      f"{listing})")

    def score(ws):
        return sum(_rho(ws, d) for d in sets) / len(sets)

    a, b = stat(score(w) for w in one), stat(score(w) for w in base)
    ok, margin, width = lower(b, a)
    per_set = "; ".join(f"{d} ({counts[d][0]} pairs) {stat(_rho(w, d) for w in one).mean:.3f} vs "
                        f"{stat(_rho(w, d) for w in base).mean:.3f}" for d in sets)
    return ok, (f"mean Spearman rho of the input embedding over the {len(sets)} sets with ≥ "
                f"{MIN_PAIRS} pairs{what}: One Layer (Attn) {_compare_text(a, b, margin, width)}; "
                f"per set (mean over seeds) {per_set}; pairs measurable / in the set: {listing}")


# ---------------------------------------------------------------- (b) learning rate

def lr_found(r: MethodResult) -> tuple[bool, str]:
    """Whether the search located the best LR: bracketed, and its neighbours worse by more than
    the method's seed range (a single run's loss moves by about that much with the seed)."""
    s = r.search
    if r.best_lr is None:
        return False, f"{r.name}: no finished run"
    edge = s.get("edge")
    if edge in ("low", "high"):
        return False, f"{r.name} {r.best_lr} at the {edge} end of the LR ladder"
    if edge == "unfinished" or s.get("margin") is None:
        return False, f"{r.name} {r.best_lr} (search unfinished)"
    width = r.final.range if r.final else 0.0
    if s["margin"] <= width:
        return False, (f"{r.name} {r.best_lr} not resolved (the next rung is {s['margin']:.4f} "
                       f"worse, the seed range {width:.4f})")
    return True, (f"{r.name} {r.best_lr} (the next rung {s['margin']:.4f} worse, seed range "
                  f"{width:.4f})")


def claim_b(base: MethodResult, reuse: list[MethodResult]) -> tuple[bool | str | None, str]:
    if not reuse:
        return None, "reuse runs missing"
    base_ok, base_text = lr_found(base)
    parts = [lr_found(r) for r in reuse]
    text = f"best LR of the baseline: {base_text}; stage 2 of " + "; ".join(t for _, t in parts)
    if not base_ok:
        return None, text + " — the baseline's optimum is not located, so no comparison"
    flags = [float(r.best_lr) > float(base.best_lr) if ok else None
             for r, (ok, _) in zip(reuse, parts)]
    higher = sum(1 for f in flags if f)
    return combine(flags), text + f" ({higher} of {len(reuse)} located higher than the baseline's)"


# ---------------------------------------------------------------- (c)–(e) losses and memory

def _lower_memory(row) -> tuple[bool, str]:
    est = getattr(row, "mem_reduction_estimated", None)
    meas = getattr(row, "mem_reduction_measured", None)
    ok = (est or 0) > 0 and (meas or 0) > 0

    def fmt(x):
        return "not measured" if x is None else f"{abs(x):.1%} {'lower' if x >= 0 else 'higher'}"

    return ok, f"peak memory {fmt(est)} (estimated) / {fmt(meas)} (measured)"


def claim_c(results: dict[str, MethodResult], base: MethodResult) -> tuple[bool | str | None, str]:
    parts, flags = [], []
    for name in ("step-2stage", "step-3stage"):
        r = results.get(name)
        if r is None or r.final is None or base.final is None:
            continue
        tol = MATCH_TOLERANCE * base.final.mean
        match, margin, width = lower(r.final, base.final, offset=tol)
        mem_ok, mem_text = _lower_memory(r.row)
        flags.append(match if mem_ok else False)
        said = {True: "within", False: "not within", None: "undecided at"}[match]
        parts.append(f"{name}: val loss {_compare_text(r.final, base.final, margin, width)} "
                     f"against the baseline + {MATCH_TOLERANCE:.0%} ({said} {MATCH_TOLERANCE:.0%}); "
                     f"{mem_text}")
    if not flags:
        return None, "STEP runs missing"
    return combine(flags), "; ".join(parts)


def claim_d(r: MethodResult | None, base: MethodResult, budget: float) -> tuple[bool | None, str]:
    if r is None or r.final is None or base.final is None:
        return None, "Gstack run missing"
    ok, margin, width = lower(r.final, base.final)
    if r.to_target is None:
        reach = f"reached the baseline's mean final loss in none of its {r.n} seeds"
    else:
        reach = (f"FLOPs to the baseline's mean final loss {r.to_target.fmt(sci=True)} in "
                 f"{r.reached} of {r.n} seeds, a saving of {saving(r, budget).fmt(1, 100, '%')}")
    return ok, f"final val loss {_compare_text(r.final, base.final, margin, width)}; {reach}"


def claim_e(results: dict[str, MethodResult], base: MethodResult) -> tuple[bool | str | None, str]:
    parts, flags = [], []
    for name in ("relora", "galore"):
        r = results.get(name)
        if r is None or r.final is None or base.final is None:
            continue
        ok, margin, width = lower(base.final, r.final)  # held: the baseline's loss is lower
        flags.append(ok)
        parts.append(f"{name}: {_compare_text(r.final, base.final, -margin, width)} "
                     f"({'trails' if ok else 'beats' if ok is False else 'within the spread of'} "
                     "the baseline)")
    if not flags:
        return None, "ReLoRA/GaLore runs missing"
    return combine(flags), "; ".join(parts)


def saving(r: MethodResult, budget: float) -> Stat | None:
    """Share of the budget left when the method first reached the baseline's mean final loss,
    over the seeds that reached it."""
    return None if r.to_target is None else Stat(tuple(1 - v / budget for v in r.to_target.values))


# ---------------------------------------------------------------- (f), (g) the operator study

OPERATORS = ("G_direct", "G_learn", "G_zero", "G_random")
ARROW = {"depth": "↑", "width": "→"}
NOT_RUN = "not run: the operator study's ops-* methods were left out (--methods)"


def _study(results: dict[str, MethodResult]) -> tuple[dict[tuple[str, str], Stat], str]:
    """(operator, direction) → final val loss of the study's finished runs, and a note on what
    the numbers are. Where any member has a single run (the operators at gstack's LR, or one
    seed), every member is compared on its seed-1 run, so that no verdict leans on a spread that
    only some members have."""
    found = {M.OPERATOR_STUDY[n]: r for n, r in results.items()
             if n in M.OPERATOR_STUDY and r.final is not None}
    if not found or all(r.final.n >= 2 for r in found.values()):
        return {k: r.final for k, r in found.items()}, ""
    lent = sorted({r.lr_source for r in found.values() if r.lr_source})
    why = (f"the other operators ran once each at {', '.join(lent)}'s best LR, not searched"
           if lent else "one seed")
    return ({k: Stat(r.final.values[:1]) for k, r in found.items()},
            f" — seed 1 of each ({why}): single runs, not decided beyond a seed spread")


def _name(key: tuple[str, str]) -> str:
    return f"{key[0]} {ARROW[key[1]]}"


def claim_f(results: dict[str, MethodResult]) -> tuple[bool | None, str]:
    """G_direct in depth ends lowest: held when it beats every other finished member beyond the
    spread; did not hold when any member beats it beyond the spread; else inconclusive."""
    study, note = _study(results)
    top = study.get(("G_direct", "depth"))
    if not any(n in results for n in M.OPERATORS):
        return None, NOT_RUN
    if top is None or len(study) < 2:
        return None, "operator-study runs missing"
    outcomes = [lower(top, s)[0] for k, s in study.items() if k != ("G_direct", "depth")]
    ok = False if False in outcomes else True if all(outcomes) else None
    ranked = sorted(study.items(), key=lambda kv: kv[1].mean)
    order = ", ".join(f"{_name(k)} {s.fmt()}" for k, s in ranked)
    beaten = sum(1 for o in outcomes if o is True)
    missing = f"; {8 - len(study)} of the 8 missing" if len(study) < 8 else ""
    beyond = "" if note else " beyond the spread"
    return ok, (f"final val loss, best first: {order}; G_direct ↑ lower{beyond} than "
                f"{beaten} of {len(outcomes)}{missing}{note}")


def claim_g(results: dict[str, MethodResult]) -> tuple[bool | str | None, str]:
    if not any(n in results for n in M.OPERATORS):
        return None, NOT_RUN
    study, note = _study(results)
    pairs = [(op, study[op, "depth"], study[op, "width"]) for op in OPERATORS
             if (op, "depth") in study and (op, "width") in study]
    if not pairs:
        return None, "no operator ran in both directions"
    parts, flags = [], []
    for op, d, w in pairs:
        ok, margin, width = lower(d, w)
        flags.append(ok)
        parts.append(f"{op}: depth vs width {_compare_text(d, w, margin, width)}")
    return combine(flags), "; ".join(parts) + note


def operator_table(results: dict[str, MethodResult], budget: float) -> list:
    """The operator study as the paper lays it out, operators × directions: mean final val loss
    and the FLOPs saved in reaching the baseline's mean final loss."""
    found = {M.OPERATOR_STUDY[n]: r for n, r in results.items() if n in M.OPERATOR_STUDY}
    if not found:
        return []

    def cell(key):
        r = found.get(key)
        if r is None or r.final is None:
            return "-"
        s = saving(r, budget)
        reach = "never reaches it" if s is None else f"saving {s.fmt(1, 100, '%')}, {r.reached}/{r.n}"
        return f"{r.final.fmt()} ({reach})"

    body = [[op, cell((op, "depth")), cell((op, "width"))] for op in OPERATORS]
    return [Paragraph("Operators × directions, as the paper lays the study out: grown 4x in depth "
                      "(from a quarter of the layers) or in width (every width halved), at "
                      "Gstack's growth point, every run at the baseline's exact FLOPs; in "
                      "brackets the FLOPs saved in reaching the baseline's mean final loss and "
                      "the runs that reached it. G_direct in depth is the gstack method."),
            Table(["operator", "depth (↑)", "width (→)"], body, "lll")]


CLAIMS = [
    ("a", "One Layer stage-1 embeddings beat the baseline's on word similarity (Lee et al.)"),
    ("b", "frozen embedding + head allow a higher LR (Lee et al.)"),
    ("c", "STEP matches the baseline at lower peak memory (Yano et al.)"),
    ("d", "Gstack reaches the baseline's loss with fewer FLOPs (Du et al.)"),
    ("e", "ReLoRA and GaLore trail the baseline (STEP's baselines)"),
    ("f", "of the eight growth operators, stacking in depth (G_direct ↑) ends lowest at equal "
          "FLOPs (Du et al.)"),
    ("g", "each operator does better in depth than in width (Du et al.)"),
]
SIDE_CLAIM = ("a, side run", "claim (a) again with the GPT-2 vocabulary, where the sets have "
              "enough single-token words")


def check_claims(results: dict[str, MethodResult], budget: float,
                 side: dict | None = None) -> list[tuple[str, str, bool | str | None, str]]:
    """[(key, claim, verdict, detail)] for (a)–(g), and (a) on the side vocabulary if it ran."""
    base = results["standard"]
    one = results.get("reuse-one-layer-attn")
    found = {
        "a": claim_a(one.wordsim if one else [], base.wordsim),
        "b": claim_b(base, [r for n, r in results.items() if n.startswith("reuse-")]),
        "c": claim_c(results, base),
        "d": claim_d(results.get("gstack"), base, budget),
        "e": claim_e(results, base),
        "f": claim_f(results),
        "g": claim_g(results),
    }
    out = [(k, text, *found[k]) for k, text in CLAIMS]
    if side is not None:
        what = f" ({side['vocab']}-token GPT-2 BPE, {side['steps']} baseline steps)"
        out.append((*SIDE_CLAIM, *claim_a(side["runs"]["one-layer"], side["runs"]["standard"], what)))
    return out
