"""Text sources for `prepare`: local files, globs and folders, the built-in corpus, HF datasets.

Each source yields documents (str) in a deterministic order and describes itself as a small
dict (for meta.json and the fingerprint that makes re-running prepare a no-op).

Documents per format:
- .txt / .md / .rst (optionally .gz): one document per file by default, because splitting real
  documents would put EOS tokens inside them; `txt_docs="paragraph"` splits on blank lines and
  `"line"` makes every non-empty line a document (e.g. for one-sentence-per-line corpora).
- .jsonl / .ndjson (optionally .gz): one JSON object per line, the document is `text_field`.
- .parquet: one row per document, column `text_field` (needs pyarrow).

JSON can spell a lone UTF-16 surrogate ("\\ud800", e.g. from text cut in the middle of an emoji
by a UTF-16 tool); no UTF-8 encoder accepts it. Such code points are replaced by U+FFFD and
counted in `Repairs`, which `prepare` reports and stores in meta.json.
"""

from __future__ import annotations

import glob as globlib
import gzip
import json
import re
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from growlm.data.builtin import BuiltinCorpus, is_builtin, parse_builtin
from growlm.errors import GrowlmError
from growlm.files import check_path

TEXT_SUFFIXES = (".txt", ".md", ".rst", ".txt.gz")
JSONL_SUFFIXES = (".jsonl", ".ndjson", ".jsonl.gz", ".ndjson.gz")
PARQUET_SUFFIXES = (".parquet",)
ALLOWED = TEXT_SUFFIXES + JSONL_SUFFIXES + PARQUET_SUFFIXES
TXT_DOCS = ("file", "paragraph", "line")
_BLANK_LINES = re.compile(r"\n[ \t\r]*\n")
_SURROGATE = re.compile("[\ud800-\udfff]")


class Repairs:
    """Documents whose text was changed so that it can be encoded, and where the first was."""

    def __init__(self):
        self.lone_surrogates = 0  # documents with at least one lone surrogate replaced
        self.first: str | None = None

    def clean(self, text: str, where: str) -> str:
        if _SURROGATE.search(text) is None:
            return text
        self.lone_surrogates += 1
        self.first = self.first or where
        return _SURROGATE.sub("\ufffd", text)

    def summary(self) -> str | None:
        if not self.lone_surrogates:
            return None
        return (f"replaced lone UTF-16 surrogates (invalid in UTF-8) by U+FFFD in "
                f"{self.lone_surrogates:,} documents (first: {self.first})")


@dataclass(frozen=True)
class HFDataset:
    """A dataset on the HF hub, read with the `datasets` library (optional dependency)."""

    name: str
    config: str | None = None
    split: str = "train"
    streaming: bool = True


