"""Tokenizers: load one (file, folder, hub name) or train a byte-level BPE on a corpus.

A tokenizer's identity is the sha256 of its canonical `tokenizer.json` serialisation
(`Tokenizer.to_str()`); prepared shards store that file, so the hash of the stored file
and the identity are the same thing.

BOS policy (`bos_policy`). Every piece of text growlm encodes — a training document, an SFT
example, a `generate` prompt, an evaluation context or document — is encoded with the
tokenizer's post-processor switched off, and the policy alone decides what goes in front:

- `start`: the tokens that open every document, context and prompt. By default ("auto") they
  are what the tokenizer's own post-processor puts before a text: `<s>` for the Llama-2 /
  TinyLlama `tokenizer.json` layout, nothing for GPT-2's byte-level BPE. That is what
  `transformers` gives on an exported folder and what lm-evaluation-harness (0.4.13,
  `add_bos_token` unset) scores. "on" forces the tokenizer's BOS token (EOS for a tokenizer
  whose one marker both ends and starts documents, as GPT-2's), "off" drops it.
- `prefix_id`: the token the first token of a text is predicted from when the text brings
  none (a rolling-perplexity document, an empty context): the BOS token when documents start
  with it, else EOS, the token that precedes every document in training data.

So a training document is `start + text + EOS`, an evaluation context is `start + text`, and a
rolling-perplexity document is scored after `prefix_id`, never scoring a BOS itself: with
`start = [<s>]` that is `<s> text`, the sequence the model saw in training. (lm-eval 0.4.13
with its defaults would score a second `<s>` after the prefix there, a transition training
never shows; growlm's windows equal lm-eval's with `add_bos_token=False` in that one case.)
Trailing special tokens a post-processor adds (a final `</s>`) are never added to a context.

The setting that persists is the tokenizer.json itself: it is stored with the shards, copied
into every checkpoint and export, and read by `transformers` and lm-eval, so a run prepared
with a tokenizer whose post-processor adds `<s>` (or not) is evaluated and prompted the same
way without anyone repeating the choice. `growlm eval --bos` and `growlm generate --bos`
override it for one command (e.g. to compare with an lm-eval run given another
`add_bos_token`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from growlm.errors import GrowlmError
from growlm.files import check_path

EOS_TOKEN = "<|endoftext|>"
# Tried in order when looking for the end-of-document token of a tokenizer we did not make.
MIN_TRAIN_VOCAB = 258
MAX_TRAIN_VOCAB = 2**22
_EOS_CANDIDATES = (EOS_TOKEN, "<|end_of_text|>", "</s>", "<eos>", "<|eos|>", "[SEP]")
# Tried in order for `bos = "on"` when the post-processor adds no BOS of its own.
_BOS_CANDIDATES = ("<|begin_of_text|>", "<s>", "<bos>", "<|startoftext|>", "[CLS]")
BOS_CHOICES = ("auto", "on", "off")
# A model's vocabulary may be padded beyond the tokenizer's (e.g. 50257 → 50304, a multiple of
# 64 that suits matmul kernels); a bigger gap means the two do not belong together.
MAX_VOCAB_PADDING = 128


def load_tokenizer(spec: str | Path) -> Tokenizer:
    """A tokenizer from a tokenizer.json file, a folder, or a HF hub name.

    Folders may hold `tokenizer.json`, or GPT-2 style `encoder.json` + `vocab.bpe`
    (or their hub names `vocab.json` + `merges.txt`).
    """
    path = check_path(spec, "tokenizer").expanduser()
    if path.is_file():
        return _from_file(path)
    if path.is_dir():
        return _from_dir(path)
    text = str(spec)
    if _looks_like_path(text):
        raise GrowlmError(f"tokenizer {text!r} not found (give a tokenizer.json file, a folder "
                          "with tokenizer.json or encoder.json+vocab.bpe, or a HF hub name)")
    return _from_hub(text)


def _looks_like_path(text: str) -> bool:
    return text.endswith(".json") or text.startswith((".", "/", "~", "\\")) or "\\" in text \
        or text.count("/") > 1


def _from_file(path: Path) -> Tokenizer:
    try:
        return Tokenizer.from_file(str(path))
    except Exception as e:  # the Rust side raises plain Exception for malformed files
        raise GrowlmError(f"cannot read tokenizer file {path}: {_first_line(e)}") from None


def _from_dir(path: Path) -> Tokenizer:
    if (path / "tokenizer.json").is_file():
        return _from_file(path / "tokenizer.json")
    for vocab, merges in (("encoder.json", "vocab.bpe"), ("vocab.json", "merges.txt")):
        if (path / vocab).is_file() and (path / merges).is_file():
            return _gpt2_style(path / vocab, path / merges)
    raise GrowlmError(f"no tokenizer in folder {path}: expected tokenizer.json, "
                      "encoder.json+vocab.bpe or vocab.json+merges.txt")


def _gpt2_style(vocab: Path, merges: Path) -> Tokenizer:
    """GPT-2's original files: byte-level BPE without a prefix space, EOS `<|endoftext|>`."""
    try:
        bpe = models.BPE.from_file(str(vocab), str(merges))
    except Exception as e:
        raise GrowlmError(f"cannot read BPE files {vocab} and {merges}: {_first_line(e)}") from None
    tok = Tokenizer(bpe)
    _byte_level(tok)
    if tok.token_to_id(EOS_TOKEN) is not None:
        tok.add_special_tokens([EOS_TOKEN])
    return tok


