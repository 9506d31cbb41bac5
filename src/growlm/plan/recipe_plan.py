"""`growlm plan RECIPE`: parameters, tokens, FLOPs and memory per stage, against a baseline.

The baseline is standard single-stage training of the final shape, everything trainable, on
the **same number of tokens** as the whole recipe (its FLOPs are given too, and the tokens it
could train on with the recipe's exact compute). FLOPs are per `growlm.plan.flops`: "seed" is
the seeds' 6·N_trainable + 2·N_frozen formula (no attention), "exact" the upstream-aware count
including the attention core, and "attention" that core alone. Memory is per
`growlm.plan.memory`, for the recipe's micro-batch and sequence length.
"""

from __future__ import annotations

import json
from pathlib import Path

from growlm.model.config import ModelConfig
from growlm.plan.flops import count_flops
from growlm.plan.memory import (
    activation_bytes,
    adapter_params_by_linear,
    galore_saving_bytes,
    galore_shapes,
    model_state_bytes,
    param_counts,
)
from growlm.stages import resolve_stages
from growlm.units import human_bytes, human_count, lower_or_higher


def _stage_entry(model: ModelConfig, frozen: set[str], adapters: dict[str, int], tokens: int,
                 batch: int, seq_len: int, galore_rank: int | None = None) -> dict:
    params = param_counts(model, frozen, adapters)
    fc = count_flops(model, frozen, adapters, seq_len)
    state = model_state_bytes(params["trainable"], params["frozen"], params["adapter"])
    if galore_rank is not None:
        state -= galore_saving_bytes(galore_shapes(model, frozen), galore_rank)
    act = activation_bytes(model, batch, seq_len, frozen, adapters)
    act_ckpt = activation_bytes(model, batch, seq_len, frozen, adapters, checkpointing=True)
    per_token = {"seed": fc.seed, "exact": fc.exact_total, "attention": fc.attention}
    return {
        "model": {k: getattr(model, k) for k in ("n_layers", "d_model", "n_heads", "kv_heads",
                                                 "hidden_dim", "vocab_size", "block")},
        "tokens": tokens,
        "params": params,
        "flops_per_token": per_token,
        "flops": {k: v * tokens for k, v in per_token.items()},
        "memory": {
            "model_state_bytes": state,
            "activation_bytes": act,
            "activation_bytes_checkpointed": act_ckpt,
            "total_bytes": state + act,
            "total_bytes_checkpointed": state + act_ckpt,
        },
    }


