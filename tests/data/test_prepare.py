import gzip
import json

import numpy as np
import pytest

from growlm.data import open_shards, prepare
from growlm.data.shards import ShardWriter
from growlm.errors import GrowlmError

VOCAB = 300


def _split_docs(tokens, eos: int) -> list[list[int]]:
    ids = np.asarray(tokens).tolist()
    docs, cur = [], []
    for t in ids:
        if t == eos:
            docs.append(cur)
            cur = []
        else:
            cur.append(t)
    assert cur == []  # every split ends with EOS
    return docs


def test_prepare_text_folder_roundtrip(tmp_path, corpus, messages):
    folder, docs = corpus
    shards = prepare(tmp_path / "out", [folder], train_vocab=VOCAB, val_fraction=0.1,
                     progress=False, log=messages.append)
    meta = shards.meta
    assert meta["format"] == "growlm-shards" and meta["version"] == 1
    assert meta["dtype"] == "uint16"
    assert meta["tokenizer"]["vocab_size"] == VOCAB and meta["tokenizer"]["eos_id"] == 0
    assert meta["splits"]["train"]["docs"] == 27 and meta["splits"]["val"]["docs"] == 3
    assert len(meta["sources"]) == 30
    tok = shards.tokenizer()
    train = [tok.decode(d) for d in _split_docs(shards.tokens("train"), shards.eos_id)]
    val = [tok.decode(d) for d in _split_docs(shards.tokens("val"), shards.eos_id)]
    # floor((i+1)·0.1) > floor(i·0.1) holds out documents 9, 19 and 29, in order.
    assert val == [docs[9], docs[19], docs[29]]
    assert train == [d for i, d in enumerate(docs) if i not in (9, 19, 29)]
    for split in ("train", "val"):
        entry = meta["splits"][split]
        assert entry["tokens"] == shards.num_tokens(split) == len(shards.tokens(split))
        for f in entry["files"]:
            assert (tmp_path / "out" / f["name"]).stat().st_size == f["bytes"] == 2 * f["tokens"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out")]  # no temp left


def test_rerun_is_a_noop_and_changes_need_overwrite(tmp_path, corpus, messages):
    folder, _ = corpus
    out = tmp_path / "out"
    first = prepare(out, [folder], train_vocab=VOCAB, val_fraction=0.1, progress=False,
                    log=messages.append)
    stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    messages.clear()
    second = prepare(out, [folder], train_vocab=VOCAB, val_fraction=0.1, progress=False,
                     log=messages.append)
    assert any("up to date" in m for m in messages)
    assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps
    assert second.fingerprint == first.fingerprint
    with pytest.raises(GrowlmError, match="other inputs or options.*--overwrite"):
        prepare(out, [folder], train_vocab=VOCAB, val_fraction=0.2, progress=False,
                log=messages.append)
    third = prepare(out, [folder], train_vocab=VOCAB, val_fraction=0.2, overwrite=True,
                    progress=False, log=messages.append)
    assert third.fingerprint != first.fingerprint and third.num_docs("val") == 6


def test_trained_tokenizer_is_deterministic(tmp_path, corpus):
    folder, _ = corpus
    a = prepare(tmp_path / "a", [folder], train_vocab=VOCAB, progress=False, val_fraction=0.1,
                log=print)
    b = prepare(tmp_path / "b", [folder], train_vocab=VOCAB, progress=False, val_fraction=0.1,
                log=print)
    assert a.meta["tokenizer"]["sha256"] == b.meta["tokenizer"]["sha256"]
    assert a.meta["splits"]["train"]["files"][0]["sha256"] == \
        b.meta["splits"]["train"]["files"][0]["sha256"]


def test_interrupted_prepare_leaves_nothing_complete(tmp_path, corpus, monkeypatch, messages):
    folder, _ = corpus
    calls = {"n": 0}
    original = ShardWriter.write

    def failing_write(self, ids):
        calls["n"] += 1
        if calls["n"] > 1:
            raise KeyboardInterrupt  # like Ctrl-C in the middle of writing shards
        original(self, ids)

    monkeypatch.setattr(ShardWriter, "write", failing_write)
    with pytest.raises(KeyboardInterrupt):
        prepare(tmp_path / "out", [folder], train_vocab=VOCAB, val_fraction=0.1,
                progress=False, log=messages.append)
    assert list(tmp_path.iterdir()) == [folder]  # no output, no temp folder
    with pytest.raises(GrowlmError, match="not found"):
        open_shards(tmp_path / "out")


def test_stale_temp_folder_of_a_killed_run_is_ignored_and_removed(tmp_path, corpus, messages):
    folder, _ = corpus
    stale = tmp_path / ".out.tmp-999999999"  # a pid that is not running
    stale.mkdir()
    (stale / "train_00000.bin").write_bytes(b"\0" * 64)
    with pytest.raises(GrowlmError, match="not found"):
        open_shards(tmp_path / "out")
    prepare(tmp_path / "out", [folder], train_vocab=VOCAB, val_fraction=0.1, progress=False,
            log=messages.append)
    assert not stale.exists()


def test_jsonl_gz_and_parquet_inputs_match(tmp_path, make_docs, write_jsonl, messages):
    docs = make_docs(20)
    rows = [{"id": i, "text": d} for i, d in enumerate(docs)]
    write_jsonl(tmp_path / "a.jsonl", rows[:10])
    with gzip.open(tmp_path / "b.jsonl.gz", "wt", encoding="utf-8") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows[10:])
    pq = pytest.importorskip("pyarrow.parquet")
    import pyarrow as pa

    pq.write_table(pa.table({"id": list(range(20)), "body": docs}), tmp_path / "c.parquet")
    tokenizer = tmp_path / "tok.json"
    base = prepare(tmp_path / "j", [tmp_path / "a.jsonl", tmp_path / "b.jsonl.gz"],
                   train_vocab=VOCAB, val_fraction=0.1, progress=False, log=messages.append)
    tokenizer.write_bytes(base.tokenizer_path.read_bytes())
    again = prepare(tmp_path / "j2", [str(tmp_path / "*.jsonl*")], tokenizer=tokenizer,
                    val_fraction=0.1, progress=False, log=messages.append)
    par = prepare(tmp_path / "p", [tmp_path / "c.parquet"], tokenizer=tokenizer,
                  text_field="body", val_fraction=0.1, progress=False, log=messages.append)
    for other in (again, par):
        assert other.meta["tokenizer"]["sha256"] == base.meta["tokenizer"]["sha256"]
        for split in ("train", "val"):
            assert np.array_equal(np.asarray(other.tokens(split)), np.asarray(base.tokens(split)))


