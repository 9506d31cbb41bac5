import pytest
import torch
import torch.nn.functional as F

from growlm.adapters.lora import LoRALinear
from growlm.memory_probe import PeakMemory
from growlm.model import ModelConfig, Transformer
from growlm.model import loss as loss_mod

CFG = ModelConfig(vocab_size=300, d_model=32, n_layers=2, n_heads=4, max_seq_len=64)
SEQ = 24  # chunk size 24 divides batch·seq = 72 positions, 5 does not, 1000 is one chunk


def _batch(cfg, batch=3, seq=SEQ, seed=1):
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, cfg.vocab_size, (batch, seq), generator=gen)
    labels = torch.randint(0, cfg.vocab_size, (batch, seq), generator=gen)
    labels[0, :5] = -100  # a masked prompt
    labels[1, ::4] = -100
    labels[2, -1] = -100
    return tokens, labels


def _plain(model, tokens, labels):
    logits = model(tokens)
    return F.cross_entropy(logits.flatten(0, 1).float(), labels.flatten(), ignore_index=-100,
                           reduction="sum")


def _loss_and_grads(model, fn):
    model.zero_grad(set_to_none=True)
    loss = fn()
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters()
                           if p.grad is not None}


def _assert_same(got, ref, rtol=1e-5):
    (loss, grads), (ref_loss, ref_grads) = got, ref
    assert loss.dtype == torch.float32 and loss.dim() == 0
    torch.testing.assert_close(loss, ref_loss, rtol=rtol, atol=rtol)
    assert grads.keys() == ref_grads.keys()
    for name, g in grads.items():
        scale = ref_grads[name].abs().max().item() or 1.0
        torch.testing.assert_close(g, ref_grads[name], rtol=100 * rtol, atol=10 * rtol * scale,
                                   msg=lambda m, name=name: f"{name}: {m}")


@pytest.fixture
def force_impl(monkeypatch):
    def force(impl, chunk=None):
        if impl != "auto":
            monkeypatch.setattr(loss_mod, "loss_impl", lambda hidden, head: impl)
        if chunk is not None:  # chunk_positions(vocab) reads CHUNK_LOGITS when called
            monkeypatch.setattr(loss_mod, "CHUNK_LOGITS", chunk * CFG.vocab_size)
    return force


@pytest.mark.parametrize("impl", ["torch", "checkpoint"])
@pytest.mark.parametrize("chunk", [5, 24, 1000])
@pytest.mark.parametrize("tied", [False, True])
def test_chunked_loss_and_grads_equal_the_plain_path(force_impl, impl, chunk, tied):
    model = Transformer(CFG.with_(tie_embeddings=tied))
    tokens, labels = _batch(model.cfg)
    ref = _loss_and_grads(model, lambda: _plain(model, tokens, labels))
    force_impl(impl, chunk)
    got = _loss_and_grads(model, lambda: model(tokens, labels))
    _assert_same(got, ref)
    assert "embed_tokens.weight" in got[1]  # a tied head is this same Parameter
    assert tied or "lm_head.weight" in got[1]


def test_default_choice_on_cpu(monkeypatch):
    head = torch.nn.Linear(8, 50, bias=False)
    hidden = torch.randn(4, 8, requires_grad=True)
    assert loss_mod.loss_impl(hidden, head) == "torch"
    with torch.no_grad():
        assert loss_mod.loss_impl(hidden, head) == "loop"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert loss_mod.loss_impl(hidden, head) == "checkpoint"
    assert loss_mod.loss_impl(hidden, LoRALinear(head, rank=2, scale=1.0)) == "checkpoint"
    # Liger is a CUDA kernel: never chosen on CPU, even where it imports
    monkeypatch.setattr(loss_mod, "_liger_loss", lambda: pytest.fail("Liger looked up on CPU"))
    assert loss_mod.loss_impl(hidden, head) == "torch"


@pytest.mark.parametrize("impl", ["auto", "checkpoint"])
def test_frozen_head_gets_no_gradient(force_impl, impl):
    model = Transformer(CFG)
    model.lm_head.weight.requires_grad_(False)
    tokens, labels = _batch(CFG)
    ref = _loss_and_grads(model, lambda: _plain(model, tokens, labels))
    force_impl(impl, 7)
    got = _loss_and_grads(model, lambda: model(tokens, labels))
    assert "lm_head.weight" not in got[1]
    _assert_same(got, ref)


def _lora_model(dropout=0.0):
    model = Transformer(CFG)
    model.lm_head.weight.requires_grad_(False)
    model.lm_head = LoRALinear(model.lm_head, rank=4, scale=0.5, dropout=dropout)
    with torch.no_grad():
        model.lm_head.lora_B.normal_(0, 0.02)  # non-zero, so lora_A's gradient is too
    return model


