"""Resolve a recipe's `[[stage]]` list into concrete per-stage settings.

Each stage gets its model shape (from explicit overrides or from the growth op applied to
the previous stage), its length in optimizer steps, its LR schedule horizon and its
optimizer settings. The trainer and the planner read only these resolved stages.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass

from pydantic import ValidationError

from growlm.errors import GrowlmError
from growlm.grow.checks import DEPTH_OPS, WIDTH_OPS
from growlm.model.config import SHAPE_FIELDS as SHAPE_KEYS
from growlm.model.config import ModelConfig


@dataclass(frozen=True)
class ResolvedStage:
    index: int  # 0-based position in the list; users see `number` (1-based)
    name: str
    model: ModelConfig
    steps: int
    schedule_steps: int  # LR horizon (≥ steps): STEP/Gstack grow before the schedule ends
    lr: float
    warmup_steps: int
    min_lr_ratio: float
    schedule: str
    optimizer: str
    spec: object  # the StageConfig it came from

    reset_every: int | None = None  # ReLoRA merges (and LR re-warms) every this many steps
    rewarmup_steps: int = 0
    _tokens_per_step: int = 0

    @property
    def number(self) -> int:
        """The stage's number as users see it: 1 for the first stage."""
        return self.index + 1

    @property
    def where(self) -> str:
        return f"stage.{self.number}"

    @property
    def tokens(self) -> int:
        return self.steps * self._tokens_per_step

    def lr_factor(self, step: int) -> float:
        """Multiplier of the peak LR at 0-based stage step `step` (growlm.optim.schedule)."""
        return self.schedule_fn(step)

    @property
    def schedule_fn(self):
        from growlm.optim.schedule import lr_schedule

        return lr_schedule(self.schedule, warmup=self.warmup_steps, horizon=self.schedule_steps,
                           min_ratio=self.min_lr_ratio, reset_every=self.reset_every,
                           rewarmup=self.rewarmup_steps)


def _grown_shape(prev: ModelConfig, base: ModelConfig, spec, where: str) -> dict:
    """The shape fields a growth op produces from `prev` (before explicit overrides)."""
    g = spec.grow
    n = prev.n_layers
    shape: dict = {}
    if g.op in DEPTH_OPS:
        if g.op in ("stack", "duplicate", "learn"):
            if g.sources is not None:
                if g.op != "stack":
                    raise GrowlmError(f"{where}.grow.sources: only 'stack' takes a source list")
                bad = [i for i in g.sources if not 0 <= i < n]
                if bad:
                    raise GrowlmError(
                        f"{where}.grow.sources: indices {bad} out of range for a {n}-layer source (0..{n - 1})"
                    )
                shape["n_layers"] = len(g.sources)
            elif g.factor is not None:
                shape["n_layers"] = n * g.factor
            elif spec.n_layers is None:
                raise GrowlmError(f"{where}.grow: '{g.op}' needs factor, sources or the stage's n_layers")
        else:
            if g.add is not None:
                shape["n_layers"] = n + g.add
            elif spec.n_layers is None:
                raise GrowlmError(f"{where}.grow: '{g.op}' needs add or the stage's n_layers")
        if n == 0 and g.op in ("stack", "duplicate", "interpolate", "learn"):
            raise GrowlmError(f"{where}.grow: '{g.op}' needs a source with at least one layer")
    elif g.op in WIDTH_OPS:
        for key in ("d_model", "ffn_dim", "n_heads", "n_kv_heads"):
            value = getattr(g, key)
            if value is not None:
                shape[key] = value
        if g.factor is not None:
            shape.setdefault("d_model", prev.d_model * g.factor)
            shape.setdefault("ffn_dim", prev.hidden_dim * g.factor)
            shape.setdefault("n_heads", prev.n_heads * g.factor)
            if prev.n_kv_heads is not None:
                shape.setdefault("n_kv_heads", prev.n_kv_heads * g.factor)
        if not shape and spec.d_model is None:
            raise GrowlmError(f"{where}.grow: '{g.op}' needs d_model or factor")
    elif g.op == "reuse":
        # a fresh deep model of the final shape; only embeddings/head (and layer-0 parts) carry over
        shape = {k: getattr(base, k) for k in SHAPE_KEYS}
        shape["ffn_dim"] = base.ffn_dim
    return shape


def _auto_tokens(spec, next_spec, base: ModelConfig, where: str) -> int:
    """Gstack's growth timing: how long to train the small model before stacking it."""
    if next_spec is None or next_spec.grow is None or next_spec.grow.op != "stack":
        raise GrowlmError(f"{where}.tokens: 'auto' is Gstack's growth timing and needs the next stage to stack")
    if spec.schedule_tokens is None:
        raise GrowlmError(f"{where}.tokens: 'auto' needs schedule_tokens (the whole run's token budget D)")
    from growlm.plan.gstack import gstack_timing

    timing = gstack_timing(base.params_total, spec.schedule_tokens)
    if timing.get("warning"):
        warnings.warn(f"{where}: Gstack timing: {timing['warning']}", stacklevel=3)
    return timing["growth_tokens"]


