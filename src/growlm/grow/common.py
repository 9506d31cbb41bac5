"""Shared helpers of the growth operators: tensor names, state validation, fresh tensors."""

from __future__ import annotations

from functools import lru_cache

import torch
from torch import Tensor

from growlm.errors import GrowlmError
from growlm.model.config import ModelConfig

EMBED = "embed_tokens.weight"
HEAD = "lm_head.weight"
FINAL_NORM = "norm.weight"
ATTN_SUFFIXES = (
    "input_layernorm.weight",
    "self_attn.q_proj.weight",
    "self_attn.k_proj.weight",
    "self_attn.v_proj.weight",
    "self_attn.o_proj.weight",
)
QKV_BIAS_SUFFIXES = ("self_attn.q_proj.bias", "self_attn.k_proj.bias", "self_attn.v_proj.bias")
O_BIAS_SUFFIX = "self_attn.o_proj.bias"
QK_NORM_SUFFIXES = ("self_attn.q_norm.weight", "self_attn.k_norm.weight")
FFN_SUFFIXES = (
    "post_attention_layernorm.weight",
    "mlp.gate_proj.weight",
    "mlp.up_proj.weight",
    "mlp.down_proj.weight",
)
# Residual outputs (projection and its bias): zero makes a pre-norm block the identity.
RESIDUAL_OUT = ("self_attn.o_proj.weight", O_BIAS_SUFFIX, "mlp.down_proj.weight")


def attn_suffixes(cfg: ModelConfig) -> tuple[str, ...]:
    """A layer's attention tensors (input norm included) for `cfg`'s biases and q/k norms."""
    return (
        ATTN_SUFFIXES
        + (QKV_BIAS_SUFFIXES if cfg.qkv_bias else ())
        + ((O_BIAS_SUFFIX,) if cfg.o_bias else ())
        + (QK_NORM_SUFFIXES if cfg.qk_norm else ())
    )


def layer_suffixes(cfg: ModelConfig) -> tuple[str, ...]:
    return attn_suffixes(cfg) + (FFN_SUFFIXES if cfg.block == "full" else ())


def layer_name(i: int, suffix: str) -> str:
    return f"layers.{i}.{suffix}"


@lru_cache(maxsize=64)
def expected_shapes(cfg: ModelConfig) -> dict[str, torch.Size]:
    """Name → shape of `Transformer(cfg).state_dict()`, computed on the meta device (free)."""
    from growlm.model.llama import Transformer

    with torch.device("meta"):
        model = Transformer(cfg)
    return {name: t.shape for name, t in model.state_dict().items()}


def _listing(names) -> str:
    names = sorted(names)
    more = f" (+{len(names) - 3} more)" if len(names) > 3 else ""
    return ", ".join(names[:3]) + more


def check_state(state: dict[str, Tensor], cfg: ModelConfig, where: str) -> dict[str, Tensor]:
    """A shallow copy of `state` after checking names and shapes against `cfg`.

    With tied embeddings a state may hold only one of the two aliased names (safetensors
    stores shared tensors once); the missing alias is filled in.
    """
    state = dict(state)
    if cfg.tie_embeddings:
        present = state.get(EMBED, state.get(HEAD))
        if present is not None:
            state.setdefault(EMBED, present)
            state.setdefault(HEAD, present)
    shapes = expected_shapes(cfg)
    missing = shapes.keys() - state.keys()
    if missing:
        raise GrowlmError(
            f"{where}: missing tensors {_listing(missing)} for a {cfg.n_layers}-layer "
            f"{cfg.block} model"
        )
    extra = state.keys() - shapes.keys()
    if extra:
        raise GrowlmError(
            f"{where}: unexpected tensors {_listing(extra)} (adapters must be merged and the "
            f"shape must match the previous stage's: {cfg.n_layers} layers, d_model {cfg.d_model})"
        )
    for name, shape in shapes.items():
        if tuple(state[name].shape) != tuple(shape):
            raise GrowlmError(
                f"{where}: {name} has shape {tuple(state[name].shape)}, expected {tuple(shape)}"
            )
    return state


def fresh_state(cfg: ModelConfig, device: torch.device, dtype: torch.dtype) -> dict[str, Tensor]:
    """The state of a freshly initialised `Transformer(cfg)` (global RNG) on `device`."""
    from growlm.model.llama import Transformer

    with torch.device(device):
        model = Transformer(cfg)
    return {name: t.to(dtype=dtype) for name, t in model.state_dict().items()}


def as_like(t: Tensor, ref: Tensor) -> Tensor:
    """`t` on `ref`'s device and dtype, never sharing storage with `t`'s caller-owned input."""
    out = t.to(device=ref.device, dtype=ref.dtype)
    return out.clone() if out is t else out
