"""Load a model and its tokenizer for evaluation from a growlm run/checkpoint or a HF folder.

LoRA adapter tensors (`<linear>.lora_A`, `<linear>.lora_B`) are merged into the base weights
(W += scale·B·A), so evaluation always runs the plain model.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from growlm.data.tokenizer import check_vocab_fit
from growlm.errors import GrowlmError
from growlm.model import ModelConfig, Transformer
from growlm.model.llama import rope_tables

TOKENIZER_FILE = "tokenizer.json"


def load_tokenizer_file(path: str | os.PathLike):
    """A `tokenizers.Tokenizer` from a tokenizer.json file (or a folder holding one)."""
    from growlm.data.tokenizer import load_tokenizer

    path = Path(path)
    if path.is_dir():
        path = path / TOKENIZER_FILE
    if not path.is_file():
        raise GrowlmError(f"tokenizer file {path} not found (expected a HF tokenizer.json)")
    return load_tokenizer(path)


def merge_lora(state: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """Fold LoRA pairs into their base weights and drop them: W += scale · B @ A."""
    out = dict(state)
    for key_a in sorted(k for k in state if k.endswith(".lora_A") or k.endswith(".lora_A.weight")):
        prefix = key_a[: key_a.index(".lora_A")]
        key_b = key_a.replace(".lora_A", ".lora_B")
        base = f"{prefix}.weight"
        if key_b not in state or base not in state:
            raise GrowlmError(
                f"LoRA tensor {key_a} has no matching {key_b} or base weight {base} in the state"
            )
        a, b, w = state[key_a].float(), state[key_b].float(), state[base]
        out[base] = (w.float() + scale * (b @ a)).to(w.dtype)
        del out[key_a], out[key_b]
    return out


def check_vocab(cfg: ModelConfig, tokenizer, where: str) -> None:
    """A tokenizer fits a model when its ids fit the embedding and padding is small."""
    check_vocab_fit(cfg.vocab_size, tokenizer, where)


def build_model(
    cfg: ModelConfig, state: dict[str, torch.Tensor], device: str | torch.device = "cpu",
    dtype: torch.dtype | None = None,
) -> Transformer:
    """An eval-mode Transformer holding `state`; shapes must match `cfg` exactly."""
    with torch.device("meta"):
        model = Transformer(cfg)
    model = model.to_empty(device=device)
    if cfg.tie_embeddings:  # to_empty gives each module its own new tensor: tie them again
        model.lm_head.weight = model.embed_tokens.weight
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        raise GrowlmError(
            f"weights do not fit the model config: {first[-1] if first else e}"
        ) from None
    # RoPE tables are non-persistent buffers: recompute them on the target device.
    cos, sin = rope_tables(cfg, cfg.max_seq_len, device=device)
    model.rope_cos, model.rope_sin = cos, sin
    if dtype is not None:
        model = model.to(dtype)
    return model.eval().requires_grad_(False)


def _resolve_growlm_checkpoint(path: Path) -> Path | None:
    """The checkpoint directory `path` stands for (run dir → newest), if growlm can tell."""
    try:
        from growlm.checkpoint import resolve_checkpoint
    except ImportError:
        return path if (path / "meta.json").is_file() else None
    return resolve_checkpoint(path)


def load_for_eval(
    path: str | os.PathLike,
    device: str | torch.device = "cpu",
    tokenizer_path: str | os.PathLike | None = None,
    dtype: torch.dtype | None = None,
):
    """(model, tokenizer or None, info) from a run dir, checkpoint dir or HF model folder (Llama, Mistral, Qwen2, Qwen3).

    The tokenizer is `tokenizer_path` when given, else the tokenizer.json stored beside the
    weights; None when there is neither (tasks that need text then refuse to run).
    """
    path = Path(path)
    if not path.exists():
        raise GrowlmError(f"model path {path} does not exist (expected a growlm run, "
                          "checkpoint or HF model folder (Llama, Mistral, Qwen2, Qwen3))")
    is_hf = (path / "config.json").is_file() and not (path / "meta.json").is_file()
    if is_hf:
        from growlm.model.hf import load_hf_folder

        cfg, state = load_hf_folder(path)
        folder, meta = path, {}
        info = {"source": "hf", "path": str(path)}
    else:
        from growlm.checkpoint import load_model_state

        folder = _resolve_growlm_checkpoint(path) or path
        cfg, state, meta = load_model_state(folder)
        info = {"source": "growlm", "path": str(folder)}
        for key in ("stage_name", "global_step", "tokens", "flops"):
            if key in meta:
                info[key] = meta[key]
        if isinstance(meta.get("stage"), int):  # meta.json counts stages from 1, as users do
            info["stage"] = meta["stage"]
        if any(".lora_" in k for k in state):
            adapters = meta.get("adapters") or {}
            if "scale" not in adapters:
                raise GrowlmError(f"{folder}: state holds LoRA tensors but meta.json has no "
                                  "adapters.scale to merge them with")
            try:
                from growlm.adapters.lora import merged_state_dict
            except ImportError:
                merged_state_dict = merge_lora
            state = merged_state_dict(state, float(adapters["scale"]))
    info["model"] = cfg.model_dump()

    tok_file = Path(tokenizer_path) if tokenizer_path else folder / TOKENIZER_FILE
    tokenizer = None
    if tokenizer_path or tok_file.is_file():
        tokenizer = load_tokenizer_file(tok_file)
        check_vocab(cfg, tokenizer, str(path))
        info["tokenizer"] = str(tok_file)
    model = build_model(cfg, state, device=device, dtype=dtype)
    return model, tokenizer, info
