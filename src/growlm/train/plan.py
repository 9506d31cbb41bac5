"""`growlm plan RECIPE`: parameters, tokens, FLOPs and memory per stage, against a baseline.

Every stage is built on the meta device by the trainer's own boundary code
(growlm.train.boundary.check_recipe), so the plan freezes, adapts and counts exactly what the
run will, and a recipe the trainer would refuse is refused here too.

The baseline is standard single-stage training of the final shape, everything trainable, on
the **same number of tokens** as the whole recipe (its FLOPs are given too, and the tokens it
could train on with the recipe's exact compute). FLOPs are per `growlm.plan.flops`: "6nd" is
the papers' 6·N_trainable + 2·N_frozen formula (no attention), "exact" the upstream-aware count
including the attention core, and "attention" that core alone.

Memory is per `growlm.plan.memory` for the recipe's micro-batch, sequence length and gradient
accumulation (one process), in a stated precision: by default the papers' bf16 mixed precision
(the paper-scale view), or as growlm runs the recipe (`precision="run"`: fp32 on CPU, bf16
autocast with fp32 weights on CUDA). Each stage also carries `as_run`, the estimate for the
run's own device, which is what the trainer logs and what a measured peak is compared with.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from growlm.plan.precision import precision, run_precision
from growlm.stages import recipe_notes, resolve_stages
from growlm.train.boundary import check_recipe, new_model, stage_accounting, stage_memory
from growlm.units import human_bytes, human_count, lower_or_higher

FLOP_KINDS = ("6nd", "exact", "attention")


def run_device(cfg) -> str:
    """The device type a recipe trains on here: run.device, "auto" resolved on this machine."""
    device = cfg.run.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return device


def _memory(built, cfg, prec) -> dict:
    plain = stage_memory(built, cfg, prec, device_type="cuda" if prec.name == "bf16-autocast" else "cpu",
                         checkpointing=False)
    ckpt = stage_memory(built, cfg, prec, device_type="cuda" if prec.name == "bf16-autocast" else "cpu",
                        checkpointing=True)
    as_set = ckpt if cfg.run.activation_checkpointing else plain
    return {
        "precision": prec.name,
        "model_state_bytes": plain.model_state,
        "activation_bytes": plain.activations,
        "activation_bytes_checkpointed": ckpt.activations,
        "total_bytes": plain.peak,  # the step's estimated peak (not state + activations)
        "total_bytes_checkpointed": ckpt.peak,
        "peak_estimated_bytes": as_set.peak,  # as the run is set up (checkpointing or not)
        "peak_moment": as_set.moment,
    }


def _entry(built, cfg, prec, tokens: int) -> dict:
    """One row of the plan for a built stage, with memory in precision `prec`."""
    from growlm.plan.memory import param_counts
    from growlm.train.boundary import adapter_params_by_linear

    model = built.stage.model
    acct = stage_accounting(built, cfg, device_type=run_device(cfg))
    parts = param_counts(model, built.frozen, adapter_params_by_linear(built.model))
    per_token = acct["flops_per_token"]
    run_mem = acct["memory"]
    return {
        "model": {k: getattr(model, k) for k in ("n_layers", "d_model", "n_heads", "kv_heads",
                                                 "hidden_dim", "vocab_size", "block")},
        "tokens": tokens,
        "params": {**{k: parts[k] for k in ("embedding", "head", "layers", "norm")}, **acct["params"]},
        "flops_per_token": dict(per_token),
        "flops": {k: per_token[k] * tokens for k in FLOP_KINDS},
        "memory": _memory(built, cfg, prec),
        "as_run": {"device": run_device(cfg), "precision": run_mem["estimate_precision"],
                   "model_state_bytes": run_mem["model_state_estimated_bytes"],
                   "peak_bytes": run_mem["peak_estimated_bytes"]},
    }


def _add_learning_phase(e: dict, learn: dict, tokens_per_step: int) -> None:
    """A learn op's first steps train the growth maps (growlm.train.growth): their tokens are
    charged at the learning phase's per-token FLOPs plus the maps' per-step FLOPs, the rest of
    the stage's tokens at the plain model's; the stage's peak is the larger of the two phases'."""
    tokens = learn["steps"] * tokens_per_step
    flops = {k: learn["flops_per_token"][k] * tokens for k in FLOP_KINDS}
    flops["exact"] += learn["map_flops_per_step"] * learn["steps"]
    rest = e["tokens"] - tokens
    e["flops"] = {k: e["flops_per_token"][k] * rest + flops[k] for k in FLOP_KINDS}
    mem, lm = e["memory"], learn["memory"]
    state = lm["model_state_estimated_bytes"]
    e["growth_phase"] = {**learn, "tokens": tokens, "flops": flops,
                         "memory": {**lm, "total_bytes": state + lm["activation_bytes"],
                                    "total_bytes_checkpointed": state + lm["activation_bytes_checkpointed"]}}
    mem["total_bytes"] = max(mem["total_bytes"], state + lm["activation_bytes"])
    mem["total_bytes_checkpointed"] = max(mem["total_bytes_checkpointed"],
                                          state + lm["activation_bytes_checkpointed"])
    mem["peak_estimated_bytes"] = max(mem["peak_estimated_bytes"], lm["peak_estimated_bytes"])


def _baseline_stage(cfg, stage):
    """The final shape as one standard stage (everything trainable, AdamW), built on meta."""
    from dataclasses import replace

    from growlm.optim.build import build_optimizer
    from growlm.train.boundary import BuiltStage

    model = new_model(cfg.model, None, "meta")
    opt = build_optimizer(model, cfg.optim, "adamw", stage.lr, "meta")
    return BuiltStage(replace(stage, model=cfg.model, optimizer="adamw"), model, {}, set(), [], opt)


def plan_recipe(cfg, run_dir: Path | None = None, memory_precision: str = "bf16-mixed") -> dict:
    """The content of plan.json for a validated RunConfig; `run_dir` (default the recipe's
    out_dir) is read for measured numbers. `memory_precision`: a growlm.plan.precision name,
    or "run" for how this recipe trains on its device. Raises GrowlmError for another name."""
    prec = run_precision(run_device(cfg)) if memory_precision == "run" else precision(memory_precision)
    stages = resolve_stages(cfg, cfg.source)
    built = check_recipe(cfg, stages)
    batch, seq_len = cfg.train.micro_batch_size, cfg.data.seq_len
    entries, cum = [], {"6nd": 0, "exact": 0}
    for stage, b in zip(stages, built):
        e = _entry(b, cfg, prec, stage.tokens)
        if getattr(b.growth, "kind", None) == "learn":
            _add_learning_phase(e, b.growth.accounting(cfg, prec), cfg.train.global_batch_tokens)
        for k in cum:
            cum[k] += e["flops"][k]
        spec = stage.spec
        entries.append({"stage": stage.number, "name": stage.name, "steps": stage.steps,
                        "grow": spec.grow.op if spec.grow else None,
                        "freeze": list(spec.freeze), "frozen_tensors": len(b.frozen),
                        "adapters": None if spec.adapters is None else
                        {"kind": spec.adapters.kind, "rank": spec.adapters.rank},
                        "optimizer": stage.optimizer, "optimizer_state": spec.optimizer_state,
                        "provenance": b.provenance, **e, "cumulative_flops": dict(cum)})
    total_tokens = sum(e["tokens"] for e in entries)
    base = _entry(_baseline_stage(cfg, stages[0]), cfg, prec, total_tokens)
    peak = max(e["memory"]["total_bytes"] for e in entries)
    peak_ckpt = max(e["memory"]["total_bytes_checkpointed"] for e in entries)
    total_flops = {k: sum(e["flops"][k] for e in entries) for k in FLOP_KINDS}
    plan = {
        "format": "growlm-plan", "version": 3, "run": cfg.run.name,
        "micro_batch_size": batch, "seq_len": seq_len,
        "memory_precision": {"name": prec.name, "summary": prec.summary},
        "notes": recipe_notes(cfg, stages),
        "init_overrides": [{"field": f, "source": a, "recipe": b} for f, a, b in cfg.init_overrides],
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
        "flops_ratio_6nd": total_flops["6nd"] / base["flops"]["6nd"],
    }
    run_dir = cfg.out_dir if run_dir is None else Path(run_dir)
    measured = measured_by_stage(run_dir / "metrics.jsonl")
    plan["measured_from"] = str(run_dir / "metrics.jsonl") if measured else None
    for e in entries:
        e["measured"] = measured.get(e["stage"])
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


def _field(rec: dict, key: str):
    if key == "flops_6nd" and key not in rec:
        return rec.get("flops_seed")  # runs written before the rename
    return rec.get(key)


def _measured_memory(m: dict) -> dict:
    """A stage record's measured memory and the run's own estimates to compare them with. The
    estimates count only where the record says their precision: older records held the
    papers' bf16 figures, which no fp32 measurement is comparable with."""
    own = bool(m.get("estimate_precision"))
    return {"peak_measured_bytes": m.get("peak_measured_bytes"),
            "peak_measured_by": m.get("peak_measured_by"),
            "model_state_bytes": m.get("model_state_bytes", m.get("measured_peak_bytes")),
            "peak_estimated_bytes": m.get("peak_estimated_bytes") if own else None,
            "model_state_estimated_bytes": m.get("model_state_estimated_bytes") if own else None,
            "estimate_precision": m.get("estimate_precision")}


