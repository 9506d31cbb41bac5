"""Sharded checkpoints of FSDP runs through torch.distributed.checkpoint (DCP).

A mid-stage checkpoint of an FSDP run is an ordinary checkpoint directory (see
growlm.checkpoint: written under a temporary name, renamed by rank 0 once complete,
meta.json last) whose weights are not one model.safetensors but

  shards/*.safetensors  every rank writes its own shards of the model and optimizer tensors,
                        with DCP's offsets in the safetensors header; nothing is gathered
  train_state.pt        rank 0: loader, RNG, counters, ReLoRA, the optimizer's hyper-parameters
                        and per-parameter scalars (Adam's step)
  meta.json             as usual, plus "sharded": {"dir", "world_size", "aliases"}

DCP's safetensors storage (HuggingFaceStorageWriter/Reader) is used rather than its default
one because the default reader unpickles a .metadata file; this one reads JSON headers only.
Any number of processes can load it: DCP reads each rank's slice of every tensor from
whichever files hold it, so a run saved at 2 ranks resumes at 1 or 4, or under DDP; a single
process reads the whole model with `growlm.checkpoint.read_sharded_model_state`.

Stage-boundary checkpoints are written whole (model.safetensors by rank 0): growth needs the
full state at that point anyway, and `growlm export` then reads them like any other.
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import torch
import torch.distributed as tdist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint import HuggingFaceStorageReader, HuggingFaceStorageWriter
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    get_optimizer_state_dict,
    set_state_dict,
)
from torch.distributed.tensor import DTensor

from growlm import checkpoint as ckpt
from growlm.errors import GrowlmError

SHARD_DIR = "shards"


# ---------------------------------------------------------------- flat tensor view

def _aliases(model) -> dict[str, str]:
    """Second and later names of a Parameter registered under several (tied embeddings)."""
    first: dict[int, str] = {}
    out = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        if id(p) in first:
            out[f"model.{name}"] = f"model.{first[id(p)]}"
        else:
            first[id(p)] = name
    return out


def _flatten(model, model_sd: dict, optim_sd: dict, sharded_only: bool = True) -> tuple[dict, dict, dict]:
    """(tensors for DCP, the optimizer's remaining plain state, aliases).

    Keys are `model.<fqn>` and `optim.<fqn>.<state key>`. When saving, DTensors (every FSDP
    parameter and its moments) go to DCP; other per-parameter state (Adam's scalar step,
    identical on all ranks) stays with rank 0's train_state. When loading (`sharded_only`
    False) every tensor is a candidate, plain ones too (a single process or DDP). A tensor shared by two names (tied embeddings) is
    stored once, as safetensors requires; `aliases` maps the second name to the first.
    """
    aliases = _aliases(model)
    tensors = {f"model.{fqn}": v for fqn, v in model_sd.items() if f"model.{fqn}" not in aliases}
    rest: dict = {"param_groups": optim_sd["param_groups"], "state": {}}
    for fqn, state in optim_sd["state"].items():
        for name, value in state.items():
            if isinstance(value, DTensor) or (not sharded_only and torch.is_tensor(value)):
                tensors[f"optim.{fqn}.{name}"] = value
            else:
                rest["state"].setdefault(fqn, {})[name] = value
    return tensors, rest, aliases


def _describe(files: list[Path], root: Path) -> dict:
    return {f.relative_to(root).as_posix(): {"bytes": f.stat().st_size, "sha256": ckpt.sha256_file(f)}
            for f in files}


# ---------------------------------------------------------------- save

def save_sharded(dist, ckpt_root: Path, step: int, model, opt, train_state: dict, meta: dict,
                 tokenizer: Path | None) -> Path | None:
    """A mid-stage checkpoint of an FSDP run. Every rank calls this; returns the checkpoint
    path on rank 0, None elsewhere."""
    d = dist
    tmp = ckpt_root / f".tmp-{ckpt.checkpoint_name(step)}-sharded"
    if d.rank == 0:
        ckpt.new_tmp_dir(ckpt_root, step, "sharded")  # clears a crashed attempt at the same step
    d.barrier()
    d.reshard(model)
    tensors, rest, aliases = _flatten(
        model, get_model_state_dict(model), get_optimizer_state_dict(model, opt))
    shard_dir = tmp / SHARD_DIR
    dcp.save(tensors, storage_writer=HuggingFaceStorageWriter(str(shard_dir), save_distributed=True))
    # dcp.save returns once every rank's files are written; each rank hashes its own.
    mine = sorted(shard_dir.glob(f"shard-{d.rank + 1:05d}-*.safetensors"))
    described = d.gather_object(_describe(mine, tmp))
    if d.rank != 0:
        return None
    known = {k: v for part in described for k, v in part.items()}
    unclaimed = [f for f in sorted(shard_dir.iterdir()) if f.relative_to(tmp).as_posix() not in known]
    known.update(_describe(unclaimed, tmp))  # file names DCP chose differently than expected
    meta = {**meta, "sharded": {"dir": SHARD_DIR, "world_size": d.world_size, "aliases": aliases}}
    return ckpt.save_checkpoint(ckpt_root, step, None, {**train_state, "optimizer": rest},
                                meta, tokenizer=tokenizer, tmp=tmp, known_files=known)


# ---------------------------------------------------------------- load

def load_sharded(ckpt_dir: Path, meta: dict, train_state: dict, model, opt) -> None:
    """Fill `model` and `opt` from a sharded checkpoint, at any world size (collective when a
    process group exists: every rank calls it)."""
    model_sd = get_model_state_dict(model)
    optim_sd = get_optimizer_state_dict(model, opt)  # creates state tensors to load into
    tensors, _, _ = _flatten(model, model_sd, optim_sd, sharded_only=False)
    saved = train_state["optimizer"]
    for fqn, state in saved["state"].items():
        for name in state:
            tensors.pop(f"optim.{fqn}.{name}", None)
    reader = HuggingFaceStorageReader(str(ckpt_dir / meta["sharded"]["dir"]))
    try:
        with _single_process_ok():
            dcp.load(tensors, storage_reader=reader, no_dist=not tdist.is_initialized())
    except (CheckpointException, RuntimeError, AssertionError, KeyError, ValueError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise GrowlmError(f"{ckpt_dir}: sharded checkpoint does not fit this stage's model or "
                          f"optimizer ({first[:200]}); resume with the recipe that wrote it") from None
    # dcp.load filled the tensors in place; plain scalars and hyper-parameters come from rank 0.
    for fqn, state in saved["state"].items():
        optim_sd["state"].setdefault(fqn, {}).update(state)
    optim_sd["param_groups"] = saved["param_groups"]
    set_state_dict(model, opt, model_state_dict=model_sd, optim_state_dict=optim_sd)


@contextlib.contextmanager
def _single_process_ok():
    """Loading without a process group is intended here; DCP warns about it regardless."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield
