"""metrics.jsonl, the record of a run that reports are made from, and the optional TensorBoard
and Weights & Biases sinks that mirror it. Every record kind and field: docs/metrics.md.

metrics.jsonl is written one JSON object a line (standard JSON: a non-finite number is
written as null), flushed after each record, so a kill loses at most a torn last line, which
every reader skips. On resume the trainer drops the records written after the checkpoint it
resumes from (`MetricsWriter.truncate`); they are logged again as the steps are redone.

The sinks are optional imports (`pip install 'growlm[tracking]'`); asking for one that is not
installed, or a wandb run that cannot start, is refused before the first step.
"""

from __future__ import annotations

import json
import math
import os
import warnings
from pathlib import Path

from growlm.errors import GrowlmError
from growlm.files import (
    atomic_write_json,
    atomic_write_text,
    read_json,
    to_json_safe,
    write_failure,
)

TRACKING_FILE = "tracking.json"  # beside metrics.jsonl: the wandb run id, so a resume continues it
TENSORBOARD_DIR = "tensorboard"
# TensorBoard plots against an integer step only, so each x-axis gets its own event folder
# (a TensorBoard "run"), tag suffix and step value. FLOPs are logged in GFLOPs: a paper-scale
# FLOP count (1e20 and more) overflows TensorBoard's int64 step.
TB_AXES = {"steps": ("", "step", 1), "tokens": ("_vs_tokens", "tokens", 1),
           "gflops": ("_vs_gflops", "flops", 10**9)}
# What each record kind contributes as curves: (record field, tag). Counters such as tokens or
# the stage number are axes or labels, not curves, and are not logged as scalars.
CURVES = {"step": (("loss", "train/loss"), ("lr", "train/lr"), ("grad_norm", "train/grad_norm"),
                   ("tokens_per_s", "train/tokens_per_s"), ("mfu", "train/mfu")),
          "eval": (("val_loss", "val/loss"),)}
X_AXES = ("step", "tokens", "flops", "flops_6nd")
# Counts in a benchmark's results (examples, tokens scored, word-similarity pairs kept) are
# constant from one evaluation to the next: not curves.
TASK_COUNTS = ("n", "tokens", "documents", "words", "bytes", "windows", "kept", "total", "coverage")
# The curves also drawn against tokens and FLOPs (the others only against steps).
ALT_AXIS_CURVES = ("train/loss", "val/loss", "tasks/")
WANDB_DEFAULTS = {"wandb_project": "growlm", "wandb_entity": None, "wandb_name": None,
                  "wandb_group": None, "wandb_tags": (), "wandb_notes": None}


# ---------------------------------------------------------------- reading

