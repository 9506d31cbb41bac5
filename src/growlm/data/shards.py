"""Token shards on disk: the writer used by `prepare` and the validated reader.

A prepared dataset is a folder with meta.json, tokenizer.json and raw little-endian
`{split}_{i:05d}.bin` files (uint16 when the vocabulary fits, else uint32). Each document is
followed by the EOS id, so every split ends with EOS. The splits of a folder are read as one
token stream each; shard boundaries carry no meaning.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from pathlib import Path

import numpy as np

from growlm.errors import GrowlmError

FORMAT = "growlm-shards"
VERSION = 1
DTYPES = {"uint16": np.dtype("<u2"), "uint32": np.dtype("<u4")}
DEFAULT_SHARD_TOKENS = 64 * 2**20
_PROBE_TOKENS = 4096  # tokens read at each end of a split for the cheap structure check


def dtype_for_vocab(vocab_size: int) -> str:
    return "uint16" if vocab_size <= 2**16 else "uint32"


def sha256_file(path: Path, chunk: int = 8 * 2**20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class ShardWriter:
    """Appends token arrays to `{split}_NNNNN.bin` files of at most `shard_tokens` tokens."""

    def __init__(self, folder: Path, split: str, dtype: str, shard_tokens: int):
        if shard_tokens <= 0:
            raise GrowlmError(f"shard size must be a positive number of tokens, got {shard_tokens}")
        self.folder, self.split, self.shard_tokens = Path(folder), split, shard_tokens
        self.dtype = DTYPES[dtype]
        self.tokens = 0
        self.docs = 0
        self.files: list[dict] = []
        self._file = None
        self._hash = None
        self._in_file = 0

    def write(self, ids: np.ndarray) -> None:
        """Append `ids`; an OSError (full disk, file-size limit) names the shard file."""
        data = np.ascontiguousarray(ids, dtype=self.dtype)
        with self._naming_errors():
            while data.size:
                if self._file is None:
                    self._open_next()
                take = min(data.size, self.shard_tokens - self._in_file)
                chunk = data[:take].tobytes()
                self._file.write(chunk)
                self._hash.update(chunk)
                self._in_file += take
                self.tokens += take
                data = data[take:]
                if self._in_file == self.shard_tokens:
                    self._close_current()

    def close(self) -> dict:
        """Finish the last file (flushed to disk); returns this split's entry for meta.json."""
        with self._naming_errors():
            self._close_current()
        return {"tokens": self.tokens, "docs": self.docs, "files": self.files}

    def discard(self) -> None:
        """Close an open file after a failure, without raising (the folder is thrown away)."""
        if self._file is not None:
            try:
                self._file.close()
            except OSError:
                pass
            self._file = None

    @contextlib.contextmanager
    def _naming_errors(self):
        try:
            yield
        except OSError as e:
            if e.filename or not self.files:
                raise
            raise OSError(e.errno, e.strerror, str(self.folder / self.files[-1]["name"])) from e

    def _open_next(self) -> None:
        name = f"{self.split}_{len(self.files):05d}.bin"
        self.files.append({"name": name})
        self._file = open(self.folder / name, "wb")
        self._hash = hashlib.sha256()
        self._in_file = 0

    def _close_current(self) -> None:
        if self._file is None:
            return
        file, self._file = self._file, None
        with file:
            file.flush()
            os.fsync(file.fileno())  # a folder that looks finished must survive a power cut
        self.files[-1].update(tokens=self._in_file, bytes=self._in_file * self.dtype.itemsize,
                              sha256=self._hash.hexdigest())


