"""Top-k neighbour overlap of each run's vocabulary matrices with the baseline's (reuse paper,
Table 5), read straight from the newest checkpoints' safetensors (no model is built)."""

from __future__ import annotations

from collections.abc import Sequence

from growlm.errors import GrowlmError
from growlm.report.runs import Run

MATRICES = {"embedding": "embed_tokens.weight", "head": "lm_head.weight"}


def vocab_tensors(run: Run) -> dict:
    """{"embedding": tensor, "head": tensor} of the run's newest complete checkpoint."""
    from safetensors import safe_open

    from growlm.checkpoint import MODEL_FILE, resolve_checkpoint

    ckpt = resolve_checkpoint(run.path)
    out = {}
    with safe_open(str(ckpt / MODEL_FILE), framework="pt") as f:
        keys = set(f.keys())
        for name, key in MATRICES.items():
            if key in keys:
                out[name] = f.get_tensor(key)
    if "head" not in out and "embedding" in out:  # tied
        out["head"] = out["embedding"]
    return out


def check_neighbours(k: int, runs: Sequence[Run]) -> None:
    """Refuse a K that is not below every run's vocabulary size (each token's neighbours
    exclude itself), before any checkpoint is read."""
    sizes = [(r.config.get("model") or {}).get("vocab_size") for r in runs]
    smallest = min((v for v in sizes if isinstance(v, int)), default=None)
    if smallest is not None and not 1 <= k < smallest:
        raise GrowlmError(f"--neighbours {k}: must be between 1 and {smallest - 1} (the vocabulary "
                          f"has {smallest} tokens, and a token is not its own neighbour)")


def overlap_table(runs: Sequence[Run], baseline: Run, k: int = 100, progress: bool = True
                  ) -> list[tuple[str, float | None, float | None]]:
    """(run, embedding overlap, head overlap) with the baseline for every other run.

    A run without a readable checkpoint gets None (it is reported, not fatal). `progress`
    reports each run and matrix as it is compared (growlm.progress)."""
    from growlm.eval.neighbours import neighbour_overlap
    from growlm.progress import progress as progress_bar

    try:
        base = vocab_tensors(baseline)
    except GrowlmError as e:
        raise GrowlmError(f"neighbour overlap needs the baseline's checkpoint: {e}") from None
    rows = []
    others = [run for run in runs if run is not baseline]
    with progress_bar(len(others) * len(MATRICES), "neighbour overlap", enabled=progress,
                      unit="matrix") as bar:
        for run in others:
            try:
                mats = vocab_tensors(run)
            except GrowlmError:
                rows.append((run.name, None, None))
                bar.update(len(MATRICES))
                continue
            values = []
            for name in MATRICES:
                bar.set_postfix(run=run.name, matrix=name)
                a, b = base.get(name), mats.get(name)
                if a is None or b is None or a.shape[0] != b.shape[0]:
                    values.append(None)
                else:
                    values.append(neighbour_overlap(a, b, k=k))  # refuses k >= vocabulary
                bar.update(1)
            rows.append((run.name, *values))
    return rows
