"""LoRA adapters on existing linear layers, with an in-place fp32 merge.

A `LoRALinear` keeps the wrapped layer's own weight Parameter (attribute `weight`), so
state-dict names stay `<...>.q_proj.weight` and anything holding that Parameter (an
optimizer, a freeze list, an FSDP wrapper) stays valid across merges. The adapter adds
``scale · B·A·x`` with A (rank × in) random and B (out × rank) zero: the adapter starts at
zero output but B receives a non-zero gradient from the first step (Hu et al. 2021). The
official ReLoRA code initialises both factors to zero, which leaves both gradients zero;
we do not copy that.

Merging computes ``W + scale·B·A`` in fp32 and writes the result into the same Parameter.
Repeated merges into a bf16 weight (ReLoRA merges every few thousand steps) would round
away most of each update, so that needs an explicit opt-in (`allow_bf16_merge`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from fnmatch import fnmatchcase

import torch
import torch.nn.functional as F
from torch import nn

from growlm.errors import GrowlmError

DEFAULT_SCALE = 0.25  # ReLoRA's default (Lialin et al. 2023)
_WIDE_FLOATS = (torch.float32, torch.float64)


def adapter_scale(spec) -> float:
    """alpha/rank when alpha is given, else `scale`, else ReLoRA's 0.25."""
    if spec.alpha is not None and spec.scale is not None:
        if not math.isclose(spec.alpha / spec.rank, spec.scale, rel_tol=1e-9):
            raise GrowlmError(
                f"adapters.scale: alpha ({spec.alpha}) / rank ({spec.rank}) != scale ({spec.scale}); "
                "give alpha or scale, not both"
            )
    if spec.alpha is not None:
        return spec.alpha / spec.rank
    return spec.scale if spec.scale is not None else DEFAULT_SCALE


class LoRALinear(nn.Module):
    """y = x·Wᵀ + b + scale·(dropout(x)·Aᵀ)·Bᵀ (B·A is never materialised in the forward)."""

    def __init__(
        self,
        base: nn.Linear,
        rank: int,
        scale: float,
        dropout: float = 0.0,
        dtype: torch.dtype | None = None,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        self.in_features, self.out_features = base.in_features, base.out_features
        self.rank, self.scale = rank, float(scale)
        self.weight = base.weight  # the same Parameter object, not a copy
        self.bias = base.bias
        # Adapters are trainable, so they default to at least fp32 even over a bf16 weight.
        dtype = dtype or torch.promote_types(base.weight.dtype, torch.float32)
        device = base.weight.device
        self.lora_A = nn.Parameter(torch.empty(rank, self.in_features, dtype=dtype, device=device))
        self.lora_B = nn.Parameter(torch.zeros(self.out_features, rank, dtype=dtype, device=device))
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.reset_adapter(generator)

    @torch.no_grad()
    def reset_adapter(self, generator: torch.Generator | None = None) -> None:
        """A random (kaiming-uniform, as nn.Linear and PEFT do), B zero: zero output, live grads."""
        if generator is not None and generator.device != self.lora_A.device:
            a = torch.empty_like(self.lora_A, device=generator.device)
            nn.init.kaiming_uniform_(a, a=math.sqrt(5), generator=generator)
            self.lora_A.copy_(a)
        else:
            nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5), generator=generator)
        self.lora_B.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.linear(x, self.weight, self.bias)
        low = F.linear(self.dropout(x), self.lora_A.to(x.dtype)) * self.scale
        return out + F.linear(low, self.lora_B.to(x.dtype))

    @torch.no_grad()
    def delta(self) -> torch.Tensor:
        """scale·B·A in (at least) fp32."""
        dt = torch.promote_types(self.lora_A.dtype, torch.float32)
        return (self.lora_B.to(dt) @ self.lora_A.to(dt)).mul_(self.scale)

    @torch.no_grad()
    def merge_(self) -> None:
        """W += scale·B·A in place, computed in fp32 and rounded once to W's dtype."""
        w = self.weight
        if w.dtype in _WIDE_FLOATS:
            w.add_(self.delta().to(w.dtype))
        else:
            w.copy_(w.float().add_(self.delta().float()))

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"rank={self.rank}, scale={self.scale}, bias={self.bias is not None}"
        )


# ---------------------------------------------------------------- model-level helpers

def adapter_modules(model: nn.Module) -> dict[str, LoRALinear]:
    return {n: m for n, m in model.named_modules() if isinstance(m, LoRALinear)}


