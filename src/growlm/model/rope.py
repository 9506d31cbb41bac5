"""RoPE frequency tables, with the `linear` and `llama3` scalings HF models use.

The inverse frequencies are computed with the same operations, in the same order and dtype, as
transformers' `modeling_rope_utils` (`_compute_default_rope_parameters`,
`_compute_linear_scaling_rope_parameters`, `_compute_llama3_parameters`), so imported models
reproduce HF's logits to float rounding. Both scalings leave the cos/sin amplitude at 1.
"""

from __future__ import annotations

import math

import torch

from growlm.model.config import ModelConfig


def inv_frequencies(cfg: ModelConfig, device=None) -> torch.Tensor:
    """Inverse frequencies (head_dim / 2,) in fp32: θ^(−2i/d), then `cfg.rope_scaling`.

    Sources: RoFormer (Su et al. 2021) for the base; position interpolation (Chen et al. 2023)
    for `linear`; Meta's Llama 3.1 `apply_scaling` for `llama3`.
    """
    dim = cfg.head_size
    exponents = torch.arange(0, dim, 2, dtype=torch.int64, device=device).float() / dim
    inv_freq = 1.0 / (cfg.rope_theta ** exponents)
    scaling = cfg.rope_scaling
    if scaling is None:
        return inv_freq
    if scaling.rope_type == "linear":
        return inv_freq / scaling.factor
    old_len = scaling.original_max_position_embeddings
    low, high = scaling.low_freq_factor, scaling.high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    # long wavelengths (beyond old_len / low) are divided by factor; short ones (below
    # old_len / high) kept; in between, a linear blend in old_len / wavelength.
    scaled = torch.where(wavelen > old_len / low, inv_freq / scaling.factor, inv_freq)
    smooth = (old_len / wavelen - low) / (high - low)
    blended = (1 - smooth) * scaled / scaling.factor + smooth * scaled
    medium = ~(wavelen < old_len / high) * ~(wavelen > old_len / low)
    return torch.where(medium, blended, scaled)


def rope_tables(cfg: ModelConfig, seq_len: int, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """cos/sin of shape (seq_len, head_dim) in HF's half-split layout, fp32."""
    inv_freq = inv_frequencies(cfg, device)
    freqs = torch.outer(torch.arange(seq_len, device=device, dtype=torch.float32), inv_freq)
    emb = torch.cat((freqs, freqs), dim=-1)
    return emb.cos(), emb.sin()
