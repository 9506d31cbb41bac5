import numpy as np
import pytest
import torch

from growlm.data import SequenceLoader, open_shards, prepare, sequential_batches
from growlm.errors import GrowlmError

T = 8


def _tokens(n: int = 8 * 10 + 1) -> np.ndarray:
    return np.arange(n, dtype=np.uint16)  # token value = its position: easy to check windows


def _take(loader, batch_size: int, steps: int) -> torch.Tensor:
    return torch.cat([loader.next_batch(batch_size)[0] for _ in range(steps)])


def test_windows_overlap_by_one_and_cover_the_epoch():
    loader = SequenceLoader(_tokens(), T, seed=3)
    assert loader.num_sequences == 10
    inputs, targets = loader.next_batch(10)
    assert inputs.dtype == targets.dtype == torch.int64 and inputs.shape == (10, T)
    assert torch.equal(targets, inputs + 1)
    starts = sorted(inputs[:, 0].tolist())
    assert starts == [i * T for i in range(10)]  # each sequence once per epoch
    assert all(torch.equal(row, torch.arange(row[0], row[0] + T)) for row in inputs)
    assert loader.epoch == 1 and loader.position == 10


def test_order_is_deterministic_from_the_seed():
    a, b, c = (SequenceLoader(_tokens(), T, seed=s) for s in (1, 1, 2))
    assert torch.equal(_take(a, 3, 5), _take(b, 3, 5))
    assert not torch.equal(_take(SequenceLoader(_tokens(), T, seed=1), 3, 5), _take(c, 3, 5))


def test_resume_from_state_gives_identical_batches():
    ref = SequenceLoader(_tokens(), T, seed=7)
    _take(ref, 3, 4)
    state = ref.state_dict()
    assert all(isinstance(v, (int, str)) for v in state.values())
    assert state["position"] == 12 and state["epoch"] == 1
    expected = _take(ref, 3, 6)
    resumed = SequenceLoader(_tokens(), T, seed=0)  # the seed comes from the state
    resumed.load_state_dict(state)
    assert torch.equal(_take(resumed, 3, 6), expected)


def test_ranks_split_the_global_batch():
    single = SequenceLoader(_tokens(), T, seed=5)
    ranks = [SequenceLoader(_tokens(), T, seed=5, rank=r, world_size=2) for r in range(2)]
    for _ in range(4):  # crosses an epoch boundary too
        whole_x, whole_y = single.next_batch(6)
        parts = [r.next_batch(3) for r in ranks]
        assert torch.equal(torch.cat([p[0] for p in parts]), whole_x)
        assert torch.equal(torch.cat([p[1] for p in parts]), whole_y)
    assert ranks[0].position == ranks[1].position == single.position == 24


def test_epoch_wrap_uses_a_new_permutation():
    loader = SequenceLoader(_tokens(), T, seed=11)
    first = loader.next_batch(10)[0][:, 0].tolist()
    second = loader.next_batch(10)[0][:, 0].tolist()
    assert sorted(first) == sorted(second) and first != second
    loader.position = 8
    crossing = loader.next_batch(4)[0][:, 0].tolist()
    assert crossing == first[8:] + second[:2]


def test_batch_size_change_continues_at_the_next_unseen_sequence():
    a, b = SequenceLoader(_tokens(), T, seed=2), SequenceLoader(_tokens(), T, seed=2)
    assert torch.equal(_take(a, 6, 2), _take(b, 4, 3))
    a.position = 0  # stage data = "restart"
    assert torch.equal(a.next_batch(4)[0], SequenceLoader(_tokens(), T, seed=2).next_batch(4)[0])


def test_fingerprint_mismatch_and_bad_arguments():
    state = SequenceLoader(_tokens(), T, seed=0).state_dict()
    other_data = SequenceLoader(_tokens() + 1, T, seed=0)
    with pytest.raises(GrowlmError, match="different data or seq_len"):
        other_data.load_state_dict(state)
    with pytest.raises(GrowlmError, match="different data or seq_len"):
        SequenceLoader(_tokens(), 4, seed=0).load_state_dict(state)
    with pytest.raises(GrowlmError, match="fewer than seq_len \\+ 1 = 9"):
        SequenceLoader(_tokens(8), T)
    with pytest.raises(GrowlmError, match="rank 2 is not in a world of size 2"):
        SequenceLoader(_tokens(), T, rank=2, world_size=2)
    with pytest.raises(GrowlmError, match="malformed"):
        SequenceLoader(_tokens(), T).load_state_dict({"position": 3})


def test_loader_over_multi_file_shards(tmp_path, corpus):
    folder, _ = corpus
    prepare(tmp_path / "a", [folder], train_vocab=300, val_fraction=0.1, shard_tokens=100,
            progress=False, log=print)
    shards = open_shards(tmp_path / "a")
    stream = shards.tokens("train")
    flat = np.asarray(stream).astype(np.int64)
    loader = SequenceLoader(stream, 32, seed=0)
    ids = loader.sequence_ids(0, 5)
    inputs, targets = loader.next_batch(5)
    for row, seq in enumerate(ids):
        assert inputs[row].tolist() == flat[seq * 32:seq * 32 + 32].tolist()
        assert targets[row].tolist() == flat[seq * 32 + 1:seq * 32 + 33].tolist()
    reopened = SequenceLoader(open_shards(tmp_path / "a").tokens("train"), 32)
    reopened.load_state_dict(loader.state_dict())  # same shards: same fingerprint


def test_sequential_batches_for_evaluation():
    batches = list(sequential_batches(_tokens(), T, batch_size=4))
    assert [b[0].shape[0] for b in batches] == [4, 4, 2]
    assert torch.cat([b[0] for b in batches]).flatten().tolist() == list(range(80))
    assert torch.cat([b[1] for b in batches]).flatten().tolist() == list(range(1, 81))
    limited = list(sequential_batches(_tokens(), T, batch_size=4, max_tokens=24))
    assert sum(b[0].numel() for b in limited) == 24