class TokenStream:
    """One split's shards read as a single 1-D array (memmaps; nothing is loaded up front).

    Supports len(), integer and contiguous-slice indexing (slices may cross shard files),
    `.dtype`, `.shape` and np.asarray (which does load everything).
    """

    def __init__(self, arrays: list[np.ndarray], fingerprint: str):
        self._arrays = [a for a in arrays if len(a)]
        self._starts = np.cumsum([0] + [len(a) for a in self._arrays])
        self.fingerprint = fingerprint
        self.dtype = self._arrays[0].dtype if self._arrays else np.dtype("<u2")

    def __len__(self) -> int:
        return int(self._starts[-1])

    @property
    def shape(self) -> tuple[int]:
        return (len(self),)

    def __iter__(self):
        for array in self._arrays:
            yield from array

    def __getitem__(self, key):
        n = len(self)
        if isinstance(key, slice):
            start, stop, step = key.indices(n)
            if step != 1:
                return np.asarray(self)[key]
            return self._range(start, max(start, stop))
        index = int(key)
        if index < 0:
            index += n
        if not 0 <= index < n:
            raise IndexError(f"token index {key} out of range for {n} tokens")
        i = int(np.searchsorted(self._starts, index, side="right")) - 1
        return self._arrays[i][index - self._starts[i]]

    def _range(self, start: int, stop: int) -> np.ndarray:
        first = int(np.searchsorted(self._starts, start, side="right")) - 1
        parts = []
        i = max(first, 0)
        while start < stop and i < len(self._arrays):
            lo = start - self._starts[i]
            hi = min(stop, self._starts[i + 1]) - self._starts[i]
            parts.append(self._arrays[i][lo:hi])
            start = int(self._starts[i] + hi)
            i += 1
        if len(parts) == 1:
            return np.asarray(parts[0])
        return np.concatenate(parts) if parts else np.empty(0, dtype=self.dtype)

    def __array__(self, dtype=None, copy=None):
        out = self._range(0, len(self))
        return out.astype(dtype) if dtype is not None else out


class TokenShards:
    """A validated prepared-dataset folder (see open_shards)."""

    def __init__(self, path: Path, meta: dict):
        self.path = path
        self.meta = meta
        self.dtype = DTYPES[meta["dtype"]]
        tok = meta["tokenizer"]
        self.vocab_size: int = int(tok["vocab_size"])
        self.eos_id: int = int(tok["eos_id"])
        self.tokenizer_sha256: str = tok["sha256"]
        self.tokenizer_path = path / "tokenizer.json"
        self.fingerprint: str = meta["fingerprint"]
        self._streams: dict[str, TokenStream] = {}

    @property
    def splits(self) -> list[str]:
        return [s for s, entry in self.meta["splits"].items() if entry["tokens"] > 0]

    def _entry(self, split: str) -> dict:
        entry = self.meta["splits"].get(split)
        if entry is None or entry["tokens"] == 0:
            raise GrowlmError(f"{self.path} has no {split!r} split "
                              f"(it has: {', '.join(self.splits)})")
        return entry

    def num_tokens(self, split: str = "train") -> int:
        """Tokens in `split`; 0 when the folder has no such split (tokens() raises then)."""
        entry = self.meta["splits"].get(split)
        return int(entry["tokens"]) if entry else 0

    def num_docs(self, split: str = "train") -> int:
        return int(self._entry(split)["docs"])

    def tokens(self, split: str = "train") -> TokenStream:
        if split not in self._streams:
            arrays = [np.memmap(self.path / f["name"], dtype=self.dtype, mode="r")
                      for f in self._entry(split)["files"] if f["tokens"] > 0]
            self._streams[split] = TokenStream(arrays, f"{self.fingerprint}/{split}")
        return self._streams[split]

    def tokenizer(self):
        from growlm.data.tokenizer import load_tokenizer

        return load_tokenizer(self.tokenizer_path)

    def verify(self, check_hashes: bool = True) -> dict:
        """Re-check everything; with check_hashes, recompute every file's sha256 (reads all)."""
        _check_files(self.path, self.meta)
        _check_structure(self)
        checked = 0
        if check_hashes:
            for entry in self.meta["splits"].values():
                for f in entry["files"]:
                    if sha256_file(self.path / f["name"]) != f["sha256"]:
                        raise GrowlmError(f"shard {self.path / f['name']} is corrupted: its sha256 "
                                          "differs from meta.json (re-run growlm data prepare)")
                    checked += 1
        return {"splits": {s: self.num_tokens(s) for s in self.splits}, "files_hashed": checked}

    def __repr__(self) -> str:
        counts = ", ".join(f"{s}={self.num_tokens(s)}" for s in self.splits)
        return f"TokenShards({str(self.path)!r}, {counts}, vocab={self.vocab_size})"


def open_shards(path: str | Path) -> TokenShards:
    """Open a prepared folder after checking meta.json, the files' presence and sizes, and
    (cheaply) their structure. GrowlmError with one line naming the problem otherwise."""
    folder = Path(path).expanduser()
    if folder.name == "meta.json" and folder.is_file():
        folder = folder.parent
    if not folder.is_dir():
        raise GrowlmError(f"shard folder not found: {path} (make one with growlm data prepare)")
    meta = read_meta(folder)
    _check_files(folder, meta)
    shards = TokenShards(folder, meta)
    _check_structure(shards)
    return shards


