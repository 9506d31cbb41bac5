import math
import pickle

import pytest
import torch

from growlm.errors import GrowlmError
from growlm.optim.schedule import constant, jagged_cosine, linear, lr_schedule, warmup_cosine


def test_warmup_cosine_values():
    f = [warmup_cosine(s, warmup=4, horizon=14, min_ratio=0.1) for s in range(20)]
    assert f[:4] == pytest.approx([0.2, 0.4, 0.6, 0.8])  # (s+1)/(warmup+1): never 0
    assert f[4] == pytest.approx(1.0)
    assert f[9] == pytest.approx(0.1 + 0.9 * 0.5)  # half-way through the cosine
    assert f[14] == pytest.approx(0.1)
    assert f[14:] == pytest.approx([0.1] * 6)  # flat after the horizon
    assert all(a >= b for a, b in zip(f[4:], f[5:]))


def test_linear_and_constant_values():
    f = [linear(s, warmup=1, horizon=5, min_ratio=0.2) for s in range(7)]
    assert f == pytest.approx([0.5, 1.0, 0.8, 0.6, 0.4, 0.2, 0.2])
    assert [constant(s, warmup=3) for s in range(5)] == pytest.approx([0.25, 0.5, 0.75, 1, 1])
    assert warmup_cosine(0, 0, 10, 0.0) == 1.0


def test_jagged_cosine_drops_and_rewarms():
    kw = dict(warmup=2, horizon=40, min_ratio=0.1, reset_every=10, rewarmup=4)
    f = [jagged_cosine(s, **kw) for s in range(40)]
    env = [warmup_cosine(s, 2, 40, 0.1) for s in range(40)]
    assert f[:10] == pytest.approx(env[:10])  # no drop before the first reset
    for reset in (10, 20, 30):
        target = env[reset + 4]
        assert f[reset:reset + 4] == pytest.approx([target * k / 5 for k in (1, 2, 3, 4)])
        assert f[reset + 4:reset + 10] == pytest.approx(env[reset + 4:reset + 10])
        assert f[reset] < 0.25 * f[reset - 1]
    assert jagged_cosine(25, **{**kw, "rewarmup": 0}) == pytest.approx(env[25])


def test_official_relora_shape_at_scale():
    # ReLoRA's 1.3B-style setting: reset 5000, re-warmup 100 — the LR re-warms to the envelope
    kw = dict(warmup=1000, horizon=20000, min_ratio=0.1, reset_every=5000, rewarmup=100)
    assert jagged_cosine(5000, **kw) < 0.01
    assert jagged_cosine(5100, **kw) == pytest.approx(warmup_cosine(5100, 1000, 20000, 0.1))
    progress = (5100 - 1000) / 19000
    assert jagged_cosine(5100, **kw) == pytest.approx(
        0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def test_lr_schedule_factory_with_lambdalr():
    fn = lr_schedule("cosine", warmup=2, horizon=20, min_ratio=0.0, reset_every=5, rewarmup=2)
    fn = pickle.loads(pickle.dumps(fn))
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=2.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, fn)
    seen = []
    for _ in range(8):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx([2.0 * fn(s) for s in range(8)])
    assert seen[5] < seen[4]


def test_lr_schedule_bad_inputs():
    with pytest.raises(GrowlmError, match="unknown kind"):
        lr_schedule("step", warmup=0, horizon=10, min_ratio=0.1)
    with pytest.raises(GrowlmError, match="shorter than the reset interval"):
        lr_schedule("cosine", warmup=0, horizon=10, min_ratio=0.1, reset_every=5, rewarmup=5)



def test_relora_restarts_reshape_every_envelope():
    """ReLoRA's re-warm after a reset applies to linear and constant schedules too (before,
    a ReLoRA stage silently replaced them by the jagged cosine)."""
    for kind in ("linear", "constant", "cosine"):
        plain = lr_schedule(kind, warmup=0, horizon=10, min_ratio=0.1)
        jag = lr_schedule(kind, warmup=0, horizon=10, min_ratio=0.1, reset_every=5, rewarmup=2)
        assert [jag(s) for s in range(5)] == [plain(s) for s in range(5)]
        assert jag(5) == pytest.approx(plain(7) / 3) and jag(6) == pytest.approx(2 * plain(7) / 3)
        assert [jag(s) for s in range(7, 10)] == [plain(s) for s in range(7, 10)]
