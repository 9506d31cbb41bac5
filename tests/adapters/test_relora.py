import pytest
import torch

from growlm.adapters import (
    ReLoRA,
    adapter_modules,
    adapter_parameters,
    apply_adapters,
    check_relora,
    reset_optimizer_state,
)
from growlm.config import AdapterSpec
from growlm.errors import GrowlmError
from growlm.model.config import ModelConfig
from growlm.model.llama import Transformer, cross_entropy

CFG = ModelConfig(vocab_size=128, d_model=32, n_layers=2, n_heads=4, ffn_dim=64, max_seq_len=16)
LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
           "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def _freeze_layer0(model) -> set[str]:
    frozen = {n for n in dict(model.named_parameters()) if n.startswith("layers.0.")}
    for n, p in model.named_parameters():
        if n in frozen:
            p.requires_grad_(False)
    return frozen


def _step(model, opt, tokens):
    loss = cross_entropy(model(tokens[:, :-1]), tokens[:, 1:])
    loss.backward()
    opt.step()
    opt.zero_grad()
    return loss.item()


def _setup(spec: AdapterSpec, fused: bool = False):
    model = Transformer(CFG)
    frozen = _freeze_layer0(model)
    apply_adapters(model, spec, frozen, generator=torch.Generator().manual_seed(3))
    trainable = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(trainable, lr=1e-2, fused=fused)
    ctl = ReLoRA(model, opt, spec, stage_steps=20, seed=3)
    return model, ctl, opt


def test_trainable_count_is_adapters_plus_rest():
    model, _, opt = _setup(AdapterSpec(rank=4, reset_every=5, rewarmup_steps=2))
    layer1 = sum(p.numel() for n, p in model.named_parameters()
                 if n.startswith("layers.1.") and "lora_" not in n)
    other = CFG.vocab_size * CFG.d_model * 2 + CFG.d_model  # embed, head, final norm
    adapters = sum(4 * (m.in_features + m.out_features) for m in adapter_modules(model).values())
    assert sum(p.numel() for p in adapter_parameters(model)) == adapters == 4 * (4 * 64 + 2 * 96 + 96)
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert trainable == adapters + layer1 + other
    assert sum(p.numel() for g in opt.param_groups for p in g["params"]) == trainable


def test_relora_baseline_on_all():
    model = Transformer(CFG)
    spec = AdapterSpec(rank=4, on="all", reset_every=10, rewarmup_steps=2)
    apply_adapters(model, spec, generator=torch.Generator().manual_seed(0))
    ReLoRA(model, None, spec, stage_steps=20)  # ReLoRA over adapters on every linear
    # ReLoRA freezes the wrapped linears; embeddings, norms and head keep training
    linear_weights = {f"layers.{i}.{lin}.weight" for i in range(2) for lin in LINEARS}
    for n, p in model.named_parameters():
        assert p.requires_grad == (n not in linear_weights), n


@pytest.mark.parametrize("fused", [False, True])
def test_reset_zero_output_and_pruned_state(fused):
    spec = AdapterSpec(rank=4, reset_every=5, rewarmup_steps=2, prune_ratio=0.9)
    model, ctl, opt = _setup(spec, fused=fused)
    tokens = torch.randint(0, CFG.vocab_size, (2, 9))
    for done in range(1, 6):
        _step(model, opt, tokens)
        assert ctl.is_reset_step(done) == (done == 5)
    with torch.no_grad():
        before = model(tokens)
    assert ctl.maybe_reset(5) and ctl.resets == 1
    with torch.no_grad():
        torch.testing.assert_close(model(tokens), before, rtol=0, atol=1e-5)
    for m in adapter_modules(model).values():
        assert m.lora_B.abs().sum() == 0  # zero-output adapters
        x = torch.randn(3, m.in_features)
        assert (m(x) - torch.nn.functional.linear(x, m.weight)).abs().max() == 0
    for p in adapter_parameters(model):
        for key in ("exp_avg", "exp_avg_sq"):
            t = opt.state[p][key]
            kept = int((t != 0).sum())
            assert kept == p.numel() - round(p.numel() * 0.9), (key, p.shape)
    # not-adapter state untouched
    head = model.lm_head.weight
    assert int((opt.state[head]["exp_avg"] != 0).sum()) > 0.5 * head.numel()
    _step(model, opt, tokens)  # training goes on after the reset


