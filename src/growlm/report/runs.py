"""Load a training run for reports: its metrics, recipe, status, evaluations and data identity.

A run directory (written by `growlm train`) holds metrics.jsonl (step / eval / tasks / stage /
rollback records, docs/metrics.md), run.json ({"fingerprint", "config"}) and checkpoints/.
Stages are numbered from 1 here as in metrics.jsonl; an older file that counted from 0 is
renumbered on reading (`one_based_stages`). Optional evaluation results live beside
them in eval.json, the file `growlm eval RUN --json RUN/eval.json` writes (else the last
benchmarks a recipe's [eval] section scored during training).

A run is *complete* when every stage of its recipe has logged its "end" record, otherwise
*in progress* (still training, or stopped and resumable). Which data it saw is identified by
the prepared shards' meta.json (tokenizer sha256 and the shards' fingerprint), read from the
recipe's data paths; when those folders moved, the checkpoint's copy of tokenizer.json still
identifies the tokenizer.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from growlm.errors import GrowlmError
from growlm.files import read_json
from growlm.train.metrics import read_metrics

METRICS_FILE = "metrics.jsonl"
RUN_FILE = "run.json"
EVAL_FILE = "eval.json"


@dataclass
class Run:
    path: Path
    name: str
    config: dict
    steps: list[dict] = field(default_factory=list)
    evals: list[dict] = field(default_factory=list)
    tasks: list[dict] = field(default_factory=list)  # benchmarks scored during training
    stage_records: list[dict] = field(default_factory=list)
    n_stages: int = 1
    eval_results: dict | None = None
    tokenizer_sha: str | None = None
    data_id: str | None = None  # "<train shards fingerprint>|<validation source>"
    problems: list[str] = field(default_factory=list)  # unreadable lines of metrics.jsonl

    # ---------------------------------------------------------------- status
    @property
    def finished_stages(self) -> set[int]:
        return {r["stage"] for r in self.stage_records if r.get("event") == "end"}

    @property
    def complete(self) -> bool:
        return self.finished_stages >= set(range(1, self.n_stages + 1))

    @property
    def status(self) -> str:
        if self.complete:
            return "complete"
        if not self.steps:
            return "not started"
        last = self.steps[-1]
        return f"in progress (stage {last.get('stage', 1)}/{self.n_stages}, step {last.get('step')})"

    # ---------------------------------------------------------------- numbers
    @property
    def final_val_loss(self) -> float | None:
        return self.evals[-1]["val_loss"] if self.evals else None

    def total(self, key: str) -> float:
        """The last cumulative value of a step field ("flops", "flops_6nd", "tokens", "time")."""
        return float(self.steps[-1].get(key) or 0) if self.steps else 0.0

    @property
    def wall_time(self) -> float:
        return self.total("time")

    def curve(self, x: str = "flops", final_model: bool = False) -> tuple[list[float], list[float]]:
        """(x, validation loss) at every evaluation; x is "flops", "flops_6nd" or "tokens".

        `final_model`: only the evaluations of stages that train the final shape."""
        stages = self.final_model_stages() if final_model else None
        pts = [(float(r.get(x) or 0), float(r["val_loss"])) for r in self.evals
               if x in r and (stages is None or r.get("stage", 1) in stages)]
        return [p[0] for p in pts], [p[1] for p in pts]

    def final_model_stages(self) -> set[int] | None:
        """The stages whose model is the last stage's (empty while the last stage has not
        started); None when the stage records carry no model, so every stage counts."""
        models = {r["stage"]: r["model"] for r in self.stage_records if r.get("model")}
        if not models:
            return None
        final = models.get(self.n_stages)
        return {s for s, m in models.items() if m == final} if final is not None else set()

    def stage_starts(self, x: str = "flops") -> list[tuple[float, str]]:
        """Where each stage after the first began, on axis x, with the stage's name."""
        out = []
        for stage in range(2, self.n_stages + 1):
            first = next((r for r in self.steps if r.get("stage") == stage), None)
            if first is None:
                continue
            start = next((r for r in self.stage_records if r.get("stage") == stage
                          and r.get("event") == "start" and x in r), None)
            if start is not None:
                value = float(start[x])
            else:  # a stage record without counters: the step before the stage's first step
                before = [r for r in self.steps if r.get("step", 0) < first.get("step", 0)]
                value = float(before[-1].get(x) or 0) if before else 0.0
            out.append((value, first.get("stage_name") or f"stage{stage}"))
        return out

    def stages(self) -> list[dict]:
        """Per stage (numbered from 1): name, params, FLOPs per token, memory, steps, layers.

        `memory` holds the four figures of docs/metrics.md (see `stage_memory`); the newest
        record of each stage wins (the "end" record has the measured ones)."""
        by_stage: dict[int, dict] = {}
        for r in self.stage_records:
            by_stage[r["stage"]] = {**by_stage.get(r["stage"], {}), **r}
        legacy_steps: dict[int, int] = {}  # an old run's per-step figure, for unfinished stages
        for r in self.steps:
            if self.legacy_memory and r.get("mem_bytes"):
                s = r.get("stage", 1)
                legacy_steps[s] = max(legacy_steps.get(s, 0), int(r["mem_bytes"]))
        out = []
        for s in sorted(set(by_stage) | {r.get("stage", 1) for r in self.steps}):
            rec = by_stage.get(s, {})
            mem = dict(rec.get("memory") or {})
            if legacy_steps.get(s, 0) > int(mem.get("measured_peak_bytes") or 0):
                mem["measured_peak_bytes"] = legacy_steps[s]
            out.append({"stage": s, "name": rec.get("name") or f"stage{s}",
                        "params": rec.get("params") or {}, "flops_per_token": rec.get("flops_per_token") or {},
                        "memory": stage_memory(mem, self.legacy_device), "steps": rec.get("steps"),
                        "n_layers": (rec.get("model") or {}).get("n_layers"),
                        "done": s in self.finished_stages})
        return out

    def peak_memory(self) -> dict[str, int | None]:
        """The largest of each memory figure over the stages (None where no stage has it), and
        "peak_measured_by" of the stage with the largest measured peak."""
        stages = [s["memory"] for s in self.stages()]
        out: dict = {k: max((m[k] for m in stages if m[k] is not None), default=None) for k in MEMORY_KEYS}
        peak = max((m for m in stages if m["peak_measured_bytes"] is not None),
                   key=lambda m: m["peak_measured_bytes"], default=None)
        out["peak_measured_by"] = peak["peak_measured_by"] if peak else None
        return out

    @property
    def legacy_memory(self) -> bool:
        """Whether the stage records use the memory names from before docs/metrics.md's."""
        return any(isinstance(r.get("memory"), dict) and "measured_peak_bytes" in r["memory"]
                   for r in self.stage_records)

    @property
    def legacy_device(self) -> str:
        """Where an old run trained, which decides what its "measured_peak_bytes" meant: the
        recipe's run.device, or for "auto" "cuda" when its steps logged an MFU (growlm only
        computes one on a GPU) and else "cpu"."""
        device = (self.config.get("run") or {}).get("device", "auto")
        if device in ("cpu", "cuda"):
            return device
        return "cuda" if any(r.get("mfu") is not None for r in self.steps) else "cpu"


