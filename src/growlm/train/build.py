"""Build a stage: its model (fresh, loaded, or grown), freezing, adapters and optimizer."""

from __future__ import annotations

from pathlib import Path

import torch

from growlm.errors import GrowlmError
from growlm.grow import provenance as prov
from growlm.model.config import ModelConfig
from growlm.model.llama import Transformer


def new_model(cfg: ModelConfig, seed: int, device: torch.device | str = "cpu") -> Transformer:
    """A freshly initialised model from its own generator (the global RNG is left alone,
    so rebuilding a stage on resume draws exactly the same initial weights)."""
    with torch.device("meta"):
        model = Transformer(cfg)
    model.to_empty(device="cpu")
    if cfg.tie_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    model.init_weights(generator=torch.Generator().manual_seed(seed))
    return model.to(device)


def load_external(path: str, where: str) -> tuple[ModelConfig, dict]:
    """Weights to start a stage from: a growlm run/checkpoint or an HF Llama folder."""
    from growlm.sweep import resolve_init  # "best:<sweep dir>" → that sweep's best checkpoint

    p = Path(resolve_init(path, f"{where}.init"))
    if (p / "config.json").is_file() and not (p / "meta.json").is_file():
        from growlm.model.hf import load_hf_folder

        return load_hf_folder(p)
    from growlm.train.checkpoint import load_model_state

    cfg, state, meta = load_model_state(p)
    if any(".lora_" in k for k in state):
        from growlm.adapters.lora import merged_state_dict

        state = merged_state_dict(state, meta["adapters"]["scale"])
    return cfg, state


def _shape(cfg: ModelConfig) -> dict:
    keep = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "hidden_dim", "block",
            "tie_embeddings")
    return {k: getattr(cfg, k) for k in keep}


def initial_state(stage, prev, seed: int) -> tuple[dict, dict]:
    """(state, provenance) of a stage's model before freezing and adapters.

    `prev` is (config, plain state) of the previous stage or None for the first stage.
    """
    spec, cfg = stage.spec, stage.model
    fresh = new_model(cfg, seed).state_dict()
    where = f"stage.{stage.index + 1}"
    if spec.init is not None and prev is None:
        src_cfg, state = load_external(spec.init, where)
        if spec.grow is None:
            if _shape(src_cfg) != _shape(cfg):
                raise GrowlmError(f"{where}.init: {spec.init} has shape {_shape(src_cfg)}, the stage needs {_shape(cfg)}")
            return dict(state), {n: prov.copied(n) for n in fresh}
        prev = (src_cfg, state)
    if prev is None:
        return fresh, {n: prov.new() for n in fresh}
    prev_cfg, prev_state = prev
    if spec.grow is None:
        return dict(prev_state), {n: prov.copied(n) for n in fresh}
    from growlm.grow import grow

    return grow(prev_state, prev_cfg, cfg, spec.grow, fresh=fresh)


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


def build_optimizer(model: torch.nn.Module, optim_cfg, kind: str, lr: float, device: torch.device):
    if kind == "galore":
        from growlm.optim.galore import build_galore

        g = optim_cfg.galore
        return build_galore(
            model, lr=lr, betas=optim_cfg.betas,
            eps=optim_cfg.eps, weight_decay=optim_cfg.weight_decay, rank=g.rank,
            update_gap=g.update_gap, scale=g.scale)
    return torch.optim.AdamW(
        param_groups(model, optim_cfg.weight_decay), lr=lr, betas=optim_cfg.betas,
        eps=optim_cfg.eps, fused=device.type == "cuda")


def map_optimizer_state(new_opt, new_model, old_state: dict[str, dict], provenance: dict) -> int:
    """Copy Adam moments to parameters copied unchanged from an old one. Returns the count."""
    mapped = 0
    names = {id(p): n for n, p in new_model.named_parameters()}
    for group in new_opt.param_groups:
        for p in group["params"]:
            prov = provenance.get(names.get(id(p), ""), {})
            if prov.get("kind") != "copied" or len(prov.get("sources", [])) != 1:
                continue
            old = old_state.get(prov["sources"][0])
            if old and all(not torch.is_tensor(v) or v.dim() == 0 or v.shape == p.shape for v in old.values()):
                new_opt.state[p] = {k: v.clone().to(p.device) if torch.is_tensor(v) else v for k, v in old.items()}
                mapped += 1
    return mapped


def named_optimizer_state(opt, model) -> dict[str, dict]:
    names = {id(p): n for n, p in model.named_parameters()}
    return {names[id(p)]: dict(s) for p, s in opt.state.items() if id(p) in names}
