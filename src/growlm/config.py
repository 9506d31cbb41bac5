"""Recipes: typed run configuration, TOML loading, dotted overrides and validation.

A recipe is one TOML file. `[model]` is the final shape; `[[stage]]` entries run in order
(a recipe without stages is one standard stage). Every mistake is reported as one line
naming the key, e.g. ``recipe.toml: stage.1.grow.op: Input should be 'stack', ...``.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from growlm.errors import GrowlmError
from growlm.model.config import ModelConfig
from growlm.units import parse_bytes, parse_count

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RunSection(_Strict):
    name: str = "run"
    out_dir: str | None = None  # default: runs/<name>
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compile: bool = False
    log_every: int = Field(10, gt=0)
    eval_every: int = Field(0, ge=0)  # steps; 0 = only at the end of each stage
    eval_tokens: int = Field(65536, gt=0)  # validation tokens per evaluation
    ckpt_every: int = Field(0, ge=0)  # steps; 0 = only at stage ends
    keep_last: int = Field(2, ge=1)
    disk_budget: int | None = None  # bytes ("20GiB"): warn before training if checkpoints may not fit
    tensorboard: bool = False
    wandb: bool = False
    # Multi-process runs (torchrun): how the model is replicated or sharded across ranks.
    distributed: Literal["none", "ddp", "fsdp"] = "ddp"
    activation_checkpointing: bool = False  # recompute each block's activations in backward
    dist_timeout_s: int = Field(600, gt=0)  # a collective waiting longer than this fails the run

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

    tasks: list[str] = Field(default_factory=list)  # e.g. ["hellaswag", "wikitext", "wordsim"]
    every: int = Field(0, ge=0)  # steps; 0 = only at the end of each stage
    limit: int | None = Field(None, gt=0)  # examples per task (WikiText: documents)
    batch_size: int = Field(32, gt=0)
    data_dir: str | None = None  # the eval data folder; default $GROWLM_DATA
    source: Literal["local", "hub"] = "local"  # zero-shot tasks: local files or hub datasets

    @field_validator("tasks")
    @classmethod
    def _known(cls, v: list[str]) -> list[str]:
        if not v:
            return v
        from growlm.eval.suite import parse_tasks

        try:
            return parse_tasks(v)
        except GrowlmError as e:
            raise ValueError(str(e)) from None


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


class OptimSection(_Strict):
    name: Literal["adamw", "galore"] = "adamw"
    lr: float = Field(3e-4, gt=0)
    betas: tuple[float, float] = (0.9, 0.95)
    eps: float = Field(1e-8, gt=0)
    weight_decay: float = Field(0.1, ge=0)
    grad_clip: float = Field(1.0, ge=0)  # 0 disables clipping
    galore: GaloreSection = GaloreSection()


class TrainSection(_Strict):
    global_batch_tokens: int = Field(8192, gt=0)
    micro_batch_size: int = Field(4, gt=0)
    # A non-finite loss or gradient: skip the step, reload the last checkpoint with a lower
    # LR ("rollback"), or stop the run.
    nonfinite: Literal["skip", "rollback", "stop"] = "skip"
    max_bad_steps: int = Field(10, gt=0)  # consecutive non-finite steps before stopping
    rollback_lr_factor: float = Field(0.5, gt=0, le=1)  # LR multiplier per rollback in a stage
    max_rollbacks: int = Field(3, gt=0)  # rollbacks within one stage before stopping


GrowOp = Literal[
    "stack", "duplicate", "interpolate", "identity", "random",  # depth
    "clone", "split", "zero", "width_random",  # width
    "reuse",  # embedding/head (and optionally layer-0 sublayers) into a fresh deep model
]


class GrowSpec(_Strict):
    op: GrowOp
    add: int | None = Field(None, gt=0)  # depth ops that insert layers
    factor: int | None = Field(None, gt=1)  # stack / duplicate / width factor
    sources: list[int] | None = None  # partial stacking: explicit source layer per target
    position: Literal["even", "top"] = "even"  # where interpolate/identity/random put new layers
    d_model: int | None = Field(None, gt=0)  # width target
    ffn_dim: int | None = Field(None, gt=0)
    n_heads: int | None = Field(None, gt=0)
    n_kv_heads: int | None = Field(None, gt=0)
    layer0: Literal["none", "attn", "ffn", "attn_ffn"] = "none"  # reuse: copy stage-1 layer 0 parts


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
    full_rank_steps: int = Field(0, ge=0)  # ReLoRA's full-rank warm start


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
    init: str | None = None  # external growlm checkpoint/run or HF Llama folder
    freeze: list[str] = []
    adapters: AdapterSpec | None = None
    # "auto": Gstack's growth timing rule, from the final model's size and `schedule_tokens`
    tokens: int | Literal["auto"] | None = None
    steps: int | None = Field(None, gt=0)
    schedule_tokens: int | None = None  # plan the LR schedule over a longer horizon than run
    schedule_steps: int | None = Field(None, gt=0)
    lr: float | None = Field(None, gt=0)
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
    stage: list[StageConfig] = Field(default_factory=lambda: [StageConfig()])

    @property
    def out_dir(self) -> Path:
        return Path(self.run.out_dir or f"runs/{self.run.name}")


# ---------------------------------------------------------------- loading

def _format_error(source: str, err: ValidationError) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"]) or "(top level)"
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        msg = "unknown key"
    elif "input" in first and first["type"] not in ("missing",) and not isinstance(
        first["input"], dict
    ):
        msg += f" (got {first['input']!r})"
    more = f" (+{len(err.errors()) - 1} more)" if len(err.errors()) > 1 else ""
    return f"{source}: {loc}: {msg}{more}"


def parse_override(item: str) -> tuple[list[str], Any]:
    """`optim.lr=3e-4` → (["optim", "lr"], 0.0003). Values are read as TOML, else as text."""
    if "=" not in item:
        raise GrowlmError(f"--set {item!r}: expected key=value")
    key, raw = item.split("=", 1)
    keys = key.strip().split(".")
    if not all(keys):
        raise GrowlmError(f"--set {item!r}: empty key")
    try:
        value = tomllib.loads(f"v = {raw}")["v"]
    except tomllib.TOMLDecodeError:
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = raw
    return keys, value


def apply_overrides(data: dict, overrides: list[str]) -> dict:
    """Set dotted keys; `stage.N.key` addresses the N-th (1-based) stage."""
    for item in overrides:
        keys, value = parse_override(item)
        node: Any = data
        for i, k in enumerate(keys[:-1]):
            if isinstance(node, list):
                if not k.isdigit() or not 1 <= int(k) <= len(node):
                    raise GrowlmError(f"--set {item}: no stage {k} (recipe has {len(node)})")
                node = node[int(k) - 1]
            else:
                if k == "stage" and "stage" not in node:
                    node["stage"] = [{}]
                node = node.setdefault(k, {})
                if not isinstance(node, (dict, list)):
                    raise GrowlmError(f"--set {item}: {'.'.join(keys[: i + 1])} is not a table")
        node[keys[-1]] = value
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


def config_from_dict(data: dict, source: str = "recipe") -> RunConfig:
    try:
        cfg = RunConfig.model_validate(data)
    except ValidationError as e:
        raise GrowlmError(_format_error(source, e)) from None
    from growlm.stages import resolve_stages  # validates shapes and growth

    resolve_stages(cfg, source)
    return cfg


def load_recipe(path: str | Path, overrides: list[str] | None = None) -> RunConfig:
    data = apply_overrides(load_toml(path), overrides or [])
    return config_from_dict(data, str(path))
