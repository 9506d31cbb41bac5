"""The reproduction's report: the compare report plus setup, LR sweeps, the seeds' claims checked
against the measured numbers, and the environment (hardware, versions, date, load)."""

from __future__ import annotations

import json
import math
import os
import platform
import time
from pathlib import Path

import methods as M

from growlm.report import compare as cmp
from growlm.report.document import Bullets, Heading, Paragraph, Table
from growlm.report.runs import Run, load_run
from growlm.report.write import fmt_loss, fmt_pct, write_report
from growlm.units import lower_or_higher

MATCH_TOLERANCE = 0.01  # "matches the baseline": final val loss within 1% of the baseline's


PARTLY = "partly"  # held for some of the claim's runs, not for others


def _verdict(ok: bool | str | None) -> str:
    return {True: "**held**", False: "**did not hold**", PARTLY: "**partly held**",
            None: "**inconclusive / not measured**"}[ok]


def _all_some_none(flags: list[bool]) -> bool | str:
    return True if all(flags) else PARTLY if any(flags) else False


def _rho(result: dict) -> float | None:
    """A dataset's embedding rho; None when not measurable (NaN, or null in eval.json, which
    writes non-finite numbers as null)."""
    v = result.get("embedding")
    return None if not isinstance(v, (int, float)) or math.isnan(v) else float(v)


def claim_a(runs: dict[str, Run]) -> tuple[bool | None, str]:
    from growlm.eval.wordsim import summary_score

    one, base = runs.get("reuse-one-layer-attn"), runs.get("standard")
    ws1 = ((one.eval_results or {}).get("wordsim") if one else None)
    ws0 = ((base.eval_results or {}).get("wordsim") if base else None)
    if not ws1 or not ws0:
        return None, "word similarity was not evaluated"
    a, b = summary_score(ws1), summary_score(ws0)
    measurable = [d for d in ws1 if d in ws0 and _rho(ws1[d]) is not None and _rho(ws0[d]) is not None]
    wins = sum(1 for d in measurable if _rho(ws1[d]) > _rho(ws0[d]))
    cov = ", ".join(f"{d} {ws0[d]['kept']}/{ws0[d]['total']}" for d in ws0)
    ok = None if math.isnan(a) or math.isnan(b) else a > b
    return ok, (f"mean Spearman rho of the input embedding: One Layer (Attn) stage-1 embedding "
                f"(frozen, so the final model's) {a:.3f} vs baseline {b:.3f}; higher on {wins} of "
                f"{len(measurable)} measurable datasets (word pairs with single-token words in the BPE vocabulary: {cov})")


def claim_b(outcomes: dict[str, dict], scale: M.Scale) -> tuple[bool | str | None, str]:
    base = outcomes.get("standard", {}).get("best_lr")
    reuse = {k: o.get("best_lr") for k, o in outcomes.items() if k.startswith("reuse-")}
    if base is None or not reuse or any(v is None for v in reuse.values()):
        return None, "the LR sweeps did not finish"
    higher = [k for k, v in reuse.items() if float(v) > float(base)]
    detail = ", ".join(f"{k} {v}" for k, v in reuse.items())
    grid = M.lr_values(scale, M.METHODS[0].grid)
    at_edge = float(base) >= max(float(g) for g in grid)
    edge = " (at the top of its grid, so its true optimum may be higher: inconclusive)" if at_edge else ""
    verdict = None if at_edge else _all_some_none([k in higher for k in reuse])
    return verdict, (f"best LR: baseline {base}{edge}; stage 2 of {detail} "
                     f"({len(higher)} of {len(reuse)} higher)")


def _lower(reduction: float | None) -> str:
    return "not measured" if reduction is None else lower_or_higher(reduction)


def claim_c(rows: dict[str, cmp.Row], base: cmp.Row) -> tuple[bool | str | None, str]:
    parts, oks = [], []
    for name in ("step-2stage", "step-3stage"):
        r = rows.get(name)
        if r is None or r.final_val_loss is None:
            continue
        match = r.final_val_loss <= base.final_val_loss * (1 + MATCH_TOLERANCE)
        lower = (r.mem_reduction_estimated or 0) > 0 and (r.mem_reduction_measured or 0) > 0
        oks.append(match and lower)
        parts.append(f"{name}: val loss {fmt_loss(r.final_val_loss)} vs {fmt_loss(base.final_val_loss)} "
                     f"({'within' if match else 'not within'} {MATCH_TOLERANCE:.0%}), peak memory "
                     f"{_lower(r.mem_reduction_estimated)} (estimated) / "
                     f"{_lower(r.mem_reduction_measured)} (measured)")
    if not oks:
        return None, "STEP runs missing"
    return _all_some_none(oks), "; ".join(parts)


