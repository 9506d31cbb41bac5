"""Perplexity on held-out token shards and, document by document, on raw text (WikiText).

Raw text follows lm-evaluation-harness's `loglikelihood_rolling`: each document is encoded on
its own (the tokenizer's post-processor off), the BOS policy's prefix token (growlm.data.
tokenizer: BOS when documents start with it, else EOS) is put in front so the first token has
something to condition on, and the document is cut into windows of at most `max_length`
tokens. Only the document's own tokens are scored, never a BOS. Every token is scored exactly
once. With `stride = max_length` (the default, lm-eval's setting) each window scores
`max_length` new tokens; a smaller stride gives each scored token more context at more cost.
The last window always keeps a full context.

WikiText reports what lm-eval reports: word perplexity exp(-Σll / Σwords) and byte perplexity
exp(-Σll / Σbytes), bits-per-byte -Σll / Σbytes / ln 2, where words and bytes are counted on
the *original* (tokenised) page text and the model scores the detokenised page.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from growlm.data.tokenizer import bos_policy
from growlm.errors import GrowlmError
from growlm.eval.scoring import Request, max_context, score_requests

# ---------------------------------------------------------------- rolling windows


def rolling_requests(tokens: Sequence[int], prefix_id: int, max_length: int,
                     stride: int | None = None) -> list[Request]:
    """(context, continuation) windows that score each of `tokens` exactly once."""
    stride = stride or max_length
    if not 1 <= stride <= max_length:
        raise GrowlmError(f"stride {stride} must be between 1 and the context length {max_length}")
    seq = [prefix_id, *tokens]  # seq[j] is predicted from seq[:j], for j = 1..len(tokens)
    n = len(tokens)
    out: list[Request] = []
    done = 0
    while done < n:
        new = min(max_length if done == 0 else stride, n - done)
        end = done + new + 1  # one past the last target, in `seq` indices
        start = max(0, end - 1 - max_length)  # first input position
        # The context is everything before the first scored target; the scorer re-derives the
        # (≤ max_length)-token input from context + continuation.
        out.append((seq[start: end - new], seq[end - new: end]))
        done += new
    return out


def rolling_loglikelihoods(model, token_lists: Sequence[Sequence[int]], prefix_id: int,
                           max_length: int | None = None, stride: int | None = None,
                           batch_size: int = 32, progress: bool = False) -> list[float]:
    """Sum of log-probs of each token list, every window of every document batched together."""
    max_length = max_length or max_context(model)
    requests, owner = [], []
    for i, toks in enumerate(token_lists):
        for req in rolling_requests(toks, prefix_id, max_length, stride):
            requests.append(req)
            owner.append(i)
    scores = score_requests(model, requests, batch_size=batch_size, max_length=max_length,
                            max_batch_tokens=batch_size * max_length, progress=progress,
                            desc="perplexity")
    sums = [0.0] * len(token_lists)
    for i, (ll, _) in zip(owner, scores):
        sums[i] += ll
    return sums


def text_perplexity(model, tokenizer, documents: Sequence[str],
                    originals: Sequence[str] | None = None, *, max_length: int | None = None,
                    stride: int | None = None, batch_size: int = 32,
                    bos: str = "auto", progress: bool = False) -> dict:
    """Token, word and byte perplexity and bits-per-byte of `documents`, one at a time.

    Words (split on whitespace runs, as lm-eval does) and UTF-8 bytes are counted on
    `originals` (default: the documents themselves). `bos` is the BOS policy setting.
    """
    originals = documents if originals is None else originals
    if len(originals) != len(documents):
        raise ValueError("originals must pair one-to-one with documents")
    policy = bos_policy(tokenizer, bos)
    prefix_id = policy.prefix_id
    token_lists = policy.encode(tokenizer, documents, start=False)
    lls = rolling_loglikelihoods(model, token_lists, prefix_id, max_length, stride, batch_size,
                                 progress)
    ll = sum(lls)
    n_tokens = sum(len(t) for t in token_lists)
    n_words = sum(len(re.split(r"\s+", doc)) for doc in originals)
    n_bytes = sum(len(doc.encode("utf-8")) for doc in originals)
    return {
        "token_perplexity": math.exp(-ll / max(n_tokens, 1)),
        "word_perplexity": math.exp(-ll / max(n_words, 1)),
        "byte_perplexity": math.exp(-ll / max(n_bytes, 1)),
        "bits_per_byte": -ll / max(n_bytes, 1) / math.log(2),
        "loglikelihood": ll,
        "documents": len(documents),
        "tokens": n_tokens,
        "words": n_words,
        "bytes": n_bytes,
    }


# ---------------------------------------------------------------- WikiText


def _is_title(line: str) -> bool:
    """A top-level ` = Title = ` line (section headings have two or more `=` on each side)."""
    squeezed = line.replace("= = =", "===").replace("= =", "==").strip()
    return squeezed.startswith("= ") and squeezed.endswith(" =")


def wikitext_documents(text: str) -> list[str]:
    """Split a raw WikiText file into article pages, as EleutherAI/wikitext_document_level does.

    A page starts at each title line; text before the first title (if not blank) is a page too.
    """
    pages, lines = [], []
    for line in text.split("\n"):
        if _is_title(line):
            page = "\n".join(lines)
            if page.strip():
                pages.append(page)
            lines = []
        lines.append(line)
    pages.append("\n".join(lines))
    return pages


_WIKITEXT_RULES: list[tuple[str, str, bool]] = [
    # (pattern, replacement, is_regex), applied in order; the order matters.
    ("s '", "s'", False),
    (r"/' [0-9]/", r"/'[0-9]/", True),
    (" @-@ ", "-", False), (" @,@ ", ",", False), (" @.@ ", ".", False),
    (" : ", ": ", False), (" ; ", "; ", False), (" . ", ". ", False), (" ! ", "! ", False),
    (" ? ", "? ", False), (" , ", ", ", False),
    (r"\(\s*([^\)]*?)\s*\)", r"(\1)", True), (r"\[\s*([^\]]*?)\s*\]", r"[\1]", True),
    (r"{\s*([^}]*?)\s*}", r"{\1}", True), (r"\"\s*([^\"]*?)\s*\"", r'"\1"', True),
    (r"'\s*([^']*?)\s*'", r"'\1'", True),
    ("= = = =", "====", False), ("= = =", "===", False), ("= =", "==", False),
    (" \u00b0 ", "\u00b0", False), (" \n", "\n", False), ("\n ", "\n", False),
    (" N ", " 1 ", False), (" 's", "'s", False),
]


def wikitext_detokenize(page: str) -> str:
    """Undo WikiText's tokenisation (` @-@ `, spaced punctuation, ...) with lm-eval's rules."""
    for pattern, repl, is_regex in _WIKITEXT_RULES:
        page = re.sub(pattern, repl, page) if is_regex else page.replace(pattern, repl)
    return page


def read_wikitext(path: str | os.PathLike) -> list[str]:
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise GrowlmError(f"cannot read WikiText file {path}: {e}") from None
    if not any(_is_title(line) for line in text.split("\n", 200)[:200]):
        raise GrowlmError(f"{path} does not look like raw WikiText: no ' = Title = ' line "
                          "in its first 200 lines")
    return wikitext_documents(text)


def wikitext_perplexity(model, tokenizer, path: str | os.PathLike, limit: int | None = None,
                        **kwargs) -> dict:
    """lm-eval's `wikitext` task on a raw WikiText file (e.g. wiki.test.raw)."""
    pages = read_wikitext(path)[:limit] if limit else read_wikitext(path)
    return wikitext_pages_perplexity(model, tokenizer, pages, **kwargs)