def read_meta(folder: Path) -> dict:
    meta_path = folder / "meta.json"
    if not meta_path.is_file():
        raise GrowlmError(f"{folder} is not a prepared shard folder: meta.json is missing "
                          "(make one with growlm data prepare)")
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise GrowlmError(f"cannot read {meta_path}: {e}") from None
    _check_meta(meta, meta_path)
    return meta


def _check_meta(meta, meta_path: Path) -> None:
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise GrowlmError(f"{meta_path}: unknown format {found!r} (expected {FORMAT!r})")
    if meta.get("version") != VERSION:
        raise GrowlmError(f"{meta_path}: shard format version {meta.get('version')!r} is not "
                          f"supported (this growlm reads version {VERSION}); prepare again")
    if meta.get("dtype") not in DTYPES:
        raise GrowlmError(f"{meta_path}: dtype {meta.get('dtype')!r} is not one of "
                          f"{', '.join(DTYPES)}")
    try:
        tok = meta["tokenizer"]
        int(tok["vocab_size"]), int(tok["eos_id"]), str(tok["sha256"]), str(meta["fingerprint"])
        for entry in meta["splits"].values():
            int(entry["tokens"]), int(entry["docs"])
            for f in entry["files"]:
                str(f["name"]), int(f["tokens"]), int(f["bytes"]), str(f["sha256"])
    except (KeyError, TypeError, ValueError, AttributeError) as e:
        raise GrowlmError(f"{meta_path}: malformed metadata ({type(e).__name__}: {e})") from None
    if "train" not in meta["splits"]:
        raise GrowlmError(f"{meta_path}: no 'train' split")
    if tok["vocab_size"] > 2 ** (8 * DTYPES[meta["dtype"]].itemsize):
        raise GrowlmError(f"{meta_path}: vocab size {tok['vocab_size']} does not fit {meta['dtype']}")


def _check_files(folder: Path, meta: dict) -> None:
    itemsize = DTYPES[meta["dtype"]].itemsize
    tok_path = folder / "tokenizer.json"
    if not tok_path.is_file():
        raise GrowlmError(f"{folder}: tokenizer.json is missing")
    for split, entry in meta["splits"].items():
        for f in entry["files"]:
            path = folder / f["name"]
            if Path(f["name"]).name != f["name"]:
                raise GrowlmError(f"{folder}/meta.json: shard name {f['name']!r} is not a plain "
                                  "file name")
            if not path.is_file():
                raise GrowlmError(f"missing shard {path} (listed in meta.json; prepare again)")
            size = path.stat().st_size
            if size != f["bytes"] or f["bytes"] != f["tokens"] * itemsize:
                raise GrowlmError(f"shard {path} is {size} bytes but meta.json says {f['bytes']} "
                                  f"({f['tokens']} tokens × {itemsize} bytes); it is truncated or "
                                  "was modified: prepare again")
        if sum(f["tokens"] for f in entry["files"]) != entry["tokens"]:
            raise GrowlmError(f"{folder}/meta.json: the {split} files do not add up to "
                              f"{entry['tokens']} tokens")


def _check_structure(shards: TokenShards) -> None:
    """Cheap checks that the bytes are tokens of this tokenizer: ids < vocab at both ends of
    each split, the split ends with EOS, and tokenizer.json is the one meta.json names."""
    digest = sha256_file(shards.tokenizer_path)
    if digest != shards.tokenizer_sha256:
        raise GrowlmError(f"{shards.tokenizer_path} does not match the tokenizer hash in "
                          "meta.json (the folder mixes files from different prepares)")
    for split in shards.splits:
        stream = shards.tokens(split)
        n = len(stream)
        probe = np.concatenate([stream[:_PROBE_TOKENS], stream[max(0, n - _PROBE_TOKENS):]])
        if int(probe.max()) >= shards.vocab_size:
            raise GrowlmError(f"{shards.path}: {split} tokens contain id {int(probe.max())} ≥ "
                              f"vocab size {shards.vocab_size} (corrupted shards)")
        if int(stream[n - 1]) != shards.eos_id:
            raise GrowlmError(f"{shards.path}: the {split} split does not end with EOS "
                              f"{shards.eos_id} (corrupted shards)")
