"""Benchmarks a recipe's [eval] section schedules during training, as a trainer hook.

The trainer does not import evaluation code; the commands that train (`growlm train`, `sweep`,
`demo`) add this hook with `benchmark_hooks(cfg)`. The task names and files are checked when
the hook is made, before the run starts, so a missing data folder fails in seconds rather than
at the first evaluation hours later. Every rank scores its own replica (DDP keeps them
identical), so no rank waits on a collective while rank 0 evaluates; rank 0 logs.
"""

from __future__ import annotations

import math
import time

from growlm.errors import GrowlmError
from growlm.train.hooks import Hook


def benchmark_hooks(cfg) -> list:
    """The hooks that score cfg's `[eval]` tasks while it trains (none when it has no tasks)."""
    return [ScheduledBenchmarks(cfg.eval)] if cfg.eval.tasks else []


class ScheduledBenchmarks(Hook):
    scores_benchmarks = True

    def __init__(self, section):
        from growlm.eval.suite import WIKITEXT_FILE, parse_tasks, resolve_data_dir
        from growlm.eval.tasks import TASKS, load_examples
        from growlm.eval.wordsim import DATASETS, DEFAULT_DATASETS

        try:
            section = section.model_copy(update={"tasks": parse_tasks(section.tasks)})
        except GrowlmError as e:
            raise GrowlmError(f"eval.tasks: {e}") from None
        self.section = section
        self.every = section.every
        self.tokenizer = self.val_tokens = None
        self.data_dir = resolve_data_dir(section.data_dir)
        needs_data = [t for t in section.tasks if t in ("wikitext", "wordsim")
                      or (t in TASKS and section.source == "local")]
        if needs_data and (self.data_dir is None or not self.data_dir.is_dir()):
            where = f"{self.data_dir} is not a folder" if self.data_dir else "none is set"
            raise GrowlmError(f"eval.tasks: {', '.join(needs_data)} need the eval data folder, and "
                              f"{where}; set eval.data_dir or GROWLM_DATA")
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

    def stage_start(self, trainer, built, start_step) -> None:
        from growlm.data.tokenizer import load_tokenizer

        if "ppl" in self.section.tasks and trainer.val_tokens is None:
            raise GrowlmError("eval.tasks: ppl needs a validation split (data.val, or a val split "
                              "in data.train's shards)")
        if self.tokenizer is None and trainer.tokenizer_path:
            self.tokenizer = load_tokenizer(trainer.tokenizer_path)
        self.val_tokens = trainer.val_tokens

    def due(self, stage_step: int) -> bool:
        return bool(self.every) and stage_step % self.every == 0

    def step_end(self, trainer, built, record, last) -> None:
        if self.due(record["stage_step"]) and not last:
            self._score(trainer, built)

    def stage_end(self, trainer, built) -> None:
        self._score(trainer, built)

    def _score(self, trainer, built) -> None:
        c = trainer.counters
        flat, seconds = self.run(built.model, trainer.autocast())
        if trainer.metrics is not None:
            trainer.metrics.log({"kind": "tasks", "stage": built.stage.number, "step": c.global_step,
                                 "tokens": c.tokens, "flops": c.flops, "flops_6nd": c.flops_6nd,
                                 "seconds": seconds, **flat})
        trainer.log(f"step {c.global_step} tasks ({seconds:.1f} s): {headline(flat)}")

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
