import numpy as np
import pytest

from growlm.data import prepare
from growlm.data.builtin import DEFAULT_MAX_BYTES, BuiltinCorpus, parse_builtin, stdlib_dir
from growlm.errors import GrowlmError


def test_parse_builtin_specs():
    assert parse_builtin("builtin:python").max_bytes == DEFAULT_MAX_BYTES
    assert parse_builtin("builtin:python:200KB").max_bytes == 200_000
    assert parse_builtin("builtin:python:all").max_bytes is None
    with pytest.raises(GrowlmError, match="unknown built-in corpus 'builtin:perl'"):
        parse_builtin("builtin:perl")
    with pytest.raises(GrowlmError, match="unknown unit"):
        parse_builtin("builtin:python:12parsecs")


def test_builtin_corpus_is_real_capped_and_deterministic():
    corpus = BuiltinCorpus(max_bytes=300_000)
    files = corpus.files()
    assert files == BuiltinCorpus(max_bytes=300_000).files()
    assert 0 < sum(p.stat().st_size for p in files) <= 300_000
    root = stdlib_dir()
    assert all(p.is_relative_to(root) and "site-packages" not in p.parts for p in files)
    assert len({p.parent for p in files}) > 3  # spread over the library, not one package
    docs = list(corpus.documents())
    assert any("def " in d for d in docs)
    assert corpus.describe()["files"] == len(files)


def test_prepare_builtin_corpus(tmp_path):
    shards = prepare(tmp_path / "out", ["builtin:python:150KB"], train_vocab=512,
                     val_fraction=0.1, progress=False, log=print)
    assert shards.meta["sources"][0]["kind"] == "builtin"
    assert shards.num_tokens("train") > 10_000 and shards.num_tokens("val") > 0
    text = shards.tokenizer().decode(np.asarray(shards.tokens("train")[:2000]).tolist())
    assert "import" in text or "def" in text