def test_magnitude_prune_keeps_largest():
    p = torch.nn.Parameter(torch.zeros(10))
    opt = torch.optim.AdamW([p])
    opt.state[p]["exp_avg"] = torch.arange(1.0, 11.0) * torch.tensor([1, -1] * 5)
    opt.state[p]["exp_avg_sq"] = torch.arange(1.0, 11.0)
    reset_optimizer_state(opt, [p], "prune", 0.7)
    assert torch.equal(opt.state[p]["exp_avg"], torch.tensor([0.0] * 7 + [-8, 9, -10]))
    assert torch.equal(opt.state[p]["exp_avg_sq"], torch.tensor([0.0] * 7 + [8, 9, 10]))


@pytest.mark.parametrize("mode,ratio,kept", [("random", 0.75, 25), ("zero", 0.1, 0),
                                             ("prune", 0.0, 100), ("prune", 1.0, 0)])
def test_reset_modes(mode, ratio, kept):
    p = torch.nn.Parameter(torch.zeros(100))
    opt = torch.optim.AdamW([p])
    opt.state[p]["exp_avg"] = torch.rand(100) + 0.1
    opt.state[p]["step"] = torch.tensor(7.0)
    reset_optimizer_state(opt, [p], mode, ratio)
    assert int((opt.state[p]["exp_avg"] != 0).sum()) == kept
    assert opt.state[p]["step"].item() == 7.0  # bias correction does not restart


def test_resets_are_reproducible():
    spec = AdapterSpec(rank=4, reset_every=2, rewarmup_steps=1, optimizer_reset="random")
    tokens = torch.randint(0, CFG.vocab_size, (2, 9))
    finals = []
    for _ in range(2):
        torch.manual_seed(0)
        model, ctl, opt = _setup(spec)
        torch.manual_seed(1)  # different global RNG use must not matter for the resets
        for done in range(1, 5):
            _step(model, opt, tokens)
            ctl.step(done)
        finals.append(model.state_dict())
    assert ctl.state_dict() == {"resets": 2}
    for k in finals[0]:
        assert torch.equal(finals[0][k], finals[1][k]), k


def test_resets_and_the_matching_schedule():
    from growlm.optim.schedule import lr_schedule

    spec = AdapterSpec(rank=4, reset_every=10, rewarmup_steps=4)
    ctl = ReLoRA(Transformer(CFG), None, spec, stage_steps=40)
    assert not ctl.is_reset_step(0) and not ctl.is_reset_step(9)
    assert ctl.is_reset_step(10) and ctl.is_reset_step(20) and ctl.is_reset_step(30)
    fn = lr_schedule("cosine", warmup=2, horizon=40, min_ratio=0.1, reset_every=ctl.reset_every,
                     rewarmup=spec.rewarmup_steps)
    f = [fn(s) for s in range(40)]
    assert f[20] < 0.25 * f[19] and f[24] > f[23] > f[22] > f[21] > f[20]


def test_bad_reset_interval():
    with pytest.raises(GrowlmError, match=r"adapters\.reset_every: 5000 steps is longer than the stage"):
        check_relora(AdapterSpec(), stage_steps=300)
    with pytest.raises(GrowlmError, match="adapters.rewarmup_steps"):
        check_relora(AdapterSpec(reset_every=50, rewarmup_steps=50), stage_steps=300)
    check_relora(AdapterSpec(kind="lora"), stage_steps=10)  # plain LoRA never resets
