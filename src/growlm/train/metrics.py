"""metrics.jsonl (the source of truth for reports) plus optional TensorBoard / wandb sinks."""

from __future__ import annotations

import json
import os
from pathlib import Path


def read_metrics(path: Path) -> list[dict]:
    """All complete records; a torn last line (crash mid-write) is ignored."""
    if not path.is_file():
        return []
    records = []
    for line in path.read_text().splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


class MetricsWriter:
    def __init__(self, path: Path, tensorboard: bool = False, wandb: bool = False, run_name: str = "run"):
        self.path = path
        self._file = open(path, "a")
        self._tb = self._wandb = None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(path.parent / "tensorboard"))
            except ImportError:
                print("tensorboard is not installed; pip install 'growlm[tracking]'")
        if wandb:
            try:
                import wandb as _wandb

                self._wandb = _wandb.init(project="growlm", name=run_name, resume="allow")
            except ImportError:
                print("wandb is not installed; pip install 'growlm[tracking]'")

    @staticmethod
    def truncate(path: Path, global_step: int, stage: int) -> None:
        """Drop records written after the checkpoint a run resumes from (they will be redone)."""
        kept = []
        for r in read_metrics(path):
            if r.get("kind") == "stage":
                # a stage's end record stays when the checkpoint is that stage's boundary one
                ended = r["event"] == "end" and r.get("step", global_step + 1) <= global_step
                if r["stage"] < stage or (r["stage"] == stage and (r["event"] == "start" or ended)):
                    kept.append(r)
            elif r.get("step", 0) <= global_step:
                kept.append(r)
        tmp = path.with_suffix(".tmp")
        tmp.write_text("".join(json.dumps(r) + "\n" for r in kept))
        os.replace(tmp, path)

    def log(self, record: dict) -> None:
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()
        step = record.get("step")
        scalars = {k: v for k, v in record.items() if isinstance(v, (int, float)) and k != "step"}
        if self._tb is not None and step is not None:
            for k, v in scalars.items():
                self._tb.add_scalar(f"{record['kind']}/{k}", v, step)
        if self._wandb is not None and step is not None:
            self._wandb.log({f"{record['kind']}/{k}": v for k, v in scalars.items()}, step=step)

    def close(self) -> None:
        self._file.close()
        if self._tb is not None:
            self._tb.close()
        if self._wandb is not None:
            self._wandb.finish()
