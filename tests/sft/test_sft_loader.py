import numpy as np
import pytest
import torch

from growlm.errors import GrowlmError
from growlm.sft.data import Examples
from growlm.sft.loader import SFTLoader, padded_batches

PAD = 0


def synthetic(n: int = 10, seed: int = 0) -> Examples:
    """Examples of 4..12 tokens: [PAD, prompt 100+i..., response 200+i...]; ids say whose."""
    rng = np.random.default_rng(seed)
    tokens, train = [], []
    for i in range(n):
        p, r = int(rng.integers(2, 7)), int(rng.integers(1, 5))
        tokens.append(np.asarray([PAD] + [100 + i] * p + [200 + i] * r, dtype=np.int32))
        train.append(np.asarray([False] * (1 + p) + [True] * r))
    return Examples(tokens, train)


def rows_of(loader: SFTLoader, n_rows: int):
    x, y = loader.next_batch(n_rows)
    return x.numpy(), y.numpy()


def owners(x_row: np.ndarray) -> list[int]:
    """Example ids appearing in a row, in order."""
    out = []
    for t in x_row.tolist():
        i = t % 100 if t >= 100 else None
        if i is not None and (not out or out[-1] != i):
            out.append(i)
    return out


@pytest.mark.parametrize("packing", [True, False])
def test_rows_hold_whole_examples_with_correct_targets(packing):
    ex = synthetic()
    loader = SFTLoader(ex, seq_len=16, seed=0, packing=packing, pad_id=PAD)
    n = loader.rows_in_epoch(0)
    x, y = rows_of(loader, n)
    assert x.dtype == np.int64 and y.dtype == np.int64 and x.shape == (n, 16)
    seen = []
    for xr, yr in zip(x, y):
        assert (yr != -100).any()
        ids = owners(xr)
        seen += ids
        if not packing:
            assert len(ids) == 1
        # a trained target is always the response token that follows, never a prompt or pad token
        targets = yr[yr != -100]
        assert all(t >= 200 or t == PAD for t in targets.tolist())
        next_tokens = np.append(xr[1:], -1)
        ok = (yr == -100) | (yr == next_tokens) | (np.arange(16) == 15)
        assert ok.all()
    assert sorted(seen) == list(range(len(ex)))  # every example once per epoch, none split
    assert sum((yy != -100).sum() for yy in y) == sum(int(m.sum()) for m in ex.train)
    if packing:
        assert n < len(ex)


def test_padding_rows_use_pad_id_and_ignore_padding():
    ex = synthetic()
    x, y = SFTLoader(ex, 16, seed=0, packing=False, pad_id=7).next_batch(3)
    for xr, yr in zip(x, y):
        n = len(ex.tokens[owners(xr.numpy())[0]])
        assert (xr[n:] == 7).all() and (yr[n - 1 :] == -100).all()


def test_shuffle_is_deterministic_per_seed_and_differs_per_epoch():
    ex = synthetic(30)
    a = SFTLoader(ex, 16, seed=5, packing=False)
    b = SFTLoader(ex, 16, seed=5, packing=False)
    first = [owners(r) for r in rows_of(a, 30)[0]]
    assert first == [owners(r) for r in rows_of(b, 30)[0]]
    second = [owners(r) for r in rows_of(a, 30)[0]]
    assert first != second and sorted(first) == sorted(second)
    other = [owners(r) for r in rows_of(SFTLoader(ex, 16, seed=6, packing=False), 30)[0]]
    assert other != first


def test_resume_from_state_dict_continues_exactly():
    ex = synthetic(12)
    a = SFTLoader(ex, 16, seed=1)
    for _ in range(5):  # crosses an epoch boundary
        a.next_batch(3)
    state = a.state_dict()
    assert set(state) == {"kind", "position", "fingerprint"} and state["position"] == 15
    b = SFTLoader(ex, 16, seed=1)
    b.load_state_dict(state)
    for _ in range(4):
        xa, ya = a.next_batch(3)
        xb, yb = b.next_batch(3)
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    with pytest.raises(GrowlmError, match="differ from the ones the run was started with"):
        SFTLoader(ex, 16, seed=2).load_state_dict(state)
    with pytest.raises(GrowlmError):
        SFTLoader(synthetic(12, seed=9), 16, seed=1).load_state_dict(state)


def test_ranks_split_the_global_batch():
    ex = synthetic(20)
    single = SFTLoader(ex, 16, seed=3)
    ranks = [SFTLoader(ex, 16, seed=3, rank=r, world_size=2) for r in range(2)]
    for _ in range(6):
        x, y = single.next_batch(4)
        parts = [loader.next_batch(2) for loader in ranks]
        assert torch.equal(x, torch.cat([p[0] for p in parts]))
        assert torch.equal(y, torch.cat([p[1] for p in parts]))
    assert ranks[0].position == ranks[1].position == single.position == 24


def test_position_restart_and_epoch():
    loader = SFTLoader(synthetic(8), 16, seed=0, packing=False)
    first = loader.next_batch(4)[0]
    loader.next_batch(6)
    assert loader.epoch == pytest.approx(1.25)
    loader.position = 0
    assert torch.equal(loader.next_batch(4)[0], first)


def test_padded_validation_batches_cover_examples_in_order():
    ex = synthetic(5)
    batches = list(padded_batches(ex, 16, PAD, batch_size=2))
    assert [b[0].shape[0] for b in batches] == [2, 2, 1]
    assert [owners(r) for b in batches for r in b[0].numpy()] == [[i] for i in range(5)]
    assert sum(b[0].shape[0] for b in padded_batches(ex, 16, PAD, 2, max_rows=3)) == 3
