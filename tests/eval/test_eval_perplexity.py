import math
import re

import numpy as np
import pytest
import torch

from growlm.errors import GrowlmError
from growlm.eval.perplexity import (
    read_wikitext,
    rolling_requests,
    text_perplexity,
    token_perplexity,
    wikitext_detokenize,
    wikitext_documents,
)

BOS = 99


def model_inputs(requests, max_length):
    """What the scorer feeds the model for each window, and the tokens it scores."""
    out = []
    for ctx, cont in requests:
        whole = (list(ctx) + list(cont))[-(max_length + 1):]
        out.append((whole[:-1], list(cont)))
    return out


def test_rolling_windows_match_lm_eval_example():
    # lm-eval's documented example: tokens 0..9, BOS prefix, max length 4.
    windows = model_inputs(rolling_requests(list(range(10)), BOS, 4), 4)
    assert windows == [([BOS, 0, 1, 2], [0, 1, 2, 3]),
                       ([3, 4, 5, 6], [4, 5, 6, 7]),
                       ([5, 6, 7, 8], [8, 9])]  # last window keeps a full context


@pytest.mark.parametrize("n,length,stride", [(1, 4, 4), (10, 4, 4), (37, 8, 3), (16, 8, 8)])
def test_every_token_scored_exactly_once_with_bounded_context(n, length, stride):
    tokens = list(range(100, 100 + n))
    windows = model_inputs(rolling_requests(tokens, BOS, length, stride), length)
    scored = [t for _, cont in windows for t in cont]
    assert scored == tokens
    seq = [BOS, *tokens]
    for inp, cont in windows:
        assert len(inp) <= length
        # the input is the run of tokens right before each scored one
        end = seq.index(cont[-1])
        assert inp == seq[end - len(inp): end]
    for _, cont in windows[1:]:
        assert len(cont) <= stride


def test_bad_stride_refused():
    with pytest.raises(GrowlmError, match="stride"):
        rolling_requests([1, 2, 3], BOS, 4, stride=5)


def test_wikitext_split_and_counts():
    text = (" \n = Alpha = \n \n Some text @-@ here , ok . \n \n = = Section = = \n More .\n"
            " = Beta = \n Beta text .\n")
    docs = wikitext_documents(text)
    assert len(docs) == 2
    assert docs[0].startswith(" = Alpha = ") and "= = Section = =" in docs[0]
    assert docs[1].startswith(" = Beta = ")
    assert wikitext_detokenize(" Some text @-@ here , ok . ") == " Some text-here, ok. "


def test_text_perplexity_definitions(tokenizer, model):
    docs = ["The cat sat on the mat.", "The dog sat on the log. The quick brown fox."]
    res = text_perplexity(model, tokenizer, docs, max_length=8)
    n_tok = sum(len(tokenizer.encode(d).ids) for d in docs)
    n_words = sum(len(re.split(r"\s+", d)) for d in docs)
    n_bytes = sum(len(d.encode()) for d in docs)
    assert (res["tokens"], res["words"], res["bytes"]) == (n_tok, n_words, n_bytes)
    ll = res["loglikelihood"]
    assert math.isclose(res["word_perplexity"], math.exp(-ll / n_words), rel_tol=1e-9)
    assert math.isclose(res["bits_per_byte"], -ll / n_bytes / math.log(2), rel_tol=1e-9)
    assert math.isclose(res["token_perplexity"], math.exp(-ll / n_tok), rel_tol=1e-9)
    # One window holding the whole document equals a plain forward pass from the prefix.
    eos = tokenizer.token_to_id("<|endoftext|>")
    ids = [eos, *tokenizer.encode(docs[0]).ids]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([ids[:-1]]))[0], -1)
    ref = float(logp.gather(1, torch.tensor(ids[1:])[:, None]).sum())
    one = text_perplexity(model, tokenizer, docs[:1], max_length=64)
    assert math.isclose(one["loglikelihood"], ref, rel_tol=1e-4)
    # A shorter stride gives more context, not a different token count.
    strided = text_perplexity(model, tokenizer, docs, max_length=8, stride=2)
    assert strided["tokens"] == n_tok and strided["loglikelihood"] != ll


def test_token_perplexity_equals_mean_cross_entropy(make_model):
    model = make_model(vocab_size=50, max_seq_len=16)
    tokens = np.random.default_rng(0).integers(0, 50, size=16 * 3 + 5).astype(np.uint16)
    res = token_perplexity(model, tokens, seq_len=16, batch_size=2)
    losses, count = [], 0
    with torch.no_grad():
        for s in range(0, len(tokens) - 1, 16):
            w = torch.tensor(tokens[s: s + 17].astype(np.int64))
            logits = model(w[None, :-1])[0]
            losses.append(torch.nn.functional.cross_entropy(logits, w[1:], reduction="sum"))
            count += len(w) - 1
    assert res["tokens"] == count == len(tokens) - 1 and res["windows"] == 4
    assert math.isclose(res["loss"], float(sum(losses)) / count, rel_tol=1e-4)
    assert math.isclose(res["perplexity"], math.exp(res["loss"]), rel_tol=1e-9)


@pytest.mark.shared_data
def test_real_wikitext_file_matches_lm_eval_preprocessing(shared_data):
    pages = read_wikitext(shared_data / "corpus/wikitext-2-raw/wiki.test.raw")
    assert len(pages) == 62  # the 62 articles of the WikiText-2 test split
    assert pages[0].startswith(" = Robert Boulter = ")
    lm_eval_wikitext = pytest.importorskip("lm_eval.tasks.wikitext.preprocess_wikitext")
    for page in pages[:10]:
        assert wikitext_detokenize(page) == lm_eval_wikitext.wikitext_detokenizer({"page": page})


def test_not_wikitext_refused(tmp_path):
    bad = tmp_path / "plain.txt"
    bad.write_text("just some text\nwithout titles\n")
    with pytest.raises(GrowlmError, match="plain.txt"):
        read_wikitext(bad)


def test_ppl_task_on_prepared_shards(tmp_path, tokenizer, model, make_model):
    prepare = pytest.importorskip("growlm.data.prepare").prepare
    from growlm.data.shards import open_shards
    from growlm.eval import evaluate

    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(6):
        (docs / f"d{i}.txt").write_text(("The cat sat on the mat. The dog sat on the log. " * 8)
                                        + f"Doc {i}.")
    tok = tmp_path / "tok.json"
    tokenizer.save(str(tok))
    prepare(tmp_path / "shards", [docs], tokenizer=tok, val_fraction=0.4, progress=False,
            log=lambda *a: None)
    val = open_shards(tmp_path / "shards").tokens("val")
    res = evaluate(model, tokenizer, "ppl", val_shards=tmp_path / "shards", seq_len=32, limit=2)
    ref = token_perplexity(model, np.asarray(val)[:65], seq_len=32)
    assert res["ppl"]["tokens"] == 64 and math.isclose(res["ppl"]["loss"], ref["loss"])
    with pytest.raises(GrowlmError, match="vocabulary"):
        evaluate(make_model(100), tokenizer, "ppl", val_shards=tmp_path / "shards")