def _from_hub(name: str) -> Tokenizer:
    try:
        return Tokenizer.from_pretrained(name)
    except Exception as e:
        raise GrowlmError(f"tokenizer {name!r} is not a local file or folder and could not be "
                          f"loaded from the HF hub ({_first_line(e)})") from None


def _byte_level(tok: Tokenizer) -> None:
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)


def train_bpe(texts: Iterable[str], vocab_size: int, *, min_frequency: int = 2,
              show_progress: bool = False) -> Tokenizer:
    """Train a byte-level BPE (GPT-2 style) whose only special token is `<|endoftext|>` (id 0).

    The 256 byte symbols are always in the alphabet, so any text can be encoded.
    """
    check_train_vocab(vocab_size)
    tok = Tokenizer(models.BPE())
    _byte_level(tok)
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, min_frequency=min_frequency, show_progress=show_progress,
        special_tokens=[EOS_TOKEN], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_non_empty(texts), trainer=trainer)
    return tok


def check_train_vocab(vocab_size: int) -> None:
    """GrowlmError unless a BPE of `vocab_size` can be trained: at least 258 (256 bytes +
    <|endoftext|> + one merge), at most MAX_TRAIN_VOCAB (the trainer reserves memory for the
    whole vocabulary up front, about 66 bytes per entry, and aborts the process natively when
    that fails: 2^31 entries asks for 141 GB)."""
    if not MIN_TRAIN_VOCAB <= vocab_size <= MAX_TRAIN_VOCAB:
        size = "small" if vocab_size < MIN_TRAIN_VOCAB else "large"
        raise GrowlmError(f"BPE vocab size {vocab_size} is too {size}: it must be in "
                          f"[{MIN_TRAIN_VOCAB}, {MAX_TRAIN_VOCAB}] (256 bytes + <|endoftext|> "
                          "+ at least one merge)")


def _non_empty(texts: Iterable[str]) -> Iterator[str]:
    for text in texts:
        if text:
            yield text


def tokenizer_json(tok: Tokenizer) -> str:
    """The canonical serialisation (what we store as tokenizer.json)."""
    return tok.to_str()


def tokenizer_sha256(tok: Tokenizer) -> str:
    return hashlib.sha256(tokenizer_json(tok).encode("utf-8")).hexdigest()


def vocab_size(tok: Tokenizer) -> int:
    """Number of ids the model must embed (added tokens included)."""
    return tok.get_vocab_size(with_added_tokens=True)