def test_jsonl_without_text_field_names_file_and_line(tmp_path, write_jsonl):
    path = write_jsonl(tmp_path / "x.jsonl", [{"text": "fine"}, {"body": "no text here"}])
    with pytest.raises(GrowlmError, match=r"x\.jsonl line 2: no 'text' field \(fields: body\)"):
        prepare(tmp_path / "out", [path], train_vocab=VOCAB, progress=False, log=print)
    assert not (tmp_path / "out").exists()


def test_bad_json_line_is_named(tmp_path):
    path = tmp_path / "x.jsonl"
    path.write_text('{"text": "a"}\n{"text": \n', encoding="utf-8")
    with pytest.raises(GrowlmError, match=r"x\.jsonl line 2: not valid JSON"):
        prepare(tmp_path / "out", [path], train_vocab=VOCAB, progress=False, log=print)


def test_missing_input_path(tmp_path):
    with pytest.raises(GrowlmError, match="input path not found: .*nope.txt"):
        prepare(tmp_path / "out", [tmp_path / "nope.txt"], train_vocab=VOCAB, progress=False)
    with pytest.raises(GrowlmError, match="matches no files"):
        prepare(tmp_path / "out", [str(tmp_path / "*.jsonl")], train_vocab=VOCAB, progress=False)


def test_unsupported_file_type(tmp_path):
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(GrowlmError, match=r"unsupported input file .*x\.csv \(allowed: .txt"):
        prepare(tmp_path / "out", [tmp_path / "x.csv"], train_vocab=VOCAB, progress=False)


def test_empty_corpus(tmp_path, write_jsonl):
    path = write_jsonl(tmp_path / "empty.jsonl", [{"text": ""}, {"text": "   \n"}, {"text": None}])
    with pytest.raises(GrowlmError, match="empty corpus"):
        prepare(tmp_path / "out", [path], train_vocab=VOCAB, progress=False, log=print)
    assert not (tmp_path / "out").exists()


