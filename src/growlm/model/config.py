"""The model's shape and architecture, and the parameter and FLOP counts that follow from it.

One `ModelConfig` describes every decoder growlm builds: the LLaMA layout (pre-norm RMSNorm,
SwiGLU, RoPE, grouped-query attention) plus the features of the open model families it imports
and exports, each off by default:

  feature                     field            families that use it
  bias on q/k/v               qkv_bias         Qwen2/2.5 (always), Llama/Qwen3 `attention_bias`
  bias on o_proj              o_bias           Llama/Qwen3 `attention_bias`
  RMSNorm on q and k per head qk_norm          Qwen3 (always)
  RoPE scaling                rope_scaling     Llama 3.1/3.2 (`llama3`), `linear`
  head_dim != d_model/n_heads head_dim         Qwen3, Mistral Nemo
  tied embeddings             tie_embeddings   SmolLM, Llama 3.2 1B/3B, small Qwen models

`model_type` names the HF family the model is exported as (`llama`, `mistral`, `qwen2`,
`qwen3`); each family can express only some feature combinations, and a config that its family
cannot express is refused here, so nothing fails late at export.
"""

from __future__ import annotations

import types
import typing
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator


def llama_ffn_dim(d_model: int, multiple_of: int = 256) -> int:
    """LLaMA's SwiGLU width: 2/3 of 4·d, rounded up to a multiple (keeps FLOPs near a 4·d MLP)."""
    hidden = int(2 * 4 * d_model / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


# The fields that give the model's shape: growth changes them and stages may set them. Every
# other field is a setting an init source passes on (see growlm.config).
SHAPE_FIELDS = ("n_layers", "d_model", "n_heads", "n_kv_heads", "ffn_dim", "block")


def _leaf_types(annotation) -> set:
    """The plain types a field annotation admits (through Optional, unions and Annotated)."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType, typing.Annotated):
        args = typing.get_args(annotation)[:1] if origin is typing.Annotated else typing.get_args(annotation)
        return set().union(*(_leaf_types(a) for a in args))
    return {annotation} if isinstance(annotation, type) else set()


class Settings(BaseModel):
    """A table of settings (recipe sections, model configs) in which a boolean and a number are
    never taken for each other: pydantic's lax mode would read `seed = true` as 1 and
    `tie_embeddings = 1` as true. (A number written as a string, "3e-4", is still read.)"""

    @field_validator("*", mode="before")
    @classmethod
    def _bool_is_not_a_number(cls, value, info: ValidationInfo):
        kinds = _leaf_types(cls.model_fields[info.field_name].annotation)
        if isinstance(value, bool) and bool not in kinds and kinds & {int, float}:
            raise ValueError(f"expected a number, got {str(value).lower()}")
        if (isinstance(value, (int, float)) and not isinstance(value, bool) and bool in kinds
                and not kinds & {int, float}):
            raise ValueError(f"expected true or false, got {value}")
        return value


class RopeScaling(Settings):
    """RoPE frequency scaling, as HF's `rope_scaling` / `rope_parameters` spell it.

    linear  every inverse frequency divided by `factor` (position interpolation, Chen et al.
            2023, "Extending Context Window of Large Language Models via Positional
            Interpolation").
    llama3  Llama 3.1's rule (Meta, llama-models `apply_scaling`): wavelengths longer than
            original_max_position_embeddings / low_freq_factor are divided by `factor`, those
            shorter than original_max_position_embeddings / high_freq_factor are kept, and the
            band between is interpolated smoothly.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    rope_type: Literal["linear", "llama3"]
    factor: float = Field(gt=0)
    low_freq_factor: float | None = Field(None, gt=0)
    high_freq_factor: float | None = Field(None, gt=0)
    original_max_position_embeddings: int | None = Field(None, gt=0)

    @model_validator(mode="after")
    def _check_fields(self) -> RopeScaling:
        llama3 = ("low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
        if self.rope_type == "linear":
            extra = [k for k in llama3 if getattr(self, k) is not None]
            if extra:
                raise ValueError(f"rope_scaling of type 'linear' takes only factor, not {', '.join(extra)}")
        else:
            missing = [k for k in llama3 if getattr(self, k) is None]
            if missing:
                raise ValueError(f"rope_scaling of type 'llama3' needs {', '.join(missing)}")
            if self.high_freq_factor <= self.low_freq_factor:
                raise ValueError(
                    f"rope_scaling: high_freq_factor ({self.high_freq_factor}) must exceed "
                    f"low_freq_factor ({self.low_freq_factor})"
                )
        return self


# What each HF family can express: (qkv_bias, o_bias) pairs allowed, and whether q/k norms are
# present. Llama and Qwen3 have one `attention_bias` switch for q, k, v and o; Qwen2 always has
# q/k/v biases and never an o_proj bias; Mistral has no biases.
FAMILIES: dict[str, dict] = {
    "llama": {"bias": ((False, False), (True, True)), "qk_norm": False},
    "mistral": {"bias": ((False, False),), "qk_norm": False},
    "qwen2": {"bias": ((True, False),), "qk_norm": False},
    "qwen3": {"bias": ((False, False), (True, True)), "qk_norm": True},
}
_BIAS_WORDS = {
    (False, False): "qkv_bias = false, o_bias = false",
    (True, True): "qkv_bias = true, o_bias = true",
    (True, False): "qkv_bias = true, o_bias = false",
}

_SHAPE = ("vocab_size", *SHAPE_FIELDS)
_ARCHITECTURE = ("model_type", "head_dim", "qkv_bias", "o_bias", "qk_norm", "max_seq_len",
                 "rope_theta", "rope_scaling", "sliding_window", "norm_eps", "tie_embeddings")
_INIT = ("init_std", "residual_init")


class ModelConfig(Settings):
    """A LLaMA-style decoder. `n_layers = 0` is a bigram model (embedding, norm, head)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    vocab_size: int = Field(50257, gt=0)
    d_model: int = Field(768, gt=0)
    n_layers: int = Field(12, ge=0)
    n_heads: int = Field(12, gt=0)
    n_kv_heads: int | None = Field(None, gt=0)
    ffn_dim: int | None = Field(None, gt=0)
    block: Literal["full", "attn_only"] = "full"
    # HF family the model is exported as; see FAMILIES for what each can express.
    model_type: Literal["llama", "mistral", "qwen2", "qwen3"] = "llama"
    # Per-head width; None means d_model / n_heads. Qwen3 and Mistral Nemo set it apart.
    head_dim: int | None = Field(None, gt=0)
    qkv_bias: bool = False
    o_bias: bool = False
    qk_norm: bool = False
    # RoPE tables are built for the whole context; 2M positions is beyond every open model's
    max_seq_len: int = Field(1024, gt=0, le=2**21)
    rope_theta: float = Field(10000.0, gt=0)
    rope_scaling: RopeScaling | None = None
    # HF's attention window. growlm always attends to the whole context, so it keeps only a
    # window that never binds (at least max_seq_len), to write it back on export.
    sliding_window: int | None = Field(None, gt=0)
    norm_eps: float = Field(1e-5, gt=0)
    tie_embeddings: bool = False
    init_std: float = Field(0.02, gt=0)
    # "scaled": attention-out and FFN-down start at std/sqrt(2·n_layers) so the residual
    # stream's variance does not grow with depth (GPT-2 / Megatron "small init").
    residual_init: Literal["scaled", "plain"] = "scaled"

    @model_validator(mode="after")
    def _check_shapes(self) -> ModelConfig:
        if self.head_dim is None and self.d_model % self.n_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads}) "
                "unless head_dim is given"
            )
        if self.head_size % 2:
            what = "head_dim" if self.head_dim else "d_model/n_heads"
            raise ValueError(f"head dim {what} = {self.head_size} must be even for RoPE")
        if self.n_heads % self.kv_heads:
            raise ValueError(
                f"n_heads ({self.n_heads}) must be divisible by n_kv_heads ({self.kv_heads})"
            )
        if self.sliding_window is not None and self.sliding_window < self.max_seq_len:
            raise ValueError(
                f"sliding_window ({self.sliding_window}) is smaller than max_seq_len "
                f"({self.max_seq_len}): growlm has no sliding-window attention; only a window "
                "of at least max_seq_len (one that never limits attention) is allowed"
            )
        self._check_family()
        return self

    def _check_family(self) -> None:
        family = FAMILIES[self.model_type]
        bias = (self.qkv_bias, self.o_bias)
        if bias not in family["bias"]:
            allowed = " or ".join(_BIAS_WORDS[b] for b in family["bias"])
            raise ValueError(f"model_type '{self.model_type}' needs {allowed}")
        if self.qk_norm != family["qk_norm"]:
            raise ValueError(f"model_type '{self.model_type}' needs qk_norm = {str(family['qk_norm']).lower()}")
        if self.model_type == "llama" and self.d_model % self.n_heads:
            # transformers' LlamaConfig refuses this even when head_dim is given
            raise ValueError(f"model_type 'llama' needs d_model ({self.d_model}) divisible by n_heads ({self.n_heads})")

    # ---- which fields are which (the trainer compares and inherits them generically) ----
    @classmethod
    def shape_fields(cls) -> tuple[str, ...]:
        """Fields a stage may change, by growth or an override (`[[stage]]` n_layers, d_model...)."""
        return _SHAPE

    @classmethod
    def architecture_fields(cls) -> tuple[str, ...]:
        """Fields that define the network's function beyond its shape. An init source (HF folder
        or checkpoint) carries them, and they round-trip through HF import/export exactly."""
        return _ARCHITECTURE

    @classmethod
    def init_fields(cls) -> tuple[str, ...]:
        """Fields that only set how fresh weights are drawn."""
        return _INIT

    # ---- derived shape ----
    @property
    def head_size(self) -> int:
        """Width of one attention head: `head_dim`, or d_model / n_heads when it is not set."""
        return self.head_dim or self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def hidden_dim(self) -> int:
        return self.ffn_dim or llama_ffn_dim(self.d_model)

    @property
    def q_dim(self) -> int:
        """Output width of q_proj (= input width of o_proj): n_heads · head_size."""
        return self.n_heads * self.head_size

    @property
    def kv_dim(self) -> int:
        """Output width of k_proj and v_proj: kv_heads · head_size."""
        return self.kv_heads * self.head_size

    def with_(self, **changes) -> ModelConfig:
        """A validated copy with some fields changed."""
        return ModelConfig(**{**self.model_dump(), **changes})

    # ---- parameter counts ----
    @property
    def params_embedding(self) -> int:
        return self.vocab_size * self.d_model

    @property
    def params_head(self) -> int:
        return 0 if self.tie_embeddings else self.vocab_size * self.d_model

    @property
    def params_attention(self) -> int:
        d = self.d_model
        weights = 2 * d * self.q_dim + 2 * d * self.kv_dim
        biases = (self.q_dim + 2 * self.kv_dim) * self.qkv_bias + d * self.o_bias
        return weights + biases + 2 * self.head_size * self.qk_norm

    @property
    def params_ffn(self) -> int:
        return 3 * self.d_model * self.hidden_dim if self.block == "full" else 0

    @property
    def params_per_layer(self) -> int:
        norms = self.d_model * (2 if self.block == "full" else 1)
        return self.params_attention + self.params_ffn + norms

    @property
    def params_layers(self) -> int:
        return self.n_layers * self.params_per_layer

    @property
    def params_total(self) -> int:
        return self.params_embedding + self.params_head + self.params_layers + self.d_model

    @property
    def params_non_embedding(self) -> int:
        """Parameters that cost matmul FLOPs: layers, final norm and head (lookup is free)."""
        head = self.vocab_size * self.d_model  # a tied head is still a matmul
        return self.params_layers + self.d_model + head

    def attention_flops_per_token(self, seq_len: int) -> int:
        """Forward+backward FLOPs of QK^T and AV per token (6·2·L·n_heads·head_dim·T).

        Counts the full T×T score matrix, as nanoGPT/PaLM do, not half of it for causality.
        """
        return 12 * self.n_layers * self.q_dim * seq_len

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token with everything trainable: 6·N_non_embedding + attention."""
        seq_len = seq_len or self.max_seq_len
        return 6 * self.params_non_embedding + self.attention_flops_per_token(seq_len)
