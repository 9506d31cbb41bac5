"""`growlm export RUN_OR_CKPT OUT_DIR`: a run, checkpoint or HF folder as an HF folder.

The folder has the model's own family (`ModelConfig.model_type`: Llama, Mistral, Qwen2 or
Qwen3), so a model started from a public checkpoint goes back to its users' tools as the same
architecture it came from.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from growlm.errors import GrowlmError
from growlm.files import check_path
from growlm.model.config import ModelConfig
from growlm.model.hf import export_hf, load_hf_folder


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source",
        metavar="RUN_OR_CKPT",
        help="a run directory (its latest complete checkpoint), a checkpoint directory, "
        "or an HF folder (re-export)",
    )
    parser.add_argument(
        "out_dir", metavar="OUT_DIR", help="folder to write (must not exist or be empty)"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace OUT_DIR if it exists and is not empty"
    )


def run(args: argparse.Namespace) -> int:
    source = check_path(args.source, "export source")
    out_dir = check_path(args.out_dir, "export output")
    if not source.exists():
        raise GrowlmError(f"{source} does not exist; give a run dir, checkpoint dir or HF folder")
    cfg, state, tokenizer = load_source(source)
    hf_source = source if is_hf_folder(source) else None
    out = export_hf(cfg, state, out_dir, tokenizer_json=tokenizer, overwrite=args.overwrite,
                    source_folder=hf_source)
    note = "" if tokenizer else " (no tokenizer.json found: tokenizer files not written)"
    print(f"exported {cfg.params_total:,} parameters ({cfg.model_type}, {cfg.n_layers} layers, "
          f"d_model {cfg.d_model}) to {out}{note}")
    return 0


def is_hf_folder(path: Path) -> bool:
    """A HF folder has a config.json and is neither a growlm checkpoint nor a run directory."""
    return (
        (path / "config.json").is_file()
        and not (path / "meta.json").exists()
        and not (path / "checkpoints").is_dir()
    )


def load_source(path: Path) -> tuple[ModelConfig, dict[str, torch.Tensor], Path | None]:
    """(config, merged state with growlm names, tokenizer.json or None) for any accepted source."""
    if is_hf_folder(path):
        cfg, state = load_hf_folder(path)
        tok = path / "tokenizer.json"
        return cfg, state, tok if tok.is_file() else None
    try:
        from growlm.train.checkpoint import load_model_state
    except ImportError as e:  # the trainer is optional only while it is being written
        raise GrowlmError(f"cannot read growlm checkpoints: {e}") from None
    cfg, state, meta = load_model_state(path)
    state = merge_lora(state, meta.get("adapters"))
    return cfg, state, _checkpoint_tokenizer(path, meta)


def _checkpoint_tokenizer(path: Path, meta: dict) -> Path | None:
    """The tokenizer.json beside the meta.json of the checkpoint that was loaded."""
    candidates = [path]
    ckpts = path / "checkpoints"
    if ckpts.is_dir():
        candidates += sorted((p for p in ckpts.iterdir() if p.is_dir()), reverse=True)
    for ckpt in candidates:
        if not (ckpt / "tokenizer.json").is_file():
            continue
        try:
            step = json.loads((ckpt / "meta.json").read_text(encoding="utf-8")).get("global_step")
        except (OSError, ValueError):
            continue
        if step == meta.get("global_step"):
            return ckpt / "tokenizer.json"
    return None


def merge_lora(state: dict[str, torch.Tensor], adapters: dict | None) -> dict[str, torch.Tensor]:
    """Fold `<linear>.lora_A/lora_B` into `<linear>.weight`: W + scale · B @ A (in fp32).

    A checkpoint saved mid-stage of a LoRA/ReLoRA run still holds unmerged adapters; HF Llama
    has no place for them, so they are merged here.
    """
    a_keys = sorted(k for k in state if k.endswith(".lora_A"))
    if not a_keys and not any(".lora_" in k for k in state):
        return state
    if not adapters or "scale" not in adapters:
        raise GrowlmError(
            "checkpoint holds LoRA tensors but its meta.json has no adapters.scale; cannot merge"
        )
    scale = float(adapters["scale"])
    merged = dict(state)
    for a_key in a_keys:
        base = a_key.removesuffix(".lora_A")
        b_key, w_key = f"{base}.lora_B", f"{base}.weight"
        if b_key not in merged or w_key not in merged:
            raise GrowlmError(f"LoRA tensor {a_key} has no matching {b_key} and {w_key}")
        a, b, w = merged.pop(a_key), merged.pop(b_key), merged[w_key]
        if b.shape[0] != w.shape[0] or a.shape[1] != w.shape[1] or a.shape[0] != b.shape[1]:
            raise GrowlmError(
                f"LoRA shapes for {base} do not fit: A {tuple(a.shape)}, B {tuple(b.shape)}, "
                f"weight {tuple(w.shape)}"
            )
        merged[w_key] = (w.float() + scale * (b.float() @ a.float())).to(w.dtype)
    leftover = sorted(k for k in merged if ".lora_" in k)
    if leftover:
        raise GrowlmError(f"unpaired LoRA tensor {leftover[0]} in checkpoint")
    return merged
