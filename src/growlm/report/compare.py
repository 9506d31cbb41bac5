"""Equal-compute comparison of runs against a baseline: the numbers behind `growlm compare`.

**FLOPs to reach the baseline's loss** (the papers' Table 2 metric): walk the validation curve
of a run's final model (loss at each evaluation of the stages that train the final shape,
against cumulative training FLOPs, every stage included, so a staged run is charged for its
small first stage) and find the first point at or below the baseline's final validation loss.
A smaller model of an earlier stage that reaches that loss does not count: the run's product is
its final model. Between the evaluation before and the one at the crossing the loss is
interpolated linearly in log(FLOPs) by default ("log"), or linearly in FLOPs ("linear"). A run
whose first final-model evaluation is already at or below the target gets that evaluation's
FLOPs as an upper bound ("≤"); a run that never gets there has no value. The saving is
``1 − F_run / F_baseline``, where F_baseline is the baseline's FLOPs at its final evaluation.

Runs are compared only when they used the same tokenizer and the same training and validation
data; anything else is refused, because their losses are not on the same scale.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from growlm.errors import GrowlmError
from growlm.report.runs import MEMORY_KEYS, Run, load_run, unique_names

INTERP = ("log", "linear")
FLOPS_KEYS = {"exact": "flops", "6nd": "flops_6nd"}


def flops_to_target(xs: Sequence[float], losses: Sequence[float], target: float,
                    interp: str = "log") -> tuple[float | None, bool]:
    """(FLOPs at which the curve first reaches `target`, whether that is only an upper bound).

    `xs` must be increasing. (None, False) when the curve never reaches the target."""
    if interp not in INTERP:
        raise GrowlmError(f"unknown interpolation {interp!r}; allowed: {', '.join(INTERP)}")
    for i, (x, loss) in enumerate(zip(xs, losses)):
        if loss > target:
            continue
        if i == 0:
            return float(x), True
        x0, l0 = float(xs[i - 1]), float(losses[i - 1])
        frac = (l0 - target) / (l0 - float(loss))  # l0 > target ≥ loss, so 0 < frac ≤ 1
        if interp == "log" and x0 > 0:
            return math.exp(math.log(x0) + frac * (math.log(x) - math.log(x0))), False
        return x0 + frac * (float(x) - x0), False
    return None, False


@dataclass
class Row:
    name: str
    status: str
    n_stages: int
    final_val_loss: float | None
    delta_loss: float | None
    tokens: float
    flops: float
    flops_6nd: float
    flops_to_target: float | None
    to_target_bound: bool
    saving: float | None
    memory: dict  # the run's largest figure of each MEMORY_KEYS over its stages (None: unknown)
    memory_reduction: dict  # per MEMORY_KEYS: 1 − run / baseline (None: either unknown)
    wall_time: float
    is_baseline: bool

    @property
    def tokens_per_s(self) -> float | None:
        return self.tokens / self.wall_time if self.wall_time > 0 else None

    # The names from before the four memory figures, kept for callers that read them.
    @property
    def peak_estimated(self) -> int:
        """The model-state estimate by formula (in the run's precision; runs from before the
        stage records named one: the papers' 16/2 bytes), 0 when unknown."""
        return self.memory.get("model_state_estimated_bytes") or 0

    @property
    def peak_measured(self) -> int:
        """The measured peak of live bytes (activations included) where recorded, else the
        measured model-state bytes."""
        return self.memory.get(self._measured_key) or 0

    @property
    def mem_reduction_estimated(self) -> float | None:
        return self.memory_reduction.get("model_state_estimated_bytes")

    @property
    def mem_reduction_measured(self) -> float | None:
        return self.memory_reduction.get(self._measured_key)

    @property
    def _measured_key(self) -> str:
        return "peak_measured_bytes" if self.memory.get("peak_measured_bytes") else "model_state_bytes"


def check_comparable(runs: Sequence[Run]) -> list[str]:
    """Refuse runs on different tokenizers or data; return warnings for what cannot be checked."""
    warnings = []
    known_tok = [r for r in runs if r.tokenizer_sha]
    if len({r.tokenizer_sha for r in known_tok}) > 1:
        a = known_tok[0]
        b = next(r for r in known_tok if r.tokenizer_sha != a.tokenizer_sha)
        raise GrowlmError(
            f"runs use different tokenizers: {a.name} ({a.tokenizer_sha[:12]}) vs {b.name} "
            f"({b.tokenizer_sha[:12]}); their losses are not comparable — compare only runs "
            "trained on shards prepared with the same tokenizer")
    known_data = [r for r in runs if r.data_id]
    if len({r.data_id for r in known_data}) > 1:
        a = known_data[0]
        b = next(r for r in known_data if r.data_id != a.data_id)
        what = "validation" if a.data_id.split("|")[0] == b.data_id.split("|")[0] else "training"
        raise GrowlmError(
            f"runs were trained or evaluated on different data: {a.name} and {b.name} have "
            f"different {what} shards; compare only runs with the same data.train and data.val")
    for r in runs:
        if not r.tokenizer_sha:
            warnings.append(f"{r.name}: tokenizer unknown (shards and checkpoints not found); not checked")
        elif not r.data_id:
            warnings.append(f"{r.name}: data shards not found; same data not checked")
    return warnings


def _reduction(value: float | None, base: float | None) -> float | None:
    return 1 - value / base if value and base else None


def summarize(runs: Sequence[Run], baseline: Run, interp: str = "log",
              flops: str = "exact") -> list[Row]:
    """One row per run (the baseline first), measured against the baseline's final val loss."""
    if flops not in FLOPS_KEYS:
        raise GrowlmError(f"unknown FLOPs count {flops!r}; allowed: {', '.join(FLOPS_KEYS)}")
    key = FLOPS_KEYS[flops]
    target = baseline.final_val_loss
    base_x, _ = baseline.curve(key)
    base_flops = base_x[-1] if base_x else None
    base_memory = baseline.peak_memory()
    rows = []
    for run in [baseline, *[r for r in runs if r is not baseline]]:
        xs, ys = run.curve(key, final_model=True)
        ftt, bound = flops_to_target(xs, ys, target, interp) if target is not None else (None, False)
        if run is baseline and base_flops is not None:
            ftt, bound = base_flops, False  # by definition: its whole budget
        memory = run.peak_memory()
        loss = run.final_val_loss
        rows.append(Row(
            name=run.name, status=run.status, n_stages=run.n_stages, final_val_loss=loss,
            delta_loss=None if loss is None or target is None else loss - target,
            tokens=run.total("tokens"), flops=run.total("flops"), flops_6nd=run.total("flops_6nd"),
            flops_to_target=ftt, to_target_bound=bound,
            saving=_reduction(ftt, base_flops) if ftt is not None else None,
            memory=memory,
            memory_reduction={k: _reduction(memory[k], base_memory[k]) for k in MEMORY_KEYS},
            wall_time=run.wall_time, is_baseline=run is baseline))
    return rows


def load_runs(paths: Sequence[str | Path | Run], baseline: str | Path | Run) -> tuple[list[Run], Run]:
    """Load run dirs (Run objects pass through); the baseline is included once, first."""
    base = _with_steps(baseline if isinstance(baseline, Run) else load_run(baseline))
    runs = [base]
    for p in paths:
        run = _with_steps(p if isinstance(p, Run) else load_run(p))
        if run is base or run.path.resolve() == base.path.resolve():
            continue
        if any(run.path.resolve() == r.path.resolve() for r in runs):
            continue
        runs.append(run)
    unique_names(runs)
    return runs, base


def _with_steps(run: Run) -> Run:
    """A run to compare must have logged training steps; an empty or unreadable metrics.jsonl
    would otherwise give a report with nothing measured in it."""
    if not run.steps:
        why = f" ({run.problems[0]})" if run.problems else ""
        raise GrowlmError(f"{run.path}: metrics.jsonl holds no training steps{why}; nothing to compare")
    return run


# ---------------------------------------------------------------- eval tables

ZERO_SHOT = ("lambada", "hellaswag", "piqa", "arc_easy", "arc_challenge", "openbookqa", "winogrande")


def eval_columns(runs: Sequence[Run]) -> list[tuple[str, str]]:
    """(column title, lookup key) for every evaluation present in at least one run."""
    present: set[str] = set()
    for r in runs:
        present |= set((r.eval_results or {}).keys())
    cols = []
    if "ppl" in present:
        cols.append(("val ppl", "ppl/perplexity"))
    if "wikitext" in present:
        cols.append(("WikiText-2 word ppl", "wikitext/word_perplexity"))
    cols += [(t, f"{t}/score") for t in ZERO_SHOT if t in present]
    if "average" in present:
        cols.append(("zero-shot avg", "average/score"))
    if "wordsim" in present:
        cols += [("wordsim emb", "wordsim:embedding"), ("wordsim head", "wordsim:head")]
    return cols


def eval_value(run: Run, key: str) -> float | None:
    res = run.eval_results or {}
    if key.startswith("wordsim:"):
        from growlm.eval.wordsim import summary_score

        ws = res.get("wordsim")
        return summary_score(ws, key.split(":")[1]) if ws else None
    task, metric = key.split("/")
    value = (res.get(task) or {}).get(metric)
    return float(value) if isinstance(value, (int, float)) else None


def wordsim_rows(runs: Sequence[Run]) -> tuple[list[str], list[list]]:
    """Datasets and, per run, (name, [(embedding rho, head rho, pairs measured) per dataset]).

    Pairs measured: the dataset's pairs whose two words are single tokens of the run's
    vocabulary, the sample a rho stands on (None when the result does not say)."""
    datasets: list[str] = []
    for r in runs:
        for ds in ((r.eval_results or {}).get("wordsim") or {}):
            if ds not in datasets:
                datasets.append(ds)
    rows = []
    for r in runs:
        ws = (r.eval_results or {}).get("wordsim")
        if ws:
            rows.append([r.name, [(ws.get(d, {}).get("embedding"), ws.get(d, {}).get("head"),
                                   ws.get(d, {}).get("kept")) for d in datasets]])
    return datasets, rows
