"""`growlm sft RUN_OR_CKPT --data FILE_OR_HF_NAME [--recipe sft.toml] [--out DIR] [--set k=v]`.

(`--data builtin:tiny-instructions` is growlm's own small offline set, see growlm.sft.builtin.)

(plus `--resume` and `--quiet`, as for `growlm train`.)

Supervised fine-tuning is a one-stage run of the ordinary Trainer: the stage starts from the
checkpoint (``init``), the model shape is the checkpoint's, and the data loader is an
`SFTLoader` over tokenized instruction examples (loss on response tokens only). Checkpoints,
``--resume``, metrics.jsonl and ``growlm export`` work as for pretraining.

Defaults follow the STEP paper's Alpaca fine-tuning: AdamW with betas (0.9, 0.95), LR 1e-4,
cosine schedule, 100 warmup steps, 2 epochs; the stage's step count follows from the number of
rows per epoch. Our own choices: no weight decay, cosine down to 0, 64 rows per optimizer
step, packing on, 2% of the examples (at most 256) held out for validation loss.

The recipe is an ordinary growlm recipe without ``[model]`` (it comes from the checkpoint) and
without ``data.train`` (it is --data), plus an ``[sft]`` table (see `SFTSection`); it may hold
one ``[[stage]]`` table for e.g. ``freeze`` or ``adapters``. ``--set sft.epochs=3`` etc. work.
"""

from __future__ import annotations

import copy
import math
import sys
import warnings
from pathlib import Path
from typing import Literal

from pydantic import ConfigDict, Field, ValidationError

from growlm.config import _format_error, apply_overrides, config_from_dict, load_toml
from growlm.errors import GrowlmError
from growlm.model.config import ModelConfig, Settings
from growlm.sft.data import SFTData, read_records, split_holdout, tokenize_records
from growlm.sft.loader import SFTLoader
from growlm.sft.template import load_template
from growlm.stages import SHAPE_KEYS

DEFAULTS = {
    "optim": {"lr": 1e-4, "betas": [0.9, 0.95], "weight_decay": 0.0},
    "schedule": {"kind": "cosine", "warmup_steps": 100, "min_lr_ratio": 0.0},
}
# The model is the checkpoint's: a stage may add freezing or adapters, not change the shape.
STAGE_KEYS_FORBIDDEN = ("grow", "init", *SHAPE_KEYS)


class SFTSection(Settings):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    template: str | dict[str, str] = "alpaca"  # built-in name, TOML file, or inline table
    format: Literal["auto", "alpaca", "chat"] = "auto"
    split: str = "train"  # HF hub datasets only
    epochs: float = Field(2.0, gt=0)
    batch_size: int = Field(64, gt=0)  # rows (sequences) per optimizer step
    packing: bool = True  # False: one example per row, padded
    overlong: Literal["truncate", "drop"] = "truncate"
    val_fraction: float = Field(0.02, ge=0, lt=1)
    val_max: int = Field(256, ge=0)


