"""`prepare`: text sources → token shards (see shards.py for the format).

- Documents are read in a deterministic order (sources.py); each opens with the BOS policy's
  start tokens (growlm.data.tokenizer: `<s>` for a Llama-2-layout tokenizer, none for GPT-2's)
  and is followed by EOS.
- Validation split by document: with fraction f, document i (counting non-empty documents
  over all inputs) is held out when floor((i+1)·f) > floor(i·f). That keeps exactly
  floor(N·f) documents, spread evenly over the corpus, and decides each document without
  looking ahead (streaming works). `val_inputs` replaces this with separate files.
- Tokenization runs in the `tokenizers` Rust thread pool (all cores unless `workers` is set).
  Documents longer than ~1M characters are encoded in pieces cut after a newline that sits
  between two non-space characters, where byte-level BPE pre-tokenization never merges, so
  the ids equal encoding the whole document.
- All files are written into a hidden temporary folder beside OUT_DIR, meta.json last, and
  the folder is renamed into place at the end. An interrupted run leaves no folder that looks
  complete; its leftover temporary folder is removed by the next run.
- A fingerprint of the inputs (paths, sizes, mtimes; built-in listing; HF name/config/split),
  the tokenizer and the options is stored in meta.json; re-running with the same fingerprint
  is a no-op.
"""

from __future__ import annotations

import glob
import hashlib
import itertools
import json
import os
import re
import shutil
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from growlm import __version__
from growlm.data import tokenizer as tk
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
from growlm.data.sources import TXT_DOCS, HFDataset, Source, resolve_inputs
from growlm.errors import GrowlmError

DEFAULT_TOKENIZER_SAMPLE_CHARS = 200_000_000
_BATCH_CHARS = 4 * 2**20
_BATCH_DOCS = 4096
_PIECE_CHARS = 2**20
_CUT = re.compile(r"(?<=\S)\n(?=\S)")


