"""The stage boundary: entering a stage from the previous one's hand-off, and leaving it.

    handoff = None                                     # before the first stage
    for stage in stages:
        built = enter_stage(cfg, stage, handoff, ...)  # grow → load → freeze → adapters → optimizer
        ...train built.model with built.optimizer...
        handoff = leave_stage(built, next_stage, ...)  # merge adapters → plain weights + moments

`HandOff` is all that crosses a boundary; the boundary checkpoint is a HandOff on disk. The
first stage starts from nothing (fresh weights) or from its `init` source.

The same code runs on the meta device, where it allocates nothing and takes no time:
`check_recipe` builds every stage of a recipe that way before the first step (shapes, growth,
freeze selection, adapter ranks and targets, optimizer and state mapping, something left to
train), and the planner accounts from those builds (`stage_accounting`), so planner and
trainer never hold two copies of the boundary rule.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch
from torch import nn

from growlm.errors import GrowlmError
from growlm.grow import provenance as prov
from growlm.model.config import ModelConfig
from growlm.model.llama import Transformer

META = torch.device("meta")


@dataclass
class HandOff:
    """What a finished stage passes on: its shape, its plain weights (adapters merged, CPU),
    the optimizer state by parameter name (only when the next stage maps it) and the kind of
    optimizer that made that state."""

    model: ModelConfig
    state: dict[str, torch.Tensor]
    moments: dict[str, dict] = field(default_factory=dict)
    optimizer: str = "adamw"


@dataclass
class BuiltStage:
    """A stage ready to train: its model (sharded/placed), optimizer and ReLoRA controller."""

    stage: object  # growlm.stages.ResolvedStage
    model: nn.Module
    provenance: dict
    frozen: set[str]
    adapters: list[str]  # module names of the linears that carry a LoRA adapter
    optimizer: torch.optim.Optimizer
    relora: object | None = None
    opt_state: str = "reset"  # "reset", "mapped (N tensors)" or "restored"
    module: nn.Module | None = None  # what the train step calls (DDP / compiled wrapper)
    growth: object | None = None  # a running growth phase (growlm.train.growth), else None

    @property
    def trainable(self) -> list[nn.Parameter]:
        return [p for p in self.model.parameters() if p.requires_grad]

    def adapter_info(self) -> dict | None:
        if not self.adapters:
            return None
        from growlm.adapters.lora import adapter_scale

        a = self.stage.spec.adapters
        return {"scale": adapter_scale(a), "rank": a.rank, "kind": a.kind}


def stage_seed(run_seed: int, stage_index: int) -> int:
    """The seed of a stage's fresh weights and adapter initialisation (its own generator, so a
    rebuilt stage draws the same values and the global RNG is left alone)."""
    return run_seed * 1009 + stage_index


@contextlib.contextmanager
def at(where: str):
    """Prefix GrowlmErrors raised inside with `where` (e.g. "recipe.toml: stage.3")."""
    try:
        yield
    except GrowlmError as e:
        text = str(e)
        raise GrowlmError(text if text.startswith(where) else f"{where}.{text}") from None


def new_model(cfg: ModelConfig, seed: int | None, device: torch.device | str = "cpu") -> Transformer:
    """A model of shape `cfg`: freshly initialised from its own generator seeded `seed`, or on
    the meta device (shapes only, nothing allocated) when `device` is meta."""
    with torch.device("meta"):
        model = Transformer(cfg)
    if torch.device(device).type == "meta":
        return model
    model.to_empty(device="cpu")
    if cfg.tie_embeddings:
        model.lm_head.weight = model.embed_tokens.weight
    model.init_weights(generator=torch.Generator().manual_seed(seed))
    return model.to(device)


def _initial_weights(cfg, stage, handoff: HandOff | None, model: Transformer, meta: bool):
    """(weights, provenance, source) the stage starts from: fresh, the init source, or grown
    from the previous stage (growlm.grow: a pure function of the old state and the fresh one).
    `source` is (old shape, old state, growth maps or None) when the stage grows, else None."""
    spec, where = stage.spec, f"{cfg.source}: {stage.where}"
    fresh = model.state_dict()
    if handoff is None and spec.init is not None:
        with at(f"{where}"):
            if meta:
                from growlm.init_source import init_config

                src_cfg = init_config(spec.init, "init")
                src = new_model(src_cfg, None, META).state_dict()
            else:
                from growlm.init_source import load_init

                src_cfg, src = load_init(spec.init, "init")
        if spec.grow is None:
            return src, {n: prov.copied(n) for n in fresh}, None
        handoff = HandOff(src_cfg.with_(**_settings(stage.model, src_cfg)), src)
    if handoff is None:
        return fresh, {n: prov.new() for n in fresh}, None
    if spec.grow is None:
        return handoff.state, {n: prov.copied(n) for n in fresh}, None
    from growlm.grow import check_growth, grow
    from growlm.grow.checks import LEARN_OPS

    maps = None
    with at(where):
        if spec.grow.op in LEARN_OPS:
            from growlm.grow.ligo import init_maps

            check_growth(handoff.model, stage.model, spec.grow)
            # the maps' random rows: the stage's seed, a stream of their own
            gen = None if meta else torch.Generator().manual_seed(stage_seed(cfg.run.seed, stage.index) + 2**33)
            maps = init_maps(handoff.model, stage.model, spec.grow, generator=gen, device=META if meta else "cpu")
        state, provenance = grow(handoff.state, handoff.model, stage.model, spec.grow, fresh=fresh, maps=maps)
    return state, provenance, (handoff.model, handoff.state, maps)


def _settings(model: ModelConfig, src: ModelConfig) -> dict:
    """The run's non-shape settings (config-time inheritance already merged the source's)."""
    from growlm.model.config import SHAPE_FIELDS

    return {k: v for k, v in model.model_dump().items()
            if k not in SHAPE_FIELDS and k != "vocab_size" and getattr(src, k) != v}


def _freeze_and_adapt(cfg, stage, model: nn.Module, provenance: dict, seed: int, meta: bool):
    from growlm.freeze import apply_freeze, check_trainable, select_frozen

    spec, where = stage.spec, f"{cfg.source}: {stage.where}"
    names = [n for n, _ in model.named_parameters(remove_duplicate=False)]
    frozen = select_frozen(names, spec.freeze, provenance, where=f"{where}.freeze") if spec.freeze else set()
    apply_freeze(model, frozen, where=f"{where}.freeze")
    adapters: list[str] = []
    if spec.adapters is not None:
        from growlm.adapters.lora import adapter_scale, apply_adapters

        with at(where):
            adapter_scale(spec.adapters)
            gen = None if meta else torch.Generator().manual_seed(seed)
            adapters = apply_adapters(model, spec.adapters, frozen, generator=gen)
    check_trainable(model, f"{where}.freeze")
    return frozen, adapters


def _build(cfg, stage, model: Transformer, provenance: dict, parallel, device,
           weights: dict | None = None) -> BuiltStage:
    """Freeze, adapters, placement and the optimizer around a model holding its weights
    (`weights`, when given, are loaded after the adapters exist and before sharding)."""
    from growlm.optim.build import build_optimizer

    meta = torch.device(device).type == "meta"
    seed = stage_seed(cfg.run.seed, stage.index)
    frozen, adapters = _freeze_and_adapt(cfg, stage, model, provenance, seed, meta)
    if weights is not None:
        _load(model, weights, f"{cfg.source}: {stage.where}")
    if parallel is not None:
        model = parallel.shard(model)
    model.train()
    with at(f"{cfg.source}: {stage.where}.optimizer"):
        opt = build_optimizer(model, cfg.optim, stage.optimizer, stage.lr, device)
    relora = None
    if stage.spec.adapters is not None and stage.spec.adapters.kind == "relora":
        from growlm.adapters.relora import ReLoRA

        cls = parallel.relora_class() if parallel is not None else ReLoRA
        relora = cls(model, opt, stage.spec.adapters, stage_steps=stage.steps, seed=seed)
    return BuiltStage(stage, model, provenance, frozen, adapters, opt, relora)


def enter_stage(cfg, stage, handoff: HandOff | None, previous=None, *, parallel=None,
                device: torch.device | str = "cpu") -> BuiltStage:
    """Build `stage` from the previous stage's hand-off (None: from fresh weights or the
    stage's init source): grow → load → freeze → adapters → optimizer, with the optimizer state
    reset or mapped from `handoff.moments`. `previous` is the previous ResolvedStage (for the
    optimizer-state check). On the meta device nothing is allocated or loaded.

    Raises GrowlmError naming the recipe key at fault, e.g. "recipe.toml: stage.3.adapters.rank".
    """
    meta = torch.device(device).type == "meta"
    seed = stage_seed(cfg.run.seed, stage.index)
    model = new_model(stage.model, seed, META if meta else "cpu")
    state, provenance, source = _initial_weights(cfg, stage, handoff, model, meta)
    if not meta:
        _load(model, state, f"{cfg.source}: {stage.where}")
    if stage.spec.optimizer_state == "map":
        from growlm.optim.build import check_mappable

        with at(f"{cfg.source}: {stage.where}"):
            if previous is None:
                raise GrowlmError("optimizer_state: 'map' needs a previous stage whose optimizer "
                                  "state to carry; the first stage has none (use \"reset\")")
            check_mappable(previous.optimizer, stage.optimizer)
    built = _build(cfg, stage, model, provenance, parallel, device)
    if stage.spec.optimizer_state == "map" and handoff is not None and handoff.moments:
        from growlm.optim.build import map_moments

        slices = None
        if spec_op(stage) in ("zero", "width_random") and source is not None:
            from growlm.grow.width import inplace_positions

            slices = inplace_positions(source[0], stage.model)  # MSG: the old slice keeps its moments
        n = map_moments(built.optimizer, built.model, handoff.moments, provenance, slices)
        built.opt_state = f"mapped ({n} tensors)"
    if source is not None:
        from growlm.train.growth import make_phase

        old, small, maps = source
        with at(f"{cfg.source}: {stage.where}"):
            built.growth = make_phase(cfg, stage, built, old, small, maps, device)
    return built


def spec_op(stage) -> str | None:
    return stage.spec.grow.op if stage.spec.grow is not None else None


def rebuild_stage(cfg, stage, provenance: dict, weights: dict | None = None, *, parallel=None,
                  device: torch.device | str = "cpu") -> BuiltStage:
    """The structure of `stage` as a checkpoint of it was saved (same frozen set and adapters,
    from its recorded provenance), holding `weights` (adapters included). Without weights (a
    sharded checkpoint, loaded after sharding) the caller loads them; it always loads the
    optimizer state (growlm.train.manager.CheckpointManager.restore_stage)."""
    seed = stage_seed(cfg.run.seed, stage.index)
    model = new_model(stage.model, seed, device if torch.device(device).type == "meta" else "cpu")
    return _build(cfg, stage, model, provenance, parallel, device, weights)


def _load(model: nn.Module, state: dict, where: str) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[0][:200]
        raise GrowlmError(f"{where}: the starting weights do not fit the stage's model ({first})") from None


def leave_stage(built: BuiltStage, next_stage, parallel=None) -> HandOff:
    """Merge adapters into their weights and hand the plain state on; keep the optimizer state
    by parameter name when `next_stage` maps it (optimizer_state = "map")."""
    from growlm.optim.build import named_moments

    if parallel is not None:  # FSDP: an eval's forward left the root gathered
        parallel.reshard(built.model)
    if built.adapters:
        from growlm.adapters.lora import unwrap_adapters

        unwrap_adapters(built.model)
    maps = next_stage is not None and next_stage.spec.optimizer_state == "map"
    moments = named_moments(built.optimizer, built.model) if maps else {}
    if parallel is not None:
        state = parallel.plain_state(built.model)
        if parallel.sharded:
            moments = parallel.dist.full_tree(moments)
    else:
        state = {k: v.detach().to("cpu", copy=True) for k, v in built.model.state_dict().items()}
    return HandOff(built.stage.model, state, moments, built.stage.optimizer)


# ---------------------------------------------------------------- the whole recipe, on meta

def check_recipe(cfg, stages=None) -> list[BuiltStage]:
    """Build every stage of `cfg` on the meta device, in order, through the same boundary the
    trainer uses; the first problem is a GrowlmError naming the stage and key."""
    from growlm.stages import resolve_stages

    stages = stages or resolve_stages(cfg, cfg.source)
    built, handoff, previous = [], None, None
    for stage in stages:
        b = enter_stage(cfg, stage, handoff, previous, device=META)
        built.append(b)
        handoff = HandOff(stage.model, new_model(stage.model, None, META).state_dict(),
                          optimizer=stage.optimizer)
        previous = stage
    return built


def adapter_params_by_linear(model: nn.Module) -> dict[str, int]:
    """Adapter parameters per adapted linear (module name → r·(in + out))."""
    from growlm.adapters.lora import adapter_modules

    return {name: m.lora_A.numel() + m.lora_B.numel() for name, m in adapter_modules(model).items()}


def accumulation_steps(cfg, world_size: int = 1) -> int:
    """Micro-batches per optimizer step on each rank (at least 1)."""
    seqs = cfg.train.global_batch_tokens // cfg.data.seq_len
    return max(1, seqs // (cfg.train.micro_batch_size * world_size))


def stage_memory(built: BuiltStage, cfg, precision=None, *, device_type: str = "cpu",
                 world_size: int = 1, checkpointing: bool | None = None):
    """growlm.plan.memory.estimate_peak for a built stage as `cfg` runs it: its frozen set,
    adapters, optimizer, micro-batch, accumulation and loss implementation on `device_type`
    (fp32 on CPU, bf16 autocast on CUDA), in `precision` (default: the device's) and with
    `checkpointing` (default: run.activation_checkpointing)."""
    from growlm.model.loss import choose_loss_impl
    from growlm.plan.memory import estimate_peak
    from growlm.plan.precision import run_precision

    cuda = device_type == "cuda"
    prec = precision or run_precision(device_type)
    plain_head = type(built.model.lm_head) is nn.Linear
    impl = choose_loss_impl(device_type, plain_head=plain_head, fp32=not cuda and prec.activation == 4)
    galore = [g["rank"] for g in built.optimizer.param_groups if g.get("rank") is not None]
    return estimate_peak(
        built.stage.model, built.frozen, adapter_params_by_linear(built.model),
        cfg.train.micro_batch_size, cfg.data.seq_len, precision=prec, loss_impl=impl,
        optimizer="galore" if galore else "adamw", galore_rank=galore[0] if galore else None,
        checkpointing=cfg.run.activation_checkpointing if checkpointing is None else checkpointing,
        accumulation=accumulation_steps(cfg, world_size))


def stage_accounting(built: BuiltStage, cfg, *, device_type: str = "cpu", world_size: int = 1) -> dict:
    """Parameters, FLOPs per token and estimated memory of a built stage, as the trainer logs
    them (growlm.plan.flops, growlm.plan.memory); memory for the run on `device_type`."""
    from growlm.plan.flops import count_flops

    adapters = adapter_params_by_linear(built.model)
    seen, trainable, frozen = set(), 0, 0
    for name, p in built.model.named_parameters():
        if id(p) in seen or ".lora_" in name:
            continue
        seen.add(id(p))
        if p.requires_grad:
            trainable += p.numel()
        else:
            frozen += p.numel()
    n_adapter = sum(adapters.values())
    fc = count_flops(built.stage.model, built.frozen, adapters, cfg.data.seq_len)
    est = stage_memory(built, cfg, device_type=device_type, world_size=world_size)
    acct = {
        "params": {"trainable": trainable, "frozen": frozen, "adapter": n_adapter,
                   "total": trainable + frozen + n_adapter},
        "flops_per_token": {"6nd": int(fc.six_nd), "exact": int(fc.exact_total),
                            "attention": int(fc.attention)},
        "memory": {"model_state_estimated_bytes": est.model_state,
                   "activation_estimated_bytes": est.activations,
                   "peak_estimated_bytes": est.peak, "estimate_precision": est.precision},
    }
    if getattr(built.growth, "kind", None) == "learn":
        # the learning phase's own costs (growlm.train.growth); the stage's peak is the larger
        from growlm.plan.precision import PRECISIONS

        learn = built.growth.accounting(cfg, PRECISIONS[est.precision])
        acct["growth_phase"] = learn
        acct["memory"]["peak_estimated_bytes"] = max(est.peak, learn["memory"]["peak_estimated_bytes"])
    return acct