def add_arguments(parser) -> None:
    parser.add_argument(
        "source",
        metavar="RUN_OR_CKPT",
        help="run directory (newest checkpoint), checkpoint directory or HF model folder (Llama, Mistral, Qwen2, Qwen3)",
    )
    parser.add_argument(
        "--data",
        required=True,
        metavar="FILE_OR_HF_NAME",
        help="Alpaca or chat records: .json array, .jsonl, a HF hub dataset name, or "
        "builtin:tiny-instructions (growlm's own small offline set, to try the command)",
    )
    parser.add_argument(
        "--recipe", help="TOML with [sft], [optim], [schedule], [train], [run] overrides"
    )
    parser.add_argument("--out", help="run directory (default runs/<source name>-sft)")
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a value, e.g. --set sft.epochs=3 --set data.seq_len=512",
    )
    parser.add_argument(
        "--resume", action="store_true", help="continue from the newest complete checkpoint"
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar or stage log")


# ---------------------------------------------------------------- building the run


def model_source(path: Path) -> tuple[ModelConfig, Path, Path]:
    """(model config, resolved weights path for `init`, tokenizer.json) of a run/ckpt/HF folder."""
    if not path.exists():
        raise GrowlmError(
            f"{path} does not exist; give a run dir, checkpoint dir or HF model folder (Llama, Mistral, Qwen2, Qwen3)"
        )
    if (path / "config.json").is_file() and not (path / "meta.json").is_file():
        from growlm.model.hf import load_hf_folder

        cfg, _ = load_hf_folder(path)
        weights = path
    else:
        from growlm.checkpoint import load_model_state, resolve_checkpoint

        # Pin the checkpoint (not the run): a resumed SFT run must start from the same one.
        weights = resolve_checkpoint(path)
        cfg, _, _ = load_model_state(weights)
    tok = weights / "tokenizer.json"
    if not tok.is_file():
        raise GrowlmError(
            f"{weights}: no tokenizer.json beside the weights; SFT needs the model's tokenizer"
        )
    return cfg, weights.resolve(), tok


def _user_recipe(args) -> tuple[dict, SFTSection, str]:
    source = args.recipe or "sft"
    user = load_toml(args.recipe) if args.recipe else {}
    user = apply_overrides(user, list(args.overrides))
    if args.out is not None:  # given empty, it is refused (run.out_dir), not ignored
        user.setdefault("run", {})["out_dir"] = args.out
    try:
        sft = SFTSection.model_validate(user.pop("sft", {}))
    except ValidationError as e:
        raise GrowlmError(
            _format_error(source, e).replace(f"{source}: ", f"{source}: sft.", 1)
        ) from None
    if "model" in user:
        raise GrowlmError(f"{source}: [model] comes from the checkpoint; remove it")
    extra = set(user.get("data", {})) - {"seq_len"}
    if extra:
        raise GrowlmError(
            f"{source}: data.{sorted(extra)[0]}: SFT data is given with --data; only "
            "data.seq_len may be set"
        )
    stages = user.get("stage", [])
    if len(stages) > 1:
        raise GrowlmError(f"{source}: SFT is one stage; the recipe has {len(stages)}")
    bad = [k for k in STAGE_KEYS_FORBIDDEN if stages and k in stages[0]]
    if bad:
        raise GrowlmError(
            f"{source}: stage.1.{bad[0]}: not allowed in SFT (the model is the checkpoint's)"
        )
    return user, sft, source


def prepare_data(
    data_spec: str,
    sft: SFTSection,
    tokenizer_path: Path,
    model: ModelConfig,
    seq_len: int,
    seed: int,
) -> SFTData:
    from growlm.data.tokenizer import eos_id, load_tokenizer, vocab_size

    tokenizer = load_tokenizer(tokenizer_path)
    if vocab_size(tokenizer) > model.vocab_size:
        raise GrowlmError(
            f"{tokenizer_path}: tokenizer has {vocab_size(tokenizer)} tokens but the model "
            f"embeds {model.vocab_size}"
        )
    eos = eos_id(tokenizer)
    template = load_template(sft.template)
    records = read_records(data_spec, sft.format, sft.split)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        examples, stats = tokenize_records(records, template, tokenizer, eos, seq_len, sft.overlong)
    for w in caught:
        print(f"warning: {w.message}", file=sys.stderr)
    train, val = split_holdout(examples, sft.val_fraction, sft.val_max, seed)
    return SFTData(train, val, tokenizer_path, eos, sft.packing, stats)


def _deep_merge(base: dict, top: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in top.items():
        out[k] = (
            _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
        )
    return out


def build_run(args) -> tuple[object, SFTData, list[str]]:
    """(RunConfig, prepared data, notes to print) from the command line. Every setting and the
    output folder are checked before the data is read and tokenized (a mistake costs seconds,
    not a tokenization pass); the steps, which depend on the data, are filled in after."""
    from growlm.files import check_output_dir

    user, sft, source = _user_recipe(args)
    model, weights, tok_path = model_source(Path(args.source))
    seq_len = int(user.get("data", {}).get("seq_len", model.max_seq_len))
    seed = int(user.get("run", {}).get("seed", 0))
    early, _ = _run_dict(user, sft, model, weights, args.data, seq_len, steps=1, source=source)
    early_cfg = config_from_dict(early, source)
    _check_out(early_cfg, weights)
    check_output_dir(early_cfg.out_dir, "run folder")
    data = prepare_data(args.data, sft, tok_path, model, seq_len, seed)
    rows = SFTLoader(
        data.train, seq_len, seed, packing=sft.packing, pad_id=data.pad_id
    ).rows_in_epoch(0)
    steps = max(1, math.ceil(sft.epochs * rows / sft.batch_size))
    notes = [
        f"sft data: {data.stats.describe()}; {len(data.train):,} train / "
        f"{len(data.val) if data.val else 0:,} val examples; {rows:,} rows of {seq_len} tokens per "
        f"epoch ({'packed' if sft.packing else 'padded'}); {sft.epochs:g} epochs of "
        f"{sft.batch_size} rows per step = {steps:,} steps"
    ]
    cfg, more = _run_dict(user, sft, model, weights, args.data, seq_len, steps, source)
    return config_from_dict(cfg, source), data, notes + more


def _run_dict(user: dict, sft, model, weights: Path, data: str, seq_len: int, steps: int,
              source: str) -> tuple[dict, list[str]]:
    """The run's recipe as a dict (SFT's defaults under the user's settings) for `steps` steps,
    and the notes it needs."""
    notes = []
    cfg = _deep_merge(DEFAULTS, user)
    train = cfg.setdefault("train", {})
    want = sft.batch_size * seq_len
    if train.get("global_batch_tokens", want) != want:
        raise GrowlmError(
            f"{source}: set the batch with sft.batch_size (rows per step), not "
            "train.global_batch_tokens"
        )
    train["global_batch_tokens"] = want
    train.setdefault("micro_batch_size", math.gcd(4, sft.batch_size))
    warmup = cfg["schedule"]["warmup_steps"]
    if warmup >= steps and "warmup_steps" not in user.get("schedule", {}):
        cfg["schedule"]["warmup_steps"] = steps // 10
        notes.append(
            f"note: {steps} steps are fewer than the default {warmup} warmup steps; "
            f"warming up for {steps // 10}"
        )
    run = cfg.setdefault("run", {})
    run.setdefault("name", _default_name(weights))
    stage = {"name": "sft", **(user.get("stage") or [{}])[0], "init": str(weights)}
    if "steps" not in stage and "tokens" not in stage:
        stage["steps"] = steps
    cfg.update(model=model.model_dump(), data={"train": data, "seq_len": seq_len}, stage=[stage])
    return cfg, notes


def _check_out(run_cfg, weights: Path) -> None:
    out = run_cfg.out_dir.resolve()
    if out == weights or out in weights.parents:
        raise GrowlmError(
            f"the SFT run directory {run_cfg.out_dir} holds the source checkpoint; "
            "choose another with --out"
        )


def _default_name(weights: Path) -> str:
    run_dir = weights.parent.parent if weights.parent.name == "checkpoints" else weights
    return f"{run_dir.name}-sft"


def run(args) -> int:
    from growlm.cli.train import run_to_end
    from growlm.sft.trainer import SFTTrainer
    from growlm.train.distributed import maybe_init_distributed

    cfg, data, notes = build_run(args)
    dist = maybe_init_distributed(cfg)
    try:
        trainer = SFTTrainer(cfg, data, resume=args.resume, dist=dist, quiet=args.quiet)
        if trainer.rank == 0 and not args.quiet:
            print("\n".join(notes), flush=True)
        return run_to_end(trainer, dist, command="sft", resume_hint="growlm sft ... (same arguments)")
    finally:
        if dist is not None:
            dist.close()
