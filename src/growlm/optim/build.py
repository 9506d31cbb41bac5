"""A stage's optimizer, and carrying Adam moments across a stage boundary.

Kinds: "adamw" (torch's AdamW, fused on CUDA) and "galore" (`growlm.optim.galore`). Only
trainable parameters enter the optimizer, so frozen ones get no state at all.

Carrying moments (`optimizer_state = "map"`): a parameter the new stage copied unchanged from
exactly one parameter of the previous stage (provenance kind "copied") starts with that
parameter's optimizer state; after width growth that keeps old units in place (zero,
width_random: MSG's G_random) a widened parameter starts with its old moments in the old
units' slice and zeros for the new units, as MSG does; every other parameter starts fresh. The state layouts of AdamW
(tensor `step`, moments of the parameter's shape) and GaLore (integer `step`, moments in the
projected space, the projector) differ, so moments are carried only between stages with the
same optimizer kind (`check_mappable`).
"""

from __future__ import annotations

import torch

from growlm.errors import GrowlmError

KINDS = ("adamw", "galore")


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Decay every matrix (embedding, head, projections, adapters); never norms (1-D)."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (decay if p.dim() >= 2 else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def build_optimizer(model: torch.nn.Module, optim_cfg, kind: str, lr: float,
                    device: torch.device | str) -> torch.optim.Optimizer:
    """The optimizer of a stage over `model`'s trainable parameters. `optim_cfg` is the recipe's
    [optim] section. Works on meta parameters (state is created at the first step)."""
    if kind == "galore":
        from growlm.optim.galore import build_galore

        g = optim_cfg.galore
        return build_galore(
            model, lr=lr, betas=optim_cfg.betas,
            eps=optim_cfg.eps, weight_decay=optim_cfg.weight_decay, rank=g.rank,
            update_gap=g.update_gap, scale=g.scale)
    if kind != "adamw":
        raise GrowlmError(f"optimizer: unknown kind {kind!r}; allowed: {', '.join(KINDS)}")
    return torch.optim.AdamW(
        param_groups(model, optim_cfg.weight_decay), lr=lr, betas=optim_cfg.betas,
        eps=optim_cfg.eps, fused=torch.device(device).type == "cuda")


def check_mappable(previous_kind: str, kind: str) -> None:
    """GrowlmError when moments of a `previous_kind` optimizer cannot seed a `kind` one."""
    if previous_kind != kind:
        raise GrowlmError(
            f"optimizer_state: 'map' carries optimizer state between stages with the same "
            f"optimizer, but the previous stage uses {previous_kind!r} and this one {kind!r}, whose "
            "states differ; use optimizer_state = \"reset\"")


def named_moments(opt: torch.optim.Optimizer, model: torch.nn.Module) -> dict[str, dict]:
    """The optimizer's per-parameter state keyed by parameter name (for the next stage)."""
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: dict(s) for p, s in opt.state.items() if id(p) in names}


def _fits(state: dict, p: torch.Tensor) -> bool:
    """Whether a saved AdamW/GaLore state belongs to a parameter of p's shape."""
    moments = [v for k, v in state.items() if k in ("exp_avg", "exp_avg_sq") and torch.is_tensor(v)]
    if "projector" in state:  # GaLore: moments live in the rank-r space of the projector
        proj = state["projector"]
        m, n = p.shape
        side = n if m >= n else m
        return proj.dim() == 2 and side in proj.shape and all(v.dim() == 2 for v in moments)
    return all(v.shape == p.shape for v in moments)


def map_moments(opt: torch.optim.Optimizer, model: torch.nn.Module, old: dict[str, dict],
                provenance: dict, slices: dict[str, list] | None = None) -> int:
    """Seed `opt`'s state for parameters copied unchanged from one old parameter (module
    docstring). With `slices` (width growth that keeps old units in place: name → per
    dimension (new positions, old indices) or None, growlm.grow.width.inplace_positions), a
    widened parameter gets its old parameter's AdamW moments in the old units' slice and zeros
    elsewhere, as MSG carries them. Returns how many parameters got carried state."""
    mapped = 0
    names = {id(p): n for n, p in model.named_parameters()}
    for group in opt.param_groups:
        for p in group["params"]:
            name = names.get(id(p), "")
            prov = provenance.get(name, {})
            if len(prov.get("sources", [])) != 1:
                continue
            state = old.get(prov["sources"][0])
            if not state:
                continue
            if prov.get("kind") == "copied" and _fits(state, p):
                opt.state[p] = {k: v.clone().to(p.device) if torch.is_tensor(v) else v
                                for k, v in state.items()}
                mapped += 1
            elif prov.get("kind") == "derived" and slices is not None and name in slices:
                carried = _sliced(state, p, slices[name])
                if carried is not None:
                    opt.state[p] = carried
                    mapped += 1
    return mapped


def _sliced(state: dict, p: torch.Tensor, dims: list) -> dict | None:
    """AdamW state for `p` with the old moments placed at the old units' positions."""
    if "projector" in state or not all(torch.is_tensor(state.get(k)) for k in ("exp_avg", "exp_avg_sq")):
        return None
    old_shape = state["exp_avg"].shape
    if len(old_shape) != p.dim():
        return None
    new_idx, old_idx = [], []
    for axis, d in enumerate(dims):
        if d is None:
            if old_shape[axis] != p.shape[axis]:
                return None
            new_idx.append(torch.arange(p.shape[axis]))
            old_idx.append(torch.arange(p.shape[axis]))
        else:
            new_idx.append(d[0])
            old_idx.append(d[1])
    if any(o.numel() and int(o.max()) >= n for o, n in zip(old_idx, old_shape)):
        return None
    out = {}
    for k, v in state.items():
        if k in ("exp_avg", "exp_avg_sq"):
            t = torch.zeros(p.shape, dtype=v.dtype, device=p.device)
            t[torch.meshgrid(*new_idx, indexing="ij")] = v.to(p.device)[torch.meshgrid(*old_idx, indexing="ij")]
            out[k] = t
        else:
            out[k] = v.clone().to(p.device) if torch.is_tensor(v) else v
    return out
