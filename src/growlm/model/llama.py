"""A plain LLaMA-style decoder whose parameter names match HF `LlamaForCausalLM`.

Names are HF's without the leading `model.` (e.g. `layers.3.self_attn.q_proj.weight`),
so import/export is a rename. Layers live in a ModuleDict keyed by index so that names
stay stable when growth inserts or appends layers. Parallelism, compilation and
activation checkpointing are applied from outside.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from growlm.model.config import ModelConfig
from growlm.model.loss import linear_cross_entropy_sum


def _at_least_fp32(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


class _RMSNormFunction(torch.autograd.Function):
    """RMSNorm with a hand-written backward.

    Same forward as HF (normalise in fp32, cast back, then scale by the weight). The composite
    version keeps the normalised output as well as the input for its backward and makes more
    full-size passes over the activations; this one keeps the input and the per-row scale and
    recomputes the rest. A frozen norm weight gets no gradient computation.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
        xf = _at_least_fp32(x)
        rstd = xf.square().mean(-1, keepdim=True).add_(eps).rsqrt_()
        ctx.save_for_backward(x, weight, rstd)
        return (xf * rstd).to(x.dtype) * weight

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        x, weight, rstd = ctx.saved_tensors
        normed = _at_least_fp32(x) * rstd
        grad_x = grad_weight = None
        if ctx.needs_input_grad[1]:
            grad_weight = (grad * normed.to(x.dtype)).flatten(0, -2).sum(0).to(weight.dtype)
        if ctx.needs_input_grad[0]:
            # d/dx of x·rstd(x): rstd·(g − x̂·mean(g·x̂)), with g the gradient w.r.t. x̂.
            grad_normed = _at_least_fp32(grad * weight)
            dot = (grad_normed * normed).mean(-1, keepdim=True)
            grad_x = torch.addcmul(grad_normed, normed, dot, value=-1).mul_(rstd).to(x.dtype)
        return grad_x, grad_weight, None


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # Normalise in fp32 (as HF does) so bf16 activations keep their precision here.
        return _RMSNormFunction.apply(x, self.weight, self.eps)


def rope_tables(cfg: ModelConfig, seq_len: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of shape (seq_len, head_dim) in HF's half-split layout."""
    dim = cfg.head_dim
    inv_freq = 1.0 / (
        cfg.rope_theta ** (torch.arange(0, dim, 2, dtype=torch.int64, device=device).float() / dim)
    )
    freqs = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()


def _swap_halves(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((x[..., half:], x[..., :half]), dim=-1)


class _RopeFunction(torch.autograd.Function):
    """x·cos + swap_halves(x)·sin_signed, where sin_signed = (−sin₁, sin₂) folds HF's negation.

    Rotation is linear in x, so the backward is the transposed rotation of the gradient and
    nothing needs saving but the tables. Autograd's version of HF's formulation pays a zero-fill
    and a copy per slice in the backward, plus the negation, in both directions.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, cos: torch.Tensor, sin_signed: torch.Tensor):
        ctx.save_for_backward(cos, sin_signed)
        return torch.addcmul(x * cos, _swap_halves(x), sin_signed)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        cos, sin_signed = ctx.saved_tensors
        # swap_halves is its own inverse and transpose.
        return torch.addcmul(_swap_halves(grad * sin_signed), grad, cos), None, None


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (..., seq, head_dim) by the HF-layout tables cos/sin (seq, head_dim)."""
    half = sin.shape[-1] // 2
    sin_signed = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
    return _RopeFunction.apply(x, cos.to(x.dtype), sin_signed.to(x.dtype))


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.n_heads, self.n_kv, self.head_dim = cfg.n_heads, cfg.kv_heads, cfg.head_dim
        d = cfg.d_model
        self.q_proj = nn.Linear(d, self.n_heads * self.head_dim, bias=False)
        self.k_proj = nn.Linear(d, self.n_kv * self.head_dim, bias=False)
        self.v_proj = nn.Linear(d, self.n_kv * self.head_dim, bias=False)
        self.o_proj = nn.Linear(self.n_heads * self.head_dim, d, bias=False)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        bsz, seq, _ = x.shape
        # RoPE runs in the (batch, seq, heads, head_dim) layout the projections produce, so its
        # elementwise passes read contiguous memory; tables broadcast over heads.
        cos, sin = cos[:, None], sin[:, None]
        q = apply_rope(self.q_proj(x).view(bsz, seq, self.n_heads, self.head_dim), cos, sin)
        k = apply_rope(self.k_proj(x).view(bsz, seq, self.n_kv, self.head_dim), cos, sin)
        v = self.v_proj(x).view(bsz, seq, self.n_kv, self.head_dim)
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
        """normal(0, init_std); residual output projections scaled by 1/sqrt(2·n_layers)."""
        cfg = self.cfg
        std = cfg.init_std
        out_std = std / math.sqrt(2 * max(cfg.n_layers, 1)) if cfg.residual_init == "scaled" else std
        for name, p in self.named_parameters():
            if p.dim() == 1:
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