def _stage_length(spec, tokens_per_step: int, where: str, auto_tokens: int | None = None) -> tuple[int, int]:
    if spec.steps is not None and spec.tokens is not None:
        raise GrowlmError(f"{where}: set tokens or steps, not both")
    if spec.steps is not None:
        steps = spec.steps
    elif spec.tokens == "auto":
        steps = math.ceil(auto_tokens / tokens_per_step)
    elif spec.tokens is not None:
        steps = math.ceil(spec.tokens / tokens_per_step)
    else:
        raise GrowlmError(f"{where}: set the stage length with tokens or steps")
    if spec.schedule_steps is not None:
        horizon = spec.schedule_steps
    elif spec.schedule_tokens is not None:
        horizon = math.ceil(spec.schedule_tokens / tokens_per_step)
    else:
        horizon = steps
    if horizon < steps:
        raise GrowlmError(f"{where}: the schedule horizon ({horizon} steps) is shorter than the stage ({steps} steps)")
    return steps, horizon


def _check_init_shape(init: str, model: ModelConfig, where: str) -> None:
    """A stage that starts from `init` without growing must have the source's shape."""
    from growlm.grow.common import expected_shapes
    from growlm.init_source import init_config

    src = init_config(init, f"{where}.init")
    if expected_shapes(src) != expected_shapes(model):
        diff = [f"{k} {getattr(src, k)} vs {getattr(model, k)}"
                for k in ("vocab_size", *SHAPE_KEYS, "tie_embeddings") if getattr(src, k) != getattr(model, k)]
        raise GrowlmError(f"{where}.init: {init} has another shape than the stage "
                          f"({', '.join(diff) or 'parameter shapes differ'}); grow it with a grow op or "
                          "give the stage the source's shape")


def _check_growth_phase(spec, steps: int, where: str) -> None:
    """A learning phase (learn ops) or mask ramp (mask_steps) runs inside the stage's steps."""
    from growlm.grow.checks import LEARN_OPS

    g = spec.grow
    if g.op in LEARN_OPS:
        if g.learn_steps > steps:
            raise GrowlmError(f"{where}.grow.learn_steps: the learning phase ({g.learn_steps} steps) is "
                              f"longer than the stage ({steps} steps); it runs inside the stage's steps")
        if spec.adapters is not None:
            raise GrowlmError(f"{where}.adapters: '{g.op}' trains its growth maps on the plain model; "
                              "adapters cannot be combined with it (remove adapters, or grow with another op)")
    if g.mask_steps is not None and g.mask_steps > steps:
        raise GrowlmError(f"{where}.grow.mask_steps: the mask ramp ({g.mask_steps} steps) is longer than "
                          f"the stage ({steps} steps); the masks must reach 1 within the stage")


def _adapter_schedule(spec, steps: int, where: str) -> tuple[int | None, int]:
    """(reset interval, re-warmup steps) of a stage's adapters; refuses settings that would be
    ignored (plain LoRA never merges, so it has no reset interval)."""
    if spec is None:
        return None, 0
    if spec.kind == "lora":
        for key in ("reset_every", "rewarmup_steps", "optimizer_reset", "prune_ratio"):
            if key in spec.model_fields_set:
                raise GrowlmError(f"{where}.adapters.{key}: plain LoRA never merges or resets; use "
                                  "kind = \"relora\" for periodic merges, or remove the key")
        return None, 0
    from growlm.adapters.relora import check_relora, reset_interval

    try:
        check_relora(spec, steps)
    except GrowlmError as e:
        raise GrowlmError(f"{where}.{e}") from None
    return reset_interval(spec), spec.rewarmup_steps


