"""The reproduction's report: the claims with their spread, the seeds and LR-search tables, the
growlm compare report of each method's seed-1 run, the setup and the environment; and
summary.json with every number the report states."""

from __future__ import annotations

import json
from pathlib import Path

import methods as M
from claims import MethodResult, check_claims, operator_table, saving, verdict
from report_blocks import environment_blocks, setup_blocks
from spread import Stat, stat

from growlm.errors import GrowlmError
from growlm.files import atomic_write_text, to_json_safe
from growlm.report import compare as cmp
from growlm.report.document import Bullets, Heading, Paragraph, Table
from growlm.report.runs import load_run
from growlm.report.write import fmt_loss, write_report


def method_results(outcomes: list[dict]) -> tuple[dict[str, MethodResult], dict]:
    """MethodResult per method from its seed runs, and the loaded seed-1 runs by name. FLOPs to
    the target are measured against the baseline's mean final loss over its seeds."""
    runs = {o["method"]: [load_run(d) if d else None for d in o["seed_dirs"]] for o in outcomes}
    base_final = stat(r.final_val_loss for r in runs["standard"] if r)
    results = {}
    for o in outcomes:
        seeds = [r for r in runs[o["method"]] if r is not None and r.complete]
        to_target = []
        for r in seeds:
            xs, ys = r.curve("flops", final_model=True)
            ftt, _ = cmp.flops_to_target(xs, ys, base_final.mean) if base_final else (None, False)
            to_target.append(ftt)
        full = next(s for s in o["sweeps"] if s["what"] == "full run")
        results[o["method"]] = MethodResult(
            name=o["method"], final=stat(r.final_val_loss for r in seeds),
            to_target=stat(to_target), reached=sum(v is not None for v in to_target), n=len(seeds),
            best_lr=o.get("best_lr"), search=full, lr_source=o.get("lr_source"),
            wordsim=[(r.eval_results or {}).get("wordsim") for r in seeds])
    first = {n: rs[0] for n, rs in runs.items() if rs and rs[0] is not None}
    for name, run in first.items():
        run.name = name
    return results, first


def _seed_table(results: dict[str, MethodResult], names: list[str], budget: float) -> Table:
    base = results["standard"].final
    rows = []
    for n in names:
        r = results[n]
        delta = f"{r.final.mean - base.mean:+.4f}" if r.final and base else "-"
        ftt = r.to_target.fmt(sci=True) if r.to_target else "not reached"
        saved = saving(r, budget)
        rows.append([n, str(r.n), r.final.fmt() if r.final else "-", delta, ftt,
                     f"{r.reached}/{r.n}", saved.fmt(1, 100, "%") if saved else "-"])
    return Table(["method", "seeds", "final val loss: mean (min–max)", "Δ mean vs baseline",
                  "FLOPs to the baseline's mean loss", "seeds reaching it", "saving"], rows,
                 "lrrrrrr")


def _search_table(outcomes: list[dict], scale: M.Scale) -> Table:
    rows = []
    for o in outcomes:
        for sw in o["sweeps"]:
            tried = ", ".join(f"{M.lr_value(scale, int(k))}: {fmt_loss(v)}"
                              for k, v in sw["rungs"].items())
            edge = {None: "bracketed", "low": "**at the low end**", "high": "**at the high end**",
                    "unfinished": "unfinished",
                    "borrowed": f"not searched: {sw.get('source')}'s best"}[sw["edge"]]
            best = next((v["overrides"][0].split("=", 1)[1] for v in sw["variants"]
                         if v["name"] == sw["best"]), "-")
            margin = "-" if sw["margin"] is None else f"{sw['margin']:.4f}"
            rows.append([o["method"], sw["what"], sw["key"], tried or "-", best, edge, margin])
    return Table(["method", "search", "key", "LR: final val loss", "best", "where", "next rung worse by"],
                 rows, "lllllll")


def _family_blocks(results: dict, budget: float) -> list:
    """A seeds table per family; the operator family's also as the study lays it out."""
    blocks = [Heading("Seeds: mean and spread"),
              Paragraph("Each method's best LR run with every seed (run.seed sets the initial "
                        "weights and the data order). Spread = min–max over the seeds. FLOPs to "
                        "the baseline's mean final loss: on the final model's validation curve, "
                        "every stage's FLOPs included; the mean is over the seeds that reached it.")]
    for family, title in M.FAMILIES.items():
        names = [m.name for m in M.METHODS if m.family == family and m.name in results]
        blocks.append(Heading(title, 3))
        if not names:
            blocks.append(Paragraph("Not run: its methods were left out (--methods)."))
            continue
        blocks.append(_seed_table(results, names, budget))
        if family == "operators":
            blocks += operator_table(results, budget)
    return blocks


