"""One BOS policy for training data, SFT data, generation and evaluation.

With a Llama-2-layout tokenizer (its post-processor adds <s>) every encoder puts exactly one
<s> in front of a text and rolling perplexity never scores a <s>; with a GPT-2-style tokenizer
nothing goes in front. The expected sequences below are written out from lm-evaluation-harness's
rules (tokenizer defaults for contexts, a BOS-else-EOS prefix for rolling windows), and checked
against lm-eval itself when it is installed.
"""

import math

import pytest
import torch

from growlm.data.tokenizer import bos_policy
from growlm.errors import GrowlmError
from growlm.eval.perplexity import rolling_requests, text_perplexity
from growlm.eval.zeroshot import encode_pairs

BOS, EOS = 1, 2  # ids of <s> and </s> in the Llama-layout test tokenizer
PAIRS = [("Question: What do plants need to grow?\nAnswer:", " water and sunlight."),
         ("The cat sat on the ", "mat.")]
DOC = "The quick brown fox jumps over the lazy dog, and the cat runs away."


def plain(tok, text):
    return tok.encode(text, add_special_tokens=False).ids


def test_policy_follows_the_post_processor(llama_tokenizer, tokenizer):
    llama = bos_policy(llama_tokenizer)
    assert llama.start == (BOS,) and llama.prefix_id == BOS and llama.eos_id == EOS
    gpt2 = bos_policy(tokenizer)
    eos = tokenizer.token_to_id("<|endoftext|>")
    assert gpt2.start == () and gpt2.prefix_id == eos
    # The setting overrides the tokenizer: off drops <s> (documents then follow EOS only),
    # on puts a GPT-2 tokenizer's one document marker in front.
    off = bos_policy(llama_tokenizer, "off")
    assert off.start == () and off.prefix_id == EOS
    assert bos_policy(tokenizer, "on").start == (eos,)
    with pytest.raises(GrowlmError, match="allowed: auto, on, off"):
        bos_policy(tokenizer, "yes")


def test_encodings_never_apply_the_post_processor_twice(llama_tokenizer):
    policy = bos_policy(llama_tokenizer)
    (ids,) = policy.encode(llama_tokenizer, ["The cat sat"])
    assert ids == [BOS, *plain(llama_tokenizer, "The cat sat")] and ids.count(BOS) == 1
    assert policy.encode(llama_tokenizer, ["The cat sat"], start=False)[0] == ids[1:]


def test_multiple_choice_sequences_equal_lm_eval(llama_tokenizer):
    # lm-eval 0.4.13 (add_bos_token unset): context = tokenizer default encoding, continuation
    # = encoding of context + continuation after the context's tokens, trailing space moved.
    tok = llama_tokenizer
    got = encode_pairs(tok, PAIRS)
    for (ctx, cont), (ctx_ids, cont_ids) in zip(PAIRS, got):
        n = len(ctx) - len(ctx.rstrip())
        if n:
            ctx, cont = ctx[:-n], ctx[-n:] + cont
        expect_ctx = tok.encode(ctx).ids
        assert ctx_ids == expect_ctx and ctx_ids[0] == BOS and ctx_ids.count(BOS) == 1
        assert cont_ids == tok.encode(ctx + cont).ids[len(expect_ctx):]
        assert BOS not in cont_ids


def test_rolling_perplexity_scores_only_the_document(llama_tokenizer, make_model):
    tok = llama_tokenizer
    doc_ids = plain(tok, DOC)
    policy = bos_policy(tok)
    requests = rolling_requests(doc_ids, policy.prefix_id, max_length=8)
    scored = [t for _, cont in requests for t in cont]
    assert scored == doc_ids  # no <s> among the scored tokens
    assert requests[0][0] == [BOS]  # the first token is predicted from <s>, as in training
    # The loglikelihood is that of <s> + document in one forward pass.
    model = make_model(tok.get_vocab_size(), max_seq_len=64)
    res = text_perplexity(model, tok, [DOC], max_length=64)
    seq = [BOS, *doc_ids]
    with torch.no_grad():
        logp = torch.log_softmax(model(torch.tensor([seq[:-1]]))[0], -1)
    ref = float(logp.gather(1, torch.tensor(seq[1:])[:, None]).sum())
    assert res["tokens"] == len(doc_ids) and math.isclose(res["loglikelihood"], ref, rel_tol=1e-4)


