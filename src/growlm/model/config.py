"""The model's shape, and the parameter and FLOP counts that follow from it."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator


def llama_ffn_dim(d_model: int, multiple_of: int = 256) -> int:
    """LLaMA's SwiGLU width: 2/3 of 4·d, rounded up to a multiple (keeps FLOPs near a 4·d MLP)."""
    hidden = int(2 * 4 * d_model / 3)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


# The fields that give the model's shape: growth changes them and stages may set them. Every
# other field is a setting an init source passes on (see growlm.config).
SHAPE_FIELDS = ("n_layers", "d_model", "n_heads", "n_kv_heads", "ffn_dim", "block")


class ModelConfig(BaseModel):
    """A LLaMA-style decoder. `n_layers = 0` is a bigram model (embedding, norm, head)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    vocab_size: int = Field(50257, gt=0)
    d_model: int = Field(768, gt=0)
    n_layers: int = Field(12, ge=0)
    n_heads: int = Field(12, gt=0)
    n_kv_heads: int | None = Field(None, gt=0)
    ffn_dim: int | None = Field(None, gt=0)
    block: Literal["full", "attn_only"] = "full"
    # RoPE tables are built for the whole context; 2M positions is beyond every open model's
    max_seq_len: int = Field(1024, gt=0, le=2**21)
    rope_theta: float = Field(10000.0, gt=0)
    norm_eps: float = Field(1e-5, gt=0)
    tie_embeddings: bool = False
    init_std: float = Field(0.02, gt=0)
    # "scaled": attention-out and FFN-down start at std/sqrt(2·n_layers) so the residual
    # stream's variance does not grow with depth (GPT-2 / Megatron "small init").
    residual_init: Literal["scaled", "plain"] = "scaled"

    @model_validator(mode="after")
    def _check_shapes(self) -> ModelConfig:
        if self.d_model % self.n_heads:
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})"
            )
        if self.head_dim % 2:
            raise ValueError(f"head dim d_model/n_heads = {self.head_dim} must be even for RoPE")
        if self.n_heads % self.kv_heads:
            raise ValueError(
                f"n_heads ({self.n_heads}) must be divisible by n_kv_heads ({self.kv_heads})"
            )
        return self

    # ---- derived shape ----
    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def hidden_dim(self) -> int:
        return self.ffn_dim or llama_ffn_dim(self.d_model)

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
        d, hd = self.d_model, self.head_dim
        return 2 * d * self.n_heads * hd + 2 * d * self.kv_heads * hd

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
        return 12 * self.n_layers * self.n_heads * self.head_dim * seq_len

    def flops_per_token(self, seq_len: int | None = None) -> int:
        """Training FLOPs per token with everything trainable: 6·N_non_embedding + attention."""
        seq_len = seq_len or self.max_seq_len
        return 6 * self.params_non_embedding + self.attention_flops_per_token(seq_len)
