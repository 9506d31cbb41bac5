"""Documents → token ids, long documents in pieces that give the ids of the whole document.

Why pieces at all: one `encode` call on a 100 MB document runs on one thread and holds the
offsets, token strings and masks of every token at once; pieces go through the `tokenizers`
thread pool in parallel, a few MB each.

Why pieces are delicate: encoding a piece as if it were a document applies the rules for the
start and end of an input at every cut — a normaliser that prepends "▁" (Llama-2), Metaspace's
`prepend_scheme`, ByteLevel's `add_prefix_space`, a Strip normaliser — so each cut gains or
loses a token; and a cut inside a pre-token changes how that word is split. Both break the
promise that shard ids equal the encoding of the whole document.

How this module keeps the promise, for any `tokenizers` pipeline:

1. Cuts go before a space that separates two non-space characters. That is a pre-token
   boundary in every common scheme: byte-level regex BPE (GPT-2, Llama-3: the space starts
   the next word), Metaspace/SentencePiece ("▁" starts a word), BERT and whitespace splitting.
   Llama-2's tokenizer has no pre-tokenizer, but its SentencePiece vocabulary has no piece
   that continues past a word start.
2. Each piece is encoded inside a window that adds at least `context_chars` of the real text
   on both sides, starting and ending at such a boundary, so start/end-of-input rules act on
   the context only. The tokens kept are those whose character offsets start inside the piece.
3. Two checks catch a tokenizer for which (1) is false: no token may straddle a cut, and
   around every cut the two neighbouring windows must produce the same tokens over their
   common text. If either fails, the document is encoded whole (one call: slower, exact).
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence

import numpy as np

PIECE_CHARS = 2**20
CONTEXT_CHARS = 256


class DocumentEncoder:
    """Encodes batches of documents with `tokenizer` (no special tokens added).

    Documents longer than `piece_chars` characters are encoded in pieces (module docstring).
    Counters for reports and tests: `pieces` (windows encoded), `whole` (long documents that
    had to be encoded in one call: no boundary to cut at, or a failed check).
    """

    def __init__(self, tokenizer, piece_chars: int = PIECE_CHARS,
                 context_chars: int = CONTEXT_CHARS):
        if piece_chars < 2 or context_chars < 1:
            raise ValueError(f"piece_chars {piece_chars} must be ≥ 2 and context_chars "
                             f"{context_chars} ≥ 1")
        self.tokenizer = tokenizer
        self.piece_chars, self.context_chars = int(piece_chars), int(context_chars)
        self.pieces = 0
        self.whole = 0

    def encode(self, texts: Sequence[str]) -> list[np.ndarray]:
        """One int64 array of ids per text, in order."""
        out: list[np.ndarray | None] = [None] * len(texts)
        plans = {i: _plan(t, self.piece_chars, self.context_chars)
                 for i, t in enumerate(texts) if len(t) > self.piece_chars}
        for i in [i for i, windows in plans.items() if len(windows) == 1]:
            del plans[i]  # no place to cut: one piece
            self.whole += 1
        whole = [i for i in range(len(texts)) if i not in plans]
        if whole:
            encode = getattr(self.tokenizer, "encode_batch_fast", self.tokenizer.encode_batch)
            for i, enc in zip(whole, encode([texts[i] for i in whole], add_special_tokens=False)):
                out[i] = np.asarray(enc.ids, dtype=np.int64)
        jobs = [(i, w) for i, windows in plans.items() for w in windows]
        if jobs:
            encodings = self.tokenizer.encode_batch([texts[i][w.lo:w.hi] for i, w in jobs],
                                                    add_special_tokens=False)
            self.pieces += len(jobs)
            by_doc: dict[int, list] = {i: [] for i in plans}
            for (i, w), enc in zip(jobs, encodings):
                by_doc[i].append(_Encoded(w, enc))
            for i, parts in by_doc.items():
                ids = _assemble(parts)
                if ids is None:  # the tokenizer merges across our cuts: no safe piece
                    self.whole += 1
                    ids = np.asarray(self.tokenizer.encode(texts[i], add_special_tokens=False).ids,
                                     dtype=np.int64)
                out[i] = ids
        return out  # type: ignore[return-value]


class _Window:
    """Piece [start, end) of a document, encoded as the text [lo, hi); tokens are trusted
    (free of start/end-of-input effects) from `trust_lo` to `trust_hi`."""

    __slots__ = ("lo", "hi", "start", "end", "trust_lo", "trust_hi")

    def __init__(self, lo, hi, start, end, trust_lo, trust_hi):
        self.lo, self.hi, self.start, self.end = lo, hi, start, end
        self.trust_lo, self.trust_hi = trust_lo, trust_hi


def _plan(text: str, piece_chars: int, context_chars: int) -> list[_Window]:
    """Cuts near every `piece_chars` characters at boundaries, and each piece's window."""
    n = len(text)
    cuts, start = [0], 0
    while n - start > piece_chars:
        # The last boundary in the second half of the piece, else the first one after it.
        cut = _before(text, start + piece_chars, start + piece_chars // 2)
        if cut is None:
            cut = _after(text, start + piece_chars + 1)
        if cut is None:
            break
        cuts.append(cut)
        start = cut
    cuts.append(n)
    windows = []
    for start, end in zip(cuts[:-1], cuts[1:]):
        lo = (_before(text, start - context_chars, 0) or 0) if start > 0 else 0
        hi = (_after(text, end + context_chars) or n) if end < n else n
        # The first and last pre-token of a window carry the start/end-of-input effects.
        trust_lo = _after(text, lo + 1) if lo > 0 else 0
        trust_hi = _before(text, hi - 1, lo) if hi < n else n
        windows.append(_Window(lo, hi, start, end, trust_lo, trust_hi))
    return windows


def _is_boundary(text: str, i: int) -> bool:
    """A space with a non-space character on each side."""
    return 0 < i < len(text) - 1 and not text[i - 1].isspace() and not text[i + 1].isspace()


def _before(text: str, pos: int, floor: int) -> int | None:
    """The last boundary in (floor, pos], or None."""
    i = text.rfind(" ", floor + 1, pos + 1) if pos > floor else -1
    while i > floor and not _is_boundary(text, i):
        i = text.rfind(" ", floor + 1, i)
    return i if i > floor else None


def _after(text: str, pos: int) -> int | None:
    """The first boundary at or after pos, or None."""
    i = text.find(" ", max(pos, 0))
    while i >= 0 and not _is_boundary(text, i):
        i = text.find(" ", i + 1)
    return i if i >= 0 else None


class _Encoded:
    """A window's ids, with its tokens' character offsets read only where they are needed:
    pulling every offset into Python would cost more than the encoding on many cores."""

    def __init__(self, window: _Window, enc):
        self.window, self.enc = window, enc
        self.ids = np.asarray(enc.ids, dtype=np.int64)

    def _span(self, i: int) -> tuple[int, int]:
        start, end = self.enc.token_to_chars(i)
        return start + self.window.lo, end + self.window.lo

    def _index(self, pos: int) -> int:
        """How many tokens start before `pos` (token starts never decrease)."""
        return bisect.bisect_left(range(len(self.ids)), pos, key=lambda i: self._span(i)[0])

    def straddles(self, pos: int) -> bool:
        """A token starts before `pos` and ends after it. Only the last few tokens before
        `pos` can: tokens overlap only where one character is split into byte tokens."""
        first = self._index(pos)
        return any(self._span(i)[1] > pos for i in range(max(0, first - 8), first))

    def between(self, a: int, b: int) -> np.ndarray:
        """Ids of the tokens that start in [a, b)."""
        return self.ids[self._index(a):self._index(b)]


def _assemble(parts: list[_Encoded]) -> np.ndarray | None:
    """The document's ids from its windows, or None when a check fails (module docstring)."""
    kept = []
    last = len(parts) - 1
    for k, part in enumerate(parts):
        w = part.window
        # A token may sit at the very end (a trailing space trimmed to an empty offset).
        kept.append(part.between(w.start if k else -1, w.end if k < last else w.end + 1))
        if k == last:
            break
        nxt = parts[k + 1]
        # The text around the cut that both windows encode free of edge effects.
        a = max(w.trust_lo, nxt.window.trust_lo)
        b = min(w.trust_hi, nxt.window.trust_hi)
        if not a <= w.end <= b:
            return None
        for p in (part, nxt):
            if p.straddles(w.end) or p.straddles(a) or p.straddles(b):
                return None
        if not np.array_equal(part.between(a, b), nxt.between(a, b)):
            return None
    return np.concatenate(kept)
