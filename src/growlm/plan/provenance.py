"""Each stage's frozen set, worked out without weights: models are built on the meta device.

The trainer decides what to freeze from the provenance that growth returns (`growlm.grow.grow`)
and the stage's patterns (`growlm.freeze.select_frozen`). The planner runs the same functions
on meta tensors, so a 70B recipe plans in a second and the plan freezes exactly what the run
will freeze.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from growlm.errors import GrowlmError
from growlm.model.config import ModelConfig
from growlm.plan.layout import network_weights, parameter_names


def meta_state(cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """A state dict of meta tensors (shapes only, no memory) in `Transformer.state_dict()`'s
    order; a tied head is the embedding tensor under a second name. Built from the shapes
    directly: initialising a meta Transformer costs seconds for large models."""
    state: dict[str, torch.Tensor] = {}
    for w in network_weights(cfg):
        state[w.name] = state[w.param] if w.param in state else torch.empty(w.shape, device="meta")
    return state


def external_config(path: str, where: str) -> ModelConfig:
    """The shape of an external init (growlm run/checkpoint or HF folder), read from JSON only."""
    p = Path(path)
    if (p / "config.json").is_file() and not (p / "meta.json").is_file():
        from growlm.model.hf import from_hf_config

        return from_hf_config(json.loads((p / "config.json").read_text()))
    metas = [p / "meta.json"] if (p / "meta.json").is_file() else sorted(
        (p / "checkpoints").glob("step_*/meta.json"), reverse=True)
    for meta in metas:
        try:
            return ModelConfig(**json.loads(meta.read_text())["model"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
    raise GrowlmError(
        f"{where}.init: cannot read the shape of {path} (no HF config.json or growlm checkpoint "
        "meta.json); the planner needs it to plan growth from it"
    )


def _copied(names) -> dict:
    from growlm.grow.provenance import copied

    return {n: copied(n) for n in names}


def stage_provenances(cfg, stages) -> list[dict]:
    """Provenance of every stage's tensors, as the trainer derives it (see train/build.py)."""
    from growlm.grow import grow

    out: list[dict] = []
    prev: tuple[ModelConfig, dict] | None = None
    for stage in stages:
        spec, model = stage.spec, stage.model
        fresh = meta_state(model)
        where = f"stage.{stage.index + 1}"
        if prev is None and spec.init is not None:
            if spec.grow is None:
                out.append(_copied(fresh))
                prev = (model, fresh)
                continue
            src = external_config(spec.init, where)
            prev = (src, meta_state(src))
        if prev is None:
            from growlm.grow.provenance import new

            prov = {n: new() for n in fresh}
        elif spec.grow is None:
            prov = _copied(fresh)
        else:
            _, prov = grow(prev[1], prev[0], model, spec.grow, fresh=fresh)
        out.append(prov)
        prev = (model, fresh)
    return out


def stage_frozen_sets(cfg, stages) -> list[set[str]]:
    """Frozen parameter names of each stage, by `growlm.freeze.select_frozen`."""
    from growlm.freeze import select_frozen

    out = []
    for stage, prov in zip(stages, stage_provenances(cfg, stages)):
        patterns = stage.spec.freeze
        out.append(set(select_frozen(parameter_names(stage.model), patterns, prov)) if patterns else set())
    return out
