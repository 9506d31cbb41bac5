"""Recipes: typed run configuration, TOML loading, dotted overrides and validation.

A recipe is one TOML file. `[model]` is the final shape; `[[stage]]` entries run in order
(a recipe without stages is one standard stage). Every mistake is reported as one line
naming the key, e.g. ``recipe.toml: stage.1.grow.op: Input should be 'stack', ...``. Every
number must be finite and inside its documented range. Stages are numbered from 1 in every
message, as in `--set stage.2.lr=...`.

When the first stage starts from an `init` source, the source's model settings that are not
shapes (RoPE base, norm eps, context length, tying, ...) are inherited by `[model]` unless the
recipe sets them; a value the recipe sets that differs from the source's is kept and reported
as a deliberate override (`RunConfig.init_overrides`).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import ConfigDict, Field, PrivateAttr, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from growlm.errors import GrowlmError
from growlm.grow.checks import GROW_OPS
from growlm.model.config import ModelConfig, Settings
from growlm.recipe_library import resolve_recipe
from growlm.units import parse_bytes, parse_count

MAX_SEED = 2**32 - 1  # numpy's and torch's generators both take it; stage seeds derive from it
# Largest learning rate accepted. Adam's first update is lr / (1 - beta1) per weight; far above
# any useful LR (pretraining uses ~1e-4..1e-2), it keeps that update inside fp32's range for
# every beta1 < 1, so a diverging run meets the non-finite policy instead of an overflow in torch.
MAX_LR = 1e3

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class _Strict(Settings):
    # inf and nan are never a setting: refuse them in every float of every section
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class RunSection(_Strict):
    name: str = "run"
    out_dir: str | None = None  # default: runs/<name>
    seed: int = Field(0, ge=0, le=MAX_SEED)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compile: bool = False
    log_every: int = Field(10, gt=0)
    # steps between validation losses; 0 = only at the end of each stage; "auto" = about 20
    # points over the whole run
    eval_every: int | Literal["auto"] = Field("auto", union_mode="left_to_right")
    eval_tokens: int = Field(65536, gt=0)  # validation tokens per evaluation
    ckpt_every: int = Field(0, ge=0)  # steps; 0 = only at stage ends
    keep_last: int = Field(2, ge=1)
    disk_budget: int | None = None  # bytes ("20GiB"): warn before training if checkpoints may not fit
    tensorboard: bool = False
    wandb: bool = False
    # wandb: where the run goes and how it is labelled (docs/metrics.md); the recipe is sent as
    # the run's config, and a resumed run continues the same wandb run
    wandb_project: str = "growlm"
    wandb_entity: str | None = None
    wandb_name: str | None = None  # default: run.name
    wandb_group: str | None = None
    wandb_tags: list[str] = Field(default_factory=list)
    wandb_notes: str | None = None
    # Multi-process runs (torchrun): how the model is replicated or sharded across ranks.
    distributed: Literal["none", "ddp", "fsdp"] = "ddp"
    activation_checkpointing: bool = False  # recompute each block's activations in backward
    # Peak memory measured (growlm.memory_probe) over the first `memory_probe_steps` steps of
    # each stage (and of a resumed one) and every `memory_probe_every`-th step; 0 turns either
    # off. On CPU a probed step costs a garbage collection and the profiler's bookkeeping.
    memory_probe_steps: int = Field(2, ge=0)
    memory_probe_every: int = Field(0, ge=0)
    dist_timeout_s: int = Field(600, gt=0)  # a collective waiting longer than this fails the run

    @field_validator("name")
    @classmethod
    def _one_component(cls, v: str) -> str:
        if not v or v in (".", "..") or any(c in v for c in "/\\\x00"):
            raise ValueError("must be a single folder name (no '/', '\\', '..' or NUL), e.g. "
                             "'step-368m'; use run.out_dir for another location")
        return v

    @field_validator("out_dir")
    @classmethod
    def _no_nul(cls, v: str | None) -> str | None:
        if v is not None and ("\x00" in v or not v.strip()):
            raise ValueError("must be a non-empty path without NUL bytes")
        return v

    @field_validator("eval_every")
    @classmethod
    def _cadence(cls, v):
        if isinstance(v, int) and v < 0:
            raise ValueError("must be >= 0 (0: only at the end of each stage) or \"auto\"")
        return v

    @field_validator("disk_budget", mode="before")
    @classmethod
    def _bytes(cls, v: Any) -> Any:
        if v is None:
            return v
        try:
            n = parse_bytes(v, "disk_budget")
        except GrowlmError as e:
            raise ValueError(str(e)) from None
        if n <= 0:
            raise ValueError("must be positive")
        return n


class EvalSection(_Strict):
    """Benchmarks (growlm eval's tasks) scored on the model while it trains; results go to
    metrics.jsonl as "tasks" records."""

    # e.g. ["hellaswag", "wikitext", "wordsim"]; names are checked with the data files when the
    # run starts (growlm.eval.scheduled)
    tasks: list[str] = Field(default_factory=list)
    every: int = Field(0, ge=0)  # steps; 0 = only at the end of each stage
    limit: int | None = Field(None, gt=0)  # examples per task (WikiText: documents)
    batch_size: int = Field(32, gt=0)
    data_dir: str | None = None  # the eval data folder; default $GROWLM_DATA
    source: Literal["local", "hub"] = "local"  # zero-shot tasks: local files or hub datasets


class TrainSource(_Strict):
    """One prepared shard folder of a weighted training mix."""

    path: str = Field(min_length=1)
    weight: float = Field(gt=0, allow_inf_nan=False)


class DataSection(_Strict):
    # One shard folder, or a weighted mix: [{path = "a", weight = 0.9}, {path = "b", weight = 0.1}]
    train: str | list[TrainSource]
    val: str | None = None
    seq_len: int = Field(1024, gt=0)

    @field_validator("train", mode="wrap")
    @classmethod
    def _train(cls, v: Any, handler) -> Any:
        """Errors name the entry as users count it: data.train.2.weight is the second one."""
        if isinstance(v, str):
            return handler(v)
        if not isinstance(v, list) or not v:
            raise ValueError("give a shard folder, or a non-empty list of {path, weight} tables")
        sources, errors = [], []
        for i, item in enumerate(v, 1):
            try:
                sources.append(TrainSource.model_validate(item))
            except ValidationError as e:
                errors += [{"type": d["type"], "loc": (str(i), *d["loc"]), "input": d["input"],
                            **({"ctx": d["ctx"]} if "ctx" in d else {})} for d in e.errors()]
        paths = [s.path for s in sources] if not errors else []
        for i, path in enumerate(paths, 1):
            if paths.index(path) + 1 != i:
                message = f"the folder of data.train.{paths.index(path) + 1} again; list each source once"
                errors.append({"type": PydanticCustomError("duplicate_source", message),
                               "loc": (str(i), "path"), "input": path})
        if errors:
            raise ValidationError.from_exception_data("TrainSource", errors)
        return sources


class ScheduleSection(_Strict):
    kind: Literal["cosine", "linear", "constant"] = "cosine"
    warmup_steps: int = Field(100, ge=0)
    min_lr_ratio: float = Field(0.1, ge=0.0, le=1.0)


class GaloreSection(_Strict):
    rank: int = Field(128, gt=0)
    update_gap: int = Field(200, gt=0)
    scale: float = Field(0.25, gt=0)


Beta = Field(ge=0.0, lt=1.0)  # Adam's decay rates: [0, 1)


class OptimSection(_Strict):
    name: Literal["adamw", "galore"] = "adamw"
    lr: float = Field(3e-4, gt=0, le=MAX_LR)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    grad_clip: float = Field(1.0, ge=0)  # 0 disables clipping
    galore: GaloreSection = GaloreSection()

    @field_validator("betas")
    @classmethod
    def _betas(cls, v: tuple[float, float]) -> tuple[float, float]:
        bad = [b for b in v if not 0.0 <= b < 1.0]
        if bad:
            raise ValueError(f"each beta must be in [0, 1), got {bad[0]}")
        return v


class TrainSection(_Strict):
    global_batch_tokens: int = Field(8192, gt=0)
    micro_batch_size: int = Field(4, gt=0)
    # A non-finite loss or gradient: skip the step, reload the last checkpoint with a lower
    # LR ("rollback"), or stop the run.
    nonfinite: Literal["skip", "rollback", "stop"] = "skip"
    max_bad_steps: int = Field(10, gt=0)  # consecutive non-finite steps before stopping
    rollback_lr_factor: float = Field(0.5, gt=0, le=1)  # LR multiplier per rollback in a stage
    max_rollbacks: int = Field(3, gt=0)  # rollbacks within one stage before stopping


GrowOp = Literal[GROW_OPS]  # the one list lives with the operators (growlm.grow.checks)


class GrowSpec(_Strict):
    op: GrowOp
    add: int | None = Field(None, gt=0)  # depth ops that insert layers
    factor: int | None = Field(None, gt=1)  # stack / duplicate / width factor
    sources: list[int] | None = None  # partial stacking: explicit source layer per target
    # where interpolate/identity/random put new layers; "end": all above the old ones (MSG)
    position: Literal["even", "top", "end"] = "even"
    d_model: int | None = Field(None, gt=0)  # width target
    ffn_dim: int | None = Field(None, gt=0)
    n_heads: int | None = Field(None, gt=0)
    n_kv_heads: int | None = Field(None, gt=0)
    layer0: Literal["none", "attn", "ffn", "attn_ffn"] = "none"  # reuse: copy stage-1 layer 0 parts
    # learn / width_learn (Gstack's G_learn, LiGO): optimizer steps spent training the growth
    # maps at the start of the stage (part of the stage's steps), and their learning rate
    # (default: the stage's peak LR)
    learn_steps: int = Field(100, gt=0)
    learn_lr: float | None = Field(None, gt=0, le=MAX_LR)
    # random / width_random (Gstack's G_random with MSG's masks): steps over which the new
    # structures' mask ramps linearly from 0 to 1 (part of the stage's steps); unset: no mask
    mask_steps: int | None = Field(None, gt=0)


class AdapterSpec(_Strict):
    kind: Literal["lora", "relora"] = "relora"
    rank: int = Field(128, gt=0)
    alpha: float | None = Field(None, gt=0)  # default: scale 0.25 as in ReLoRA → alpha = rank/4
    scale: float | None = Field(None, gt=0)
    targets: list[str] = ["*.q_proj", "*.k_proj", "*.v_proj", "*.o_proj",
                          "*.gate_proj", "*.up_proj", "*.down_proj"]
    on: Literal["frozen", "all"] = "frozen"  # adapters sit on frozen linears (STEP) or all
    dropout: float = Field(0.0, ge=0, lt=1)
    reset_every: int | None = Field(None, gt=0)  # ReLoRA merge-and-reinit interval (steps)
    rewarmup_steps: int = Field(50, ge=0)
    optimizer_reset: Literal["prune", "random", "zero"] = "prune"
    prune_ratio: float = Field(0.99, ge=0, le=1)


class StageConfig(_Strict):
    name: str | None = None
    # Shape of this stage's model: overrides of [model]. Only the first stage (or a stage with
    # `grow`) may set them; a grown stage's shape otherwise follows from the op.
    n_layers: int | None = Field(None, ge=0)
    d_model: int | None = Field(None, gt=0)
    n_heads: int | None = Field(None, gt=0)
    n_kv_heads: int | None = Field(None, gt=0)
    ffn_dim: int | None = Field(None, gt=0)
    block: Literal["full", "attn_only"] | None = None
    grow: GrowSpec | None = None
    init: str | None = None  # external growlm checkpoint/run or HF model folder (Llama, Mistral, Qwen2, Qwen3)
    freeze: list[str] = []
    adapters: AdapterSpec | None = None
    # "auto": Gstack's growth timing rule, from the final model's size and `schedule_tokens`
    tokens: int | Literal["auto"] | None = None
    steps: int | None = Field(None, gt=0)
    schedule_tokens: int | None = None  # plan the LR schedule over a longer horizon than run
    schedule_steps: int | None = Field(None, gt=0)
    lr: float | None = Field(None, gt=0, le=MAX_LR)
    warmup_steps: int | None = Field(None, ge=0)
    min_lr_ratio: float | None = Field(None, ge=0, le=1)
    schedule: Literal["cosine", "linear", "constant"] | None = None
    optimizer: Literal["adamw", "galore"] | None = None
    data: Literal["continue", "restart"] = "continue"
    optimizer_state: Literal["reset", "map"] = "reset"

    @field_validator("tokens", "schedule_tokens", mode="before")
    @classmethod
    def _count(cls, v: Any) -> Any:
        if v is None or v == "auto":
            return v
        try:
            n = parse_count(v, "tokens")
        except GrowlmError as e:
            raise ValueError(str(e)) from None
        if n <= 0:
            raise ValueError("must be positive")
        return n


class RunConfig(_Strict):
    run: RunSection = RunSection()
    model: ModelConfig
    data: DataSection
    optim: OptimSection = OptimSection()
    schedule: ScheduleSection = ScheduleSection()
    train: TrainSection = TrainSection()
    eval: EvalSection = EvalSection()
    stage: list[StageConfig] = Field(default_factory=lambda: [StageConfig()], min_length=1)
    # where the recipe came from (for messages), and the [model] settings that deliberately
    # differ from the first stage's init source: [(field, source value, recipe value)]
    _source: str = PrivateAttr("recipe")
    _init_overrides: list = PrivateAttr(default_factory=list)

    @property
    def out_dir(self) -> Path:
        return Path(self.run.out_dir or f"runs/{self.run.name}")

    @property
    def source(self) -> str:
        return self._source

    @property
    def init_overrides(self) -> list[tuple[str, Any, Any]]:
        return list(self._init_overrides)


# ---------------------------------------------------------------- loading

def _format_error(source: str, err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in _stage_one_based(first["loc"])) or "(top level)"
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif "input" in first and first["type"] not in ("missing",) and not isinstance(
        first["input"], dict
    ):
        msg += f" (got {first['input']!r})"
    more = f" (+{len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{source}: {loc}: {msg}{more}"


UNSET = object()  # `--set key=null`: remove the key, so its default applies


def parse_override(item: str) -> tuple[list[str], Any]:
    """`optim.lr=3e-4` → (["optim", "lr"], 0.0003). Values are read as TOML, else as text;
    `null` removes the key (TOML has no null)."""
    if "=" not in item:
        raise GrowlmError(f"--set {item!r}: expected key=value")
    key, raw = item.split("=", 1)
    keys = key.strip().split(".")
    if not all(keys):
        raise GrowlmError(f"--set {item!r}: empty key")
    if raw.strip() in ("null", "none", "None"):
        return keys, UNSET
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            value = raw
    return keys, value


def _stage_index(item: str, k: str, stages: list) -> int:
    if not k.isdigit() or not 1 <= int(k) <= len(stages):
        raise GrowlmError(f"--set {item}: no stage {k} (the recipe has stages 1..{len(stages)})")
    return int(k) - 1


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Set dotted keys; `stage.N.key` addresses the N-th (1-based) stage."""
    for item in overrides:
        keys, value = parse_override(item)
        node: Any = data
        for i, k in enumerate(keys[:-1]):
            if isinstance(node, list):
                node = node[_stage_index(item, k, node)]
            else:
                if k == "stage" and "stage" not in node:
                    node["stage"] = [{}]
                node = node.setdefault(k, {})
            if not isinstance(node, (dict, list)):
                raise GrowlmError(f"--set {item}: {'.'.join(keys[: i + 1])} is not a table")
        last = keys[-1]
        if isinstance(node, list):  # `stage.2=...`: a whole stage is a table of keys
            _stage_index(item, last, node)
            raise GrowlmError(f"--set {item}: stage.{last} is a table; set one of its keys, e.g. "
                              f"--set stage.{last}.lr=1e-3")
        if keys == ["stage"] and value is not UNSET:
            raise GrowlmError(f"--set {item}: the stage list cannot be replaced from the command "
                              "line; set stage.N.KEY values")
        if value is UNSET:
            node.pop(last, None)
        else:
            node[last] = value
    return data


def load_toml(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise GrowlmError(f"recipe not found: {path}")
    try:
        return tomllib.loads(path.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as e:
        raise GrowlmError(f"{path}: malformed TOML: {e}") from None
    except UnicodeDecodeError:
        raise GrowlmError(f"{path}: not a UTF-8 text file") from None


def _stage_one_based(loc: tuple) -> tuple:
    """pydantic counts list items from 0; users (and --set) count stages from 1."""
    loc = list(loc)
    for i in range(len(loc) - 1):
        if loc[i] == "stage" and isinstance(loc[i + 1], int):
            loc[i + 1] += 1
    return tuple(loc)


def config_from_dict(data: dict, source: str = "recipe") -> RunConfig:
    if not isinstance(data, dict):
        raise GrowlmError(f"{source}: a recipe is a TOML table, not a {type(data).__name__}")
    try:
        cfg = RunConfig.model_validate(data)
    except ValidationError as e:
        raise GrowlmError(_format_error(source, e)) from None
    cfg._source = source
    if cfg.stage[0].init is not None:
        _inherit_init_settings(cfg, source)
    from growlm.stages import resolve_stages  # validates shapes and growth

    resolve_stages(cfg, source)
    return cfg


def _inherit_init_settings(cfg: RunConfig, source: str) -> None:
    """[model]'s non-shape settings from the first stage's init source, unless the recipe sets
    them (module docstring). Settings that change the parameters (tying, vocabulary, biases,
    ...) must agree with the source: the weights could not be loaded otherwise."""
    from growlm.init_source import init_config
    from growlm.model.config import SHAPE_FIELDS

    where = f"{source}: stage.1.init"
    src = init_config(cfg.stage[0].init, where)
    explicit = cfg.model.model_fields_set
    fields, overrides = cfg.model.model_dump(), []
    for name in ModelConfig.model_fields:
        if name in SHAPE_FIELDS:
            continue
        theirs = getattr(src, name)
        if name not in explicit:
            fields[name] = theirs
        elif fields[name] != theirs:
            overrides.append((name, theirs, fields[name]))
    try:
        model = ModelConfig(**fields)
        probe = ModelConfig(**{**src.model_dump(), **{k: fields[k] for k, _, _ in overrides}})
    except ValidationError as e:
        msg = e.errors()[0]["msg"].removeprefix("Value error, ")
        raise GrowlmError(f"{where}: the source's settings do not fit [model]: {msg}") from None
    from growlm.plan.layout import network_weights

    def parameters(c: ModelConfig) -> list:  # names, shapes and which tensor holds each (tying)
        return [(w.name, w.param, w.shape) for w in network_weights(c)]

    if overrides and parameters(probe) != parameters(src):
        names = ", ".join(f"{k} ({a} → {b})" for k, a, b in overrides)
        raise GrowlmError(f"{where}: [model] sets {names}, which changes the parameters of the "
                          f"source {cfg.stage[0].init}; remove it from [model] to inherit the source's")
    cfg.model = model
    cfg._init_overrides = overrides


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    """A recipe file, or a recipe of growlm's library by name ("tiny/step-2stage"; see
    `growlm.recipe_library.resolve_recipe`), with `--set` overrides applied and validated.
    Messages name the recipe as it was given."""
    data = apply_overrides(load_toml(resolve_recipe(path)), overrides or [])
    return config_from_dict(data, str(path))
