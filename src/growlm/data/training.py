"""What a training run reads: `open_training_data(data.train, data.val, ...)`.

`data.train` is one prepared folder, or a weighted mix of several:

    train = "shards/fineweb"
    train = [{path = "shards/fineweb", weight = 0.9}, {path = "shards/code", weight = 0.1}]

One folder (or a list of one) is read by a SequenceLoader exactly as before mixing existed,
so its batches and checkpointed loader state are unchanged. Several are read by a
MixedLoader (mix.py). All sources must share one tokenizer (same tokenizer.json sha256).

Validation tokens: the `val` split of `data.val` when given, else of the single training
folder. A mix has no single validation set that its name would describe, so a mix needs
`data.val`; a `data.val` without a usable `val` split is refused rather than ignored.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from growlm.data.loader import SequenceLoader
from growlm.data.mix import MixedLoader
from growlm.data.shards import TokenShards, TokenStream, open_shards
from growlm.errors import GrowlmError


@dataclass
class TrainingData:
    """The opened data of a run.

    loader: next_batch(micro_batch_size) -> (x, y), position, state_dict(), load_state_dict().
    val_tokens: the validation token stream, or None when there is none.
    tokens_available: distinct training tokens over all sources (one epoch of each).
    sources: per source, {"path", "weight" (normalised), "tokens"}.
    """

    loader: SequenceLoader | MixedLoader
    val_tokens: TokenStream | None
    tokenizer_path: Path
    tokenizer_sha256: str
    vocab_size: int
    eos_id: int
    tokens_available: int
    sources: list[dict] = field(default_factory=list)


def train_sources(spec) -> list[tuple[str, float]]:
    """`data.train` as (path, weight) pairs: a path, or a list of {path, weight} (tables,
    dicts, or objects with those attributes). GrowlmError naming `data.train.N` otherwise."""
    if isinstance(spec, (str, Path)):
        return [(str(spec), 1.0)]
    if not isinstance(spec, (list, tuple)) or not spec:
        raise GrowlmError("data.train: give a shard folder, or a non-empty list of "
                          "{path, weight} tables")
    pairs = []
    for i, item in enumerate(spec, 1):
        get = item.get if isinstance(item, dict) else lambda k, o=item: getattr(o, k, None)
        path, weight = get("path"), get("weight")
        if not isinstance(path, (str, Path)) or not str(path):
            raise GrowlmError(f"data.train.{i}.path: give the shard folder of this source")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) \
                or not math.isfinite(weight) or weight <= 0:
            raise GrowlmError(f"data.train.{i}.weight: must be a positive finite number, "
                              f"got {weight!r}")
        pairs.append((str(path), float(weight)))
    return pairs


def open_training_data(train, val: str | Path | None, seq_len: int, seed: int, rank: int = 0,
                       world_size: int = 1) -> TrainingData:
    """Open `data.train` (and `data.val`) for a run (module docstring).

    Raises GrowlmError, one line naming the recipe key (data.train.2, data.val, ...), for a
    missing or damaged folder, a source with fewer than seq_len + 1 tokens, the same folder
    twice, sources with different tokenizers, or unusable validation data.
    """
    pairs = train_sources(train)
    keys = ["data.train"] if len(pairs) == 1 and isinstance(train, (str, Path)) else \
        [f"data.train.{i}" for i in range(1, len(pairs) + 1)]
    opened = [_open(path, key) for (path, _), key in zip(pairs, keys)]
    _check_sources(opened, keys, seq_len)
    first = opened[0]
    streams = [s.tokens("train") for s in opened]
    if len(opened) == 1:
        loader = SequenceLoader(streams[0], seq_len, seed, rank=rank, world_size=world_size)
    else:
        loader = MixedLoader(streams, [w for _, w in pairs], seq_len, seed, rank=rank,
                             world_size=world_size)
    weights = loader.weights if isinstance(loader, MixedLoader) else [1.0]
    return TrainingData(
        loader=loader, val_tokens=_val_tokens(opened, keys, val, seq_len),
        tokenizer_path=first.tokenizer_path, tokenizer_sha256=first.tokenizer_sha256,
        vocab_size=first.vocab_size, eos_id=first.eos_id,
        tokens_available=sum(s.num_tokens("train") for s in opened),
        sources=[{"path": str(s.path), "weight": w, "tokens": s.num_tokens("train")}
                 for s, w in zip(opened, weights)])


def _open(path: str | Path, key: str) -> TokenShards:
    try:
        return open_shards(path)
    except GrowlmError as e:
        raise GrowlmError(f"{key}: {e}") from None


def _check_sources(opened: list[TokenShards], keys: list[str], seq_len: int) -> None:
    seen: dict[str, str] = {}
    for shards, key in zip(opened, keys):
        if shards.num_tokens("train") < seq_len + 1:
            raise GrowlmError(f"{key}: {shards.path} has {shards.num_tokens('train')} training "
                              f"tokens, fewer than one sequence (data.seq_len + 1 = {seq_len + 1})")
        same = seen.get(shards.fingerprint) or seen.get(str(shards.path.resolve()))
        if same:
            raise GrowlmError(f"{key}: {shards.path} holds the same shards as {same}; list each "
                              "source once and give it the sum of the weights")
        seen[shards.fingerprint] = seen[str(shards.path.resolve())] = key
        if shards.tokenizer_sha256 != opened[0].tokenizer_sha256:
            raise GrowlmError(
                f"{key}: {shards.path} was prepared with another tokenizer than {keys[0]} "
                f"(tokenizer sha256 {shards.tokenizer_sha256[:12]}… ≠ "
                f"{opened[0].tokenizer_sha256[:12]}…); all sources of a mix must share one "
                "tokenizer")


def _val_tokens(opened: list[TokenShards], keys: list[str], val, seq_len: int):
    if val is None or val == "":
        if len(opened) > 1:
            raise GrowlmError(f"data.val: data.train mixes {len(opened)} sources; name the "
                              "validation shards with data.val (for example one source's "
                              "folder), so that the val loss says what it measures")
        source = opened[0]
    else:
        source = _open(val, "data.val")
        if source.tokenizer_sha256 != opened[0].tokenizer_sha256:
            raise GrowlmError("data.val: shards were made with a different tokenizer than "
                              f"{keys[0]}")
        if source.num_tokens("val") <= seq_len:
            raise GrowlmError(f"data.val: {source.path} has no validation split of more than "
                              f"data.seq_len = {seq_len} tokens (prepare it with --val-fraction "
                              "or --val)")
    return source.tokens("val") if source.num_tokens("val") > seq_len else None