def resolve_stages(cfg, source: str = "recipe") -> list[ResolvedStage]:
    """Validate the stage list against the final `[model]` shape and return resolved stages."""
    base: ModelConfig = cfg.model
    tokens_per_step = cfg.train.global_batch_tokens
    seq_len = cfg.data.seq_len
    if tokens_per_step % seq_len:
        raise GrowlmError(
            f"{source}: train.global_batch_tokens ({tokens_per_step}) must be a multiple of data.seq_len ({seq_len})"
        )
    if seq_len > base.max_seq_len:
        raise GrowlmError(
            f"{source}: data.seq_len ({seq_len}) is larger than model.max_seq_len ({base.max_seq_len})"
        )
    resolved: list[ResolvedStage] = []
    prev: ModelConfig | None = None
    settings = {k: v for k, v in base.model_dump().items() if k not in SHAPE_KEYS}
    for i, spec in enumerate(cfg.stage):
        where = f"{source}: stage.{i + 1}"
        if i > 0 and spec.init is not None:
            raise GrowlmError(f"{where}.init: only the first stage can start from an init source; "
                              "later stages start from the stage before them")
        overrides = {k: getattr(spec, k) for k in SHAPE_KEYS if getattr(spec, k) is not None}
        if spec.grow is not None:
            if prev is None and spec.init is not None:
                from growlm.init_source import init_config

                src = init_config(spec.init, f"{where}.init")
                prev = src.with_(**{k: v for k, v in settings.items() if k != "vocab_size"})
            if prev is None:
                raise GrowlmError(f"{where}.grow: the first stage has nothing to grow from (use init = ... to start from a checkpoint)")
            shape = {**_grown_shape(prev, base, spec, where), **overrides}
            fields = {**prev.model_dump(), **shape}
            if spec.grow.op in DEPTH_OPS and fields["n_layers"] <= prev.n_layers:
                raise GrowlmError(
                    f"{where}.grow: '{spec.grow.op}' must add layers, but {prev.n_layers} → {fields['n_layers']}"
                )
        elif prev is None:
            fields = {**base.model_dump(), **overrides}
        else:
            changed = {k: v for k, v in overrides.items() if getattr(prev, k) != v}
            if changed:
                raise GrowlmError(f"{where}: changes the shape ({', '.join(changed)}) without a grow op")
            fields = prev.model_dump()
        try:
            model = ModelConfig(**fields)
        except ValidationError as e:  # keep it one line
            msg = e.errors()[0]["msg"]
            raise GrowlmError(f"{where}: impossible shape: {msg.removeprefix('Value error, ')}") from None
        if spec.grow is not None:
            from growlm.grow import check_growth

            check_growth(prev, model, spec.grow, where)
        if spec.init is not None and spec.grow is None:
            _check_init_shape(spec.init, model, where)
        auto = None
        if spec.tokens == "auto":
            nxt = cfg.stage[i + 1] if i + 1 < len(cfg.stage) else None
            auto = _auto_tokens(spec, nxt, base, where)
        steps, horizon = _stage_length(spec, tokens_per_step, where, auto)
        if spec.grow is not None:
            _check_growth_phase(spec, steps, where)
        reset_every, rewarmup = _adapter_schedule(spec.adapters, steps, where)
        stage = ResolvedStage(
            index=i,
            name=spec.name or f"stage{i + 1}",
            model=model,
            steps=steps,
            schedule_steps=horizon,
            lr=spec.lr or cfg.optim.lr,
            warmup_steps=cfg.schedule.warmup_steps if spec.warmup_steps is None else spec.warmup_steps,
            min_lr_ratio=cfg.schedule.min_lr_ratio if spec.min_lr_ratio is None else spec.min_lr_ratio,
            schedule=spec.schedule or cfg.schedule.kind,
            optimizer=spec.optimizer or cfg.optim.name,
            spec=spec,
            reset_every=reset_every,
            rewarmup_steps=rewarmup,
            _tokens_per_step=tokens_per_step,
        )
        try:
            stage.schedule_fn  # noqa: B018 — builds (and so checks) the LR schedule
        except GrowlmError as e:
            raise GrowlmError(f"{where}.{e}") from None
        resolved.append(stage)
        prev = model
    final = resolved[-1].model
    mismatch = [k for k in SHAPE_KEYS if getattr(final, k) != getattr(base, k)]
    if mismatch:
        detail = ", ".join(f"{k} {getattr(final, k)} vs {getattr(base, k)}" for k in mismatch)
        raise GrowlmError(f"{source}: the last stage's shape does not match [model] ({detail})")
    names = [s.name for s in resolved]
    if len(set(names)) != len(names):
        raise GrowlmError(f"{source}: stage names must be unique, got {names}")
    return resolved


def recipe_notes(cfg, stages: list[ResolvedStage]) -> list[str]:
    """Things a recipe does that its author may not expect; printed before a run starts and by
    `growlm plan` (none of them is an error)."""
    notes = []
    per_step = cfg.train.global_batch_tokens
    for stage, spec in ((s, s.spec) for s in stages):
        if isinstance(spec.tokens, int) and spec.tokens % per_step:
            notes.append(f"{stage.where}.tokens: {spec.tokens:,} is not a whole number of steps of "
                         f"{per_step:,} tokens; the stage runs {stage.steps:,} step{'s' if stage.steps != 1 else ''} = "
                         f"{stage.tokens:,} tokens")
        if stage.warmup_steps >= stage.steps:
            notes.append(f"{stage.where}: warmup ({stage.warmup_steps} steps) is not shorter than the "
                         f"stage ({stage.steps} steps), so the LR never reaches its peak {stage.lr:g}")
    return notes
