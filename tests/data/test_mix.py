"""MixedLoader: weighted, deterministic, resumable, rank-aware mixing of token streams."""

import numpy as np
import pytest
import torch

from growlm.data import mix
from growlm.data.mix import MixedLoader
from growlm.errors import GrowlmError

T = 8


def _streams(sizes=(401, 161, 97)) -> list[np.ndarray]:
    # Source k's tokens are k·100000 + position: a row tells its source and its window.
    return [(k * 100_000 + np.arange(n)).astype(np.int64) for k, n in enumerate(sizes)]


def _source_of(rows: torch.Tensor) -> np.ndarray:
    return (rows[:, 0] // 100_000).numpy()


def _take(loader, batch_size: int, steps: int) -> torch.Tensor:
    return torch.cat([loader.next_batch(batch_size)[0] for _ in range(steps)])


@pytest.fixture
def small_blocks(monkeypatch):
    """Blocks of 64 positions, so that short tests cross many block boundaries."""
    monkeypatch.setattr(mix, "BLOCK", 64)


@pytest.mark.parametrize("weights", [(0.6, 0.3, 0.1), (5, 1, 1), (0.998, 0.001, 0.001)])
def test_proportions_follow_the_weights(weights, small_blocks):
    loader = MixedLoader(_streams(), weights, T, seed=3)
    batch, steps = 16, 250
    sources = np.concatenate([_source_of(loader.next_batch(batch)[0]) for _ in range(steps)])
    counts = np.bincount(sources, minlength=3)
    share = np.asarray(weights, dtype=float) / sum(weights)
    assert np.all(np.abs(counts - share * batch * steps) <= 2), (counts, share * batch * steps)
    assert loader.drawn() == counts.tolist()
    # every batch holds each source within about one sequence of its share
    loader.position = 0
    for _ in range(50):
        per_batch = np.bincount(_source_of(loader.next_batch(batch)[0]), minlength=3)
        assert np.all(np.abs(per_batch - share * batch) < 2.5), per_batch


def test_each_source_is_read_as_its_own_shuffled_epochs():
    streams = _streams()
    loader = MixedLoader(streams, (1, 1, 1), T, seed=0)
    rows = _take(loader, 30, 20)
    for k, stream in enumerate(streams):
        mine = rows[_source_of(rows) == k]
        n_seq = (len(stream) - 1) // T
        first_epoch = mine[:n_seq, 0].tolist()
        assert sorted(first_epoch) == [k * 100_000 + i * T for i in range(n_seq)]
        assert first_epoch != sorted(first_epoch)  # shuffled
        for row in mine:  # windows are contiguous tokens of that source
            assert torch.equal(row, torch.arange(int(row[0]), int(row[0]) + T))


def test_deterministic_for_a_seed_and_different_for_another():
    a, b, c = (MixedLoader(_streams(), (0.5, 0.3, 0.2), T, seed=s) for s in (7, 7, 8))
    assert torch.equal(_take(a, 8, 20), _take(b, 8, 20))
    assert not torch.equal(_take(MixedLoader(_streams(), (0.5, 0.3, 0.2), T, seed=7), 8, 20),
                           _take(c, 8, 20))
    # the order of the sources in the list does not change which sequences each one gives
    swapped = MixedLoader(_streams()[::-1], (0.2, 0.3, 0.5), T, seed=7)
    rows_a = _take(MixedLoader(_streams(), (0.5, 0.3, 0.2), T, seed=7), 8, 20)
    rows_b = _take(swapped, 8, 20)
    for k in range(3):
        assert torch.equal(rows_a[_source_of(rows_a) == k][:20], rows_b[_source_of(rows_b) == k][:20])


def test_resume_mid_stream_gives_the_same_batches(small_blocks):
    ref = MixedLoader(_streams(), (0.6, 0.3, 0.1), T, seed=11)
    _take(ref, 6, 37)  # past several blocks and every source's first epoch
    state = ref.state_dict()
    assert state["kind"] == "mix" and state["position"] == 222
    assert all(isinstance(v, (int, str)) for v in state.values())
    expected = _take(ref, 6, 30)
    resumed = MixedLoader(_streams(), (0.6, 0.3, 0.1), T, seed=0)  # the seed comes from the state
    resumed.load_state_dict(state)
    assert torch.equal(_take(resumed, 6, 30), expected)


def test_any_position_is_located_without_replaying_the_stream(small_blocks):
    sequential = MixedLoader(_streams(), (0.45, 0.35, 0.2), T, seed=5)
    rows = _take(sequential, 1, 700)
    jumper = MixedLoader(_streams(), (0.45, 0.35, 0.2), T, seed=5)
    for p in (699, 0, 64, 63, 128, 333, 640, 1):
        jumper.position = p
        assert torch.equal(jumper.next_batch(1)[0][0], rows[p]), p


def test_ranks_see_disjoint_sequences_whose_union_is_one_ranks(small_blocks):
    single = MixedLoader(_streams(), (0.6, 0.3, 0.1), T, seed=2)
    ranks = [MixedLoader(_streams(), (0.6, 0.3, 0.1), T, seed=2, rank=r, world_size=2)
             for r in range(2)]
    for _ in range(40):  # crosses blocks and epochs
        whole_x, whole_y = single.next_batch(10)
        parts = [r.next_batch(5) for r in ranks]
        assert torch.equal(torch.cat([p[0] for p in parts]), whole_x)
        assert torch.equal(torch.cat([p[1] for p in parts]), whole_y)
    assert ranks[0].position == ranks[1].position == single.position == 400
    # Within every source's first epoch (40 positions), the ranks' sequences are disjoint.
    for r in ranks:
        r.position = 0
    seen = [set(map(tuple, torch.cat([r.next_batch(5)[0] for _ in range(4)]).tolist()))
            for r in ranks]
    assert len(seen[0]) == len(seen[1]) == 20 and not seen[0] & seen[1]


def test_targets_are_inputs_shifted_by_one():
    x, y = MixedLoader(_streams(), (1, 2, 3), T, seed=1).next_batch(12)
    assert x.dtype == y.dtype == torch.int64 and x.shape == y.shape == (12, T)
    assert torch.equal(y, x + 1)


def test_state_of_another_mix_is_refused():
    state = MixedLoader(_streams(), (0.6, 0.3, 0.1), T, seed=0).state_dict()
    with pytest.raises(GrowlmError, match="different data mix"):
        MixedLoader(_streams(), (0.5, 0.3, 0.2), T, seed=0).load_state_dict(state)
    with pytest.raises(GrowlmError, match="different data mix"):
        MixedLoader(_streams(), (0.6, 0.3, 0.1), 4, seed=0).load_state_dict(state)
    with pytest.raises(GrowlmError, match="malformed"):
        MixedLoader(_streams(), (0.6, 0.3, 0.1), T).load_state_dict({"position": 1})


@pytest.mark.parametrize("weights,match", [((1, 0, 1), "weight 2"), ((1, -1, 1), "weight 2"),
                                           ((1, 1, float("nan")), "weight 3"),
                                           ((1, float("inf"), 1), "weight 2"),
                                           ((1, 1), "one weight each")])
def test_bad_weights(weights, match):
    with pytest.raises(GrowlmError, match=match):
        MixedLoader(_streams(), weights, T)


def test_negative_seed_is_refused():
    with pytest.raises(GrowlmError, match=r"seed must be ≥ 0 \(run\.seed\), got -1"):
        MixedLoader(_streams(), (1, 1, 1), T, seed=-1)
