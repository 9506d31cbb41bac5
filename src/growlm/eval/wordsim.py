"""Word similarity of vocabulary vectors (embedding/head reuse paper, Table 3 and appendix C).

For each dataset of human-rated word pairs: Spearman's rho between the ratings and the cosine
similarity of the two words' vectors, once with the input embedding matrix and once with the
output head matrix.

Word → vector. A word has a vector only when it is a *single* vocabulary entry. With a
byte-level BPE (GPT-2) a word in running text is usually preceded by a space, which the
vocabulary spells with the marker "Ġ" ("Ġcat"); that form is preferred when it exists, else
the bare word ("cat"); SentencePiece's "▁" is tried the same way. Words are looked up as
written (no case folding). A pair is dropped when either word has no single-token form
(out of vocabulary); coverage = pairs kept / pairs in the file is reported per dataset.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from growlm.errors import GrowlmError

SPACE_MARKERS = ("Ġ", "▁")


@dataclass(frozen=True)
class WordSimSet:
    name: str
    path: str  # relative to the data folder
    sep: str | None  # None: any whitespace
    score_column: int
    header: str | None  # the score column's name in the header line; None: no header


DATASETS: dict[str, WordSimSet] = {
    d.name: d for d in (
        WordSimSet("simlex999", "word_similarity/simlex999/SimLex-999.txt", "\t", 3, "SimLex999"),
        WordSimSet("wordsim353_sim",
                   "word_similarity/wordsim353_sim_rel/wordsim_similarity_goldstandard.txt",
                   "\t", 2, None),
        WordSimSet("wordsim353_rel",
                   "word_similarity/wordsim353_sim_rel/wordsim_relatedness_goldstandard.txt",
                   "\t", 2, None),
        WordSimSet("men", "word_similarity/men/MEN_dataset_natural_form_full", None, 2, None),
        WordSimSet("rarewords", "word_similarity/rarewords/rw.txt", "\t", 2, None),
    )
}
DEFAULT_DATASETS = ("simlex999", "wordsim353_sim", "wordsim353_rel", "men", "rarewords")


def read_pairs(spec: WordSimSet, path: str | os.PathLike) -> list[tuple[str, str, float]]:
    """(word1, word2, human score) rows; CRLF line ends and a header line are handled."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise GrowlmError(f"cannot read word-similarity file {path}: {e}") from None
    if spec.header:
        head = lines[0].split(spec.sep) if lines else []
        if len(head) <= spec.score_column or head[spec.score_column].strip() != spec.header:
            raise GrowlmError(f"{path}:1: expected the header field {spec.header!r} in column "
                              f"{spec.score_column + 1}; not a {spec.name} file")
        lines = lines[1:]
    rows = []
    for lineno, line in enumerate(lines, 2 if spec.header else 1):
        if not line.strip():
            continue
        cols = line.split(spec.sep) if spec.sep else line.split()
        where = f"{path}:{lineno}"
        if len(cols) <= max(1, spec.score_column):
            raise GrowlmError(f"{where}: expected at least {spec.score_column + 1} "
                              f"{'tab-' if spec.sep else 'space-'}separated columns, "
                              f"got {len(cols)}")
        try:
            score = float(cols[spec.score_column])
        except ValueError:
            raise GrowlmError(f"{where}: score column {spec.score_column + 1} "
                              f"({cols[spec.score_column]!r}) is not a number") from None
        rows.append((cols[0].strip(), cols[1].strip(), score))
    if not rows:
        raise GrowlmError(f"{path} holds no word pairs")
    return rows


def word_id(tokenizer, word: str) -> int | None:
    """The single vocabulary id of `word`: space-marked form first, else bare; None if OOV."""
    for form in (*(m + word for m in SPACE_MARKERS), word):
        idx = tokenizer.token_to_id(form)
        if idx is not None:
            return int(idx)
    return None


def _spearman(human: list[float], model: list[float]) -> float:
    from scipy.stats import spearmanr

    if len(human) < 3:
        return float("nan")
    rho = spearmanr(human, model).statistic
    return float(rho)


def pair_similarity(matrices: dict[str, torch.Tensor], tokenizer,
                    rows: list[tuple[str, str, float]]) -> dict:
    """Spearman rho per matrix and the coverage, for one list of rated pairs."""
    kept, human = [], []
    for w1, w2, score in rows:
        i, j = word_id(tokenizer, w1), word_id(tokenizer, w2)
        if i is not None and j is not None:
            kept.append((i, j))
            human.append(score)
    out: dict = {"kept": len(kept), "total": len(rows), "coverage": len(kept) / len(rows)}
    for name, matrix in matrices.items():
        if not kept:
            out[name] = float("nan")
            continue
        idx = torch.tensor(kept)
        m = matrix.detach().float().cpu()
        if int(idx.max()) >= m.shape[0]:
            raise GrowlmError(f"the tokenizer's ids exceed the {name} matrix's {m.shape[0]} rows")
        sims = torch.nn.functional.cosine_similarity(m[idx[:, 0]], m[idx[:, 1]], dim=-1)
        out[name] = _spearman(human, sims.tolist())
    return out


def vocab_matrices(model) -> dict[str, torch.Tensor]:
    """The input embedding and output head of a growlm Transformer (the same when tied)."""
    return {"embedding": model.embed_tokens.weight, "head": model.lm_head.weight}


def word_similarity(model_or_matrices, tokenizer, data_dir: str | os.PathLike | None,
                    datasets=DEFAULT_DATASETS, paths: dict | None = None) -> dict:
    """{dataset: {"embedding": rho, "head": rho, "coverage", "kept", "total"}}.

    `paths` may map a dataset name to a file, overriding its place under `data_dir`.
    """
    if tokenizer is None:
        raise GrowlmError("word similarity needs the model's tokenizer (none was found)")
    matrices = (model_or_matrices if isinstance(model_or_matrices, dict)
                else vocab_matrices(model_or_matrices))
    paths = paths or {}
    out = {}
    for name in datasets:
        spec = DATASETS.get(name)
        if spec is None:
            raise GrowlmError(f"unknown word-similarity dataset {name!r}; "
                              f"allowed: {', '.join(DATASETS)}")
        path = paths.get(name)
        if path is None:
            if data_dir is None:
                raise GrowlmError("word similarity needs the data folder: pass --data-dir or "
                                  "set GROWLM_DATA")
            path = Path(data_dir) / spec.path
        out[name] = pair_similarity(matrices, tokenizer, read_pairs(spec, path))
    return out


def summary_score(results: dict, matrix: str = "embedding") -> float:
    """Mean rho over datasets (NaNs skipped), a one-number view for tables."""
    vals = [r[matrix] for r in results.values()
            if isinstance(r.get(matrix), (int, float)) and not math.isnan(r[matrix])]
    return float(sum(vals) / len(vals)) if vals else float("nan")
