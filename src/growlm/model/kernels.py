"""Hand-written autograd kernels for RMSNorm and RoPE.

Both compute exactly what HF transformers' Llama computes in the forward; they exist for their
backward passes, which keep fewer and smaller tensors than autograd would for the composite
versions (see each class). Written as `torch.autograd.Function`s so that `torch.compile` and
FSDP treat them like any other op; each is checked against autograd with `gradcheck`.
"""

from __future__ import annotations

import torch


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


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """RMSNorm over the last dimension of x (..., dim), scaled by weight (dim,).

    x / sqrt(mean(x²) + eps) · weight (Zhang & Sennrich 2019), normalised in fp32 as HF does.
    """
    return _RMSNormFunction.apply(x, weight, eps)


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
    """Rotate x (..., head_dim) by the HF-layout tables cos/sin (broadcastable to x).

    HF's half-split layout (Su et al. 2021, RoFormer, in the form transformers implements):
    x·cos + rotate_half(x)·sin with rotate_half(x) = (−x₂, x₁).
    """
    half = sin.shape[-1] // 2
    sin_signed = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
    return _RopeFunction.apply(x, cos.to(x.dtype), sin_signed.to(x.dtype))
