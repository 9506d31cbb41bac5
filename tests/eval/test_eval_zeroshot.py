import math

import pytest
import torch

from growlm.eval.tasks import Example, get_task
from growlm.eval.zeroshot import encode_pairs, evaluate_task, score_examples


def test_trailing_space_moves_into_continuation(tokenizer):
    (ctx, cont), = encode_pairs(tokenizer, [("The cat sat on ", "the mat.")])
    assert ctx == tokenizer.encode("The cat sat on").ids
    assert ctx + cont == tokenizer.encode("The cat sat on the mat.").ids


def test_continuation_is_what_follows_the_context_tokens(tokenizer):
    (ctx, cont), = encode_pairs(tokenizer, [("The cat", " sat")])
    whole = tokenizer.encode("The cat sat").ids
    assert ctx == tokenizer.encode("The cat").ids and cont == whole[len(ctx):]


def test_acc_and_acc_norm_definitions():
    task = get_task("arc_easy")
    ex = Example((("q", " a"), ("q", " bbbbbbbb")), gold=1, choices=("a", "bbbbbbbb"))
    # Summed log-lik prefers the short choice; per-character it prefers the long one.
    res = score_examples(task, [ex], [-2.0, -8.0], [False, False])
    assert res["acc"] == 0.0 and res["acc_norm"] == 1.0 and res["score"] == 1.0
    ex2 = Example(ex.pairs, gold=0, choices=ex.choices)
    res = score_examples(task, [ex, ex2], [-2.0, -8.0, -2.0, -8.0], [False] * 4)
    assert res["acc"] == 0.5 and res["n"] == 2
    assert math.isclose(res["acc_stderr"], 0.5, rel_tol=1e-9)  # std (ddof 1) / sqrt(n)


def test_winogrande_has_no_acc_norm_and_lambada_uses_greedy():
    wg = score_examples(get_task("winogrande"),
                        [Example((("a", " x"), ("b", " x")), 1, ("a", "b"))], [-3.0, -1.0],
                        [False, False])
    assert wg["acc"] == 1.0 and "acc_norm" not in wg
    lam = get_task("lambada")
    exs = [Example((("c", " w"),), 0, ("w",))] * 2
    res = score_examples(lam, exs, [-1.0, -3.0], [True, False])
    assert res["acc"] == 0.5
    assert math.isclose(res["perplexity"], math.exp(2.0))


def test_evaluate_task_matches_a_naive_loop(tokenizer, model):
    examples = [
        Example((("The cat sat on the", " mat."), ("The cat sat on the", " dog.")), 0,
                ("mat.", "dog.")),
        Example((("A man is sitting on a", " roof."), ("A man is sitting on a", " log."),
                 ("A man is sitting on a", " sun sunlight")), 2,
                ("roof.", "log.", "sun sunlight")),
    ]
    res = evaluate_task(model, tokenizer, "arc_easy", examples, batch_size=2)
    acc = acc_norm = 0
    for ex in examples:
        lls = []
        for ctx, cont in ex.pairs:
            c = tokenizer.encode(ctx).ids
            whole = tokenizer.encode(ctx + cont).ids
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([whole[:-1]]))[0], -1)
            lls.append(sum(float(logp[p - 1, whole[p]]) for p in range(len(c), len(whole))))
        acc += int(max(range(len(lls)), key=lambda i: lls[i]) == ex.gold)
        norm = [ll / len(ch) for ll, ch in zip(lls, ex.choices)]
        acc_norm += int(max(range(len(norm)), key=lambda i: norm[i]) == ex.gold)
    assert res["acc"] == acc / 2 and res["acc_norm"] == acc_norm / 2


@pytest.mark.shared_data
def test_real_task_runs_end_to_end(shared_data, tokenizer, model):
    from growlm.eval.zeroshot import run_task

    res = run_task(model, tokenizer, "hellaswag", data_dir=shared_data, limit=8)
    assert res["n"] == 8 and 0.0 <= res["acc_norm"] <= 1.0


def _naive_loglikelihoods(model, tokenizer, pairs):
    """Sum of log p(continuation tokens) from one full forward pass over context+continuation."""
    out = []
    for ctx, cont in pairs:
        n = len(ctx) - len(ctx.rstrip())
        if n:
            ctx, cont = ctx[:-n], ctx[-n:] + cont
        c = tokenizer.encode(ctx).ids
        whole = tokenizer.encode(ctx + cont).ids
        with torch.no_grad():
            logp = torch.log_softmax(model(torch.tensor([whole[:-1]]))[0].double(), -1)
        out.append(sum(float(logp[p - 1, whole[p]]) for p in range(len(c), len(whole))))
    return out


SCIQ = [{"question": "What do plants need to grow?", "distractor1": "the cat",
         "distractor2": "a roof", "distractor3": "the quick brown fox",
         "correct_answer": "water and sunlight", "support": "Plants need water and sun."},
        {"question": "Who sat on the mat?", "distractor1": "the dog", "distractor2": "a man",
         "distractor3": "Maria", "correct_answer": "the cat", "support": ""}]
LOGIQA = [{"label": "c", "context": "The cat sat on the mat. The dog sat on the log.",
           "question": "Who sat on the log?",
           "options": ["the cat", "a man", "the dog", "the quick brown fox"]},
          {"label": "a", "context": "Sarah was a much better surgeon than Maria.",
           "question": "Who got the harder cases?",
           "options": ["Maria", "Sarah", "the king", "the queen"]}]


@pytest.mark.parametrize("name,records", [("sciq", SCIQ), ("logiqa", LOGIQA)])
def test_sciq_and_logiqa_scores_match_an_independent_computation(tokenizer, make_model,
                                                                name, records):
    from growlm.eval.scoring import score_requests
    from growlm.eval.tasks import logiqa_hub, sciq_hub

    model = make_model(tokenizer.get_vocab_size(), max_seq_len=128)
    convert = sciq_hub if name == "sciq" else logiqa_hub
    examples = [convert(r, f"rec{i}") for i, r in enumerate(records)]
    pairs = [p for ex in examples for p in ex.pairs]
    ours = [s for s, _ in score_requests(model, encode_pairs(tokenizer, pairs), batch_size=3)]
    ref = _naive_loglikelihoods(model, tokenizer, pairs)
    assert ours == pytest.approx(ref, rel=1e-4, abs=1e-4)
    res = evaluate_task(model, tokenizer, name, examples, batch_size=3)
    acc, acc_norm, pos = [], [], 0
    for ex in examples:
        lls = ref[pos: pos + len(ex.pairs)]
        pos += len(ex.pairs)
        acc.append(max(range(len(lls)), key=lambda i: lls[i]) == ex.gold)
        norm = [ll / len(c) for ll, c in zip(lls, ex.choices)]
        acc_norm.append(max(range(len(norm)), key=lambda i: norm[i]) == ex.gold)
    assert res["acc"] == sum(acc) / len(acc) and res["acc_norm"] == sum(acc_norm) / len(acc)
    assert res["n"] == len(records) and res["score"] == res["acc_norm"]
