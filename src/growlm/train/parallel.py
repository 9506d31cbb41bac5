"""How a built stage runs, applied from outside in one place: activation checkpointing,
FSDP sharding, the device, DDP, optimizer-state placement and torch.compile.

The model (growlm.model) stays a plain module; the stage boundary (growlm.train.boundary)
decides what it computes. `Parallelism` is handed to the boundary, which calls `shard` before
the optimizer sees the parameters (FSDP replaces every Parameter by a DTensor one) and `wrap`
once the optimizer holds its state.
"""

from __future__ import annotations

import os
import shutil

import torch
from torch import nn

from growlm.errors import GrowlmError


def check_compile(device: torch.device) -> None:
    """`run.compile = true`: raise GrowlmError at load when torch.compile's default backend
    (inductor) cannot build kernels for `device`, instead of failing at the first step. CPU
    kernels are C++ built with the system compiler (g++ or $CXX); CUDA kernels need Triton."""
    from torch._dynamo.eval_frame import check_if_dynamo_supported

    try:
        check_if_dynamo_supported()
    except RuntimeError as e:
        raise GrowlmError(f"run.compile = true: torch.compile is not available here ({e}); "
                          "set run.compile = false") from None
    if device.type == "cuda":
        from torch.utils._triton import has_triton

        if not has_triton():
            raise GrowlmError("run.compile = true on CUDA needs Triton for torch.compile's "
                              "kernels and it does not import; install triton or set "
                              "run.compile = false")
        return
    try:
        from torch._inductor import config, exc
        from torch._inductor.cpp_builder import get_cpp_compiler
    except ImportError:  # an older torch: look for the compiler it would use by name
        cxx = os.environ.get("CXX", "g++")
        if shutil.which(cxx) is None:
            raise _no_cxx(cxx) from None
        return
    try:
        get_cpp_compiler()
    except exc.InvalidCxxCompiler:
        raise _no_cxx(", ".join(c for c in config.cpp.cxx if c)) from None


def _no_cxx(tried: str) -> GrowlmError:
    return GrowlmError(f"run.compile = true on CPU needs a C++ compiler for torch.compile's "
                       f"kernels and none runs (tried {tried}; $CXX names another); install "
                       "g++ or set run.compile = false")


class Parallelism:
    def __init__(self, run_cfg, dist, device: torch.device):
        self.run_cfg, self.dist, self.device = run_cfg, dist, device

    @property
    def sharded(self) -> bool:
        return self.dist is not None and self.dist.sharded

    def shard(self, model: nn.Module) -> nn.Module:
        """Activation checkpointing, FSDP (under torchrun with run.distributed = "fsdp"), then
        the device. Before the optimizer is built."""
        if self.run_cfg.activation_checkpointing:
            from growlm.train.distributed import apply_activation_checkpointing

            apply_activation_checkpointing(model)
        if self.dist is not None:
            model = self.dist.prepare(model)
        return model.to(self.device)

    def wrap(self, model: nn.Module, opt: torch.optim.Optimizer) -> nn.Module:
        """What the train step calls: the model, DDP-wrapped and/or compiled. Optimizer state
        loaded whole (from a checkpoint or the previous stage) becomes this rank's shards."""
        if self.dist is not None:
            self.dist.localize_optimizer_state(opt)
            model = self.dist.wrap(model)
        if self.run_cfg.compile:
            # compiled graphs do not notice requires_grad changes: a new stage starts clean
            torch.compiler.reset()
            model = torch.compile(model)
        return model

    def relora_class(self):
        from growlm.adapters.relora import ReLoRA

        return self.dist.relora_class() if self.dist is not None else ReLoRA

    def plain_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """The whole state as CPU tensors (gathered from the shards under FSDP; a collective)."""
        if self.sharded:
            return self.dist.full_state(model)
        return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}

    def reshard(self, model: nn.Module) -> None:
        if self.dist is not None:
            self.dist.reshard(model)