def test_gpt2_style_rolling_prefix_is_eos(tokenizer):
    eos = tokenizer.token_to_id("<|endoftext|>")
    (ctx, cont), = encode_pairs(tokenizer, [("The cat", " sat")])
    assert ctx == plain(tokenizer, "The cat")  # nothing in front, as lm-eval and training
    requests = rolling_requests(plain(tokenizer, DOC), bos_policy(tokenizer).prefix_id, 8)
    assert requests[0][0] == [eos]


def test_empty_context_uses_the_prefix(llama_tokenizer):
    (ctx, cont), = encode_pairs(llama_tokenizer, [("", "The cat")])
    assert ctx == [BOS] and cont == plain(llama_tokenizer, "The cat")


def test_training_data_and_sft_open_documents_the_same_way(tmp_path, llama_tokenizer):
    from growlm.data.prepare import prepare
    from growlm.data.shards import open_shards
    from growlm.sft.data import Record, tokenize_records
    from growlm.sft.template import load_template

    docs = tmp_path / "docs"
    docs.mkdir()
    texts = ["The cat sat on the mat.", "A man is sitting on a roof."]
    for i, text in enumerate(texts):
        (docs / f"d{i}.txt").write_text(text)
    tok_file = tmp_path / "tokenizer.json"
    llama_tokenizer.save(str(tok_file))
    prepare(tmp_path / "shards", [docs], tokenizer=tok_file, val_fraction=0.0, progress=False,
            log=lambda *a: None)
    tokens = [int(t) for t in open_shards(tmp_path / "shards").tokens("train")]
    expect = [t for text in texts for t in (BOS, *plain(llama_tokenizer, text), EOS)]
    assert sorted(tokens) == sorted(expect) and tokens.count(BOS) == 2
    assert tokens[0] == BOS and tokens[-1] == EOS

    record = Record("r", alpaca=("Say hi", "", "hi"))
    ex, _ = tokenize_records([record], load_template("alpaca"), llama_tokenizer, EOS, 512)
    row = ex.tokens[0].tolist()
    assert row[0] == BOS and row.count(BOS) == 1 and row[-1] == EOS


def test_scored_sequences_equal_lm_eval_itself(tmp_path, llama_tokenizer, make_model):
    pytest.importorskip("transformers")
    utils = pytest.importorskip("lm_eval.utils")
    from lm_eval.models.huggingface import HFLM

    from growlm.model.hf import export_hf

    tok_file = tmp_path / "tokenizer.json"
    llama_tokenizer.save(str(tok_file))
    model = make_model(llama_tokenizer.get_vocab_size(), max_seq_len=16)
    folder = export_hf(model.cfg, model.state_dict(), tmp_path / "hf", tokenizer_json=tok_file)
    lm = HFLM(pretrained=str(folder), device="cpu", dtype="float32", batch_size=1)
    # Multiple choice: lm-eval's defaults.
    for (ctx, cont), ours in zip(PAIRS, encode_pairs(llama_tokenizer, PAIRS)):
        assert tuple(ours) == tuple(lm._encode_pair(ctx, cont))
    # Rolling windows: lm-eval with add_bos_token=False (its default would also score a second
    # <s> after the <s> prefix, a pair training never shows).
    lm.add_bos_token = False
    theirs = [utils.make_disjoint_window(w) for w in utils.get_rolling_token_windows(
        lm.tok_encode(DOC), lm.prefix_token_id, 8, 1)]
    ours = rolling_requests(plain(llama_tokenizer, DOC), bos_policy(llama_tokenizer).prefix_id, 8)
    for (ctx, cont), (their_ctx, their_cont) in zip(ours, theirs):
        assert cont == their_cont and (ctx + cont)[-9:-1] == (their_ctx + their_cont)[-9:-1]
    assert len(ours) == len(theirs)