def measured_by_stage(path: Path) -> dict[int, dict]:
    """Per stage number (1-based): what the run measured — the peak of live bytes over the
    stage's probed steps (activations included) and what measured it, the model-state bytes of
    the live weights, gradients and optimizer state, the run's own estimates of both (for its
    device and precision), and the exact FLOPs, 6·N·D FLOPs and tokens spent in the stage
    (differences of the cumulative counters in metrics.jsonl)."""
    keys = ("flops", "flops_6nd", "tokens")
    mem: dict[int, dict] = {}
    start: dict[int, dict] = {}
    end: dict[int, dict] = {}
    for rec in _records(path):
        stage = rec.get("stage")
        if not isinstance(stage, int):
            continue
        if rec.get("kind") == "stage":
            m = rec.get("memory") or {}
            if rec.get("event") == "end" or stage not in mem:
                mem[stage] = _measured_memory(m)
            if rec.get("event") == "start" and "flops" in rec:
                start[stage] = {k: _field(rec, k) for k in keys}
        elif rec.get("kind") == "step":
            end[stage] = {k: _field(rec, k) or 0 for k in keys}
    out: dict[int, dict] = {}
    previous = dict.fromkeys(keys, 0)
    for stage in sorted(set(mem) | set(end)):
        first = {k: v if v is not None else previous[k] for k, v in start.get(stage, previous).items()}
        last = end.get(stage)
        spent = {k: last[k] - first[k] for k in keys} if last else dict.fromkeys(keys, 0)
        out[stage] = {**mem.get(stage, _measured_memory({})), **spent}
        if last:
            previous = last
    return out