def adapter_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The lora_A / lora_B Parameters of every adapter, in module order."""
    return [p for m in adapter_modules(model).values() for p in (m.lora_A, m.lora_B)]


def _set_submodule(model: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, module)  # works for plain attributes and ModuleDict/ModuleList keys


def _select_targets(model: nn.Module, spec, frozen: set[str]) -> list[str]:
    matched: list[str] = []
    for name, module in model.named_modules():
        if not name or not any(fnmatchcase(name, g) for g in spec.targets):
            continue
        if isinstance(module, LoRALinear):
            raise GrowlmError(f"adapters.targets: {name} already has a LoRA adapter")
        if not isinstance(module, nn.Linear):
            raise GrowlmError(
                f"adapters.targets: {name} is a {type(module).__name__}, not a linear layer; "
                "targets must match nn.Linear module names such as '*.q_proj' or '*.mlp.*_proj'"
            )
        matched.append(name)
    chosen = [n for n in matched if spec.on == "all" or f"{n}.weight" in frozen]
    if not chosen:
        what = "linear layer" if spec.on == "all" else "frozen linear layer"
        hint = ("; adapters sit on frozen layers (on = \"frozen\"): freeze some, or set on = \"all\""
                if spec.on == "frozen" and matched else "")
        raise GrowlmError(
            f"adapters.targets: no {what} matches {spec.targets} "
            f"({len(matched)} linear layers matched before the on={spec.on!r} filter){hint}"
        )
    return chosen


def apply_adapters(
    model: nn.Module,
    spec,
    frozen: Iterable[str] = (),
    *,
    generator: torch.Generator | None = None,
    dtype: torch.dtype | None = None,
) -> list[str]:
    """Wrap the targeted nn.Linear modules in LoRALinear; return their module names.

    `targets` are fnmatch globs over module names (`layers.3.self_attn.q_proj`); with
    ``on="frozen"`` only layers whose `<name>.weight` is in `frozen` get an adapter. A wrapped
    weight is frozen (requires_grad False): it changes only through merges.
    """
    frozen = set(frozen)
    scale = adapter_scale(spec)
    chosen = _select_targets(model, spec, frozen)
    for name in chosen:
        lin = model.get_submodule(name)
        if spec.rank > min(lin.in_features, lin.out_features):
            raise GrowlmError(
                f"adapters.rank: {spec.rank} exceeds the smaller dimension of {name} "
                f"({lin.out_features}x{lin.in_features}); use rank <= "
                f"{min(lin.in_features, lin.out_features)}"
            )
    for name in chosen:
        lin = model.get_submodule(name)
        lin.weight.requires_grad_(False)
        wrapped = LoRALinear(lin, spec.rank, scale, spec.dropout, dtype=dtype, generator=generator)
        _set_submodule(model, name, wrapped)
    return chosen


def _check_mergeable(mods: dict[str, LoRALinear], allow_bf16_merge: bool) -> None:
    if allow_bf16_merge:
        return
    for name, m in mods.items():
        if m.weight.dtype not in _WIDE_FLOATS:
            raise GrowlmError(
                f"cannot merge LoRA into {name}.weight stored in {m.weight.dtype}: repeated merges "
                "into a low-precision weight lose most of each update; keep weights in fp32 "
                "(autocast for compute) or pass allow_bf16_merge=True to compute in fp32 and "
                "round once"
            )


@torch.no_grad()
def merge_adapters(
    model: nn.Module,
    *,
    allow_bf16_merge: bool = False,
    reinit: bool = True,
    generator: torch.Generator | None = None,
) -> list[str]:
    """Merge every adapter into its weight in place (same Parameter objects).

    With `reinit`, A is re-drawn and B zeroed afterwards so the model's function is unchanged.
    Checks every layer before touching any, so an error leaves the model as it was.
    """
    mods = adapter_modules(model)
    _check_mergeable(mods, allow_bf16_merge)
    for m in mods.values():
        m.merge_()
        if reinit:
            m.reset_adapter(generator)
    return list(mods)


@torch.no_grad()
def unwrap_adapters(model: nn.Module, *, allow_bf16_merge: bool = False) -> list[str]:
    """Merge, then put plain nn.Linear modules (holding the same Parameters) back."""
    mods = adapter_modules(model)
    merge_adapters(model, allow_bf16_merge=allow_bf16_merge, reinit=False)
    for name, m in mods.items():
        lin = nn.Linear(m.in_features, m.out_features, bias=m.bias is not None, device="meta")
        lin.weight = m.weight
        if m.bias is not None:
            lin.bias = m.bias
        _set_submodule(model, name, lin)
    return list(mods)


@torch.no_grad()
def merged_state_dict(state: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """A copy of `state` with each `<linear>.lora_A/.lora_B` pair merged into `<linear>.weight`.

    For exporting checkpoints: the merge runs in fp32 and rounds once to the weight's dtype.
    """
    out = {k: v for k, v in state.items() if not k.endswith((".lora_A", ".lora_B"))}
    prefixes = {k.rsplit(".", 1)[0] for k in state if k.endswith((".lora_A", ".lora_B"))}
    for prefix in sorted(prefixes):
        a, b = state.get(f"{prefix}.lora_A"), state.get(f"{prefix}.lora_B")
        w = state.get(f"{prefix}.weight")
        if a is None or b is None or w is None:
            raise GrowlmError(
                f"checkpoint: {prefix} needs lora_A, lora_B and weight to merge its adapter"
            )
        if a.dim() != 2 or b.dim() != 2 or b.shape[0] != w.shape[0] or a.shape[1] != w.shape[1] \
                or a.shape[0] != b.shape[1]:
            raise GrowlmError(
                f"checkpoint: adapter shapes of {prefix} do not fit its weight "
                f"(A {tuple(a.shape)}, B {tuple(b.shape)}, W {tuple(w.shape)})"
            )
        dt = torch.promote_types(w.dtype, torch.float32)
        out[f"{prefix}.weight"] = (w.to(dt) + scale * (b.to(dt) @ a.to(dt))).to(w.dtype)
    return out
