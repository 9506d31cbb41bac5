"""A plain LLaMA-style decoder whose parameter names match HF's Llama, Mistral and Qwen models.

Names are HF's without the leading `model.` (e.g. `layers.3.self_attn.q_proj.weight`,
`layers.3.self_attn.q_norm.weight`), so import/export is a rename. The optional features of
the families growlm imports (q/k/v and o_proj biases, per-head q/k RMSNorm, RoPE scaling, a
head_dim apart from d_model / n_heads) are switched on by `ModelConfig`; see its docstring.
Layers live in a ModuleDict keyed by index so that names stay stable when growth inserts or
appends layers. The autograd kernels are in `growlm.model.kernels`, the RoPE tables in
`growlm.model.rope`. Parallelism, compilation and activation checkpointing are applied from
outside.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from growlm.model.config import ModelConfig
from growlm.model.kernels import apply_rope, rms_norm
from growlm.model.loss import linear_cross_entropy_sum
from growlm.model.rope import rope_tables

__all__ = ["Attention", "Block", "FeedForward", "RMSNorm", "Transformer", "apply_rope",
           "cross_entropy", "rope_tables"]


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 (as HF does) so bf16 activations keep their precision here.
        return rms_norm(x, self.weight, self.eps)


class Attention(nn.Module):
    """Causal grouped-query attention with RoPE; optional q/k/v and o biases and q/k RMSNorm.

    With `qk_norm` (Qwen3) each head's query and key vectors are RMS-normalised over head_dim by
    a weight shared across heads (`q_norm`, `k_norm`, shape (head_dim,)), before RoPE.
    """

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_size
        d = cfg.d_model
        self.q_proj = nn.Linear(d, cfg.q_dim, bias=cfg.qkv_bias)
        self.k_proj = nn.Linear(d, cfg.kv_dim, bias=cfg.qkv_bias)
        self.v_proj = nn.Linear(d, cfg.kv_dim, bias=cfg.qkv_bias)
        self.o_proj = nn.Linear(cfg.q_dim, d, bias=cfg.o_bias)
        if cfg.qk_norm:
            self.q_norm = RMSNorm(self.head_dim, cfg.norm_eps)
            self.k_norm = RMSNorm(self.head_dim, cfg.norm_eps)
        else:
            self.q_norm = self.k_norm = None

    def qkv(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor):
        """q (batch, seq, n_heads, head_dim), k and v (batch, seq, n_kv, head_dim), with q and k
        normalised (if qk_norm) and rotated. cos/sin broadcast to (batch, seq, 1, head_dim)."""
        bsz, seq, _ = x.shape
        q = self.q_proj(x).view(bsz, seq, self.n_heads, self.head_dim)
        k = self.k_proj(x).view(bsz, seq, self.n_kv, self.head_dim)
        if self.q_norm is not None:
            q, k = self.q_norm(q), self.k_norm(k)
        v = self.v_proj(x).view(bsz, seq, self.n_kv, self.head_dim)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin), v

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        bsz, seq, _ = x.shape
        # RoPE runs in the (batch, seq, heads, head_dim) layout the projections produce, so its
        # elementwise passes read contiguous memory; tables broadcast over heads.
        q, k, v = self.qkv(x, cos[:, None], sin[:, None])
        out = F.scaled_dot_product_attention(
            q.transpose(1, 2),
            k.transpose(1, 2),
            v.transpose(1, 2),
            is_causal=True,
            enable_gqa=self.n_kv != self.n_heads,
        )
        return self.o_proj(out.transpose(1, 2).reshape(bsz, seq, -1))


class FeedForward(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.gate_proj = nn.Linear(cfg.d_model, cfg.hidden_dim, bias=False)
        self.up_proj = nn.Linear(cfg.d_model, cfg.hidden_dim, bias=False)
        self.down_proj = nn.Linear(cfg.hidden_dim, cfg.d_model, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nn.Module):
    """Pre-norm residual block; `attn_only` blocks have no FFN (the reuse paper's "One Attn")."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.input_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.self_attn = Attention(cfg)
        if cfg.block == "full":
            self.post_attention_layernorm = RMSNorm(cfg.d_model, cfg.norm_eps)
            self.mlp = FeedForward(cfg)
        else:
            self.mlp = None

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.input_layernorm(x), cos, sin)
        if self.mlp is not None:
            x = x + self.mlp(self.post_attention_layernorm(x))
        return x


class Transformer(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.layers = nn.ModuleDict({str(i): Block(cfg) for i in range(cfg.n_layers)})
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps)
        self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        if cfg.tie_embeddings:
            self.lm_head.weight = self.embed_tokens.weight
        cos, sin = rope_tables(cfg, cfg.max_seq_len)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)
        if self.rope_cos.device.type != "meta":  # a meta model is only a shape; init after to_empty
            self.init_weights()

    @torch.no_grad()
    def init_weights(self, generator: torch.Generator | None = None) -> None:
        """Matrices normal(0, init_std), residual output projections scaled by
        1/sqrt(2·n_layers); norm weights 1, biases 0."""
        cfg = self.cfg
        std = cfg.init_std
        out_std = std / math.sqrt(2 * max(cfg.n_layers, 1)) if cfg.residual_init == "scaled" else std
        for name, p in self.named_parameters():
            if name.endswith(".bias"):
                p.zero_()
            elif p.dim() == 1:
                p.fill_(1.0)
            elif name.endswith(("o_proj.weight", "down_proj.weight")):
                p.normal_(0.0, out_std, generator=generator)
            else:
                p.normal_(0.0, std, generator=generator)
        cos, sin = rope_tables(cfg, cfg.max_seq_len, device=self.rope_cos.device)
        self.rope_cos.copy_(cos)
        self.rope_sin.copy_(sin)

    def forward(self, tokens: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        """tokens (batch, seq) → logits (batch, seq, vocab); with labels, the summed loss.

        labels: (batch, seq) int64 targets aligned with the positions (labels[:, t] is the
        token position t should predict), -100 where ignored. With them the result is the
        fp32 SUM of the token cross-entropies over non-ignored positions, computed in chunks
        so the full logits never exist (growlm.model.loss); the caller divides by its token
        count. Taking the loss here, inside forward, lets DDP/FSDP hooks see the head's use.
        """
        seq = tokens.shape[1]
        if seq > self.cfg.max_seq_len:
            raise ValueError(f"sequence length {seq} exceeds max_seq_len {self.cfg.max_seq_len}")
        x = self.embed_tokens(tokens)
        cos, sin = self.rope_cos[:seq], self.rope_sin[:seq]
        for block in self.layers.values():
            x = block(x, cos, sin)
        hidden = self.norm(x)
        if labels is None:
            return self.lm_head(hidden)
        return linear_cross_entropy_sum(hidden, self.lm_head, labels)


def cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token loss in fp32; targets equal to -100 are ignored."""
    return F.cross_entropy(
        logits.flatten(0, 1).float(), targets.flatten(0, 1), ignore_index=-100
    )
