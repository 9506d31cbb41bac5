"""Tokenizers: load one (file, folder, hub name) or train a byte-level BPE on a corpus.

A tokenizer's identity is the sha256 of its canonical `tokenizer.json` serialisation
(`Tokenizer.to_str()`); prepared shards store that file, so the hash of the stored file
and the identity are the same thing.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator
from pathlib import Path

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from growlm.errors import GrowlmError
from growlm.files import check_path

EOS_TOKEN = "<|endoftext|>"
# Tried in order when looking for the end-of-document token of a tokenizer we did not make.
MIN_TRAIN_VOCAB = 258
MAX_TRAIN_VOCAB = 2**22
_EOS_CANDIDATES = (EOS_TOKEN, "<|end_of_text|>", "</s>", "<eos>", "<|eos|>", "[SEP]")


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
