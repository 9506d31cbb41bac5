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
