"""Batching and padding never change a score.

What is checked, each at batch size 1 and 7 (and a token budget that splits rows unevenly):
- packed multiple-choice rows (context once, continuations with their own positions and an
  attention mask) against unpacked rows and against a model the packer does not know (the
  plain right-padded forward path);
- right padding of rows of different lengths (a pad must not be seen by any scored position);
- rolling-perplexity windows of documents of different lengths, batched by a token budget;
- held-out token windows with a ragged last window;
- LAMBADA's greedy match flags, which compare argmaxes and so would flip on any leak.
"""

import numpy as np
import pytest
import torch

from growlm.eval.perplexity import text_perplexity, token_perplexity
from growlm.eval.scoring import score_requests
from growlm.eval.tasks import Example
from growlm.eval.zeroshot import encode_pairs, evaluate_task

TOL = dict(rel=1e-5, abs=1e-5)


class Plain(torch.nn.Module):
    """The same model behind a wrapper, so the scorer takes its plain padded-forward path."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.cfg = inner, inner.cfg

    def forward(self, tokens):
        return self.inner(tokens)


def _examples():
    stems = ["The cat sat on the", "A man is sitting on a roof. He", "Question: What do plants "
             "need to grow?\nAnswer:", "The quick brown fox", "Sarah was a much better surgeon",
             "cat dog", "The dog sat on the log, and the quick brown fox jumps over the lazy"]
    endings = [" mat.", " log and the cat runs away.", " water", " sun sunlight king queen",
               " river"]
    return [Example(tuple((s, e) for e in endings[: 2 + i % 4]), i % 2,
                    tuple(e.strip() for e in endings[: 2 + i % 4])) for i, s in enumerate(stems)]


@pytest.mark.parametrize("packed", [True, False])
def test_choice_scores_do_not_depend_on_batch_size(tokenizer, model, packed):
    requests = encode_pairs(tokenizer, [p for ex in _examples() for p in ex.pairs])
    runner = model if packed else Plain(model)
    one = score_requests(runner, requests, batch_size=1)
    seven = score_requests(runner, requests, batch_size=7)
    budget = score_requests(runner, requests, batch_size=7, max_batch_tokens=40)
    for a, b, c in zip(one, seven, budget):
        assert a[0] == pytest.approx(b[0], **TOL) and a[0] == pytest.approx(c[0], **TOL)
        assert a[1] == b[1] == c[1]
    unpacked = score_requests(model, requests, batch_size=7, pack=False)
    assert [s for s, _ in unpacked] == pytest.approx([s for s, _ in one], **TOL)


def test_task_metrics_equal_at_batch_size_1_and_7(tokenizer, model):
    examples = _examples()
    lam = [Example(((ex.pairs[0][0], ex.pairs[0][1]),), 0, (ex.choices[0],)) for ex in examples]
    for task, exs in (("arc_easy", examples), ("lambada", lam)):
        one = evaluate_task(model, tokenizer, task, exs, batch_size=1)
        seven = evaluate_task(model, tokenizer, task, exs, batch_size=7)
        assert one.keys() == seven.keys()
        for key in one:
            assert one[key] == pytest.approx(seven[key], **TOL), (task, key)


def test_rolling_and_token_perplexity_do_not_depend_on_batch_size(tokenizer, model):
    docs = ["The cat sat on the mat.", "A man is sitting on a roof. " * 5, "cat dog " * 17,
            "Question: What do plants need to grow?\nAnswer: water and sunlight."]
    one = text_perplexity(model, tokenizer, docs, max_length=16, batch_size=1)
    seven = text_perplexity(model, tokenizer, docs, max_length=16, batch_size=7)
    strided = text_perplexity(model, tokenizer, docs, max_length=16, stride=5, batch_size=7)
    strided_one = text_perplexity(model, tokenizer, docs, max_length=16, stride=5, batch_size=1)
    assert one["loglikelihood"] == pytest.approx(seven["loglikelihood"], **TOL)
    assert strided["loglikelihood"] == pytest.approx(strided_one["loglikelihood"], **TOL)

    tokens = np.random.default_rng(1).integers(0, model.cfg.vocab_size, 16 * 5 + 3)
    a = token_perplexity(model, tokens, seq_len=16, batch_size=1)
    b = token_perplexity(model, tokens, seq_len=16, batch_size=7)
    assert a["loss"] == pytest.approx(b["loss"], **TOL) and a["tokens"] == b["tokens"]
