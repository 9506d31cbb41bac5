"""LoRA adapters on (frozen) linear layers, and ReLoRA's merge-and-restart controller."""

from growlm.adapters.lora import (
    LoRALinear,
    adapter_modules,
    adapter_parameters,
    adapter_scale,
    apply_adapters,
    merge_adapters,
    merged_state_dict,
    unwrap_adapters,
)
from growlm.adapters.relora import (
    ReLoRA,
    check_relora,
    reset_interval,
    reset_optimizer_state,
)

__all__ = [
    "LoRALinear",
    "ReLoRA",
    "adapter_modules",
    "adapter_parameters",
    "adapter_scale",
    "apply_adapters",
    "check_relora",
    "merge_adapters",
    "merged_state_dict",
    "reset_interval",
    "reset_optimizer_state",
    "unwrap_adapters",
]