def claim_d(rows: dict[str, cmp.Row], base: cmp.Row) -> tuple[bool | None, str]:
    r = rows.get("gstack")
    if r is None:
        return None, "Gstack run missing"
    if r.flops_to_target is None:
        return False, (f"Gstack never reached the baseline's final loss "
                       f"{fmt_loss(base.final_val_loss)} (its final: {fmt_loss(r.final_val_loss)})")
    return r.saving > 0, (f"FLOPs to the baseline's final loss {r.flops_to_target:.3e} vs "
                          f"{base.flops:.3e}: saving {fmt_pct(r.saving)}")


def claim_e(rows: dict[str, cmp.Row], base: cmp.Row) -> tuple[bool | str | None, str]:
    found = [(n, rows[n]) for n in ("relora", "galore") if n in rows and rows[n].final_val_loss]
    if not found:
        return None, "ReLoRA/GaLore runs missing"
    ok = _all_some_none([r.final_val_loss > base.final_val_loss for _, r in found])
    return ok, "; ".join(f"{n}: {fmt_loss(r.final_val_loss)} ({r.delta_loss:+.4f} vs baseline)"
                         for n, r in found)


def _study(rows: dict[str, cmp.Row]) -> dict[tuple[str, str], cmp.Row]:
    """(operator, direction) → row, for the operator-study runs that finished."""
    return {M.OPERATOR_STUDY[n]: r for n, r in rows.items()
            if n in M.OPERATOR_STUDY and r.final_val_loss is not None}


def claim_f(rows: dict[str, cmp.Row]) -> tuple[bool | None, str]:
    study = _study(rows)
    if ("G_direct", "depth") not in study or len(study) < 2:
        return None, "operator-study runs missing"
    ranked = sorted(study.items(), key=lambda kv: kv[1].final_val_loss)
    order = ", ".join(f"{op} {'↑' if d == 'depth' else '→'} {fmt_loss(r.final_val_loss)}" for (op, d), r in ranked)
    missing = f" ({8 - len(study)} of the 8 missing)" if len(study) < 8 else ""
    return ranked[0][0] == ("G_direct", "depth"), f"final val loss, best first: {order}{missing}"


def claim_g(rows: dict[str, cmp.Row]) -> tuple[bool | str | None, str]:
    study = _study(rows)
    pairs = [(op, study[op, "depth"], study[op, "width"]) for op in OPERATORS
             if (op, "depth") in study and (op, "width") in study]
    if not pairs:
        return None, "no operator ran in both directions"
    return (_all_some_none([d.final_val_loss < w.final_val_loss for _, d, w in pairs]),
            "; ".join(f"{op}: depth {fmt_loss(d.final_val_loss)} vs width {fmt_loss(w.final_val_loss)}"
                      for op, d, w in pairs))


OPERATORS = ("G_direct", "G_learn", "G_zero", "G_random")
CLAIMS = [
    ("a", "One Layer stage-1 embeddings beat the baseline's on word similarity (Lee et al.)"),
    ("b", "frozen embedding + head allow a higher LR (Lee et al.)"),
    ("c", "STEP matches the baseline at lower peak memory (Yano et al.)"),
    ("d", "Gstack reaches the baseline's loss with fewer FLOPs (Du et al.)"),
    ("e", "ReLoRA and GaLore trail the baseline (STEP's baselines)"),
    ("f", "of the eight growth operators, stacking in depth (G_direct ↑) ends lowest at equal FLOPs (Du et al.)"),
    ("g", "each operator does better in depth than in width (Du et al.)"),
]


def check_claims(outcomes: dict[str, dict], runs: dict[str, Run], rows: dict[str, cmp.Row],
                 scale: M.Scale) -> list:
    base = rows["standard"]
    results = {"a": claim_a(runs), "b": claim_b(outcomes, scale), "c": claim_c(rows, base),
               "d": claim_d(rows, base), "e": claim_e(rows, base), "f": claim_f(rows), "g": claim_g(rows)}
    return [(key, text, *results[key]) for key, text in CLAIMS]