# ---------------------------------------------------------------- text

def _ratio(measured, estimated) -> str:
    return f"{measured / estimated:.3f}" if measured and estimated else "-"


def _measured_lines(m: dict) -> list[str]:
    """The measured FLOPs under the estimate's columns, and the measured memory beside the run's
    own estimate (for its device and precision, which may differ from the table's)."""
    lines = [f"{'  measured':<14}{'':>45}{m['flops_6nd']:>12.3g}{m['flops']:>13.3g}"]
    if not (m.get("peak_measured_bytes") or m.get("model_state_bytes")):
        return lines

    def pair(measured, estimated) -> str:
        text = f"{human_bytes(measured) if measured else '-'} measured"
        if estimated:
            text += f" / {human_bytes(estimated)} estimated ({_ratio(measured, estimated)})"
        return text

    where = f" ({m['estimate_precision']})" if m.get("estimate_precision") else ""
    by = f"; peak by {m['peak_measured_by']}" if m.get("peak_measured_by") else ""
    lines.append(f"{'':<14}memory as run{where}: model state "
                 f"{pair(m.get('model_state_bytes'), m.get('model_state_estimated_bytes'))}; peak "
                 f"{pair(m.get('peak_measured_bytes'), m.get('peak_estimated_bytes'))}{by}")
    return lines


