"""`prepare`: text sources → token shards (see shards.py for the format).

- Documents are read in a deterministic order (sources.py); each opens with the BOS policy's
  start tokens (growlm.data.tokenizer: `<s>` for a Llama-2-layout tokenizer, none for GPT-2's)
  and is followed by EOS.
- Validation split by document: with fraction f, document i (counting non-empty documents
  over all inputs) is held out when floor((i+1)·f) > floor(i·f). That keeps exactly
  floor(N·f) documents, spread evenly over the corpus, and decides each document without
  looking ahead (streaming works). `val_inputs` replaces this with separate files.
- Tokenization runs in the `tokenizers` Rust thread pool (all cores unless `workers` is set).
  Documents longer than `piece_chars` are encoded in pieces whose ids equal the encoding of
  the whole document, for any tokenizer (encode.py).
- The output folder is written whole or not at all (output.py): an interrupted run, a full
  disk or a bad input leaves no folder that looks complete.
- A fingerprint of the inputs (paths, sizes, mtimes; built-in listing; HF name/config/split),
  the tokenizer and the options is stored in meta.json; re-running with the same fingerprint
  is a no-op.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

import growlm.data.output as output
import growlm.data.tokenizer as tk
from growlm import __version__
from growlm.data.encode import PIECE_CHARS, DocumentEncoder
from growlm.data.shards import (
    DEFAULT_SHARD_TOKENS,
    FORMAT,
    VERSION,
    ShardWriter,
    TokenShards,
    dtype_for_vocab,
    open_shards,
    read_meta,
)
from growlm.data.sources import TXT_DOCS, HFDataset, Repairs, Source, resolve_inputs
from growlm.errors import GrowlmError
from growlm.files import check_output_dir
from growlm.progress import is_terminal, progress
from growlm.units import human_count

DEFAULT_TOKENIZER_SAMPLE_CHARS = 200_000_000
# A bigger Rust thread pool than this only exhausts the process (it aborts natively).
MAX_WORKERS = 1024
_BATCH_CHARS = 4 * 2**20
_BATCH_DOCS = 4096


def prepare(out_dir: str | Path, inputs: Sequence[str | Path | HFDataset], *,
            tokenizer: str | Path | None = None, train_vocab: int | None = None,
            text_field: str = "text", val_fraction: float = 0.01,
            val_inputs: Sequence[str | Path | HFDataset] | None = None, txt_docs: str = "file",
            max_tokens: int | None = None, shard_tokens: int = DEFAULT_SHARD_TOKENS,
            workers: int | None = None,
            tokenizer_sample_chars: int = DEFAULT_TOKENIZER_SAMPLE_CHARS,
            overwrite: bool = False, progress: bool = True, log=print,
            piece_chars: int = PIECE_CHARS) -> TokenShards:
    """Tokenize `inputs` into shards in `out_dir` and return them opened.

    Give exactly one of `tokenizer` (file, folder or hub name; see load_tokenizer) or
    `train_vocab` (train a byte-level BPE of that size on the training documents, at most
    `tokenizer_sample_chars` characters of them). With `val_inputs`, `val_fraction` is unused.
    `piece_chars` only changes how long documents are split for speed, never the ids.

    Raises GrowlmError (bad input: one line) and WriteError (a failed write, e.g. a full
    disk); nothing is left in `out_dir`'s place then. KeyboardInterrupt passes through, after
    the same clean-up.
    """
    _check_options(tokenizer, train_vocab, val_fraction, txt_docs, max_tokens, shard_tokens,
                   workers, tokenizer_sample_chars)
    out = check_output_dir(Path(out_dir).expanduser(), "output folder")
    if val_inputs:
        val_fraction = 0.0
    sources = resolve_inputs(list(inputs))
    val_sources = resolve_inputs(list(val_inputs or []))
    if not sources:
        raise GrowlmError("no inputs given: name files, folders, globs, builtin:python or an "
                          "HF dataset")
    tok = tk.load_tokenizer(tokenizer) if tokenizer is not None else None
    if tok is not None:
        tk.eos_id(tok)  # a tokenizer without an end-of-document token fails before any work
    options = {"text_field": text_field, "val_fraction": val_fraction, "txt_docs": txt_docs,
               "max_tokens": max_tokens, "shard_tokens": shard_tokens}
    described = [s.describe() for s in sources]
    val_described = [s.describe() for s in val_sources]
    tok_identity = (tk.tokenizer_sha256(tok) if tok is not None else
                    {"train_vocab": train_vocab, "sample_chars": tokenizer_sample_chars})
    if tok is not None and tk.bos_policy(tok).start:
        # shards made before documents began with the tokenizer's BOS are not up to date
        tok_identity = {"sha256": tok_identity, "doc_start": list(tk.bos_policy(tok).start)}
    fingerprint = _fingerprint(described, val_described, tok_identity, options)

    if _up_to_date(out, fingerprint, overwrite, log):
        return open_shards(out)
    if workers:
        # The Rust pool reads this when it starts, i.e. at the first parallel encode.
        os.environ["RAYON_NUM_THREADS"] = str(workers)
    tmp = output.temp_dir_name(out)
    try:
        tmp = output.make_temp_dir(out)
        if tok is None:
            tok = _train_tokenizer(sources, train_vocab, options, tokenizer_sample_chars,
                                   progress, log)
        meta = _write_all(tmp, tok, str(tokenizer) if tokenizer is not None else None,
                          sources, val_sources, options, progress, log, piece_chars)
        meta.update(sources=described, val_sources=val_described, options=options,
                    fingerprint=fingerprint, growlm_version=__version__)
        # Last: its presence marks a complete folder.
        output.write_text(tmp / "meta.json", json.dumps(meta, indent=1) + "\n")
        output.install(tmp, out)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        failure = output.as_write_error(e, tmp, out)
        if failure is not None:
            raise failure from None
        raise
    return open_shards(out)


def _check_options(tokenizer, train_vocab, val_fraction, txt_docs, max_tokens, shard_tokens,
                   workers, sample_chars) -> None:
    if (tokenizer is None) == (train_vocab is None):
        raise GrowlmError("give exactly one of a tokenizer (--tokenizer FILE|DIR|NAME) or a "
                          "vocab size to train one (--train-tokenizer N)")
    if train_vocab is not None:
        tk.check_train_vocab(train_vocab)
    if not (isinstance(val_fraction, (int, float)) and 0.0 <= val_fraction < 1.0):
        raise GrowlmError(f"validation fraction must be in [0, 1), got {val_fraction}")
    if txt_docs not in TXT_DOCS:
        raise GrowlmError(f"txt_docs {txt_docs!r} is not one of {', '.join(TXT_DOCS)}")
    if max_tokens is not None and max_tokens <= 1:
        raise GrowlmError(f"max tokens must be more than 1, got {max_tokens}")
    if shard_tokens <= 0:
        raise GrowlmError(f"shard size must be a positive number of tokens, got {shard_tokens}")
    if workers is not None and not 0 <= workers <= MAX_WORKERS:
        raise GrowlmError(f"workers must be in [0, {MAX_WORKERS}] (0 = all cores), got {workers}")
    if sample_chars <= 0:
        raise GrowlmError(f"tokenizer sample must be a positive number of characters, got "
                          f"{sample_chars}")


def _fingerprint(sources, val_sources, tok_identity, options) -> str:
    blob = json.dumps({"format": FORMAT, "version": VERSION, "sources": sources,
                       "val_sources": val_sources, "tokenizer": tok_identity,
                       "options": options}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _up_to_date(out: Path, fingerprint: str, overwrite: bool, log) -> bool:
    """True when `out` already holds these shards; raises when it holds something else we
    must not replace."""
    if not out.exists():
        return False
    if not out.is_dir():
        raise GrowlmError(f"output {out} exists and is a file; choose a folder path")
    if not any(out.iterdir()):
        return False
    if not (out / "meta.json").is_file():
        raise GrowlmError(f"output folder {out} exists and is not a shard folder (no meta.json);"
                          " choose another path or remove it")
    try:
        old = read_meta(out)
    except GrowlmError:
        old = None
    if old is not None and old["fingerprint"] == fingerprint:
        try:
            open_shards(out)
        except GrowlmError as e:
            log(f"{out}: existing shards are damaged ({e}); preparing them again")
            return False
        log(f"{out} is up to date (same inputs, tokenizer and options); nothing to do")
        return True
    if not overwrite:
        raise GrowlmError(f"{out} holds shards prepared from other inputs or options; pass "
                          "--overwrite to replace them, or choose another output folder")
    log(f"{out}: replacing shards prepared from other inputs or options")
    return False


def split_documents(sources: list[Source], val_sources: list[Source], val_fraction: float,
                    text_field: str, txt_docs: str, repairs: Repairs, stop=lambda: False
                    ) -> Iterator[tuple[str, str]]:
    """(split, text) for every non-empty document; `stop()` ends the training sources early."""
    index = 0
    for source in sources:
        for text in source.documents(text_field, txt_docs, repairs):
            if not text or text.isspace():
                continue
            held_out = int((index + 1) * val_fraction) > int(index * val_fraction)
            index += 1
            yield ("val" if held_out else "train"), text
            if stop():
                break
        if stop():
            break
    for source in val_sources:
        for text in source.documents(text_field, txt_docs, repairs):
            if text and not text.isspace():
                yield "val", text


def _train_tokenizer(sources, vocab: int, options: dict, max_chars: int, show: bool, log):
    """Train the BPE on the training documents. Progress: the trainer's own bars in a
    terminal; in a log, lines while the text is read and when each phase ends."""
    terminal = show and is_terminal()
    read = {"chars": 0, "docs": 0}
    start = time.perf_counter()
    log(f"training a byte-level BPE tokenizer (vocab {vocab:,}) on up to "
        f"{human_count(max_chars)} characters of the training documents")
    bar = progress(max_chars, "tokenizer training: reading", enabled=show and not terminal,
                   unit="char")

    def sample() -> Iterator[str]:
        docs = split_documents(sources, [], options["val_fraction"], options["text_field"],
                               options["txt_docs"], Repairs())
        for split, text in docs:
            if split == "train":
                yield text
                read["chars"] += len(text)
                read["docs"] += 1
                bar.update(len(text))
                if read["chars"] >= max_chars:
                    break
        bar.close()
        if show and not terminal:
            log(f"tokenizer training: read {read['chars']:,} characters in {read['docs']:,} "
                f"documents ({time.perf_counter() - start:.1f} s); computing merges")

    tok = _interruptible(lambda: tk.train_bpe(sample(), vocab, show_progress=terminal))
    log(f"tokenizer trained in {time.perf_counter() - start:.1f} s: vocab "
        f"{tk.vocab_size(tok):,} from {read['chars']:,} characters in {read['docs']:,} documents")
    return tok


def _interruptible(fn):
    """fn() in a worker thread. A long Rust call (the BPE trainer) holds off Python's signal
    handlers until it returns; waiting here instead lets Ctrl-C and SIGTERM act at once. The
    worker is a daemon, so it ends with the process."""
    result: dict = {}

    def run():
        try:
            result["value"] = fn()
        except BaseException as e:  # re-raised in the caller's thread
            result["error"] = e

    worker = threading.Thread(target=run, name="growlm-tokenizer-training", daemon=True)
    worker.start()
    while worker.is_alive():
        worker.join(0.1)
    if "error" in result:
        raise result["error"]
    return result["value"]


def _write_all(tmp: Path, tok, tok_name: str | None, sources, val_sources, options,
               show: bool, log, piece_chars: int) -> dict:
    """Write tokenizer.json and the shards into tmp; returns meta.json's core fields."""
    output.write_text(tmp / "tokenizer.json", tk.tokenizer_json(tok))
    vocab, eos = tk.vocab_size(tok), tk.eos_id(tok)
    dtype = dtype_for_vocab(vocab)
    writers = {split: ShardWriter(tmp, split, dtype, options["shard_tokens"])
               for split in ("train", "val")}
    max_tokens = options["max_tokens"]
    encoder = DocumentEncoder(tk.encoder_for_data(tok), piece_chars=piece_chars)
    doc_start = np.array(tk.bos_policy(tok).start, dtype=np.int64)
    repairs = Repairs()
    docs = split_documents(sources, val_sources, options["val_fraction"], options["text_field"],
                           options["txt_docs"], repairs,
                           stop=lambda: max_tokens is not None
                           and writers["train"].tokens >= max_tokens)
    start = time.perf_counter()
    try:
        with progress(None, "tokenizing", enabled=show, unit="tok") as bar:
            for batch in _batches(docs):
                bar.update(_encode_and_write(encoder, batch, writers, eos, max_tokens, doc_start))
                bar.set_postfix(docs=writers["train"].docs + writers["val"].docs, refresh=False)
        splits = {name: w.close() for name, w in writers.items()}
    finally:
        for w in writers.values():
            w.discard()
    _check_counts(splits, sources, val_sources, options)
    _log_summary(splits, time.perf_counter() - start, encoder, repairs, log)
    if splits["val"]["tokens"] == 0:
        del splits["val"]
    name = tok_name or f"byte-level BPE {vocab} trained on the inputs"
    return {"format": FORMAT, "version": VERSION, "dtype": dtype,
            "tokenizer": {"name": name, "sha256": tk.tokenizer_sha256(tok),
                          "vocab_size": vocab, "eos_id": eos},
            "splits": splits, "repairs": {"lone_surrogates": repairs.lone_surrogates}}