MEMORY_KEYS = ("model_state_estimated_bytes", "model_state_bytes", "peak_estimated_bytes",
               "peak_measured_bytes")


def _bytes(value) -> int | None:
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0 else None


def stage_memory(memory: dict, legacy_device: str = "cpu") -> dict:
    """A stage record's memory figures under their own names, None where not recorded:
    model_state_estimated_bytes (formula), model_state_bytes (measured live weights, gradients
    and optimizer state), peak_estimated_bytes (the planner's step peak), estimate_precision
    (what the two estimates assume; None for records from before it was logged),
    peak_measured_bytes (the measured peak of live bytes, activations included) and peak_measured_by.

    Records written before these names had "estimated_bytes" (the model-state formula) and
    "measured_peak_bytes", which on CPU counted the live model-state bytes and on CUDA was
    torch.cuda.max_memory_allocated; `legacy_device` says which of the two it was."""
    out: dict = {k: _bytes(memory.get(k)) for k in MEMORY_KEYS}
    out["peak_measured_by"] = memory.get("peak_measured_by") if out["peak_measured_bytes"] else None
    # the estimates' precision; without one they are the papers' bf16 figures, which a
    # measurement is not compared with
    out["estimate_precision"] = memory.get("estimate_precision")
    if out["model_state_estimated_bytes"] is None:
        out["model_state_estimated_bytes"] = _bytes(memory.get("estimated_bytes"))
    old = _bytes(memory.get("measured_peak_bytes"))
    if old is not None and legacy_device == "cuda" and out["peak_measured_bytes"] is None:
        out["peak_measured_bytes"], out["peak_measured_by"] = old, "cuda max_memory_allocated"
    elif old is not None and legacy_device != "cuda" and out["model_state_bytes"] is None:
        out["model_state_bytes"] = old
    return out


def one_based_stages(records: list[dict]) -> list[dict]:
    """The records in today's schema: stages numbered from 1, and the 6·N·D FLOP count under
    `flops_6nd`. A file written before numbered its first stage 0 (a record with stage 0 marks
    it, and every stage number in it is shifted by one) and called that count `flops_seed`."""
    records = [{**{k: v for k, v in r.items() if k != "flops_seed"}, "flops_6nd": r["flops_seed"]}
               if "flops_seed" in r and "flops_6nd" not in r else r for r in records]
    if not any(r.get("stage") == 0 and not isinstance(r.get("stage"), bool) for r in records):
        return records
    return [{**r, "stage": r["stage"] + 1} if _is_int(r.get("stage")) else r for r in records]


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# ---------------------------------------------------------------- loading

def _find_dir(given: str, run_dir: Path) -> Path | None:
    """A data path from a recipe: as written (relative to where training ran), else relative to
    the run directory's ancestors (the usual layout keeps shards beside runs/)."""
    p = Path(given)
    candidates = [p] if p.is_absolute() else [p, *(a / p for a in run_dir.resolve().parents[:4])]
    return next((c for c in candidates if (c / "meta.json").is_file()), None)


def _shards_meta(given: str | None, run_dir: Path) -> dict | None:
    if not given:
        return None
    found = _find_dir(given, run_dir)
    if found is None:
        return None
    try:
        return read_json(found / "meta.json", "shards metadata")
    except GrowlmError:
        return None


def _checkpoint_tokenizer_sha(run_dir: Path) -> str | None:
    """sha256 of the tokenizer.json copy in the newest checkpoint (its meta lists each file)."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return None
    def number(p: Path) -> int:  # step_10 is newer than step_9
        tail = p.name.removeprefix("step_")
        return int(tail) if tail.isdigit() else -1

    for ckpt in sorted(root.glob("step_*"), key=number, reverse=True):
        try:
            meta = read_json(ckpt / "meta.json", "checkpoint metadata")
        except GrowlmError:
            continue  # damaged or incomplete: an older checkpoint may still say
        info = (meta.get("files") or {}).get("tokenizer.json")
        if isinstance(info, dict) and info.get("sha256"):
            return info["sha256"]
    return None


def _identity(config: dict, run_dir: Path) -> tuple[str | None, str | None]:
    data = config.get("data") or {}
    train = _shards_meta(data.get("train"), run_dir)
    tok_sha = ((train or {}).get("tokenizer") or {}).get("sha256") or _checkpoint_tokenizer_sha(run_dir)
    if train is None or not train.get("fingerprint"):
        return tok_sha, None
    if data.get("val"):
        val = _shards_meta(data["val"], run_dir)
        if val is None or not val.get("fingerprint"):
            return tok_sha, None
        val_id = f"val:{val['fingerprint']}"
    else:
        val_id = "val:train-shards"
    return tok_sha, f"{train['fingerprint']}|{val_id}"


def _eval_results(run_dir: Path) -> dict | None:
    path = run_dir / EVAL_FILE
    if not path.is_file():
        return None
    data = read_json(path, "evaluation results")
    results = data.get("results", data)
    return results if isinstance(results, dict) else None


def _scheduled_results(records: list[dict]) -> dict | None:
    """The last benchmarks scored during training (a recipe's [eval] section), nested back
    into eval.json's shape: "hellaswag/acc_norm" → {"hellaswag": {"acc_norm": ...}}."""
    last = next((r for r in reversed(records) if r.get("kind") == "tasks"), None)
    if last is None:
        return None
    nested: dict = {}
    for key, value in last.items():
        if "/" not in key:
            continue
        *path, leaf = key.split("/")
        node = nested
        for part in path:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested or None


def load_run(path: str | Path) -> Run:
    """Read a run directory. GrowlmError when it is not one."""
    run_dir = Path(path)
    metrics = run_dir / METRICS_FILE
    run_file = run_dir / RUN_FILE
    if not run_dir.is_dir():
        raise GrowlmError(f"run directory not found: {run_dir}")
    if not metrics.is_file() and not run_file.is_file():
        raise GrowlmError(f"{run_dir}: not a growlm run (no {METRICS_FILE} or {RUN_FILE}); "
                          "pass directories written by growlm train")
    config = (read_json(run_file, "run file").get("config") or {}) if run_file.is_file() else {}
    if not isinstance(config, dict):
        raise GrowlmError(f"{run_file}: \"config\" must be a JSON object")
    problems: list[str] = []
    records = one_based_stages(read_metrics(metrics, problems))
    steps = [r for r in records if r.get("kind") == "step"]
    evals = [r for r in records if r.get("kind") == "eval" and _finite(r.get("val_loss"))]
    stage_records = [r for r in records if r.get("kind") == "stage" and _is_int(r.get("stage"))]
    n_stages = len(config.get("stage") or []) or 1
    if not config:  # no recipe: assume the stages seen so far are all there are
        n_stages = max([r.get("stage", 1) for r in steps + stage_records], default=1)
    name = (config.get("run") or {}).get("name") or run_dir.name
    tok_sha, data_id = _identity(config, run_dir)
    tasks = [r for r in records if r.get("kind") == "tasks"]
    return Run(path=run_dir, name=name, config=config, steps=steps, evals=evals, tasks=tasks,
               stage_records=stage_records, n_stages=n_stages,
               eval_results=_eval_results(run_dir) or _scheduled_results(records),
               tokenizer_sha=tok_sha, data_id=data_id, problems=problems)


def _finite(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def unique_names(runs: list[Run]) -> None:
    """Give runs distinct display names: the recipe's run.name, else the directory name."""
    names = [r.name for r in runs]
    for r in runs:
        if names.count(r.name) > 1:
            r.name = r.path.name
    seen: dict[str, int] = {}
    for r in runs:
        n = seen.get(r.name, 0)
        seen[r.name] = n + 1
        if n:
            r.name = f"{r.name}#{n + 1}"
