import pytest
import torch

from growlm.errors import GrowlmError
from growlm.eval.neighbours import neighbour_overlap


def brute_force(a, b, k):
    def top(m):
        u = torch.nn.functional.normalize(m, dim=1)
        s = u @ u.T
        s.fill_diagonal_(float("-inf"))
        return s.topk(k, dim=1).indices
    ta, tb = top(a), top(b)
    return sum(len(set(x.tolist()) & set(y.tolist())) for x, y in zip(ta, tb)) / (k * len(a))


def test_chunked_equals_brute_force():
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(203, 16, generator=gen)
    b = a + 0.8 * torch.randn(203, 24, generator=gen)[:, :16]
    got, per_token = neighbour_overlap(a, b, k=10, chunk=37, per_token=True)
    assert abs(got - brute_force(a, b, 10)) < 1e-9
    assert per_token.shape == (203,) and 0.0 < got < 1.0


def test_cosine_invariances_give_full_overlap():
    gen = torch.Generator().manual_seed(1)
    a = torch.randn(120, 12, generator=gen)
    q, _ = torch.linalg.qr(torch.randn(12, 12, generator=gen))
    scaled_rotated = (a @ q) * torch.rand(120, 1, generator=gen).add(0.5)
    assert neighbour_overlap(a, scaled_rotated, k=15, chunk=50) == pytest.approx(1.0)
    wider = torch.cat([a, torch.zeros(120, 5)], dim=1)  # different widths are fine
    assert neighbour_overlap(a, wider, k=5) == pytest.approx(1.0)


def test_bad_inputs():
    a, b = torch.randn(10, 4), torch.randn(11, 4)
    with pytest.raises(GrowlmError, match="different sizes"):
        neighbour_overlap(a, b)
    with pytest.raises(GrowlmError, match="k=10 is out of range.*9"):
        neighbour_overlap(a, a, k=10)


def test_progress_is_reported_when_asked(capsys):
    a = torch.randn(300, 8, generator=torch.Generator().manual_seed(0))
    quiet = neighbour_overlap(a, a, k=5, chunk=64)
    assert capsys.readouterr().out == ""
    loud = neighbour_overlap(a, a, k=5, chunk=64, progress=True, desc="overlap")
    out = capsys.readouterr().out
    assert loud == quiet and "overlap tok 300/300" in out  # plain lines: not a terminal