def _log_summary(splits: dict, seconds: float, encoder: DocumentEncoder, repairs: Repairs,
                 log) -> None:
    total = splits["train"]["tokens"] + splits["val"]["tokens"]
    log(f"wrote {splits['train']['tokens']:,} train tokens ({splits['train']['docs']:,} docs, "
        f"{len(splits['train']['files'])} files) and {splits['val']['tokens']:,} val tokens "
        f"({splits['val']['docs']:,} docs) in {seconds:.1f} s "
        f"({total / max(seconds, 1e-9):,.0f} tokens/s)")
    if encoder.whole:
        log(f"{encoder.whole:,} documents longer than {encoder.piece_chars:,} characters had no "
            "safe place to cut for this tokenizer and were encoded in one call each")
    if repairs.summary():
        log(repairs.summary())


def _batches(docs: Iterator[tuple[str, str]]) -> Iterator[list[tuple[str, str]]]:
    batch, chars = [], 0
    for item in docs:
        batch.append(item)
        chars += len(item[1])
        if chars >= _BATCH_CHARS or len(batch) >= _BATCH_DOCS:
            yield batch
            batch, chars = [], 0
    if batch:
        yield batch


def _encode_and_write(encoder: DocumentEncoder, batch, writers: dict, eos: int,
                      max_tokens: int | None, doc_start: np.ndarray) -> int:
    """Encode one batch of (split, text) and append the tokenizer's document start (its BOS
    policy, growlm.data.tokenizer.bos_policy) + each document + EOS; returns tokens written."""
    encoded = encoder.encode([text for _, text in batch])
    out: dict[str, list[np.ndarray]] = {"train": [], "val": []}
    counts = {"train": 0, "val": 0}
    eos_arr = np.array([eos], dtype=np.int64)
    budget = None if max_tokens is None else max_tokens - writers["train"].tokens
    for (split, _), ids in zip(batch, encoded):
        if split == "train" and budget is not None:
            if budget - counts["train"] <= 0:
                continue
            ids = ids[:max(0, budget - counts["train"] - 1 - doc_start.size)]  # room: start, EOS
        out[split] += [doc_start, ids, eos_arr]
        counts[split] += doc_start.size + ids.size + 1
        writers[split].docs += 1
    for split, arrays in out.items():
        if arrays:
            writers[split].write(np.concatenate(arrays))
    return counts["train"] + counts["val"]


def _check_counts(splits: dict, sources, val_sources, options) -> None:
    if splits["train"]["tokens"] == 0:
        raise GrowlmError("empty corpus: the inputs hold no text to train on "
                          f"({splits['val']['docs']} documents in total)")
    wants_val = options["val_fraction"] > 0 or val_sources
    if wants_val and splits["val"]["tokens"] == 0:
        if val_sources:
            raise GrowlmError("empty validation split: the --val inputs hold no text")
        n_docs = splits["train"]["docs"]
        hint = (" (.txt files are one document each; --txt-docs paragraph splits them)"
                if any(getattr(s, "fmt", "") == "text" for s in sources) else "")
        raise GrowlmError(f"empty validation split: {n_docs} documents × val fraction "
                          f"{options['val_fraction']} selects none; use more documents, a larger "
                          f"--val-fraction, --val FILES, or --val-fraction 0{hint}")