def plan_recipe(cfg, frozen_sets: list[set[str]] | None = None, run_dir: Path | None = None) -> dict:
    """The content of plan.json for a validated RunConfig.

    `frozen_sets` (one per stage) default to what the trainer will freeze, worked out on the
    meta device; `run_dir` (default the recipe's out_dir) is read for measured numbers."""
    stages = resolve_stages(cfg)
    if frozen_sets is None:
        from growlm.plan.provenance import stage_frozen_sets

        frozen_sets = stage_frozen_sets(cfg, stages)
    batch, seq_len = cfg.train.micro_batch_size, cfg.data.seq_len
    entries, cum = [], {"seed": 0, "exact": 0}
    for stage, frozen in zip(stages, frozen_sets):
        adapters = adapter_params_by_linear(stage.model, stage.spec.adapters, frozen)
        rank = cfg.optim.galore.rank if stage.optimizer == "galore" else None
        e = _stage_entry(stage.model, frozen, adapters, stage.tokens, batch, seq_len, rank)
        for k in cum:
            cum[k] += e["flops"][k]
        spec = stage.spec
        entries.append({"index": stage.index, "name": stage.name, "steps": stage.steps,
                        "grow": spec.grow.op if spec.grow else None,
                        "freeze": list(spec.freeze), "frozen_tensors": len(frozen),
                        "adapters": None if spec.adapters is None else
                        {"kind": spec.adapters.kind, "rank": spec.adapters.rank},
                        "optimizer": stage.optimizer, **e, "cumulative_flops": dict(cum)})
    total_tokens = sum(e["tokens"] for e in entries)
    base = _stage_entry(cfg.model, set(), {}, total_tokens, batch, seq_len)
    peak = max(e["memory"]["total_bytes"] for e in entries)
    peak_ckpt = max(e["memory"]["total_bytes_checkpointed"] for e in entries)
    total_flops = {k: sum(e["flops"][k] for e in entries) for k in ("seed", "exact", "attention")}
    plan = {
        "format": "growlm-plan", "version": 1, "run": cfg.run.name,
        "micro_batch_size": batch, "seq_len": seq_len,
        "stages": entries,
        "total": {"tokens": total_tokens, "flops": total_flops,
                  "peak_bytes": peak, "peak_bytes_checkpointed": peak_ckpt},
        "baseline": {"basis": "same tokens", **base,
                     "tokens_at_equal_compute": total_flops["exact"] // base["flops_per_token"]["exact"]},
    }
    bmem = base["memory"]
    plan["comparison"] = {
        "peak_reduction": 1 - peak / bmem["total_bytes"],
        "peak_reduction_checkpointed": 1 - peak_ckpt / bmem["total_bytes_checkpointed"],
        "model_state_peak_reduction":
            1 - max(e["memory"]["model_state_bytes"] for e in entries) / bmem["model_state_bytes"],
        "flops_ratio_exact": total_flops["exact"] / base["flops"]["exact"],
        "flops_ratio_seed": total_flops["seed"] / base["flops"]["seed"],
    }
    run_dir = cfg.out_dir if run_dir is None else Path(run_dir)
    measured = measured_by_stage(run_dir / "metrics.jsonl")
    plan["measured_from"] = str(run_dir / "metrics.jsonl") if measured else None
    for e in entries:
        e["measured"] = measured.get(e["index"])
    return plan


# ---------------------------------------------------------------- measured numbers

def _records(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue  # a torn last line of a killed run
        if isinstance(rec, dict):
            out.append(rec)
    return out


def measured_by_stage(path: Path) -> dict[int, dict]:
    """Per stage index: measured peak memory, and exact FLOPs, seeds'-formula FLOPs and tokens
    spent in the stage (differences of the cumulative counters in metrics.jsonl)."""
    keys = ("flops", "flops_seed", "tokens")
    peak: dict[int, int] = {}
    start: dict[int, dict] = {}
    end: dict[int, dict] = {}
    for rec in _records(path):
        stage = rec.get("stage")
        if not isinstance(stage, int):
            continue
        if rec.get("kind") == "stage":
            mem = (rec.get("memory") or {}).get("measured_peak_bytes") or 0
            peak[stage] = max(peak.get(stage, 0), int(mem))
            if rec.get("event") == "start" and "flops" in rec:
                start[stage] = {k: rec.get(k) for k in keys}
        elif rec.get("kind") == "step":
            peak[stage] = max(peak.get(stage, 0), int(rec.get("mem_bytes") or 0))
            end[stage] = {k: rec.get(k) or 0 for k in keys}
    out: dict[int, dict] = {}
    previous = dict.fromkeys(keys, 0)
    for stage in sorted(set(peak) | set(end)):
        first = {k: v if v is not None else previous[k] for k, v in start.get(stage, previous).items()}
        last = end.get(stage)
        spent = {k: last[k] - first[k] for k in keys} if last else dict.fromkeys(keys, 0)
        out[stage] = {"peak_bytes": peak.get(stage, 0), **spent}
        if last:
            previous = last
    return out


# ---------------------------------------------------------------- text

def format_plan(plan: dict) -> str:
    """A fixed-width table of the plan for the terminal."""
    head = (f"{'stage':<14}{'layers':>7}{'trainable':>11}{'frozen':>9}{'adapter':>9}{'tokens':>9}"
            f"{'FLOPs seed':>12}{'FLOPs exact':>13}{'attn':>9}{'cum exact':>11}"
            f"{'state':>11}{'act':>11}{'act ckpt':>11}{'total':>11}")
    lines = [f"plan for {plan['run']} (micro-batch {plan['micro_batch_size']} × seq "
             f"{plan['seq_len']}; FLOPs forward+backward; memory in bf16 + fp32 Adam)", head]

    def row(name: str, e: dict, cum: str) -> str:
        p, f, mem = e["params"], e["flops"], e["memory"]
        return (f"{name[:13]:<14}{e['model']['n_layers']:>7}{human_count(p['trainable']):>11}"
                f"{human_count(p['frozen']):>9}{human_count(p['adapter']):>9}"
                f"{human_count(e['tokens']):>9}{f['seed']:>12.3g}{f['exact']:>13.3g}"
                f"{f['attention']:>9.2g}{cum:>11}{human_bytes(mem['model_state_bytes']):>11}"
                f"{human_bytes(mem['activation_bytes']):>11}"
                f"{human_bytes(mem['activation_bytes_checkpointed']):>11}"
                f"{human_bytes(mem['total_bytes']):>11}")

    for e in plan["stages"]:
        lines.append(row(e["name"], e, f"{e['cumulative_flops']['exact']:.3g}"))
        m = e.get("measured")
        if m:
            lines.append(f"{'  measured':<14}{'':>45}{m['flops_seed']:>12.3g}{m['flops']:>13.3g}"
                         f"{'':>20}{'':>33}{human_bytes(m['peak_bytes']) if m['peak_bytes'] else '-':>11}")
    t, b, c = plan["total"], plan["baseline"], plan["comparison"]
    lines.append(f"{'total':<14}{'':>36}{human_count(t['tokens']):>9}{t['flops']['seed']:>12.3g}"
                 f"{t['flops']['exact']:>13.3g}{t['flops']['attention']:>9.2g}"
                 f"{'':>44}{'peak ' + human_bytes(t['peak_bytes']):>11}")
    lines.append(row("baseline", b, f"{b['flops']['exact']:.3g}"))
    lines.append(
        f"baseline = the final shape trained as one standard stage on the same tokens "
        f"({human_count(b['tokens'])}); at equal exact compute it would see "
        f"{human_count(b['tokens_at_equal_compute'])} tokens")
    lines.append(
        f"peak memory {human_bytes(t['peak_bytes'])} vs {human_bytes(b['memory']['total_bytes'])}: "
        f"{lower_or_higher(c['peak_reduction'])} ({lower_or_higher(c['peak_reduction_checkpointed'])} with "
        f"activation checkpointing, {lower_or_higher(c['model_state_peak_reduction'])} model state only); "
        f"FLOPs {c['flops_ratio_exact']:.3f}× the baseline's (exact), "
        f"{c['flops_ratio_seed']:.3f}× (seeds' formula)")
    return "\n".join(lines)