def test_empty_validation_split_explains(tmp_path, make_docs):
    (tmp_path / "one.txt").write_text(make_docs(1)[0])
    with pytest.raises(GrowlmError, match="empty validation split.*--txt-docs paragraph"):
        prepare(tmp_path / "out", [tmp_path / "one.txt"], train_vocab=VOCAB, progress=False,
                log=print)


def test_literal_eos_text_is_not_a_document_boundary(tmp_path, make_docs):
    docs = make_docs(10)
    docs[3] = "before <|endoftext|> after\n"
    folder = tmp_path / "c"
    folder.mkdir()
    for i, d in enumerate(docs):
        (folder / f"{i}.txt").write_text(d)
    shards = prepare(tmp_path / "out", [folder], train_vocab=VOCAB, val_fraction=0,
                     progress=False, log=print)
    assert shards.num_docs("train") == 10
    assert int((np.asarray(shards.tokens("train")) == shards.eos_id).sum()) == 10
    assert "val" not in shards.meta["splits"]


def test_max_tokens_and_small_shards(tmp_path, corpus):
    folder, docs = corpus
    shards = prepare(tmp_path / "out", [folder], train_vocab=VOCAB, val_fraction=0.1,
                     max_tokens=500, shard_tokens=128, progress=False, log=print)
    assert shards.num_tokens("train") == 500
    files = shards.meta["splits"]["train"]["files"]
    assert [f["tokens"] for f in files] == [128, 128, 128, 116]
    stream = shards.tokens("train")
    whole = np.concatenate([np.fromfile(shards.path / f["name"], dtype="<u2") for f in files])
    assert np.array_equal(stream[100:300], whole[100:300])  # a slice across shard files
    assert int(stream[-1]) == shards.eos_id and int(stream[255]) == int(whole[255])


def test_separate_validation_inputs(tmp_path, corpus, make_docs):
    folder, docs = corpus
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "val.txt").write_text("held out text for validation\n")
    shards = prepare(tmp_path / "out", [folder], val_inputs=[tmp_path / "v"], train_vocab=VOCAB,
                     progress=False, log=print)
    assert shards.num_docs("train") == 30 and shards.num_docs("val") == 1
    assert shards.tokenizer().decode(np.asarray(shards.tokens("val"))[:-1].tolist()) == \
        "held out text for validation\n"


def test_long_documents_are_encoded_in_pieces_with_identical_ids(tmp_path, shared_data):
    from growlm.data.tokenizer import load_tokenizer

    lines = [f"Line {i} says   something, (with) punctuation {i * 7}!" for i in range(300)]
    text = "\n".join(lines) + "\n\n  indented tail\n"
    (tmp_path / "long.txt").write_text(text)
    gpt2 = shared_data / "tokenizers" / "gpt2"
    messages = []
    shards = prepare(tmp_path / "out", [tmp_path / "long.txt"], tokenizer=gpt2, val_fraction=0,
                     progress=False, log=messages.append, piece_chars=500)
    expected = load_tokenizer(gpt2).encode(text, add_special_tokens=False).ids + [50256]
    assert np.asarray(shards.tokens("train")).tolist() == expected
    assert not any("encoded in one call" in m for m in messages)


def test_prepare_keeps_whole_document_ids_for_every_tokenizer_layout(tmp_path, safe_layout,
                                                                     text_maker, write_jsonl):
    from growlm.data.tokenizer import eos_id, load_tokenizer

    safe_layout.save(str(tmp_path / "tok.json"))
    docs = [text_maker(900, seed) for seed in range(3)] + ["a short one", " x "]
    write_jsonl(tmp_path / "docs.jsonl", [{"text": d} for d in docs])
    shards = prepare(tmp_path / "out", [tmp_path / "docs.jsonl"], tokenizer=tmp_path / "tok.json",
                     val_fraction=0, progress=False, log=print, piece_chars=300)
    from growlm.data.tokenizer import bos_policy

    tok = load_tokenizer(tmp_path / "tok.json")
    start = list(bos_policy(tok).start)  # the tokenizer's own document start (<s> for Llama-2)
    tok.encode_special_tokens = True
    eos = eos_id(tok)
    expected = [t for d in docs for t in start + tok.encode(d, add_special_tokens=False).ids + [eos]]
    assert np.asarray(shards.tokens("train")).tolist() == expected