def wikitext_pages_perplexity(model, tokenizer, pages: Sequence[str], **kwargs) -> dict:
    """lm-eval's `wikitext` task on pages already split from a raw WikiText file."""
    return text_perplexity(model, tokenizer, [wikitext_detokenize(p) for p in pages], pages,
                           **kwargs)


# ---------------------------------------------------------------- token shards


def token_perplexity(model, tokens, seq_len: int | None = None, batch_size: int = 16,
                     max_tokens: int | None = None, progress: bool = False) -> dict:
    """Mean next-token loss over consecutive `seq_len` windows of a 1-D token array.

    Window i is tokens[i·T : i·T + T + 1]: T predictions, every token predicted once (the
    first of the array only serves as context). A ragged tail shorter than T is scored too.
    """
    seq_len = seq_len or max_context(model)
    n = len(tokens)
    if max_tokens:
        n = min(n, max_tokens + 1)
    if n < 2:
        raise GrowlmError("the held-out split has fewer than 2 tokens; nothing to evaluate")
    requests = []
    for start in range(0, n - 1, seq_len):
        ids = np.asarray(tokens[start: min(start + seq_len + 1, n)], dtype=np.int64).tolist()
        requests.append((ids[:1], ids[1:]))
    scores = score_requests(model, requests, batch_size=batch_size, max_length=seq_len,
                            max_batch_tokens=batch_size * seq_len, progress=progress,
                            desc="val loss")
    ll = sum(s for s, _ in scores)
    count = n - 1
    loss = -ll / count
    return {"loss": loss, "perplexity": math.exp(loss), "tokens": count,
            "windows": len(requests)}


def shard_tokens(model, shards_path: str | os.PathLike, split: str = "val", tokenizer=None):
    """One split of a prepared growlm shard directory as a 1-D token array, checked to fit the
    model's vocabulary and, when the model's `tokenizer` is known, to be made by a tokenizer with
    the same vocabulary (other ids would be scored as if they meant the model's tokens)."""
    try:
        from growlm.data.shards import open_shards
    except ImportError:
        raise GrowlmError("growlm.data.shards is not available in this install") from None
    shards = open_shards(shards_path)
    vocab = getattr(getattr(model, "cfg", None), "vocab_size", None)
    if vocab is not None and shards.vocab_size > vocab:
        raise GrowlmError(f"shards {shards_path} use a {shards.vocab_size}-token vocabulary but "
                          f"the model has {vocab}; evaluate with shards of the model's tokenizer")
    if tokenizer is not None and shards.tokenizer_path.is_file():
        from growlm.eval.neighbours import same_vocabulary

        if not same_vocabulary(tokenizer, shards.tokenizer()):
            raise GrowlmError(f"shards {shards_path} were prepared with another tokenizer than the "
                              "model's (the token ids mean other strings); evaluate with shards of "
                              "the model's tokenizer")
    return shards.tokens(split)


def shard_perplexity(model, shards_path: str | os.PathLike, split: str = "val",
                     **kwargs) -> dict:
    """`token_perplexity` on one split of a prepared growlm shard directory."""
    return token_perplexity(model, shard_tokens(model, shards_path, split), **kwargs)
