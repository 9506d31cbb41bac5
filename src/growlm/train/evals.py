"""Benchmarks a recipe's [eval] section schedules during training.

The files are checked when the run starts, so a missing data folder fails in seconds rather
than at the first evaluation hours later. Every rank scores its own replica (DDP keeps them
identical), so no rank waits on a collective while rank 0 evaluates; rank 0 logs.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

from growlm.errors import GrowlmError


class ScheduledEvals:
    def __init__(self, section, tokenizer_path: Path | None, val_tokens):
        from growlm.data.tokenizer import load_tokenizer
        from growlm.eval.suite import WIKITEXT_FILE, resolve_data_dir
        from growlm.eval.tasks import TASKS, load_examples
        from growlm.eval.wordsim import DATASETS, DEFAULT_DATASETS

        self.section = section
        self.every = section.every
        self.data_dir = resolve_data_dir(section.data_dir)
        needs_data = [t for t in section.tasks if t in ("wikitext", "wordsim")
                      or (t in TASKS and section.source == "local")]
        if needs_data and (self.data_dir is None or not self.data_dir.is_dir()):
            where = f"{self.data_dir} is not a folder" if self.data_dir else "none is set"
            raise GrowlmError(f"eval.tasks: {', '.join(needs_data)} need the eval data folder, and "
                              f"{where}; set eval.data_dir or GROWLM_DATA")
        if "ppl" in section.tasks and val_tokens is None:
            raise GrowlmError("eval.tasks: ppl needs a validation split (data.val, or a val split "
                              "in data.train's shards)")
        files = []
        if "wikitext" in section.tasks:
            files.append(self.data_dir / WIKITEXT_FILE)
        if "wordsim" in section.tasks:
            files += [self.data_dir / DATASETS[name].path for name in DEFAULT_DATASETS]
        for path in files:
            if not path.is_file():
                raise GrowlmError(f"eval.tasks: {path} not found")
        for name in section.tasks:
            if name in TASKS:  # reads and checks the file (or dataset) now
                load_examples(name, data_dir=self.data_dir, source=section.source, limit=1)
        self.tokenizer = load_tokenizer(tokenizer_path) if tokenizer_path else None
        self.val_tokens = val_tokens

    def due(self, stage_step: int) -> bool:
        return bool(self.every) and stage_step % self.every == 0

    def run(self, model, autocast) -> tuple[dict[str, float], float]:
        """Flat finite scores ({"hellaswag/acc_norm": 0.31, ...}) and the seconds taken."""
        from growlm.eval.suite import evaluate, flatten_results

        t0 = time.perf_counter()
        s = self.section
        with autocast:
            results = evaluate(getattr(model, "_orig_mod", model), self.tokenizer, s.tasks,
                               data_dir=self.data_dir, val_tokens=self.val_tokens, source=s.source,
                               limit=s.limit, batch_size=s.batch_size)
        flat = {k: v for k, v in flatten_results(results).items() if math.isfinite(v)}
        return flat, time.perf_counter() - t0


def headline(flat: dict[str, float]) -> str:
    """One line for the console: each task's score, WikiText's word perplexity, ppl's loss."""
    labels = {"ppl/loss": "val loss", "wikitext/word_perplexity": "wikitext word ppl",
              "average/score": "zero-shot average"}
    picks = [(labels.get(k, k.split("/")[0]), v) for k, v in flat.items()
             if k.endswith("/score") or k in labels]
    return ", ".join(f"{name} {v:.4g}" for name, v in picks)
