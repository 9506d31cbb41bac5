"""Multi-process training on PyTorch's own stack: torchrun → DDP or FSDP2.

`maybe_init_distributed(cfg)` returns None for a single process (which then pays nothing),
else a `Dist` that the trainer calls at fixed points: `prepare` (shard the model before the
optimizer sees its parameters), `wrap` (DDP), `no_sync`, `mean`, `any`, `barrier`, `close`.

- DDP replicates the model; every rank holds the full weights and optimizer state, so rank 0
  writes ordinary checkpoints.
- FSDP2 (`fully_shard`) shards each block, then the root, over a 1-D mesh; on CUDA parameters
  are gathered in bf16 and gradients reduced in fp32. Blocks that mix frozen and trainable
  parameters are one group: frozen ones are gathered but never reduce-scattered.
  Mid-stage checkpoints go through torch.distributed.checkpoint (growlm.train.dcp).
- gloo on CPU, nccl on CUDA, both with `run.dist_timeout_s`: a rank that dies or hangs makes
  the others' next collective fail within that time instead of blocking forever.
"""

from __future__ import annotations

import contextlib
import functools
import math
import os
import warnings
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as tdist
from torch import nn
from torch.utils.checkpoint import checkpoint

from growlm.adapters.lora import LoRALinear, adapter_parameters
from growlm.adapters.relora import MOMENT_KEYS, ReLoRA
from growlm.errors import GrowlmError

# Below this many parameters per rank, sharding saves little memory and costs a collective
# per block per pass; FSDP still runs, with a warning.
MIN_PARAMS_PER_RANK = 1_000_000


def maybe_init_distributed(cfg) -> Dist | None:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    mode = cfg.run.distributed
    if mode == "none":
        raise GrowlmError(f"torchrun started {world} processes but run.distributed = 'none'; "
                          "set run.distributed = 'ddp' or 'fsdp'")
    check_supported(cfg, mode)
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    device = _device(cfg.run.device, local_rank)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if device.type == "cuda":
        torch.cuda.set_device(device)
    tdist.init_process_group(backend, timeout=timedelta(seconds=cfg.run.dist_timeout_s),
                             device_id=device if device.type == "cuda" else None)
    mesh = None
    if mode == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh

        mesh = init_device_mesh(device.type, (world,))
    return Dist(rank=rank, world_size=world, local_rank=local_rank, device=device, mode=mode,
                mesh=mesh)


def check_supported(cfg, mode: str) -> None:
    """Refuse combinations growlm cannot run, before any process group exists."""
    if mode != "fsdp":
        return
    if cfg.eval.tasks:
        raise GrowlmError("eval.tasks: scheduled benchmarks need whole weights on each rank, which "
                          "FSDP shards; use run.distributed = 'ddp', or score the checkpoints "
                          "with growlm eval")
    from growlm.stages import resolve_stages

    for stage in resolve_stages(cfg):
        if stage.optimizer == "galore":
            raise GrowlmError(
                f"stage.{stage.index + 1} uses optimizer 'galore', which needs whole gradient "
                "matrices for its SVD; FSDP shards them: use run.distributed = 'ddp' with GaLore")


def _device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise GrowlmError("run.device = 'cuda' but no CUDA device is available")
        return torch.device("cuda", local_rank % torch.cuda.device_count())
    return torch.device("cpu")