def read_metrics(path: Path, problems: list[str] | None = None) -> list[dict]:
    """The records of a metrics.jsonl in file order; [] when the file does not exist.

    A torn last line (a run killed mid-write) is skipped silently. Any other line that is not
    UTF-8 or not a JSON object is skipped too, and described in one line naming the file and
    the line numbers: appended to `problems` when given, else issued as a warning. GrowlmError
    when the file exists but cannot be read."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return []
    except OSError as e:
        raise GrowlmError(f"{path}: cannot read metrics ({os.strerror(e.errno or 0)})") from None
    lines = data.split(b"\n")
    torn = len(lines) if not data.endswith(b"\n") else None  # the last line lacks its newline
    records, bad = [], []
    for number, raw in enumerate(lines, 1):
        if not raw.strip():
            continue
        try:
            rec = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError):
            rec = None
        if isinstance(rec, dict):
            records.append(rec)
        elif number != torn:
            bad.append(number)
    if bad:
        where = ", ".join(map(str, bad[:5])) + (", …" if len(bad) > 5 else "")
        plural = "s" if len(bad) > 1 else ""
        note = (f"{path}: skipped {len(bad)} unreadable line{plural} (line{plural} {where}): "
                "not a UTF-8 JSON object")
        if problems is None:
            warnings.warn(note, stacklevel=2)
        else:
            problems.append(note)
    return records


def _write_records(path: Path, records: list[dict]) -> None:
    atomic_write_text(path, "".join(_line(r) for r in records))


def _line(record: dict) -> str:
    """One standard-JSON line. A non-finite number becomes null, and the record says what it
    was in "nonfinite" ({"loss": "nan"}), so a NaN step stays distinguishable from a missing
    value."""
    bad = {k: ("nan" if v != v else "inf" if v > 0 else "-inf") for k, v in record.items()
           if isinstance(v, float) and not math.isfinite(v)}
    if bad:
        record = {**record, "nonfinite": {**(record.get("nonfinite") or {}), **bad}}
    return json.dumps(to_json_safe(record), allow_nan=False) + "\n"


# ---------------------------------------------------------------- writing

class MetricsWriter:
    """Appends records to metrics.jsonl and mirrors their curves to TensorBoard and wandb.

    `path`: the run folder's metrics.jsonl; the sinks write beside it (tensorboard/, wandb/,
    tracking.json). `run_name`: wandb's display name unless the recipe sets `run.wandb_name`.
    `config`: the recipe as a dict (`RunConfig.model_dump(mode="json")`); its [run] section
    gives the wandb settings (`wandb_project`, `wandb_entity`, `wandb_name`, `wandb_group`,
    `wandb_tags`, `wandb_notes`) and the whole recipe is sent as the run's hyperparameters
    (wandb config; TensorBoard's HPARAMS tab and a "recipe" text).

    A file that already holds records means a resumed run: the wandb run whose id is in
    tracking.json continues, and TensorBoard is told to hide what was logged after the
    checkpoint. GrowlmError when a sink is asked for but not installed or cannot start; a
    failed write of metrics.jsonl is a WriteError (exit 1)."""

    def __init__(self, path: Path, tensorboard: bool = False, wandb: bool = False, run_name: str = "run",
                 *, config: dict | None = None):
        self.path = Path(path)
        self.run_dir = self.path.parent
        self.config = config or {}
        # what a resumed run logged before (only the sinks need it: a resume continues them)
        existing = read_metrics(self.path) if tensorboard or wandb else []
        self._tb: dict = {}
        self._wandb = None
        self._file = None
        try:  # the sinks first: one that cannot start (no wandb login) leaves no metrics.jsonl
            if tensorboard:
                self._tb = _open_tensorboard(self.run_dir / TENSORBOARD_DIR, existing, self.config)
            if wandb:
                self._wandb = _open_wandb(self.run_dir, existing, self.config, run_name)
            _drop_torn_line(self.path)
            try:
                self._file = open(self.path, "a", encoding="utf-8")
            except OSError as e:
                raise write_failure(e, self.path) or GrowlmError(f"{self.path}: cannot open ({e})") from None
        except BaseException:
            self.close()
            raise

    @staticmethod
    def truncate(path: Path, global_step: int, stage: int | None = None) -> None:
        """Drop the records written after the checkpoint at `global_step` (they are redone).

        Step, eval, tasks and stage-end records at that step were written before its
        checkpoint and stay; a stage-start record at that step is the next stage's, written
        after the checkpoint, and goes (the stage starts again). Rollback records stay: each
        is an event that happened, even when the run then went back past it. The rule needs
        no stage number, so it holds however stages are counted; `stage` is unused."""
        path = Path(path)
        kept = []
        for r in read_metrics(path):
            step = r.get("step", 0)
            redone = r.get("kind") == "stage" and r.get("event") == "start"
            if step < global_step or (step == global_step and not redone) or r.get("kind") == "rollback":
                kept.append(r)
        _write_records(path, kept)

    def log(self, record: dict) -> None:
        """Append one record (standard JSON: NaN and infinities become null) and mirror it."""
        try:
            self._file.write(_line(record))
            self._file.flush()
        except OSError as e:
            raise write_failure(e, self.path) or GrowlmError(f"{self.path}: write failed ({e})") from None
        curves = _curves(record)
        if self._tb:
            _tensorboard_log(self._tb, record, curves)
        if self._wandb is not None and curves:
            self._wandb.log(_wandb_row(record, curves))

    def close(self) -> None:
        if self._file is not None and not self._file.closed:
            self._file.close()
        for writer in self._tb.values():
            writer.close()
        self._tb = {}
        if self._wandb is not None:
            self._wandb.finish()
            self._wandb = None


def _drop_torn_line(path: Path) -> None:
    """Cut a torn last line (no newline: the writer was killed mid-record), so the next record
    starts on a line of its own rather than gluing onto the fragment."""
    if not path.is_file():
        return
    with open(path, "rb") as f:
        end = f.seek(0, os.SEEK_END)
        if end == 0 or (f.seek(end - 1), f.read(1))[1] == b"\n":
            return
        pos = end
        while pos > 0:  # back to the last newline, a block at a time
            start = max(0, pos - 65536)
            f.seek(start)
            cut = f.read(pos - start).rfind(b"\n")
            if cut >= 0:
                break
            pos = start
        keep = start + cut + 1 if pos > 0 else 0
    os.truncate(path, keep)


def _curves(record: dict) -> dict[str, float]:
    """{tag: value} of the record's finite numbers worth a curve (see CURVES)."""
    kind = record.get("kind")
    if kind == "tasks":  # benchmark scores: "hellaswag/acc_norm" → "tasks/hellaswag/acc_norm"
        pairs = [(k, f"tasks/{k}") for k in record if "/" in k and k.rsplit("/", 1)[1] not in TASK_COUNTS]
    elif kind == "stage" and record.get("event") == "end":
        pairs = [(k, f"memory/{k}") for k in (record.get("memory") or {})]
        record = record.get("memory") or {}
    else:
        pairs = CURVES.get(kind, ())
    out = {}
    for key, tag in pairs:
        value = record.get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value \
                and abs(value) != float("inf"):
            out[tag] = float(value)
    return out


# ---------------------------------------------------------------- TensorBoard

def _open_tensorboard(root: Path, existing: list[dict], config: dict) -> dict:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise GrowlmError("run.tensorboard = true but tensorboard is not installed; "
                          "pip install 'growlm[tracking]' or set run.tensorboard = false") from None
    if existing:
        _after_existing_event_files(root)
    writers = {}
    for axis, (_suffix, field, scale) in TB_AXES.items():
        last = max((int(r[field]) // scale for r in existing if isinstance(r.get(field), (int, float))),
                   default=None)
        # on resume, TensorBoard hides what the killed attempt logged after the checkpoint
        writers[axis] = SummaryWriter(str(root / axis), purge_step=None if last is None else last + 1)
    if not existing and config:
        _tensorboard_recipe(writers["steps"], config)
    return writers


def _after_existing_event_files(root: Path) -> None:
    """Wait (at most a second) until the clock passes the newest event file's timestamp.

    TensorBoard reads a folder's event files in name order, and the name starts with the
    creation time in whole seconds, then a per-process counter compared as text (".10" sorts
    before ".9"). The resumed file must come last for its purge to hide the redone steps; a
    rollback reopens the writers within the same process, possibly within the same second."""
    import time

    stamps = [int(p.name.split(".")[3]) for p in root.glob("*/events.out.tfevents.*")
              if len(p.name.split(".")) > 3 and p.name.split(".")[3].isdigit()]
    if stamps and time.time() < max(stamps) + 1:
        time.sleep(max(stamps) + 1 - time.time())


def _tensorboard_recipe(writer, config: dict) -> None:
    from torch.utils.tensorboard.summary import hparams

    text = json.dumps(config, indent=1)
    writer.add_text("recipe", "    " + text.replace("\n", "\n    "), 0)  # indented: a code block
    flat = flatten(config)
    for summary in hparams(flat, {"val/loss": 0.0}):  # declares val/loss as the HPARAMS metric
        writer.file_writer.add_summary(summary)


def flatten(config: dict, prefix: str = "") -> dict:
    """{"optim.lr": 3e-4, "stage.1.name": "small", ...}: a nested recipe as flat settings with
    scalar values (lists of scalars as text), stages numbered from 1 as in recipe errors."""
    out: dict = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            out.update(flatten(value, name + "."))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            for i, item in enumerate(value, 1):
                out.update(flatten(item, f"{name}.{i}."))
        elif value is None or isinstance(value, (list, tuple)):
            out[name] = json.dumps(value)
        else:
            out[name] = value
    return out


def _tensorboard_log(writers: dict, record: dict, curves: dict[str, float]) -> None:
    step = record.get("step")
    if not isinstance(step, int):
        return
    for tag, value in curves.items():
        writers["steps"].add_scalar(tag, value, step)
        if not tag.startswith(ALT_AXIS_CURVES):
            continue
        for axis in ("tokens", "gflops"):
            suffix, field, scale = TB_AXES[axis]
            x = record.get(field)
            if isinstance(x, (int, float)):
                writers[axis].add_scalar(tag + suffix, value, int(x) // scale)
    kind = record.get("kind")
    if kind in ("stage", "rollback"):
        writers["steps"].add_text("events", _event_text(record), step)


def _event_text(record: dict) -> str:
    if record.get("kind") == "rollback":
        return (f"rollback at step {record.get('bad_step')}: back to step {record.get('step')}, "
                f"LR × {record.get('lr_scale')}")
    p = record.get("params") or {}
    return (f"stage {record.get('stage')} '{record.get('name')}' {record.get('event')}: "
            f"params trainable {p.get('trainable')}, frozen {p.get('frozen')}, adapter "
            f"{p.get('adapter')}; optimizer state {record.get('optimizer_state')}")


# ---------------------------------------------------------------- wandb

def wandb_settings(config: dict) -> dict:
    """The recipe's [run] wandb_* settings, with their defaults."""
    run = config.get("run") or {}
    return {k: default if run.get(k) is None else run[k] for k, default in WANDB_DEFAULTS.items()}


def _open_wandb(run_dir: Path, existing: list[dict], config: dict, run_name: str):
    try:
        import wandb
    except ImportError:
        raise GrowlmError("run.wandb = true but wandb is not installed; "
                          "pip install 'growlm[tracking]' or set run.wandb = false") from None
    settings = wandb_settings(config)
    tracking = run_dir / TRACKING_FILE
    previous = (read_json(tracking, "tracking file").get("wandb") or {}) if tracking.is_file() else {}
    # a resumed run (records already there) continues its wandb run; a fresh start makes a new one
    run_id = previous.get("id") if existing else None
    try:
        run = wandb.init(project=settings["wandb_project"], entity=settings["wandb_entity"],
                         name=settings["wandb_name"] or run_name, group=settings["wandb_group"],
                         tags=list(settings["wandb_tags"]), notes=settings["wandb_notes"],
                         config=config, dir=str(run_dir), id=run_id,
                         resume="allow" if run_id else None)
    except Exception as e:  # wandb raises many types (no login, no network, bad entity)
        reason = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise GrowlmError(f"run.wandb: could not start a wandb run ({reason}); run `wandb login`, "
                          "or set WANDB_MODE=offline to log locally and `wandb sync` later") from None
    for axis in X_AXES:
        run.define_metric(axis)
    for group in ("train", "val", "tasks", "memory"):
        run.define_metric(f"{group}/*", step_metric="step")
    atomic_write_json(tracking, {"wandb": {"id": run.id, "project": run.project, "entity": run.entity,
                                           "name": run.name, "url": run.url}})
    if existing and run_id is None:  # wandb switched on mid-run: send what came before
        for record in existing:
            curves = _curves(record)
            if curves:
                run.log(_wandb_row(record, curves))
    return run


def _wandb_row(record: dict, curves: dict[str, float]) -> dict:
    """The curves with every x-axis the record has (step, tokens, FLOPs), so that any of them
    can be chosen as a panel's x-axis."""
    axes = {k: record[k] for k in X_AXES
            if isinstance(record.get(k), (int, float)) and not isinstance(record.get(k), bool)}
    return {**axes, **curves}