def operator_table(rows: dict[str, cmp.Row]) -> list:
    """The operator study as the paper lays it out, operators × directions: final val loss and
    the FLOPs saved to the baseline's final loss (every run at the baseline's FLOPs)."""
    study = _study(rows)
    if not study:
        return []

    def cell(key):
        r = study.get(key)
        if r is None:
            return "-"
        saving = "never reaches it" if r.flops_to_target is None else f"saving {fmt_pct(r.saving)}"
        return f"{fmt_loss(r.final_val_loss)} ({saving})"
    body = [[op, cell((op, "depth")), cell((op, "width"))] for op in OPERATORS]
    return [Heading("Gstack's operator study"),
            Paragraph("Final validation loss of each growth operator, grown 4x in depth (a quarter of the "
                      "layers) or in width (every width halved), every run at the baseline's exact FLOPs; in "
                      "brackets the share of FLOPs saved in reaching the baseline's final loss. G_direct in depth is the "
                      "gstack method."),
            Table(["operator", "depth (↑)", "width (→)"], body, "lll")]


def _portable(outcome: dict, work: Path) -> dict:
    """The outcome without this machine's paths: run dirs relative to the work folder."""
    out = {k: v for k, v in outcome.items() if k != "sweeps"}
    if out.get("best_dir"):
        out["best_dir"] = Path(out["best_dir"]).relative_to(work).as_posix()
    out["sweeps"] = [{k: v for k, v in sw.items() if k != "recipe"} for sw in outcome["sweeps"]]
    return out


# ---------------------------------------------------------------- report blocks

def _sweep_table(outcomes: list[dict]) -> Table:
    rows = []
    for o in outcomes:
        for sw in o["sweeps"]:
            for v in sw["variants"]:
                value = v["overrides"][0].split("=", 1)[1] if v["overrides"] else "-"
                mark = " (best)" if v["name"] == sw["best"] else ""
                rows.append([o["method"], sw["what"], sw["key"], value + mark, v["status"],
                             fmt_loss(v.get("final_val_loss"))])
    return Table(["method", "sweep", "key", "value", "status", "final val loss"], rows, "llllll")


