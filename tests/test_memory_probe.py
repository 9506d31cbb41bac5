import copy
import gc

import pytest
import torch
import torch.nn.functional as F

from growlm.memory_probe import PeakMemory, live_tensor_bytes
from growlm.model import ModelConfig, Transformer

MIB = 2**20
CFG = ModelConfig(vocab_size=512, d_model=32, n_layers=2, n_heads=4, max_seq_len=64)


def _bytes(n):
    return torch.empty(n, dtype=torch.uint8)


def test_known_allocation_pattern_gives_the_exact_peak():
    held = _bytes(3 * MIB)  # live before the window: part of the baseline
    with PeakMemory("cpu") as probe:
        a = _bytes(4 * MIB)
        b = _bytes(8 * MIB)
        c = _bytes(4 * MIB)  # 16 MiB live: the peak
        del b
        d = _bytes(4 * MIB)  # 12 MiB live at the end
    assert probe.method == "cpu_allocator_events"
    assert probe.peak_above_baseline_bytes == 16 * MIB
    assert probe.end_bytes - probe.baseline_bytes == 12 * MIB
    assert probe.baseline_bytes >= held.nbytes
    assert probe.peak_bytes == probe.baseline_bytes + 16 * MIB
    del a, c, d


def test_baseline_counts_each_storage_once():
    gc.collect()  # no garbage tensors left to vanish between the two counts
    before = live_tensor_bytes()
    base = _bytes(5 * MIB)
    views = [base[:MIB], base[MIB:], base.view(torch.int32)]
    assert live_tensor_bytes() - before == 5 * MIB
    del views


def _model_and_batch(seed=0):
    torch.manual_seed(seed)
    model = Transformer(CFG)
    tokens = torch.randint(0, CFG.vocab_size, (4, 48))
    return model, tokens, torch.roll(tokens, -1, 1)


def test_tensors_that_refuse_their_data_pointer_are_skipped():
    """After torch.compile has traced a training step, tensors of its functionalization stay
    reachable whose storage refuses `data_ptr()` (torch marks them so); counting must not fail."""
    gc.collect()
    before = live_tensor_bytes()
    traced = torch.empty(1024, 1024)
    torch._C._set_throw_on_mutable_data_ptr(traced)  # what torch.compile does to them
    real = torch.empty(256, 1024)
    assert live_tensor_bytes() - before == real.untyped_storage().nbytes()
    del traced


def test_forward_backward_measures_more_than_model_state():
    model, tokens, labels = _model_and_batch()
    state = sum(p.numel() * p.element_size() for p in model.parameters())
    with PeakMemory("cpu") as probe:
        F.cross_entropy(model(tokens).flatten(0, 1), labels.flatten()).backward()
    grads = sum(p.grad.numel() * p.grad.element_size() for p in model.parameters())
    assert probe.baseline_bytes >= state
    # the window holds the gradients at its end, and activations and logits before that
    assert probe.end_bytes - probe.baseline_bytes >= grads
    logits = tokens.numel() * CFG.vocab_size * 4
    assert probe.peak_above_baseline_bytes > grads + logits
    assert probe.peak_bytes > state + grads


def _train_step(model, tokens, labels, probe: bool):
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    window = PeakMemory("cpu") if probe else None
    if window:
        window.start()
    loss = F.cross_entropy(model(tokens).flatten(0, 1), labels.flatten())
    loss.backward()
    opt.step()
    if window:
        window.stop()
    return loss.detach()


def test_probe_does_not_change_computed_values():
    model, tokens, labels = _model_and_batch()
    twin = copy.deepcopy(model)
    assert torch.equal(_train_step(model, tokens, labels, probe=False),
                       _train_step(twin, tokens, labels, probe=True))
    for p, q in zip(model.parameters(), twin.parameters()):
        assert torch.equal(p, q)


def test_nested_window_falls_back_and_outer_still_measures():
    with PeakMemory("cpu") as outer:
        with PeakMemory("cpu") as inner:
            x = torch.ones(32 * MIB, dtype=torch.uint8)  # touched, so resident
    assert outer.method == "cpu_allocator_events"
    assert outer.peak_above_baseline_bytes >= 32 * MIB
    assert inner.method in ("process_rss", "process_rss_lifetime")
    assert inner.peak_bytes >= inner.baseline_bytes
    if inner.method == "process_rss":  # Linux: peak RSS reset at entry
        assert inner.peak_above_baseline_bytes >= 30 * MIB
    del x


def test_an_error_inside_the_window_leaves_no_profiler_running():
    probe = PeakMemory("cpu")
    with pytest.raises(KeyError), probe:
        _bytes(MIB)
        raise KeyError("boom")
    assert not torch.autograd._profiler_enabled()
    with PeakMemory("cpu") as again:
        _bytes(2 * MIB)
    assert again.method == "cpu_allocator_events"
    assert again.peak_above_baseline_bytes == 2 * MIB


def test_misuse_is_refused():
    with pytest.raises(ValueError, match="cpu or cuda"):
        PeakMemory("meta")
    with pytest.raises(RuntimeError, match="before start"):
        PeakMemory("cpu").stop()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_peak_from_the_allocator():
    with PeakMemory("cuda") as probe:
        a = torch.empty(64 * MIB, dtype=torch.uint8, device="cuda")
        del a
        b = torch.empty(16 * MIB, dtype=torch.uint8, device="cuda")
    assert probe.method == "cuda_allocator"
    assert probe.peak_above_baseline_bytes >= 64 * MIB
    assert probe.end_bytes - probe.baseline_bytes == 16 * MIB
    del b
