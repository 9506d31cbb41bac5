import json

import numpy as np
import pytest

from growlm.data import open_shards, prepare
from growlm.data.shards import dtype_for_vocab
from growlm.errors import GrowlmError


@pytest.fixture
def shards_dir(tmp_path, corpus):
    folder, _ = corpus
    out = tmp_path / "out"
    prepare(out, [folder], train_vocab=300, val_fraction=0.1, shard_tokens=256, progress=False,
            log=print)
    return out


def _edit_meta(folder, change):
    meta = json.loads((folder / "meta.json").read_text())
    change(meta)
    (folder / "meta.json").write_text(json.dumps(meta))


def test_open_and_verify(shards_dir):
    shards = open_shards(shards_dir)
    n_files = sum(len(e["files"]) for e in shards.meta["splits"].values())
    assert n_files == len(list(shards_dir.glob("*.bin"))) > 2
    assert shards.verify()["files_hashed"] == n_files
    assert open_shards(shards_dir / "meta.json").fingerprint == shards.fingerprint
    assert shards.tokens("train").fingerprint.endswith("/train")
    assert shards.num_tokens("test") == 0
    with pytest.raises(GrowlmError, match="no 'test' split \\(it has: train, val\\)"):
        shards.tokens("test")
    stream = shards.tokens("val")
    by_index = [int(stream[i]) for i in range(len(stream))]
    assert list(stream) == np.asarray(stream).tolist() == by_index


def test_dtype_choice():
    assert dtype_for_vocab(50257) == "uint16" and dtype_for_vocab(65536) == "uint16"
    assert dtype_for_vocab(65537) == "uint32"


def test_truncated_shard(shards_dir):
    path = shards_dir / "train_00000.bin"
    path.write_bytes(path.read_bytes()[:-6])
    with pytest.raises(GrowlmError, match=r"train_00000\.bin is 506 bytes but meta.json says 512"):
        open_shards(shards_dir)


def test_missing_shard(shards_dir):
    (shards_dir / "train_00001.bin").unlink()
    with pytest.raises(GrowlmError, match=r"missing shard .*train_00001\.bin"):
        open_shards(shards_dir)


def test_missing_meta_and_missing_folder(shards_dir, tmp_path):
    (shards_dir / "meta.json").unlink()
    with pytest.raises(GrowlmError, match="meta.json is missing"):
        open_shards(shards_dir)
    with pytest.raises(GrowlmError, match="shard folder not found"):
        open_shards(tmp_path / "nowhere")


def test_unknown_format_and_version(shards_dir):
    _edit_meta(shards_dir, lambda m: m.update(version=7))
    with pytest.raises(GrowlmError, match="version 7 is not supported"):
        open_shards(shards_dir)
    _edit_meta(shards_dir, lambda m: m.update(format="nanogpt-bin"))
    with pytest.raises(GrowlmError, match="unknown format 'nanogpt-bin'"):
        open_shards(shards_dir)
    (shards_dir / "meta.json").write_text("{truncated")
    with pytest.raises(GrowlmError, match="cannot read .*meta.json"):
        open_shards(shards_dir)


def test_malformed_meta(shards_dir):
    _edit_meta(shards_dir, lambda m: m["tokenizer"].pop("eos_id"))
    with pytest.raises(GrowlmError, match="malformed metadata"):
        open_shards(shards_dir)


def test_corruption_of_same_size_is_found_by_verify(shards_dir):
    path = shards_dir / "train_00000.bin"
    data = bytearray(path.read_bytes())
    data[100] ^= 1  # same size, different content
    path.write_bytes(bytes(data))
    shards = open_shards(shards_dir)  # cheap checks pass
    with pytest.raises(GrowlmError, match=r"train_00000\.bin is corrupted"):
        shards.verify()


def test_tokenizer_from_another_prepare_is_refused(shards_dir):
    (shards_dir / "tokenizer.json").write_text((shards_dir / "tokenizer.json").read_text() + " ")
    with pytest.raises(GrowlmError, match="does not match the tokenizer hash"):
        open_shards(shards_dir)


def test_structure_check_finds_ids_beyond_vocab(shards_dir):
    last = sorted(shards_dir.glob("train_*.bin"))[-1]
    data = np.fromfile(last, dtype="<u2")
    data[0] = 60000
    data.tofile(last)
    with pytest.raises(GrowlmError, match="contain id 60000 ≥ vocab size 300"):
        open_shards(shards_dir)