def _setup_blocks(scale: M.Scale, shards: Path, target: int, outcomes: list[dict]) -> list:
    from growlm.data import open_shards

    sh = open_shards(shards)
    d, n = scale.d_model, scale.n_layers
    rows = [[o["method"], str(o["stages"].get("steps")), f"{o['stages'].get('flops_ratio', 1.0):.4f}",
             str(o.get("lr_s1") or "-"), str(o.get("best_lr") or "-")] for o in outcomes]
    return [
        Heading("Setup"),
        Bullets([
            f"Corpus: enwiki 2015 (WikiExtractor) train file, {sh.num_tokens('train'):,} tokens; "
            f"validation: its separate validation file, {sh.num_tokens('val'):,} tokens. Byte-level "
            f"BPE with {sh.vocab_size} tokens trained on the training text.",
            f"Final shape (all methods): {n} layers, d_model {d}, {scale.n_heads} heads, FFN "
            f"{scale.ffn}, context {scale.seq_len}; embedding + head = "
            f"{M.params_share(scale):.1%} of the parameters.",
            f"Baseline: {scale.steps} steps of {scale.batch_tokens:,} tokens "
            f"({scale.steps * scale.batch_tokens:,} tokens); every method's last stage is sized "
            f"so that its exact FLOPs equal the baseline's ({target:.3e}).",
            "Stage lengths (fractions of the baseline's steps, as in the seeds' tiny recipes): "
            "reuse stage 1 = 1/2 (the small model; stage 2 re-reads the same data); STEP 2-stage "
            "stage 1 = 3/8 of a 1/2 plan; STEP 3-stage 3/10 of 4/10 plans; Gstack and ReLoRA "
            "stage 1 = 1/4 with the LR planned over the whole run; the operator study (Gstack's "
            "G_direct/G_learn/G_zero/G_random in depth and width) likewise, its learn ops training "
            "their maps for the grown stage's first B/36 steps and its random ops ramping MSG's masks "
            "over B/12 steps.",
            f"LR sweeps (peak LR, the centre lr0 = {scale.lr:g}): standard × {{0.5, 1, 2, 4}}; reuse: "
            f"the small model alone × {{1, 2}}, the lowest final validation loss kept (Lee et al.'s "
            f"rule), then stage 2 × {{1, 2, 4}} (the seeds found frozen embeddings take a higher "
            f"LR); STEP, Gstack, ReLoRA and the operator study × {{1, 2}}; GaLore × {{1, 3}}. Every "
            f"variant runs the full "
            f"budget; the best by final validation loss is the method's run above.",
            f"Validation loss: {scale.eval_tokens:,} tokens of the validation split every "
            f"{scale.eval_every} steps. Evaluation: WikiText-2 test (lm-eval's word perplexity) "
            f"and zero-shot tasks on at most {scale.eval_limit} examples/documents each.",
        ]),
        Table(["method", "steps per stage", "FLOPs / baseline", "stage-1 LR", "best swept LR"], rows,
              "lrrrr"),
        Heading("LR sweeps", 3),
        _sweep_table(outcomes),
    ]


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _environment(phases: dict, env: dict) -> list:
    import numpy
    import tokenizers
    import torch

    from growlm import __version__

    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    timing = ", ".join(f"{k} {v / 60:.1f} min" for k, v in phases.items())
    total = sum(phases.values()) / 60
    return [Heading("Environment"), Bullets([
        f"Date: started {env['started']}, report written {time.strftime('%Y-%m-%d %H:%M:%S %Z')}.",
        f"Hardware: {_cpu_name()}, {os.cpu_count()} logical CPUs, torch threads "
        f"{torch.get_num_threads()}; GPU: {device}.",
        f"Load average (1/5/15 min) at start {tuple(round(x, 1) for x in env['load_start'])}, at "
        f"end {tuple(round(x, 1) for x in env['load_end'])} — the machine was shared with other "
        f"jobs, so wall times and tokens/s are lower bounds of what it can do.",
        f"Versions: Python {platform.python_version()}, torch {torch.__version__}, numpy "
        f"{numpy.__version__}, tokenizers {tokenizers.__version__}, growlm {__version__}.",
        f"Wall time by phase (all sessions of the command): {timing}; total {total:.1f} min.",
    ])]


def write_results(outcomes: list[dict], scale: M.Scale, work: Path, shards: Path, results: Path,
                  target: int, phases: dict, env: dict, data_dir: Path) -> Path:
    runs = {}
    for o in outcomes:
        if o["best_dir"]:
            run = load_run(o["best_dir"])
            run.name = o["method"]
            runs[o["method"]] = run
    base = runs["standard"]
    loaded, _ = cmp.load_runs(list(runs.values()), base)
    rows = {r.name: r for r in cmp.summarize(loaded, base)}
    claims = check_claims({o["method"]: o for o in outcomes}, runs, rows, scale)
    unfinished = sorted({o["method"] for o in outcomes for sw in o["sweeps"]
                         for v in sw["variants"] if v.get("status") not in ("complete", "failed")})
    caveat = (f" **Not every LR sweep finished** ({', '.join(unfinished)}): those methods are "
              "represented by their best finished variant." if unfinished else "")
    claim_blocks = [Heading("The seeds' claims at this scale"),
                    Paragraph("Each verdict comes from the numbers in this report; a claim that "
                              "does not hold at this tiny scale is a result too." + caveat),
                    Bullets([f"({k}) {text}: {_verdict(ok)} — {detail}." for k, text, ok, detail in claims])]
    path = write_report(list(runs.values()), base, results, neighbours=min(100, scale.vocab - 1),
                        title=f"growlm reproduction of the seed papers ({scale.name} scale)",
                        preface=claim_blocks,
                        extra=operator_table(rows) + _setup_blocks(scale, shards, target, outcomes)
                        + _environment(phases, env))
    summary = {"scale": scale.name, "target_flops": target, "claims": [
        {"claim": k, "text": t, "held": ok, "detail": d} for k, t, ok, d in claims],
        "runs": {n: {k: getattr(r, k) for k in ("final_val_loss", "flops", "flops_to_target", "saving",
                                                 "peak_measured", "peak_estimated", "wall_time")}
                 for n, r in rows.items()},
        "outcomes": [_portable(o, work) for o in outcomes], "phases_s": phases, "env": env}
    (results / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    return path
