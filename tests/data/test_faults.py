"""`growlm data prepare` with bad input, a full disk, a file-size limit and signals.

Every case must give its exit code, exactly one line on stderr naming the problem, no
traceback, and leave nothing behind: no output folder, no temporary folder.
"""

from __future__ import annotations

import errno
import gzip
import json
import os
import re
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from growlm.cli import main
from growlm.data import prepare
from growlm.data.shards import ShardWriter

VOCAB = "300"


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory) -> Path:
    """A small trained tokenizer, so that cases needing one skip the training."""
    folder = tmp_path_factory.mktemp("tok")
    (folder / "a.txt").write_text("the model grows in stages and keeps what it learned\n" * 50)
    shards = prepare(folder / "s", [folder / "a.txt"], train_vocab=300, val_fraction=0,
                     progress=False, log=lambda *_: None)
    return shards.tokenizer_path


def _docs(t: Path, n: int = 20) -> Path:
    rows = [{"text": f"document {i} about frozen layers and grown models"} for i in range(n)]
    (t / "docs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return t / "docs.jsonl"


def _gz(path: Path, text: str, keep: float = 1.0, flip: int | None = None) -> Path:
    data = bytearray(gzip.compress(text.encode(), mtime=0))
    if flip is not None:
        data[flip] ^= 0xFF
    path.write_bytes(bytes(data[:int(len(data) * keep)]))
    return path


def _parquet(path: Path, **columns) -> Path:
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    pq.write_table(pa.table(columns), path)
    return path


def _prepare(t: Path, *inputs, extra=(), vocab=VOCAB, out: str | Path | None = None):
    return ["data", "prepare", str(out or t / "out"), *map(str, inputs),
            "--train-tokenizer", vocab, "--val-fraction", "0", "--quiet", *extra]


def _empty_folder(t: Path) -> Path:
    (t / "texts").mkdir()
    for i in range(3):
        (t / "texts" / f"{i}.txt").write_text(" \n" if i else "")
    return t / "texts"


def _folder_without_text(t: Path) -> Path:
    (t / "csvs").mkdir()
    (t / "csvs" / "a.csv").write_text("a,b\n")
    return t / "csvs"


def _dangling(t: Path) -> Path:
    (t / "gone.txt").symlink_to(t / "missing-target.txt")
    return t / "gone.txt"


def _no_eos_tokenizer(t: Path, tok: Path) -> Path:
    data = json.loads(tok.read_text())
    data["added_tokens"] = []
    data["model"]["vocab"].pop("<|endoftext|>")
    (t / "noeos.json").write_text(json.dumps(data))
    return t / "noeos.json"


@dataclass
class Case:
    id: str
    setup: Callable[[Path, Path], list[str]]  # (tmp, tokenizer file) -> argv
    match: str
    code: int = 2


CASES = [
    # inputs
    Case("dangling-symlink", lambda t, k: _prepare(t, _dangling(t)), r"input path not found"),
    Case("folder-without-text-files", lambda t, k: _prepare(t, _folder_without_text(t)),
         r"holds no input files \(allowed: .txt"),
    Case("folder-of-empty-texts", lambda t, k: _prepare(t, _empty_folder(t)), r"empty corpus"),
    Case("truncated-jsonl-gz", lambda t, k: _prepare(
        t, _gz(t / "a.jsonl.gz", '{"text": "some words"}\n' * 2000, keep=0.5)),
        r"cannot read .*a\.jsonl\.gz \(after line \d+\)"),
    Case("truncated-txt-gz", lambda t, k: _prepare(t, _gz(t / "a.txt.gz", "words " * 5000, 0.5)),
         r"cannot read .*a\.txt\.gz"),
    Case("damaged-gzip-stream", lambda t, k: _prepare(
        t, _gz(t / "b.jsonl.gz", '{"text": "some words"}\n' * 2000, flip=12)),
        r"cannot read .*b\.jsonl\.gz \(after line 0\): Error -3 while decompressing"),
    Case("not-gzip", lambda t, k: _prepare(t, _file(t / "x.jsonl.gz", b"plain")),
         r"cannot read .*x\.jsonl\.gz"),
    Case("parquet-without-field", lambda t, k: _prepare(t, _parquet(t / "p.parquet", body=["a"])),
         r"p\.parquet: no 'text' column \(columns: body\)"),
    Case("parquet-with-numbers", lambda t, k: _prepare(t, _parquet(t / "p.parquet", text=[1, 2])),
         r"column 'text' holds int, not text"),
    Case("damaged-parquet", lambda t, k: _prepare(t, _file(t / "d.parquet", b"PAR1 not really")),
         r"cannot read parquet file .*d\.parquet"),
    Case("jsonl-array-row", lambda t, k: _prepare(t, _file(t / "a.jsonl", b'{"text": "ok"}\n[1]\n')),
         r"a\.jsonl line 2: expected a JSON object"),
    Case("jsonl-number-text", lambda t, k: _prepare(t, _file(t / "a.jsonl", b'{"text": 5}\n')),
         r"a\.jsonl line 1: field 'text' is int, not text"),
    Case("jsonl-missing-field", lambda t, k: _prepare(t, _file(t / "a.jsonl", b'{"body": "x"}\n')),
         r"a\.jsonl line 1: no 'text' field \(fields: body\)"),
    Case("jsonl-not-utf8", lambda t, k: _prepare(t, _file(t / "a.jsonl", b'{"text": "caf\xe9"}\n')),
         r"cannot read .*a\.jsonl .*utf-8"),
    Case("unsupported-suffix", lambda t, k: _prepare(t, _file(t / "a.csv", b"x")),
         r"unsupported input file"),
    Case("glob-matches-nothing", lambda t, k: _prepare(t, t / "*.jsonl"), r"matches no files"),
    Case("unknown-builtin", lambda t, k: _prepare(t, "builtin:perl"), r"unknown built-in corpus"),
    Case("nul-in-input-path", lambda t, k: _prepare(t, "a\x00b.txt"),
         r"input: 'a\\x00b\.txt' contains a NUL byte"),
    Case("empty-validation-inputs", lambda t, k: _prepare(t, _docs(t)) [:-3] + [
        "--val", str(_empty_folder(t)), "--quiet"], r"empty validation split: the --val inputs"),
    # outputs
    Case("out-under-a-file", lambda t, k: _prepare(t, _docs(t), out=_touch(t / "f") / "out"),
         r"output folder: .*f/out lies under .*f, which is a file"),
    Case("out-is-a-file", lambda t, k: _prepare(t, _docs(t), out=_touch(t / "f")), r"is a file"),
    Case("nul-in-out-path", lambda t, k: _prepare(t, _docs(t), out=t / "o\x00ut"),
         r"output folder: .* contains a NUL byte"),
    # tokenizers
    Case("tokenizer-garbled", lambda t, k: _with_tokenizer(t, _touch(t / "tok.json", "{")),
         r"cannot read tokenizer file .*tok\.json"),
    Case("tokenizer-without-eos", lambda t, k: _with_tokenizer(t, _no_eos_tokenizer(t, k)),
         r"no end-of-document token"),
    Case("tokenizer-nul-path", lambda t, k: _with_tokenizer(t, "tok\x00.json"),
         r"tokenizer: .* contains a NUL byte"),
    # numbers
    Case("vocab-too-large", lambda t, k: _prepare(t, _docs(t), vocab="99999999999"),
         r"BPE vocab size 99999999999 is too large: it must be in \[258, 4194304\]"),
    Case("vocab-too-small", lambda t, k: _prepare(t, _docs(t), vocab="100"), r"too small"),
    Case("vocab-fraction", lambda t, k: _prepare(t, _docs(t), vocab="300.5"),
         r"--train-tokenizer '300\.5' is not a whole number"),
    Case("vocab-negative", lambda t, k: _prepare(t, _docs(t), vocab="-300"),
         r"cannot read --train-tokenizer '-300': expected a whole count"),
    Case("max-tokens-overflow", lambda t, k: _prepare(t, _docs(t), extra=["--max-tokens", "1e400"]),
         r"--max-tokens '1e400' is too large"),
    Case("max-tokens-one", lambda t, k: _prepare(t, _docs(t), extra=["--max-tokens", "1"]),
         r"max tokens must be more than 1"),
    Case("shard-tokens-zero", lambda t, k: _prepare(t, _docs(t), extra=["--shard-tokens", "0"]),
         r"shard size must be a positive"),
    Case("workers-huge", lambda t, k: _prepare(t, _docs(t), extra=["--workers", "99999999999"]),
         r"workers must be in \[0, 1024\]"),
    Case("workers-negative", lambda t, k: _prepare(t, _docs(t), extra=["--workers", "-2"]),
         r"workers must be in"),
    Case("val-fraction-nan", lambda t, k: _prepare(t, _docs(t), extra=["--val-fraction", "nan"]),
         r"validation fraction must be in \[0, 1\), got nan"),
    Case("val-fraction-one", lambda t, k: _prepare(t, _docs(t), extra=["--val-fraction", "1"]),
         r"validation fraction"),
    Case("tokenizer-sample-zero", lambda t, k: _prepare(t, _docs(t),
                                                         extra=["--tokenizer-sample", "0"]),
         r"tokenizer sample must be a positive"),
    # JSON output
    Case("info-json-under-a-file", lambda t, k: ["data", "info", str(k.parent), "--json",
                                                 str(_touch(t / "f") / "x.json")],
         r"--json: .*f/x\.json lies under .*f, which is a file"),
]


def _file(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def _touch(path: Path, text: str = "x") -> Path:
    path.write_text(text)
    return path


def _with_tokenizer(t: Path, tok) -> list[str]:
    argv = _prepare(t, _docs(t))
    i = argv.index("--train-tokenizer")
    return argv[:i] + ["--tokenizer", str(tok)] + argv[i + 2:]


def _leftovers(t: Path, before: set[str]) -> list[str]:
    return sorted(str(p) for p in t.rglob("*") if str(p) not in before)


def _run(argv, capsys) -> tuple[int, list[str]]:
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:  # argparse
        code = e.code
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err
    return code, err.strip().splitlines()


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_is_one_line_and_leaves_nothing(case, tmp_path, tokenizer_file, capsys):
    argv = case.setup(tmp_path, tokenizer_file)
    before = {str(p) for p in tmp_path.rglob("*")}
    code, lines = _run(argv, capsys)
    assert code == case.code and len(lines) == 1, (code, lines)
    assert re.search(case.match, lines[0]), lines[0]
    assert _leftovers(tmp_path, before) == []


def test_the_table_is_broad():
    assert len(CASES) >= 35


def test_unreadable_input(tmp_path, capsys):
    path = _docs(tmp_path)
    path.chmod(0)
    try:
        if os.access(path, os.R_OK):
            pytest.skip("running as a user who reads any file (root)")
        code, lines = _run(_prepare(tmp_path, path), capsys)
    finally:
        path.chmod(0o644)
    assert code == 2 and len(lines) == 1 and "Permission denied" in lines[0]


def test_lone_surrogate_is_replaced_and_reported(tmp_path, capsys, tokenizer_file):
    path = tmp_path / "s.jsonl"
    path.write_text('{"text": "fine text"}\n{"text": "broken \\ud800 emoji"}\n'
                    '{"text": "pair \\ud83d\\ude00 is fine"}\n')
    argv = _with_tokenizer(tmp_path, tokenizer_file)
    argv[3] = str(path)
    code, _ = _run(argv, capsys)
    assert code == 0
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["repairs"] == {"lone_surrogates": 1}
    assert main(["data", "info", str(tmp_path / "out")]) == 0
    messages = []
    prepare(tmp_path / "again", [path], tokenizer=tokenizer_file, val_fraction=0,
            progress=False, log=messages.append)
    assert any(re.search(r"U\+FFFD in 1 documents \(first: .*s\.jsonl line 2\)", m)
               for m in messages)


def _interrupt_on_second_write(exc_factory):
    original, calls = ShardWriter.write, {"n": 0}

    def write(self, ids):
        calls["n"] += 1
        if calls["n"] == 2:
            exc_factory()
        original(self, ids)
    return write


def _sigterm():
    os.kill(os.getpid(), signal.SIGTERM)


def _ctrl_c():
    raise KeyboardInterrupt


@pytest.mark.parametrize("how,code,word", [(_ctrl_c, 130, "interrupted"),
                                           (_sigterm, 143, "terminated")])
def test_signals_while_writing_exit_with_one_line(how, code, word, tmp_path, tokenizer_file,
                                                  capsys, monkeypatch):
    rows = "".join(json.dumps({"text": f"doc {i} " * 300}) + "\n" for i in range(400))
    (tmp_path / "big.jsonl").write_text(rows)
    argv = _with_tokenizer(tmp_path, tokenizer_file)
    argv[3] = str(tmp_path / "big.jsonl")
    # The package's `prepare` attribute is the function; patch the module itself.
    monkeypatch.setattr(sys.modules["growlm.data.prepare"], "_BATCH_DOCS", 50)  # many writes
    monkeypatch.setattr(ShardWriter, "write", _interrupt_on_second_write(how))
    before = {str(p) for p in tmp_path.rglob("*")}
    got, lines = _run(argv, capsys)
    assert got == code and len(lines) == 1 and word in lines[0], lines
    assert _leftovers(tmp_path, before) == []
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handler restored


def test_ctrl_c_while_training_the_tokenizer(tmp_path, capsys, monkeypatch):
    import growlm.data.tokenizer as tk

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(tk, "train_bpe", interrupted)
    before = {str(p) for p in tmp_path.rglob("*")}
    code, lines = _run(_prepare(tmp_path, _docs(tmp_path)), capsys)
    assert code == 130 and len(lines) == 1
    assert _leftovers(tmp_path, before) == [str(tmp_path / "docs.jsonl")]


# ---------------------------------------------------------------- real faults of the disk

def _corpus(t: Path, n_docs: int = 600) -> Path:
    words = "the model grows in stages and each stage reuses what the last one learned".split()
    rows = [{"text": " ".join(words[(i * j) % len(words)] for j in range(200))}
            for i in range(n_docs)]
    (t / "docs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return t / "docs.jsonl"


@pytest.fixture
def tmpfs(tmp_path):
    """mount_tmpfs(bytes) -> a folder on a fresh tmpfs of that size (unmounted afterwards)."""
    mounted = []

    def mount(size: int) -> Path:
        folder = tmp_path / f"tmpfs{len(mounted)}"
        folder.mkdir()
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs",
                               str(folder)], capture_output=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
        mounted.append(folder)
        return folder

    yield mount
    for folder in mounted:
        subprocess.run(["umount", str(folder)], check=False)


def test_full_disk_while_writing_shards(tmp_path, tmpfs, tokenizer_file, capsys):
    disk = tmpfs(2**18)
    argv = _with_tokenizer(tmp_path, tokenizer_file)
    argv[2:4] = [str(disk / "out"), str(_corpus(tmp_path))]
    code, lines = _run(argv, capsys)
    assert code == 1 and len(lines) == 1
    assert re.search(r"No space left on device while writing .*out/train_00000\.bin; free some "
                     r"space", lines[0]), lines[0]
    assert list(disk.iterdir()) == []


def test_full_disk_when_only_meta_json_is_left(tmp_path, tmpfs, tokenizer_file, capsys):
    argv = _with_tokenizer(tmp_path, tokenizer_file)
    argv[3] = str(_corpus(tmp_path))
    assert main(argv) == 0
    page = 4096  # tmpfs counts whole pages of file data
    need = sum(-(-p.stat().st_size // page) * page for p in (tmp_path / "out").iterdir()
               if p.name != "meta.json")
    disk = tmpfs(need)
    argv[2] = str(disk / "out")
    code, lines = _run(argv, capsys)
    assert code == 1 and len(lines) == 1
    assert re.search(r"No space left on device while writing .*out/meta\.json", lines[0]), lines
    assert list(disk.iterdir()) == []


def test_file_size_limit(tmp_path, tokenizer_file):
    corpus = _corpus(tmp_path)
    script = (
        "import resource, signal, sys\n"
        "signal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"  # else the kernel kills the process
        "resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))\n"
        "from growlm.cli import main\n"
        f"sys.exit(main(['data', 'prepare', {str(tmp_path / 'out')!r}, {str(corpus)!r},\n"
        f"          '--tokenizer', {str(tokenizer_file)!r}, '--quiet']))\n")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=300)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and len(lines) == 1, done.stderr
    assert re.search(rf"{os.strerror(errno.EFBIG)} while writing .*out/train_00000\.bin",
                     lines[0])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["docs.jsonl"]
