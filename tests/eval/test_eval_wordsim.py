import math

import pytest
import torch
from scipy.stats import spearmanr

from growlm.errors import GrowlmError
from growlm.eval.wordsim import DATASETS, pair_similarity, read_pairs, word_id, word_similarity


def test_space_marked_form_preferred(tokenizer):
    assert tokenizer.token_to_id("Ġcat") is not None
    assert word_id(tokenizer, "cat") == tokenizer.token_to_id("Ġcat")
    assert word_id(tokenizer, "zzzzqqq") is None


def test_spearman_and_coverage(tokenizer):
    vocab = tokenizer.get_vocab_size()
    words = ["cat", "dog", "car", "river", "sun", "king"]
    assert all(word_id(tokenizer, w) is not None for w in words)
    gen = torch.Generator().manual_seed(0)
    emb = torch.randn(vocab, 16, generator=gen)
    rows = [(a, b, 0.0) for a, b in zip(words, words[1:])] + [("cat", "zzzzqqq", 5.0)]
    # Human scores = the embedding's own cosines → rho 1 for the embedding.
    for i, (a, b, _) in enumerate(rows[:-1]):
        va, vb = emb[word_id(tokenizer, a)], emb[word_id(tokenizer, b)]
        rows[i] = (a, b, float(torch.cosine_similarity(va, vb, dim=0)))
    head = torch.randn(vocab, 16, generator=gen)
    res = pair_similarity({"embedding": emb, "head": head}, tokenizer, rows)
    assert (res["kept"], res["total"]) == (5, 6) and math.isclose(res["coverage"], 5 / 6)
    assert math.isclose(res["embedding"], 1.0)
    cos = [float(torch.cosine_similarity(head[word_id(tokenizer, a)],
                                         head[word_id(tokenizer, b)], dim=0))
           for a, b, _ in rows[:-1]]
    assert math.isclose(res["head"], spearmanr([r[2] for r in rows[:-1]], cos).statistic)


@pytest.mark.shared_data
def test_real_files_parse_with_expected_sizes(shared_data):
    sizes = {"simlex999": 999, "wordsim353_sim": 203, "wordsim353_rel": 252, "men": 3000,
             "rarewords": 2034}
    for name, n in sizes.items():
        rows = read_pairs(DATASETS[name], shared_data / DATASETS[name].path)
        assert len(rows) == n
        assert all(not w1.endswith("\r") and isinstance(s, float) for w1, _, s in rows)
    simlex = read_pairs(DATASETS["simlex999"], shared_data / DATASETS["simlex999"].path)
    assert simlex[0] == ("old", "new", 1.58)


@pytest.mark.shared_data
def test_gpt2_vocabulary_coverage(shared_data, model):
    from tokenizers import Tokenizer

    gpt2 = Tokenizer.from_file(str(shared_data / "tokenizers/gpt2/tokenizer.json"))
    gen = torch.Generator().manual_seed(0)
    mats = {"embedding": torch.randn(50257, 8, generator=gen), "head": torch.randn(50257, 8)}
    res = word_similarity(mats, gpt2, shared_data, datasets=("simlex999", "wordsim353_sim"))
    assert 0.8 < res["simlex999"]["coverage"] < 1.0  # most common words are single tokens
    assert abs(res["simlex999"]["embedding"]) < 0.2  # random vectors: no correlation


def test_bad_files_named(tmp_path):
    simlex = tmp_path / "SimLex-999.txt"
    simlex.write_text("a\tb\tc\n")
    with pytest.raises(GrowlmError, match="SimLex-999.txt:1.*'SimLex999'"):
        read_pairs(DATASETS["simlex999"], simlex)
    ws = tmp_path / "ws.txt"
    ws.write_text("tiger\tcat\tseven\n")
    with pytest.raises(GrowlmError, match="ws.txt:1: score column 3"):
        read_pairs(DATASETS["wordsim353_sim"], ws)
    ws.write_text("tiger cat 7\n")
    with pytest.raises(GrowlmError, match="ws.txt:1: expected at least 3"):
        read_pairs(DATASETS["wordsim353_sim"], ws)