def format_plan(plan: dict) -> str:
    """A fixed-width table of the plan for the terminal."""
    head = (f"{'stage':<14}{'layers':>7}{'trainable':>11}{'frozen':>9}{'adapter':>9}{'tokens':>9}"
            f"{'FLOPs 6ND':>12}{'FLOPs exact':>13}{'attn':>9}{'cum exact':>11}"
            f"{'state':>11}{'act':>11}{'peak':>11}{'peak ckpt':>11}")
    prec = plan.get("memory_precision") or {"name": "bf16-mixed", "summary": "bf16 + fp32 Adam"}
    lines = [f"plan for {plan['run']} (micro-batch {plan['micro_batch_size']} × seq "
             f"{plan['seq_len']}; FLOPs forward+backward; memory estimated in {prec['name']}: "
             f"{prec['summary']})", head]

    def row(name: str, e: dict, cum: str) -> str:
        p, f, mem = e["params"], e["flops"], e["memory"]
        return (f"{name[:13]:<14}{e['model']['n_layers']:>7}{human_count(p['trainable']):>11}"
                f"{human_count(p['frozen']):>9}{human_count(p['adapter']):>9}"
                f"{human_count(e['tokens']):>9}{f['6nd']:>12.3g}{f['exact']:>13.3g}"
                f"{f['attention']:>9.2g}{cum:>11}{human_bytes(mem['model_state_bytes']):>11}"
                f"{human_bytes(mem['activation_bytes']):>11}"
                f"{human_bytes(mem['total_bytes']):>11}"
                f"{human_bytes(mem['total_bytes_checkpointed']):>11}")

    for e in plan["stages"]:
        lines.append(row(e["name"], e, f"{e['cumulative_flops']['exact']:.3g}"))
        g = e.get("growth_phase")
        if g:
            lines.append(f"{'  learn maps':<14}{g['steps']:>7} steps of the stage train "
                         f"{human_count(g['map_params'])} map parameters: {g['flops']['exact']:.3g} FLOPs "
                         f"exact, peak {human_bytes(g['memory']['total_bytes'])} (included above)")
        if e.get("measured"):
            lines += _measured_lines(e["measured"])
    t, b, c = plan["total"], plan["baseline"], plan["comparison"]
    lines.append(f"{'total':<14}{'':>36}{human_count(t['tokens']):>9}{t['flops']['6nd']:>12.3g}"
                 f"{t['flops']['exact']:>13.3g}{t['flops']['attention']:>9.2g}"
                 f"{'':>33}{human_bytes(t['peak_bytes']):>11}{human_bytes(t['peak_bytes_checkpointed']):>11}")
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
        f"{c['flops_ratio_6nd']:.3f}× (6·N·D formula)")
    lines.append("memory: 'state' = weights, gradients and optimizer state; 'act' = activations kept "
                 "for the backward when the forward ends; 'peak' = the step's estimated peak (the "
                 "largest moment of loss, backward and optimizer step, not state + act), 'peak ckpt' "
                 "with activation checkpointing")
    if any(e.get("measured") for e in plan["stages"]):
        lines.append("memory as run: model state = the live bytes of weights, gradients and optimizer "
                     "state; peak = the largest peak of live bytes over the probed steps, activations "
                     "included ('-' where not measured); each beside the run's own estimate for its "
                     "device and precision (measured/estimated in brackets)")
    lines += [f"note: {n}" for n in plan.get("notes", [])]
    lines += [f"note: stage.1.init: [model] sets {o['field']} = {o['recipe']!r}; the init source has "
              f"{o['source']!r} (a deliberate override)" for o in plan.get("init_overrides", [])]
    return "\n".join(lines)
