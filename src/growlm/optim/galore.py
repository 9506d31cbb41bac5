"""GaLore (Zhao et al. 2024): AdamW on low-rank projections of 2-D gradients.

For an m×n gradient G the projector P comes from the SVD of G, refreshed every
`update_gap` steps, on the side of the smaller dimension ("std" projection of the
reference implementation):
  m >= n: P = Vᵀ[:r]  (r×n),  R = G·Pᵀ (m×r),  update = scale · adam(R)·P
  m <  n: P = U[:, :r] (m×r), R = Pᵀ·G (r×n),  update = scale · P·adam(R)
Adam's moments live in the projected (r-sized) space and are kept across refreshes, as in
the reference. Bias correction folds into the step size and decoupled weight decay is
applied after the update, also as in the reference AdamW.

Why our own class: `pytorch-optimizer`'s GaLore matches these semantics except that it
refreshes P one step earlier, and it keeps a Python projector object in the optimizer
state, which `torch.load(weights_only=True)` refuses. Here the state is plain tensors
(`exp_avg`, `exp_avg_sq`, `projector`) and an int `step`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from fnmatch import fnmatchcase

import torch
from torch import nn

from growlm.errors import GrowlmError

DEFAULT_REGULAR = ("embed_tokens.*", "lm_head.*")  # the reference projects attn/MLP only


def _projection_basis(grad: torch.Tensor, rank: int) -> torch.Tensor:
    # SVD in fp32: bf16/fp16 SVD is unsupported and would be too imprecise anyway.
    u, _, vh = torch.linalg.svd(grad.float(), full_matrices=False)
    m, n = grad.shape
    basis = vh[:rank] if m >= n else u[:, :rank]
    return basis.to(grad.dtype).contiguous()


def _project(grad: torch.Tensor, basis: torch.Tensor) -> torch.Tensor:
    m, n = grad.shape
    return grad @ basis.T if m >= n else basis.T @ grad


def _project_back(low: torch.Tensor, basis: torch.Tensor, shape: torch.Size) -> torch.Tensor:
    m, n = shape
    return low @ basis if m >= n else basis @ low


class GaLoreAdamW(torch.optim.Optimizer):
    """AdamW whose groups with a `rank` project their 2-D parameters' gradients (GaLore).

    Group keys: lr, betas, eps, weight_decay, and for GaLore groups rank, update_gap,
    scale. Non-2-D parameters and groups without `rank` get plain AdamW.
    """

    def __init__(
        self,
        params,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
    ):
        if lr < 0 or eps < 0 or weight_decay < 0:
            raise ValueError("lr, eps and weight_decay must be >= 0")
        if not all(0.0 <= b < 1.0 for b in betas):
            raise ValueError(f"betas must be in [0, 1), got {betas}")
        defaults = dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay,
                        rank=None, update_gap=200, scale=1.0)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None:
                    self._update(p, group)
        return loss

    def _update(self, p: torch.Tensor, group: dict) -> None:
        if p.grad.is_sparse:
            raise RuntimeError("GaLoreAdamW does not support sparse gradients")
        state = self.state[p]
        if "step" not in state:
            state["step"] = 0
        grad = p.grad
        projected = group["rank"] is not None and p.dim() == 2
        if projected:
            if "projector" not in state or state["step"] % group["update_gap"] == 0:
                state["projector"] = _projection_basis(grad, group["rank"])
            grad = _project(grad, state["projector"])
        if "exp_avg" not in state:
            state["exp_avg"] = torch.zeros_like(grad)
            state["exp_avg_sq"] = torch.zeros_like(grad)
        state["step"] += 1
        t = state["step"]
        beta1, beta2 = group["betas"]
        exp_avg, exp_avg_sq = state["exp_avg"], state["exp_avg_sq"]
        exp_avg.mul_(beta1).add_(grad, alpha=1.0 - beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
        step_size = group["lr"] * math.sqrt(1.0 - beta2**t) / (1.0 - beta1**t)
        update = exp_avg / exp_avg_sq.sqrt().add_(group["eps"])
        if projected:
            update = _project_back(update, state["projector"], p.shape).mul_(group["scale"])
        p.add_(update, alpha=-step_size)
        if group["weight_decay"] > 0:
            p.mul_(1.0 - group["lr"] * group["weight_decay"])


def _named(params) -> list[tuple[str, torch.Tensor]]:
    if isinstance(params, nn.Module):
        return list(params.named_parameters())
    items = list(params)
    # A bare 2-D tensor would unpack into rows, so tell pairs from tensors explicitly.
    return [(f"<param {i}>", x) if isinstance(x, torch.Tensor) else tuple(x)
            for i, x in enumerate(items)]


def build_galore(
    model_params: nn.Module | Iterable[tuple[str, nn.Parameter]],
    lr: float,
    betas: tuple[float, float] = (0.9, 0.95),
    eps: float = 1e-8,
    weight_decay: float = 0.0,
    rank: int = 128,
    update_gap: int = 200,
    scale: float = 0.25,
    *,
    regular: Sequence[str] = DEFAULT_REGULAR,
) -> GaLoreAdamW:
    """GaLore on the trainable 2-D parameters not matching the `regular` globs; AdamW on the rest.

    Takes a module, `named_parameters()` pairs, or bare parameters. Bare parameters have no
    names, so `regular` cannot apply and every 2-D one (embeddings and head too) is
    projected; pass the module to keep the reference's choice. Weight decay applies to 2-D
    parameters only (norm gains are not decayed).
    """
    if rank <= 0 or update_gap <= 0 or scale <= 0:
        raise GrowlmError(
            f"galore: rank ({rank}), update_gap ({update_gap}) and scale ({scale}) must be > 0"
        )
    galore, regular_2d, no_decay = [], [], []
    for name, p in _named(model_params):
        if not p.requires_grad:
            continue
        if p.dim() != 2:
            no_decay.append(p)
        elif any(fnmatchcase(name, g) for g in regular):
            regular_2d.append(p)
        else:
            galore.append(p)
    if not galore:
        raise GrowlmError(
            "GaLore needs 2-D trainable parameters outside the regular ones "
            f"({', '.join(regular) or 'none'}); this model has none — use optimizer 'adamw'"
        )
    groups = [{"params": galore, "rank": rank, "update_gap": update_gap, "scale": scale}]
    if regular_2d:
        groups.append({"params": regular_2d})
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return GaLoreAdamW(groups, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay)
