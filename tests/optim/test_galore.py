import io
import math

import pytest
import torch

from growlm.errors import GrowlmError
from growlm.model.config import ModelConfig
from growlm.model.llama import Transformer, cross_entropy
from growlm.optim.galore import GaLoreAdamW, build_galore

CFG = ModelConfig(vocab_size=128, d_model=32, n_layers=2, n_heads=4, ffn_dim=64, max_seq_len=16)
HP = dict(lr=1e-2, betas=(0.9, 0.99), eps=1e-6, weight_decay=0.05)


def _quadratic(shape, seed=0):
    """Loss 0.5·||X·W − Y||², whose gradient changes with W (so refreshes matter)."""
    g = torch.Generator().manual_seed(seed)
    m, n = shape
    x, y = torch.randn(16, m, generator=g), torch.randn(16, n, generator=g)
    return torch.randn(m, n, generator=g), lambda w: x.T @ (x @ w - y)


def _reference(w, grad_fn, steps, rank, gap, scale, lr, betas, eps, weight_decay):
    """GaLore-AdamW written out from Zhao et al. (2024), Alg. 1, with the official code's
    conventions: projector on the smaller side, refreshed when the pre-increment step count
    is a multiple of the gap; bias correction in the step size; decoupled decay afterwards."""
    w = w.clone()
    m, n = w.shape
    b1, b2 = betas
    mom = var = basis = None
    for t in range(steps):
        g = grad_fn(w)
        if t % gap == 0:
            u, _, vh = torch.linalg.svd(g, full_matrices=False)
            basis = vh[:rank] if m >= n else u[:, :rank]
        r = g @ basis.T if m >= n else basis.T @ g
        if mom is None:
            mom, var = torch.zeros_like(r), torch.zeros_like(r)
        mom = b1 * mom + (1 - b1) * r
        var = b2 * var + (1 - b2) * r * r
        step_size = lr * math.sqrt(1 - b2 ** (t + 1)) / (1 - b1 ** (t + 1))
        n_low = mom / (var.sqrt() + eps)
        update = scale * (n_low @ basis if m >= n else basis @ n_low)
        w = w - step_size * update
        w = w - lr * weight_decay * w
    return w


def _run_ours(w0, grad_fn, steps, rank, gap, scale):
    w = torch.nn.Parameter(w0.clone())
    opt = GaLoreAdamW([{"params": [w], "rank": rank, "update_gap": gap, "scale": scale}], **HP)
    for _ in range(steps):
        w.grad = grad_fn(w.detach())
        opt.step()
    return w.detach(), opt


@pytest.mark.parametrize("shape", [(24, 10), (10, 24)])
def test_matches_reference_across_refreshes(shape):
    w0, grad_fn = _quadratic(shape)
    ours, opt = _run_ours(w0, grad_fn, steps=8, rank=3, gap=3, scale=0.25)
    ref = _reference(w0, grad_fn, 8, 3, 3, 0.25, **HP)
    torch.testing.assert_close(ours, ref, rtol=1e-5, atol=1e-6)
    state = opt.state[next(iter(opt.state))]
    low_shape = (shape[0], 3) if shape[0] >= shape[1] else (3, shape[1])
    assert state["exp_avg"].shape == low_shape  # Adam state lives in the projected space
    assert state["step"] == 8
    # refreshes matter: a projector frozen after step 0 ends elsewhere
    frozen_proj = _reference(w0, grad_fn, 8, 3, 100, 0.25, **HP)
    assert (frozen_proj - ref).abs().max() > 1e-4


@pytest.mark.parametrize("shape", [(24, 10), (10, 24)])
def test_matches_pytorch_optimizer_galore(shape):
    """pytorch-optimizer's GaLore refreshes one step earlier than the reference; before the
    first refresh the two must agree."""
    po = pytest.importorskip("pytorch_optimizer")
    w0, grad_fn = _quadratic(shape, seed=1)
    ours, _ = _run_ours(w0, grad_fn, steps=6, rank=4, gap=50, scale=0.25)
    w = torch.nn.Parameter(w0.clone())
    theirs = po.GaLore([{"params": [w], "rank": 4, "update_proj_gap": 50, "scale": 0.25,
                         "projection_type": "std"}], **HP)
    for _ in range(6):
        w.grad = grad_fn(w.detach())
        theirs.step()
    torch.testing.assert_close(ours, w.detach(), rtol=1e-5, atol=1e-6)


def _batches(n):
    g = torch.Generator().manual_seed(5)
    return [torch.randint(0, CFG.vocab_size, (2, 9), generator=g) for _ in range(n)]


def _train(model, opt, batches):
    losses = []
    for tokens in batches:
        loss = cross_entropy(model(tokens[:, :-1]), tokens[:, 1:])
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(loss.item())
    return losses


def test_build_groups_and_state_roundtrip_weights_only():
    model = Transformer(CFG)
    opt = build_galore(model, lr=3e-3, weight_decay=0.1, rank=4, update_gap=3, scale=0.25)
    galore_group, regular, no_decay = opt.param_groups
    names = {id(p): n for n, p in model.named_parameters()}
    assert {names[id(p)] for p in regular["params"]} == {"embed_tokens.weight", "lm_head.weight"}
    assert all(p.dim() == 1 for p in no_decay["params"]) and no_decay["weight_decay"] == 0.0
    assert len(galore_group["params"]) == 14 and galore_group["rank"] == 4
    batches = _batches(8)
    _train(model, opt, batches[:4])
    q = model.get_submodule("layers.0.self_attn.q_proj").weight
    assert opt.state[q]["exp_avg"].shape == (32, 4) and opt.state[q]["projector"].shape == (4, 32)

    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "optim": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf, weights_only=True)
    model2 = Transformer(CFG)
    model2.load_state_dict(saved["model"])
    opt2 = build_galore(model2, lr=3e-3, weight_decay=0.1, rank=4, update_gap=3, scale=0.25)
    opt2.load_state_dict(saved["optim"])

    # the remaining steps include a projector refresh (step 6): both runs stay identical
    assert _train(model, opt, batches[4:]) == _train(model2, opt2, batches[4:])
    for k, v in model.state_dict().items():
        assert torch.equal(v, model2.state_dict()[k]), k


def test_galore_trains():
    model = Transformer(CFG)
    opt = build_galore(model, lr=1e-2, rank=8, update_gap=5)
    tokens = _batches(1) * 30
    losses = _train(model, opt, tokens)
    assert losses[-1] < losses[0] - 0.5


def test_no_2d_trainable_params():
    model = Transformer(CFG.with_(n_layers=0))
    with pytest.raises(GrowlmError, match="GaLore needs 2-D trainable parameters"):
        build_galore(model, lr=1e-3)
    model = Transformer(CFG)
    for p in model.parameters():
        p.requires_grad_(p.dim() == 1)
    with pytest.raises(GrowlmError, match="GaLore needs 2-D trainable parameters"):
        build_galore(model.named_parameters(), lr=1e-3)
    with pytest.raises(GrowlmError, match="GaLore needs 2-D trainable parameters"):
        build_galore(list(model.parameters()), lr=1e-3)


def test_bare_parameter_list_projects_every_matrix():
    model = Transformer(CFG)
    opt = build_galore([p for p in model.parameters() if p.requires_grad], lr=1e-3, rank=4)
    assert len(opt.param_groups[0]["params"]) == 14 + 2  # no names: embeddings and head too
    assert all(p.dim() == 1 for p in opt.param_groups[1]["params"])