@dataclass(frozen=True)
class FileSource:
    path: Path
    fmt: str  # "text" | "jsonl" | "parquet"

    def describe(self) -> dict:
        stat = self.path.stat()
        return {"kind": "file", "path": str(self.path), "format": self.fmt,
                "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}

    def documents(self, text_field: str, txt_docs: str, repairs: Repairs) -> Iterator[str]:
        if self.fmt == "text":
            return _text_documents(self.path, txt_docs)
        if self.fmt == "jsonl":
            return _jsonl_documents(self.path, text_field, repairs)
        return _parquet_documents(self.path, text_field)


@dataclass(frozen=True)
class BuiltinSource:
    corpus: BuiltinCorpus

    def describe(self) -> dict:
        return self.corpus.describe()

    def documents(self, text_field: str, txt_docs: str, repairs: Repairs) -> Iterator[str]:
        return self.corpus.documents()


@dataclass(frozen=True)
class HFSource:
    dataset: HFDataset

    def describe(self) -> dict:
        d = self.dataset
        # The hub gives no cheap content hash; name, config and split identify the data.
        return {"kind": "hf", "name": d.name, "config": d.config, "split": d.split}

    def documents(self, text_field: str, txt_docs: str, repairs: Repairs) -> Iterator[str]:
        return _hf_documents(self.dataset, text_field, repairs)


Source = FileSource | BuiltinSource | HFSource


def resolve_inputs(inputs: list) -> list[Source]:
    """Expand paths, globs and folders (sorted) into sources; GrowlmError for bad inputs."""
    sources: list[Source] = []
    for item in inputs:
        if isinstance(item, HFDataset):
            sources.append(HFSource(item))
        elif is_builtin(str(item)):
            sources.append(BuiltinSource(parse_builtin(str(item))))
        else:
            sources.extend(_resolve_path(str(item)))
    return sources


def _resolve_path(spec: str) -> list[FileSource]:
    path = check_path(spec, "input").expanduser()
    if path.is_file():
        return [FileSource(path.resolve(), _format_of(path, strict=True))]
    if path.is_dir():
        found = sorted(p for p in path.rglob("*") if p.is_file() and _format_of(p) is not None
                       and not any(part.startswith(".") for part in p.relative_to(path).parts))
        if not found:
            raise GrowlmError(f"folder {spec} holds no input files (allowed: {', '.join(ALLOWED)})")
        return [FileSource(p.resolve(), _format_of(p)) for p in found]
    if globlib.has_magic(spec):
        matches = sorted(Path(p) for p in globlib.glob(str(path), recursive=True))
        files = [p for p in matches if p.is_file()]
        if not files:
            raise GrowlmError(f"input pattern {spec!r} matches no files")
        return [FileSource(p.resolve(), _format_of(p, strict=True)) for p in files]
    raise GrowlmError(f"input path not found: {spec}")


def _format_of(path: Path, strict: bool = False) -> str | None:
    name = path.name.lower()
    for suffixes, fmt in ((TEXT_SUFFIXES, "text"), (JSONL_SUFFIXES, "jsonl"),
                          (PARQUET_SUFFIXES, "parquet")):
        if name.endswith(suffixes):
            return fmt
    if strict:
        raise GrowlmError(f"unsupported input file {path} (allowed: {', '.join(ALLOWED)}, "
                          "folders, globs, builtin:python)")
    return None


def _open_text(path: Path):
    if path.name.lower().endswith(".gz"):
        return gzip.open(path, "rt", encoding="utf-8")
    return open(path, encoding="utf-8")


def _text_documents(path: Path, txt_docs: str) -> Iterator[str]:
    try:
        with _open_text(path) as f:
            if txt_docs == "line":
                for line in f:
                    if line.strip():
                        yield line.rstrip("\r\n")
                return
            text = f.read()
    except (OSError, UnicodeDecodeError, EOFError, zlib.error) as e:
        raise GrowlmError(f"cannot read {path}: {_reason(e)}") from None
    if txt_docs == "paragraph":
        yield from (p for p in _BLANK_LINES.split(text) if p.strip())
    else:
        yield text


def _jsonl_documents(path: Path, text_field: str, repairs: Repairs) -> Iterator[str]:
    lineno = 0
    try:
        with _open_text(path) as f:
            for lineno, line in enumerate(f, 1):
                if not line.strip():
                    continue
                where = f"{path} line {lineno}"
                yield repairs.clean(_text_of(_parse_json(line, path, lineno), text_field, where),
                                    where)
    except (OSError, UnicodeDecodeError, EOFError, zlib.error) as e:
        raise GrowlmError(f"cannot read {path} (after line {lineno}): {_reason(e)}") from None


def _parse_json(line: str, path: Path, lineno: int) -> dict:
    try:
        row = json.loads(line)
    except json.JSONDecodeError as e:
        raise GrowlmError(f"{path} line {lineno}: not valid JSON ({e.msg})") from None
    if not isinstance(row, dict):
        raise GrowlmError(f"{path} line {lineno}: expected a JSON object, got {type(row).__name__}")
    return row


def _text_of(row: dict, text_field: str, where: str) -> str:
    if text_field not in row:
        fields = ", ".join(list(row)[:10]) or "none"
        raise GrowlmError(f"{where}: no {text_field!r} field (fields: {fields}); "
                          "choose the field with --text-field")
    text = row[text_field]
    if text is None:
        return ""
    if not isinstance(text, str):
        raise GrowlmError(f"{where}: field {text_field!r} is {type(text).__name__}, not text")
    return text


def _parquet_documents(path: Path, text_field: str) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise GrowlmError(f"reading {path} needs pyarrow: pip install pyarrow "
                          "(or pip install 'growlm[datasets]')") from None
    try:
        pf = pq.ParquetFile(path)
        columns = pf.schema_arrow.names
        if text_field not in columns:
            raise GrowlmError(f"{path}: no {text_field!r} column (columns: "
                              f"{', '.join(columns[:10])}); choose the column with --text-field")
        for batch in pf.iter_batches(columns=[text_field], batch_size=1024):
            for text in batch.column(0).to_pylist():
                if text is not None and not isinstance(text, str):
                    raise GrowlmError(f"{path}: column {text_field!r} holds "
                                      f"{type(text).__name__}, not text")
                yield text or ""
    except GrowlmError:
        raise
    except Exception as e:  # pyarrow raises its own ArrowInvalid/OSError for broken files
        raise GrowlmError(f"cannot read parquet file {path}: {_reason(e)}") from None


def _hf_documents(d: HFDataset, text_field: str, repairs: Repairs) -> Iterator[str]:
    try:
        import datasets
    except ImportError:
        raise GrowlmError(f"HF dataset {d.name!r} needs the datasets package: pip install "
                          "datasets (or pip install 'growlm[datasets]')") from None
    where = f"HF dataset {d.name!r}" + (f" ({d.config})" if d.config else "") + f" split {d.split!r}"
    try:
        ds = datasets.load_dataset(d.name, d.config, split=d.split, streaming=d.streaming)
        rows = iter(ds)
        index = 0
        for index, row in enumerate(rows):
            yield repairs.clean(_text_of(row, text_field, f"{where} row {index}"),
                                f"{where} row {index}")
    except GrowlmError:
        raise
    except Exception as e:  # network, auth, unknown name: all end up here
        raise GrowlmError(f"cannot load {where}: {_reason(e)} (is the network reachable? "
                          "offline: use local files or builtin:python)") from None


def _reason(e: BaseException) -> str:
    text = str(e).strip() or type(e).__name__
    return text.splitlines()[0][:300]