def prepare(out_dir: str | Path, inputs: Sequence[str | Path | HFDataset], *,
            tokenizer: str | Path | None = None, train_vocab: int | None = None,
            text_field: str = "text", val_fraction: float = 0.01,
            val_inputs: Sequence[str | Path | HFDataset] | None = None, txt_docs: str = "file",
            max_tokens: int | None = None, shard_tokens: int = DEFAULT_SHARD_TOKENS,
            workers: int | None = None,
            tokenizer_sample_chars: int = DEFAULT_TOKENIZER_SAMPLE_CHARS,
            overwrite: bool = False, progress: bool = True, log=print) -> TokenShards:
    """Tokenize `inputs` into shards in `out_dir` and return them opened.

    Give exactly one of `tokenizer` (file, folder or hub name; see load_tokenizer) or
    `train_vocab` (train a byte-level BPE of that size on the training documents, at most
    `tokenizer_sample_chars` characters of them). With `val_inputs`, `val_fraction` is unused.
    """
    _check_options(tokenizer, train_vocab, val_fraction, txt_docs, max_tokens, shard_tokens,
                   workers)
    if val_inputs:
        val_fraction = 0.0
    sources = resolve_inputs(list(inputs))
    val_sources = resolve_inputs(list(val_inputs or []))
    if not sources:
        raise GrowlmError("no inputs given: name files, folders, globs, builtin:python or an "
                          "HF dataset")
    tok = tk.load_tokenizer(tokenizer) if tokenizer is not None else None
    options = {"text_field": text_field, "val_fraction": val_fraction, "txt_docs": txt_docs,
               "max_tokens": max_tokens, "shard_tokens": shard_tokens}
    described = [s.describe() for s in sources]
    val_described = [s.describe() for s in val_sources]
    tok_identity = (tk.tokenizer_sha256(tok) if tok is not None else
                    {"train_vocab": train_vocab, "sample_chars": tokenizer_sample_chars})
    fingerprint = _fingerprint(described, val_described, tok_identity, options)

    out = Path(out_dir).expanduser()
    if _up_to_date(out, fingerprint, overwrite, log):
        return open_shards(out)
    if workers:
        # The Rust pool reads this when it starts, i.e. at the first parallel encode.
        os.environ["RAYON_NUM_THREADS"] = str(workers)
    tmp = _make_temp_dir(out)
    try:
        if tok is None:
            tok = _train_tokenizer(sources, train_vocab, val_fraction, text_field, txt_docs,
                                   tokenizer_sample_chars, log)
        meta = _write_all(tmp, tok, str(tokenizer) if tokenizer is not None else None,
                          sources, val_sources, options, progress, log)
        meta.update(sources=described, val_sources=val_described, options=options,
                    fingerprint=fingerprint, growlm_version=__version__)
        _write_json(tmp / "meta.json", meta)  # last: its presence marks a complete folder
        _install(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return open_shards(out)


def _check_options(tokenizer, train_vocab, val_fraction, txt_docs, max_tokens, shard_tokens,
                   workers) -> None:
    if (tokenizer is None) == (train_vocab is None):
        raise GrowlmError("give exactly one of a tokenizer (--tokenizer FILE|DIR|NAME) or a "
                          "vocab size to train one (--train-tokenizer N)")
    if not 0.0 <= val_fraction < 1.0:
        raise GrowlmError(f"validation fraction must be in [0, 1), got {val_fraction}")
    if txt_docs not in TXT_DOCS:
        raise GrowlmError(f"txt_docs {txt_docs!r} is not one of {', '.join(TXT_DOCS)}")
    if max_tokens is not None and max_tokens <= 1:
        raise GrowlmError(f"max tokens must be more than 1, got {max_tokens}")
    if shard_tokens <= 0:
        raise GrowlmError(f"shard size must be a positive number of tokens, got {shard_tokens}")
    if workers is not None and workers < 0:
        raise GrowlmError(f"workers must be ≥ 0 (0 = all cores), got {workers}")


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


def _make_temp_dir(out: Path) -> Path:
    out.parent.mkdir(parents=True, exist_ok=True)
    # Leftovers of killed runs: their temp folder, or the old output they were replacing.
    for kind in ("tmp", "old"):
        for stale in out.parent.glob(f".{glob.escape(out.name)}.{kind}-*"):
            pid = stale.name.rsplit("-", 1)[-1]
            if not (pid.isdigit() and _pid_alive(int(pid))):
                shutil.rmtree(stale, ignore_errors=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


def _install(tmp: Path, out: Path) -> None:
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
    os.replace(tmp, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_json(path: Path, obj: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())


def split_documents(sources: list[Source], val_sources: list[Source], val_fraction: float,
                    text_field: str, txt_docs: str, stop=lambda: False
                    ) -> Iterator[tuple[str, str]]:
    """(split, text) for every non-empty document; `stop()` ends the training sources early."""
    index = 0
    for source in sources:
        for text in source.documents(text_field, txt_docs):
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
        for text in source.documents(text_field, txt_docs):
            if text and not text.isspace():
                yield "val", text


def _train_tokenizer(sources, vocab, val_fraction, text_field, txt_docs, max_chars, log):
    def sample() -> Iterator[str]:
        used = 0
        for split, text in split_documents(sources, [], val_fraction, text_field, txt_docs):
            if split == "train":
                yield text
                used += len(text)
                if used >= max_chars:
                    return

    log(f"training a byte-level BPE tokenizer (vocab {vocab}) on the training documents")
    start = time.perf_counter()
    tok = tk.train_bpe(sample(), vocab)
    log(f"tokenizer trained in {time.perf_counter() - start:.1f} s "
        f"(vocab {tk.vocab_size(tok)})")
    return tok


def _write_all(tmp: Path, tok, tok_name: str | None, sources, val_sources, options,
               progress: bool, log) -> dict:
    """Write tokenizer.json and the shards into tmp; returns meta.json's core fields."""
    (tmp / "tokenizer.json").write_text(tk.tokenizer_json(tok), encoding="utf-8")
    vocab, eos = tk.vocab_size(tok), tk.eos_id(tok)
    dtype = dtype_for_vocab(vocab)
    writers = {split: ShardWriter(tmp, split, dtype, options["shard_tokens"])
               for split in ("train", "val")}
    max_tokens = options["max_tokens"]
    encoder = tk.encoder_for_data(tok)
    doc_start = np.array(tk.bos_policy(tok).start, dtype=np.int64)
    docs = split_documents(sources, val_sources, options["val_fraction"], options["text_field"],
                           options["txt_docs"],
                           stop=lambda: max_tokens is not None
                           and writers["train"].tokens >= max_tokens)
    start = time.perf_counter()
    with _progress_bar(progress) as bar:
        for batch in _batches(docs):
            written = _encode_and_write(encoder, batch, writers, eos, max_tokens, doc_start)
            bar.update(written)
            bar.set_postfix(docs=writers["train"].docs + writers["val"].docs, refresh=False)
    splits = {name: w.close() for name, w in writers.items()}
    _check_counts(splits, sources, val_sources, options)
    seconds = time.perf_counter() - start
    total = splits["train"]["tokens"] + splits["val"]["tokens"]
    log(f"wrote {splits['train']['tokens']:,} train tokens ({splits['train']['docs']:,} docs, "
        f"{len(splits['train']['files'])} files) and {splits['val']['tokens']:,} val tokens "
        f"({splits['val']['docs']:,} docs) in {seconds:.1f} s "
        f"({total / max(seconds, 1e-9):,.0f} tokens/s)")
    if splits["val"]["tokens"] == 0:
        del splits["val"]
    name = tok_name or f"byte-level BPE {vocab} trained on the inputs"
    return {"format": FORMAT, "version": VERSION, "dtype": dtype,
            "tokenizer": {"name": name, "sha256": tk.tokenizer_sha256(tok),
                          "vocab_size": vocab, "eos_id": eos},
            "splits": splits}


def _progress_bar(enabled: bool):
    from tqdm.auto import tqdm

    return tqdm(desc="tokenizing", unit="tok", unit_scale=True, disable=not enabled,
                dynamic_ncols=True)


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


def _encode_and_write(encoder, batch, writers: dict, eos: int, max_tokens: int | None,
                      doc_start: np.ndarray) -> int:
    """Encode one batch of (split, text) and append start + each document + EOS; returns
    tokens written."""
    pieces, owner = [], []
    for i, (_, text) in enumerate(batch):
        for piece in _pieces(text):
            pieces.append(piece)
            owner.append(i)
    encode = getattr(encoder, "encode_batch_fast", encoder.encode_batch)
    encodings = encode(pieces, add_special_tokens=False)
    per_doc: list[list] = [[] for _ in batch]
    for i, enc in zip(owner, encodings):
        per_doc[i].append(enc.ids)
    out: dict[str, list[np.ndarray]] = {"train": [], "val": []}
    counts = {"train": 0, "val": 0}
    eos_arr = np.array([eos], dtype=np.int64)
    budget = None if max_tokens is None else max_tokens - writers["train"].tokens
    for (split, _), parts in zip(batch, per_doc):
        ids = (np.array(parts[0], dtype=np.int64) if len(parts) == 1 else
               np.fromiter(itertools.chain.from_iterable(parts), dtype=np.int64))
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


def _pieces(text: str) -> list[str]:
    if len(text) <= _PIECE_CHARS:
        return [text]
    pieces, start = [], 0
    while len(text) - start > _PIECE_CHARS:
        cuts = [m.end() for m in _CUT.finditer(text, start + _PIECE_CHARS // 2,
                                               start + _PIECE_CHARS)]
        cut = cuts[-1] if cuts else start + _PIECE_CHARS
        pieces.append(text[start:cut])
        start = cut
    pieces.append(text[start:])
    return pieces


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