def test_lora_on_the_head_trains_its_factors(force_impl):
    model = _lora_model()
    tokens, labels = _batch(CFG)
    assert loss_mod.loss_impl(torch.ones(1, requires_grad=True), model.lm_head) == "checkpoint"
    ref = _loss_and_grads(model, lambda: _plain(model, tokens, labels))
    force_impl("auto", 16)
    got = _loss_and_grads(model, lambda: model(tokens, labels))
    assert {"lm_head.lora_A", "lm_head.lora_B"} <= got[1].keys()
    assert "lm_head.weight" not in got[1]
    _assert_same(got, ref)


def test_recomputed_chunks_draw_the_same_dropout_masks(force_impl):
    """A head with dropout: the backward's recomputation must see the forward's masks, so
    checkpointed chunks give the gradients of chunks kept in memory."""
    model = _lora_model(dropout=0.3)
    tokens, labels = _batch(CFG)
    force_impl("loop", 16)  # chunked, graph kept, nothing recomputed
    torch.manual_seed(3)
    ref = _loss_and_grads(model, lambda: model(tokens, labels))
    force_impl("checkpoint")
    torch.manual_seed(3)
    got = _loss_and_grads(model, lambda: model(tokens, labels))
    _assert_same(got, ref, rtol=1e-6)
    after_checkpoint = torch.rand(4)
    torch.manual_seed(3)
    _loss_and_grads(model, lambda: _plain(model, tokens, labels))
    assert torch.equal(torch.rand(4), after_checkpoint)  # recomputation left the RNG as it was


def test_bf16_autocast_matches_the_plain_autocast_path(force_impl):
    model = Transformer(CFG)
    tokens, labels = _batch(CFG)
    force_impl("auto", 10)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        ref = _loss_and_grads(model, lambda: _plain(model, tokens, labels))
        got = _loss_and_grads(model, lambda: model(tokens, labels))
    # both paths run the head in bf16 and the loss in fp32: equal up to bf16 rounding
    _assert_same(got, ref, rtol=2e-3)


def test_without_grad_the_loop_gives_the_same_sum(force_impl):
    model = Transformer(CFG)
    tokens, labels = _batch(CFG)
    force_impl("auto", 7)
    with torch.no_grad():
        ref, got = _plain(model, tokens, labels), model(tokens, labels)
    assert got.requires_grad is False
    torch.testing.assert_close(got, ref, rtol=1e-5, atol=1e-5)


def test_all_positions_ignored_gives_zero_and_zero_gradients():
    model = Transformer(CFG)
    tokens, _ = _batch(CFG)
    loss = model(tokens, torch.full_like(tokens, -100))
    loss.backward()
    assert loss.item() == 0.0
    assert all(float(p.grad.abs().max()) == 0.0 for p in model.parameters())


def test_bad_labels_are_refused():
    model = Transformer(CFG)
    tokens, labels = _batch(CFG)
    with pytest.raises(ValueError, match="do not match"):
        model(tokens, labels[:, :-1])
    with pytest.raises(ValueError, match="int64"):
        model(tokens, labels.int())


@pytest.mark.parametrize("impl", ["torch", "checkpoint"])
def test_chunked_peak_is_far_below_the_plain_one(force_impl, impl):
    """At a large vocabulary the plain path holds the logits, their log-softmax and their
    gradient; the chunked path holds one chunk of each."""
    cfg = ModelConfig(vocab_size=32768, d_model=16, n_layers=1, n_heads=2, max_seq_len=128)
    model = Transformer(cfg)
    tokens, labels = _batch(cfg, batch=3, seq=128)
    logits_bytes = tokens.numel() * cfg.vocab_size * 4  # 48 MiB
    with PeakMemory("cpu") as plain:
        _plain(model, tokens, labels).backward()
    model.zero_grad(set_to_none=True)
    force_impl(impl)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(loss_mod, "CHUNK_LOGITS", 32 * cfg.vocab_size)  # 32 positions per chunk
        with PeakMemory("cpu") as chunked:
            model(tokens, labels).backward()
    assert plain.peak_above_baseline_bytes > 2 * logits_bytes
    assert chunked.peak_above_baseline_bytes < plain.peak_above_baseline_bytes / 3


@pytest.mark.skipif(not torch.cuda.is_available() or loss_mod._liger_loss() is None,
                    reason="needs CUDA and Liger-Kernel")
def test_liger_on_cuda_matches_the_plain_path():
    model = Transformer(CFG).cuda()
    tokens, labels = (t.cuda() for t in _batch(CFG))
    ref = _loss_and_grads(model, lambda: _plain(model, tokens, labels))
    assert loss_mod.loss_impl(torch.ones(1, device="cuda", requires_grad=True),
                              model.lm_head) == "liger"
    got = _loss_and_grads(model, lambda: model(tokens, labels))
    _assert_same(got, ref, rtol=1e-4)