def test_gpt2_shards_and_paragraph_documents(tmp_path, shared_data):
    (tmp_path / "a.txt").write_text("Hello world!\n\nSecond paragraph.\n")
    shards = prepare(tmp_path / "out", [tmp_path / "a.txt"], txt_docs="paragraph",
                     tokenizer=shared_data / "tokenizers" / "gpt2", val_fraction=0.5,
                     progress=False, log=print)
    assert shards.meta["tokenizer"]["vocab_size"] == 50257 and shards.eos_id == 50256
    assert np.asarray(shards.tokens("train")).tolist() == [15496, 995, 0, 50256]
    assert shards.num_docs("val") == 1


def test_bad_options(tmp_path, corpus):
    folder, _ = corpus
    with pytest.raises(GrowlmError, match="exactly one of a tokenizer"):
        prepare(tmp_path / "o", [folder], progress=False)
    with pytest.raises(GrowlmError, match="validation fraction"):
        prepare(tmp_path / "o", [folder], train_vocab=VOCAB, val_fraction=1.5, progress=False)
    with pytest.raises(GrowlmError, match="too small"):
        prepare(tmp_path / "o", [folder], train_vocab=100, progress=False, log=print)
    (tmp_path / "file").write_text("x")
    with pytest.raises(GrowlmError, match="is a file"):
        prepare(tmp_path / "file", [folder], train_vocab=VOCAB, progress=False)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "mine.txt").write_text("x")
    with pytest.raises(GrowlmError, match="not a shard folder"):
        prepare(tmp_path / "busy", [folder], train_vocab=VOCAB, progress=False)


def test_hf_dataset_source_reads_rows_and_stops_at_max_tokens(tmp_path, monkeypatch,
                                                               make_docs):
    datasets = pytest.importorskip("datasets")
    from growlm.data import HFDataset

    docs = make_docs(200)
    calls = []

    def fake_load(name, config=None, split=None, streaming=False):
        calls.append((name, config, split, streaming))
        return iter([{"text": d, "id": i} for i, d in enumerate(docs)])

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    source = HFDataset("org/corpus", "sample", "train", streaming=True)
    shards = prepare(tmp_path / "out", [source], train_vocab=VOCAB, val_fraction=0.1,
                     max_tokens=1000, progress=False, log=print)
    assert calls[-1] == ("org/corpus", "sample", "train", True)
    assert shards.num_tokens("train") == 1000
    assert shards.meta["sources"] == [{"kind": "hf", "name": "org/corpus", "config": "sample",
                                       "split": "train"}]


def test_hf_dataset_unreachable_is_a_clear_error(tmp_path, monkeypatch):
    datasets = pytest.importorskip("datasets")
    from growlm.data import HFDataset

    def offline(*args, **kwargs):
        raise ConnectionError("Couldn't reach 'org/corpus' on the Hub\n(traceback detail)")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(GrowlmError, match="cannot load HF dataset 'org/corpus' split 'train': "
                                          "Couldn't reach .*network") as info:
        prepare(tmp_path / "out", [HFDataset("org/corpus")], train_vocab=VOCAB,
                progress=False, log=print)
    assert "\n" not in str(info.value)
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == []


def test_text_gz_line_documents_and_unreadable_files(tmp_path):
    with gzip.open(tmp_path / "lines.txt.gz", "wt", encoding="utf-8") as f:
        f.write("first line\n\nsecond line\nthird line\n")
    shards = prepare(tmp_path / "out", [tmp_path / "lines.txt.gz"], txt_docs="line",
                     train_vocab=VOCAB, val_fraction=0, progress=False, log=print)
    assert shards.num_docs("train") == 3
    (tmp_path / "latin1.txt").write_bytes("caf\xe9\n".encode("latin-1"))
    with pytest.raises(GrowlmError, match=r"cannot read .*latin1\.txt: 'utf-8' codec"):
        prepare(tmp_path / "o2", [tmp_path / "latin1.txt"], train_vocab=VOCAB, progress=False,
                log=print)
    (tmp_path / "broken.jsonl.gz").write_bytes(b"not gzip at all")
    with pytest.raises(GrowlmError, match=r"cannot read .*broken\.jsonl\.gz \(after line 0\)"):
        prepare(tmp_path / "o3", [tmp_path / "broken.jsonl.gz"], train_vocab=VOCAB,
                progress=False, log=print)
