import pytest
import torch

from growlm.eval.scoring import score_requests


def naive(model, ctx, cont, max_length):
    """Reference: one unpadded forward, full log-softmax, lm-eval's truncation."""
    whole = (list(ctx) + list(cont))[-(max_length + 1):]
    inp = torch.tensor(whole[:-1])[None]
    with torch.no_grad():
        logp = torch.log_softmax(model(inp)[0].float(), -1)
    n = min(len(cont), len(whole) - 1)
    pos = range(len(whole) - 1 - n, len(whole) - 1)
    targets = whole[-n:]
    ll = sum(float(logp[p, t]) for p, t in zip(pos, targets))
    greedy = all(int(logp[p].argmax()) == t for p, t in zip(pos, targets))
    return ll, greedy


def random_requests(n, vocab, gen):
    out = []
    for _ in range(n):
        c = torch.randint(1, 40, (1,), generator=gen).item()
        k = torch.randint(1, 8, (1,), generator=gen).item()
        out.append((torch.randint(0, vocab, (c,), generator=gen).tolist(),
                     torch.randint(0, vocab, (k,), generator=gen).tolist()))
    return out


def test_batched_scores_equal_one_at_a_time(make_model):
    model = make_model(vocab_size=97, max_seq_len=32)
    gen = torch.Generator().manual_seed(1)
    reqs = random_requests(23, 97, gen)  # some longer than 32 tokens: left-truncated
    reqs.append(reqs[3])  # a duplicate is scored once but reported twice
    got = score_requests(model, reqs, batch_size=5)
    for (ctx, cont), (ll, greedy) in zip(reqs, got):
        ref_ll, ref_greedy = naive(model, ctx, cont, 32)
        assert abs(ll - ref_ll) < 1e-3 * max(1.0, abs(ref_ll))
        assert greedy == ref_greedy
    assert got[-1] == got[3]


def test_batch_size_and_token_budget_do_not_change_results(make_model):
    model = make_model(vocab_size=97, max_seq_len=32)
    reqs = random_requests(17, 97, torch.Generator().manual_seed(2))
    a = score_requests(model, reqs, batch_size=1)
    b = score_requests(model, reqs, batch_size=64, max_batch_tokens=100)
    for (la, ga), (lb, gb) in zip(a, b):
        assert abs(la - lb) < 1e-4 and ga == gb


def test_greedy_flag_true_for_the_argmax_continuation(make_model):
    model = make_model(vocab_size=97, max_seq_len=32)
    ctx = [5, 17, 33]
    with torch.no_grad():
        best = int(model(torch.tensor([ctx]))[0, -1].argmax())
    (_, greedy_best), (_, greedy_other) = score_requests(
        model, [(ctx, [best]), (ctx, [(best + 1) % 97])])
    assert greedy_best and not greedy_other


def test_empty_continuation_scores_zero(make_model):
    model = make_model(vocab_size=97, max_seq_len=32)
    assert score_requests(model, [([1, 2], [])]) == [(0.0, True)]


def shared_context_requests(vocab, gen, n_questions=6, max_ctx=30):
    out = []
    for _ in range(n_questions):
        ctx = torch.randint(0, vocab, (int(torch.randint(1, max_ctx, (1,), generator=gen)),),
                            generator=gen).tolist()
        for _ in range(int(torch.randint(1, 5, (1,), generator=gen))):
            k = int(torch.randint(1, 7, (1,), generator=gen))
            out.append((ctx, torch.randint(0, vocab, (k,), generator=gen).tolist()))
    return out


@pytest.mark.parametrize("kw", [{}, {"n_kv_heads": 1, "n_heads": 4},
                                {"block": "attn_only", "n_layers": 1}])
def test_packed_choices_score_like_separate_rows(make_model, kw):
    """Choices sharing a context go in one masked row; results must not change."""
    model = make_model(vocab_size=97, max_seq_len=32, **kw)
    reqs = shared_context_requests(97, torch.Generator().manual_seed(4))
    packed = score_requests(model, reqs, batch_size=3)
    plain = score_requests(model, reqs, batch_size=3, pack=False)
    for (ctx, cont), (lp, gp), (lu, gu) in zip(reqs, packed, plain):
        ref_ll, ref_greedy = naive(model, ctx, cont, 32)
        assert abs(lp - lu) < 1e-3 * max(1.0, abs(lu)) and gp == gu
        assert abs(lp - ref_ll) < 1e-3 * max(1.0, abs(ref_ll)) and gp == ref_greedy


def test_non_growlm_model_uses_its_own_forward(make_model):
    model = make_model(vocab_size=97, max_seq_len=32)

    class Wrapped(torch.nn.Module):  # e.g. a compiled or distributed wrapper
        def __init__(self, inner):
            super().__init__()
            self.inner, self.cfg = inner, inner.cfg

        def forward(self, tokens):
            return self.inner(tokens)

    reqs = shared_context_requests(97, torch.Generator().manual_seed(5))
    for (a, ga), (b, gb) in zip(score_requests(Wrapped(model), reqs), score_requests(model, reqs)):
        assert abs(a - b) < 1e-3 * max(1.0, abs(b)) and ga == gb


@pytest.mark.parametrize("wrapped", [False, True])
def test_scores_do_not_depend_on_the_logit_chunk(make_model, monkeypatch, wrapped):
    """Scoring runs the head (or reads a wrapper's logits) a few positions at a time."""
    from growlm.model import loss

    model = make_model(vocab_size=97, max_seq_len=32)

    class Wrapped(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner, self.cfg = inner, inner.cfg

        def forward(self, tokens):
            return self.inner(tokens)

    scored = Wrapped(model) if wrapped else model
    reqs = shared_context_requests(97, torch.Generator().manual_seed(6))
    whole = score_requests(scored, reqs, batch_size=4)
    monkeypatch.setattr(loss, "CHUNK_LOGITS", 3 * 97)  # 3 positions per chunk
    chunked = score_requests(scored, reqs, batch_size=4)
    for (a, ga), (b, gb) in zip(chunked, whole):
        assert abs(a - b) < 1e-5 * max(1.0, abs(b)) and ga == gb


def test_scoring_holds_one_chunk_of_logits_not_all(make_model, monkeypatch):
    from growlm.memory_probe import PeakMemory
    from growlm.model import loss

    vocab, positions = 32768, 120
    model = make_model(vocab_size=vocab, n_layers=1, max_seq_len=128)
    gen = torch.Generator().manual_seed(7)
    reqs = [([1], torch.randint(0, vocab, (positions,), generator=gen).tolist())]
    monkeypatch.setattr(loss, "CHUNK_LOGITS", 8 * vocab)  # 8 positions per chunk
    with PeakMemory("cpu") as probe:
        score_requests(model, reqs)
    all_logits = positions * vocab * 4  # 15 MiB in fp32
    assert probe.peak_above_baseline_bytes < all_logits / 3