@dataclass
class Dist:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device
    mode: str  # "ddp" | "fsdp"
    mesh: object = field(default=None, repr=False)

    @property
    def sharded(self) -> bool:
        return self.mode == "fsdp"

    # ------------------------------------------------------------------ model
    def prepare(self, model: nn.Module) -> nn.Module:
        """Shard in place (FSDP) — before the optimizer is built, since sharding replaces
        every Parameter by a DTensor one. DDP needs nothing here."""
        if not self.sharded:
            return model
        from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

        self._warn_if_small(model)
        policy = MixedPrecisionPolicy()
        if self.device.type == "cuda":
            policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        for block in model.layers.values():
            fully_shard(block, mesh=self.mesh, mp_policy=policy)
        fully_shard(model, mesh=self.mesh, mp_policy=policy)
        for module in model.modules():
            if type(module) is LoRALinear:
                module.__class__ = ShardedLoRALinear
        return model

    def _warn_if_small(self, model: nn.Module) -> None:
        n_params = sum(p.numel() for p in model.parameters())
        if self.rank == 0 and (len(model.layers) == 0 or n_params / self.world_size < MIN_PARAMS_PER_RANK):
            warnings.warn(
                f"FSDP over {self.world_size} ranks on a model of {n_params:,} parameters "
                f"({len(model.layers)} blocks) saves little memory and adds a collective per block; "
                "run.distributed = 'ddp' is likely faster", stacklevel=3)

    def wrap(self, model: nn.Module) -> nn.Module:
        """What the training step calls: a DDP wrapper, or the (already sharded) model."""
        if self.sharded:
            return model
        from torch.nn.parallel import DistributedDataParallel

        ids = [self.device.index] if self.device.type == "cuda" else None
        # RoPE tables are the only buffers, identical everywhere: no need to broadcast them.
        return DistributedDataParallel(model, device_ids=ids, forward_sync_buffers=False)

    def no_sync(self, model: nn.Module, skip: bool):
        """Skip the gradient reduction on all but the last micro-batch of a step."""
        from torch.distributed.fsdp import FSDPModule

        model = getattr(model, "_orig_mod", model)  # torch.compile wrapper
        if isinstance(model, FSDPModule):
            model.set_requires_gradient_sync(not skip)
            return contextlib.nullcontext()
        return model.no_sync() if skip and hasattr(model, "no_sync") else contextlib.nullcontext()

    @staticmethod
    def reshard(model: nn.Module) -> None:
        """Free gathered parameters so every FSDP parameter is its local shard again (a
        forward without backward leaves the root's gathered)."""
        from torch.distributed.fsdp import FSDPModule

        for module in model.modules():
            if isinstance(module, FSDPModule):
                module.reshard()

    def full_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Every rank gets the whole state on CPU (a collective: all ranks must call)."""
        self.reshard(model)
        return {k: _full(v).detach().to("cpu", copy=True) for k, v in model.state_dict().items()}

    def full_tree(self, obj):
        """`obj` with every DTensor inside dicts/lists replaced by its full CPU tensor."""
        if isinstance(obj, dict):
            return {k: self.full_tree(v) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return type(obj)(self.full_tree(v) for v in obj)
        return _full(obj).cpu() if torch.is_tensor(obj) else obj

    def relora_class(self) -> type[ReLoRA]:
        return ShardedReLoRA if self.sharded else ReLoRA

    def localize_optimizer_state(self, opt: torch.optim.Optimizer) -> None:
        """Turn full per-parameter state tensors (from an ordinary checkpoint, or mapped from
        the previous stage) into the shards of their DTensor parameters. No communication:
        every rank holds the same full tensor and keeps its own slice."""
        from torch.distributed.tensor import DTensor, distribute_tensor

        for p, state in opt.state.items():
            if not isinstance(p, DTensor):
                continue
            for key, value in state.items():
                if torch.is_tensor(value) and not isinstance(value, DTensor) and value.shape == p.shape:
                    state[key] = distribute_tensor(value.to(p.device, p.dtype), p.device_mesh,
                                                   p.placements, src_data_rank=None)

    # ------------------------------------------------------------------ collectives
    def sum(self, value: torch.Tensor) -> torch.Tensor:
        out = value.detach().clone()
        tdist.all_reduce(out)
        return out

    def sum_int(self, value: int) -> int:
        t = torch.tensor([value], dtype=torch.int64, device=self.device)
        tdist.all_reduce(t)
        return int(t.item())

    def any(self, flag: bool) -> bool:
        t = torch.tensor([int(flag)], device=self.device)
        tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
        return bool(t.item())

    def barrier(self) -> None:
        tdist.barrier()

    def gather_object(self, obj) -> list | None:
        out = [None] * self.world_size if self.rank == 0 else None
        tdist.gather_object(obj, out, dst=0)
        return out

    def close(self) -> None:
        if tdist.is_initialized():
            tdist.destroy_process_group()


def _full(t: torch.Tensor) -> torch.Tensor:
    from torch.distributed.tensor import DTensor

    return t.full_tensor() if isinstance(t, DTensor) else t


# ---------------------------------------------------------------- activation checkpointing

def apply_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each block's activations in backward instead of keeping them.

    The block's `forward` is replaced on the instance, so parameter names, state dicts and
    FSDP's hooks (which run around `__call__`, outside the checkpointed function) are
    unchanged; single-process and DDP runs use it the same way.
    """
    for block in model.layers.values():
        block.forward = functools.partial(_checkpointed, block.forward)


def _checkpointed(forward, *args):
    return checkpoint(forward, *args, use_reentrant=False)


# ---------------------------------------------------------------- adapters on shards

class ShardedLoRALinear(LoRALinear):
    """LoRALinear whose weight and factors are FSDP shards (DTensors).

    Merge: gather the two small factors, form scale·B·A in fp32 exactly as one process would,
    and add only this rank's rows to its shard of W; the weight itself is never gathered.
    Re-initialising A draws the full matrix from the same generator as a single process and
    keeps the local rows, so runs match across world sizes.
    """

    @torch.no_grad()
    def delta(self) -> torch.Tensor:
        from torch.distributed.tensor import DTensor, distribute_tensor

        w = self.weight
        if not isinstance(w, DTensor):
            raise RuntimeError("internal: FSDP adapter merged while its weight is gathered")
        a, b = _full(self.lora_A), _full(self.lora_B)
        dt = torch.promote_types(a.dtype, torch.float32)
        full = (b.to(dt) @ a.to(dt)).mul_(self.scale)
        return distribute_tensor(full, w.device_mesh, w.placements, src_data_rank=None)

    @torch.no_grad()
    def reset_adapter(self, generator: torch.Generator | None = None) -> None:
        from torch.distributed.tensor import DTensor, distribute_tensor

        a = self.lora_A
        if not isinstance(a, DTensor):
            return super().reset_adapter(generator)
        where = generator.device if generator is not None else torch.device("cpu")
        full = torch.empty(a.shape, dtype=a.dtype, device=where)
        nn.init.kaiming_uniform_(full, a=math.sqrt(5), generator=generator)
        a.copy_(distribute_tensor(full.to(a.device), a.device_mesh, a.placements, src_data_rank=None))
        self.lora_B.zero_()


class ShardedReLoRA(ReLoRA):
    """ReLoRA whose adapters' Adam moments are FSDP shards.

    Magnitude pruning keeps the largest entries of each whole moment tensor, which no rank
    sees alone; the adapters' moments are small (rank × width), so they are gathered, pruned
    exactly as in one process, and put back as shards.
    """

    def reset(self) -> dict[str, int]:
        from torch.distributed.tensor import DTensor, distribute_tensor

        placed = {}
        for p in adapter_parameters(self.model):
            state = self.optimizer.state.get(p, {}) if self.optimizer is not None else {}
            for key in MOMENT_KEYS:
                t = state.get(key)
                if isinstance(t, DTensor):
                    state[key] = t.full_tensor()
                    placed[(id(p), key)] = (state, t.device_mesh, t.placements)
        out = super().reset()
        for (_, key), (state, mesh, placements) in placed.items():
            state[key] = distribute_tensor(state[key], mesh, placements, src_data_rank=None)
        return out
