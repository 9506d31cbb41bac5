"""Load a training run for reports: its metrics, recipe, status, evaluations and data identity.

A run directory (written by `growlm train`) holds metrics.jsonl (step / eval / stage records),
run.json ({"fingerprint", "config"}) and checkpoints/. Optional evaluation results live beside
them in eval.json, the file `growlm eval RUN --json RUN/eval.json` writes (else the last
benchmarks a recipe's [eval] section scored during training).

A run is *complete* when every stage of its recipe has logged its "end" record, otherwise
*in progress* (still training, or stopped and resumable). Which data it saw is identified by
the prepared shards' meta.json (tokenizer sha256 and the shards' fingerprint), read from the
recipe's data paths; when those folders moved, the checkpoint's copy of tokenizer.json still
identifies the tokenizer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from growlm.errors import GrowlmError

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

    # ---------------------------------------------------------------- status
    @property
    def finished_stages(self) -> set[int]:
        return {r["stage"] for r in self.stage_records if r.get("event") == "end"}

    @property
    def complete(self) -> bool:
        return self.finished_stages >= set(range(1, self.n_stages + 1))  # stages count from 1

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
        """The last cumulative value of a step field ("flops", "flops_seed", "tokens", "time")."""
        return float(self.steps[-1].get(key) or 0) if self.steps else 0.0

    @property
    def wall_time(self) -> float:
        return self.total("time")

    def curve(self, x: str = "flops", final_model: bool = False) -> tuple[list[float], list[float]]:
        """(x, validation loss) at every evaluation; x is "flops", "flops_seed" or "tokens".

        `final_model`: only the evaluations of stages that train the final shape."""
        stages = self.final_model_stages() if final_model else None
        pts = [(float(r.get(x) or 0), float(r["val_loss"])) for r in self.evals
               if x in r and (stages is None or r.get("stage", 0) in stages)]
        return [p[0] for p in pts], [p[1] for p in pts]

    def final_model_stages(self) -> set[int] | None:
        """The stages whose model is the last stage's (empty while the last stage has not
        started); None when the stage records carry no model, so every stage counts."""
        models = {r["stage"]: r["model"] for r in self.stage_records if r.get("model")}
        if not models:
            return None
        final = models.get(self.n_stages - 1)
        return {s for s, m in models.items() if m == final} if final is not None else set()

    def stage_starts(self, x: str = "flops") -> list[tuple[float, str]]:
        """Where each stage after the first began, on axis x, with the stage's name."""
        out = []
        for stage in range(1, self.n_stages):
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
            out.append((value, first.get("stage_name") or f"stage{stage + 1}"))
        return out

    def stages(self) -> list[dict]:
        """Per stage: name, params, FLOPs per token, memory (estimated and measured peak), steps.

        The newest record of each stage wins (the "end" record has the measured peak)."""
        by_stage: dict[int, dict] = {}
        for r in self.stage_records:
            by_stage[r["stage"]] = {**by_stage.get(r["stage"], {}), **r}
        peaks: dict[int, int] = {}
        for r in self.steps:
            s = r.get("stage", 0)
            peaks[s] = max(peaks.get(s, 0), int(r.get("mem_bytes") or 0))
        out = []
        for s in sorted(set(by_stage) | set(peaks)):
            rec = by_stage.get(s, {})
            mem = rec.get("memory") or {}
            measured = max(int(mem.get("measured_peak_bytes") or 0), peaks.get(s, 0))
            out.append({"stage": s, "name": rec.get("name") or f"stage{s + 1}",
                        "params": rec.get("params") or {}, "flops_per_token": rec.get("flops_per_token") or {},
                        "estimated_bytes": int(mem.get("estimated_bytes") or 0),
                        "measured_bytes": measured, "steps": rec.get("steps"),
                        "n_layers": (rec.get("model") or {}).get("n_layers"),
                        "done": s in self.finished_stages})
        return out

    def peak_memory(self) -> tuple[int, int]:
        """(measured, estimated) peak bytes over all stages; 0 where unknown."""
        stages = self.stages()
        return (max((s["measured_bytes"] for s in stages), default=0),
                max((s["estimated_bytes"] for s in stages), default=0))


# ---------------------------------------------------------------- loading

def read_jsonl(path: Path) -> list[dict]:
    """Every complete JSON object line; a torn last line (a run killed mid-write) is skipped."""
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(rec, dict):
            out.append(rec)
    return out


def _read_json(path: Path, what: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GrowlmError(f"{path}: unreadable {what} ({type(e).__name__})") from None
    if not isinstance(data, dict):
        raise GrowlmError(f"{path}: {what} should be a JSON object")
    return data


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
        return _read_json(found / "meta.json", "shards metadata")
    except GrowlmError:
        return None


def _checkpoint_tokenizer_sha(run_dir: Path) -> str | None:
    """sha256 of the tokenizer.json copy in the newest checkpoint (its meta lists each file)."""
    root = run_dir / "checkpoints"
    if not root.is_dir():
        return None
    for ckpt in sorted(root.glob("step_*"), reverse=True):
        meta_path = ckpt / "meta.json"
        if meta_path.is_file():
            try:
                meta = json.loads(meta_path.read_text())
            except (OSError, json.JSONDecodeError):
                continue
            info = (meta.get("files") or {}).get("tokenizer.json")
            if info:
                return info.get("sha256")
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
    data = _read_json(path, "evaluation results")
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
    config = (_read_json(run_file, "run file").get("config") or {}) if run_file.is_file() else {}
    records = read_jsonl(metrics) if metrics.is_file() else []
    steps = [r for r in records if r.get("kind") == "step"]
    evals = [r for r in records if r.get("kind") == "eval" and isinstance(r.get("val_loss"), (int, float))]
    stage_records = [r for r in records if r.get("kind") == "stage" and isinstance(r.get("stage"), int)]
    n_stages = len(config.get("stage") or []) or 1
    if not config:  # no recipe: assume the stages seen so far are all there are
        n_stages = max([r.get("stage", 0) for r in steps + stage_records], default=0) + 1
    name = (config.get("run") or {}).get("name") or run_dir.name
    tok_sha, data_id = _identity(config, run_dir)
    tasks = [r for r in records if r.get("kind") == "tasks"]
    return Run(path=run_dir, name=name, config=config, steps=steps, evals=evals, tasks=tasks,
               stage_records=stage_records, n_stages=n_stages,
               eval_results=_eval_results(run_dir) or _scheduled_results(records),
               tokenizer_sha=tok_sha, data_id=data_id)


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