def eos_id(tok: Tokenizer) -> int:
    """Id of the end-of-document token; GrowlmError when the tokenizer has none we know."""
    for token in _EOS_CANDIDATES:
        idx = tok.token_to_id(token)
        if idx is not None:
            return int(idx)
    raise GrowlmError("the tokenizer has no end-of-document token (looked for "
                      + ", ".join(_EOS_CANDIDATES) + ")")


def check_vocab_fit(model_vocab: int, tok: Tokenizer, where: str) -> None:
    """A tokenizer fits a model when all its ids index the embedding and the model's padding
    beyond it is small; GrowlmError otherwise (an out-of-range id would crash mid-run)."""
    n_tok = vocab_size(tok)
    if n_tok > model_vocab or model_vocab - n_tok >= MAX_VOCAB_PADDING:
        raise GrowlmError(
            f"{where}: the model's vocabulary ({model_vocab}) does not match the tokenizer's "
            f"({n_tok}); the model may be at most {MAX_VOCAB_PADDING - 1} entries larger "
            "(padding), never smaller — pass the tokenizer the model was trained with")


@dataclass(frozen=True)
class BosPolicy:
    """What opens a document (see the module docstring); build one with `bos_policy`."""

    start: tuple[int, ...]  # put before every document, context and prompt
    eos_id: int | None  # ends every training document; None when the tokenizer has none

    @property
    def prefix_id(self) -> int:
        """The token a text's first token is predicted from when the text brings none."""
        if self.start:
            return self.start[-1]
        if self.eos_id is None:
            raise GrowlmError("the tokenizer has neither a BOS token in front of its texts nor "
                              "an end-of-document token (looked for "
                              + ", ".join(_EOS_CANDIDATES) + ") to start a document with")
        return self.eos_id

    def encode(self, tok: Tokenizer, texts: Sequence[str], *, start: bool = True
               ) -> list[list[int]]:
        """Token ids of each text: `start` (unless start=False) + the text's own tokens, with
        the tokenizer's post-processor switched off. `tok` may be a plain-text encoder copy
        (`encoder_for_data`)."""
        head = list(self.start) if start else []
        return [head + e.ids for e in tok.encode_batch(list(texts), add_special_tokens=False)]


def leading_special_ids(tok: Tokenizer) -> tuple[int, ...]:
    """The special tokens the tokenizer's post-processor puts before a text (empty for GPT-2's
    byte-level BPE, (<s>,) for the Llama-2 layout)."""
    enc = tok.encode("a", add_special_tokens=True)
    lead = []
    for token_id, special in zip(enc.ids, enc.special_tokens_mask):
        if not special:
            break
        lead.append(int(token_id))
    return tuple(lead)


def bos_policy(tok: Tokenizer, bos: str = "auto") -> BosPolicy:
    """The BOS policy for `tok`: "auto" (what its post-processor adds), "on" (its BOS token,
    GrowlmError when it has none) or "off" (nothing in front)."""
    if bos not in BOS_CHOICES:
        raise GrowlmError(f"bos = {bos!r}; allowed: {', '.join(BOS_CHOICES)}")
    try:
        eos = eos_id(tok)
    except GrowlmError:
        eos = None
    start = leading_special_ids(tok) if bos != "off" else ()
    if bos == "on" and not start:
        # GPT-2 style tokenizers have one marker for a document's start and end.
        found = [tok.token_to_id(t) for t in _BOS_CANDIDATES if tok.token_to_id(t) is not None]
        found.append(eos)
        if found[0] is None:
            raise GrowlmError("bos = on, but the tokenizer has no BOS or end-of-document token "
                              "(looked for " + ", ".join(_BOS_CANDIDATES + _EOS_CANDIDATES) + ")")
        start = (int(found[0]),)
    return BosPolicy(start=start, eos_id=eos)


def encoder_for_data(tok: Tokenizer) -> Tokenizer:
    """A copy that encodes special-token strings found in raw text as plain text.

    Documents that happen to contain the literal text "<|endoftext|>" must not inject a
    document boundary; only prepare inserts EOS ids. The flag is not serialised, so the copy
    keeps the original's identity.
    """
    copy = Tokenizer.from_str(tok.to_str())
    copy.encode_special_tokens = True
    return copy


def _first_line(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:300]