def _side_blocks(side: dict | None) -> list:
    if side is None:
        return []
    rows = []
    for which, results in side["runs"].items():
        for name in sorted({d for ws in results if ws for d in ws}):
            rhos = stat((ws.get(name) or {}).get("embedding") for ws in results if ws)
            kept = next((ws[name]["kept"] for ws in results if ws and name in ws), 0)
            rows.append([which, name, str(kept), rhos.fmt(3) if rhos else "-"])
    return [Heading("Claim (a) on the GPT-2 vocabulary (side run)"),
            Paragraph("To keep embedding + head near the seeds' share of the parameters the main "
                      "scale has a small vocabulary, in which too few word pairs are "
                      "single tokens to measure word similarity. This side run trains the same "
                      f"shape with the {side['vocab']}-token GPT-2 BPE for {side['steps']} "
                      "baseline steps (One Layer's stage 1: half as many), with the main "
                      "searches' best LRs, and measures only claim (a). Its models are mostly "
                      "embedding and head, so it is not at 20 tokens per parameter."),
            Table(["model", "set", "pairs", "embedding rho: mean (min–max)"], rows, "llrr")]


def _headline(claims: list, results: dict, scale: M.Scale) -> Paragraph:
    base = results["standard"].final
    said = "; ".join(f"({k}) {verdict(ok).strip('*')}" for k, _, ok, _ in claims)
    best = sorted((r.final.mean, n) for n, r in results.items() if r.final)
    lead = ", ".join(f"{n} {results[n].final.fmt(3)}" for _, n in best[:3])
    lent = sorted(n for n, r in results.items() if r.lr_source)
    seeds = (f"{scale.seeds} seeds per method" if not lent else
             f"{scale.seeds} seeds per searched method (the operator study's {len(lent)} other "
             f"operators: one run each at gstack's best LR)")
    return Paragraph(
        f"**Does it pay off?** At {scale.tokens_per_param:.3g} tokens per parameter "
        f"({scale.params:,} parameters), with {seeds}: {said}. Lowest mean "
        f"final validation losses: {lead} (baseline {base.fmt() if base else '-'}).")


def write_results(outcomes: list[dict], scale: M.Scale, work: Path, shards: Path, results_dir: Path,
                  target: int, progress: dict, env: dict, side: dict | None) -> Path:
    results, first = method_results(outcomes)
    if M.BASELINE not in first:
        raise GrowlmError("nothing to report yet: the baseline (standard) has no finished run; "
                          "run the command without --report-only")
    base = first[M.BASELINE]
    loaded, _ = cmp.load_runs(list(first.values()), base)
    for row in cmp.summarize(loaded, base):
        if row.name in results:
            results[row.name].row = row
    claims = check_claims(results, target, side)
    unfinished = sorted(o["method"] for o in outcomes
                        if any(sw["edge"] == "unfinished" for sw in o["sweeps"])
                        or results[o["method"]].n < o["seeds"])
    caveat = (f" **Not every search or seed finished** ({', '.join(unfinished)}): those "
              "methods are represented by what finished." if unfinished else "")
    preface = [_headline(claims, results, scale),
               Heading("The seeds' claims at this scale"),
               Paragraph("A verdict holds only when its margin exceeds the seed-to-seed spread "
                         "(the two methods' half min–max ranges, added); within the spread it is "
                         "inconclusive." + caveat),
               Bullets([f"({k}) {text}: {verdict(ok)} — {detail}." for k, text, ok, detail in claims]),
               *_family_blocks(results, target),
               Heading("LR searches"),
               Paragraph("A ×2 ladder around lr0, walked until the best LR is bracketed "
                         "(search.py); 'next rung worse by' is the margin by which its closest "
                         "tried neighbour lost, to compare with the seed range."),
               _search_table(outcomes, scale),
               *_side_blocks(side)]
    path = write_report(list(first.values()), base, results_dir,
                        neighbours=min(100, scale.vocab - 1),
                        title=f"growlm reproduction of the seed papers ({scale.name} scale)",
                        preface=preface,
                        extra=setup_blocks(scale, shards, target, outcomes)
                        + environment_blocks(progress, env))
    summary = {"scale": scale.name, "params": scale.params,
               "tokens_per_param": scale.tokens_per_param, "target_flops": target,
               "claims": [{"claim": k, "text": t, "held": ok, "detail": d} for k, t, ok, d in claims],
               "seeds": {n: _stat_dict(r) for n, r in results.items()},
               "outcomes": [_portable(o, work) for o in outcomes], "side": side,
               "progress": progress, "env": env}
    atomic_write_text(results_dir / "summary.json",
                      json.dumps(to_json_safe(summary), indent=1, default=str) + "\n")
    return path


def _stat_dict(r: MethodResult) -> dict:
    def d(s: Stat | None):
        return None if s is None else {"mean": s.mean, "min": s.lo, "max": s.hi, "values": s.values}

    return {"n": r.n, "final_val_loss": d(r.final), "flops_to_baseline_loss": d(r.to_target),
            "reached": r.reached, "best_lr": r.best_lr, "lr_source": r.lr_source}


def _portable(outcome: dict, work: Path) -> dict:
    """The outcome without this machine's paths: run folders relative to the work folder."""
    def rel(p):
        return Path(p).relative_to(work).as_posix() if p else None

    out = {k: v for k, v in outcome.items() if k not in ("seed_dirs", "best_dir")}
    out["seed_dirs"] = [rel(p) for p in outcome["seed_dirs"]]
    return out
