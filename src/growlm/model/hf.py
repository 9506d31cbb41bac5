"""HF `LlamaForCausalLM` folders <-> growlm (ModelConfig, state dict).

growlm parameter names are HF's without the leading `model.` (the head keeps `lm_head.`), so
the weights map by a rename. Only safetensors are read or written; pickles are refused and no
remote code is ever run. `transformers` itself is not needed here: the folder format is plain
JSON + safetensors.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from growlm.errors import GrowlmError
from growlm.model.config import ModelConfig, llama_ffn_dim

WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")
EOS_CANDIDATES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<eos>")
# Keys some older HF checkpoints carry that are recomputed buffers, not weights.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


# ---------------------------------------------------------------- config


def to_hf_config(cfg: ModelConfig, dtype: torch.dtype = torch.float32) -> dict:
    """A LlamaConfig dict for `cfg`. Refuses shapes HF Llama cannot express."""
    check_exportable(cfg)
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.hidden_dim,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "initializer_range": cfg.init_std,
        "rms_norm_eps": cfg.norm_eps,
        # transformers < 5 reads rope_theta/rope_scaling, >= 5 reads rope_parameters.
        "rope_theta": cfg.rope_theta,
        "rope_scaling": None,
        "rope_parameters": {"rope_type": "default", "rope_theta": cfg.rope_theta},
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "pretraining_tp": 1,
        "tie_word_embeddings": cfg.tie_embeddings,
        "use_cache": True,
        "bos_token_id": None,
        "eos_token_id": None,
        "torch_dtype": DTYPE_NAMES.get(dtype, "float32"),
    }


def check_exportable(cfg: ModelConfig) -> None:
    if cfg.block != "full":
        raise GrowlmError(
            f"cannot export block={cfg.block!r}: HF Llama layers always have an MLP; "
            "only block='full' models can be exported"
        )
    if cfg.n_layers == 0:
        raise GrowlmError(
            "cannot export a 0-layer (bigram) model: HF Llama needs num_hidden_layers >= 1"
        )


def _refuse(field: str, value, allowed: str) -> GrowlmError:
    return GrowlmError(f"HF config field {field}={value!r} is not supported; {allowed}")


def _rope_theta(d: dict) -> float:
    """rope_theta from either config layout, refusing any rope scaling."""
    if d.get("rope_scaling"):
        raise _refuse("rope_scaling", d["rope_scaling"], "only unscaled RoPE (null) is allowed")
    params = d.get("rope_parameters")
    theta = d.get("rope_theta", 10000.0)
    if params:
        extra = set(params) - {"rope_type", "rope_theta"}
        if params.get("rope_type", "default") != "default" or extra:
            raise _refuse(
                "rope_parameters", params, "only {'rope_type': 'default', 'rope_theta': ...}"
            )
        theta = params.get("rope_theta", theta)
    if d.get("partial_rotary_factor", 1.0) != 1.0:
        raise _refuse("partial_rotary_factor", d["partial_rotary_factor"], "only 1.0 is allowed")
    return float(theta)


def from_hf_config(d: dict) -> ModelConfig:
    """ModelConfig from a HF LlamaConfig dict; anything growlm's model cannot do is refused."""
    if d.get("model_type") != "llama":
        raise _refuse("model_type", d.get("model_type"), "only 'llama' is allowed")
    archs = d.get("architectures") or ["LlamaForCausalLM"]
    if archs != ["LlamaForCausalLM"]:
        raise _refuse("architectures", archs, "only ['LlamaForCausalLM'] is allowed")
    for field in ("attention_bias", "mlp_bias"):
        if d.get(field, False):
            raise _refuse(field, d[field], "growlm layers have no biases (false)")
    if d.get("hidden_act", "silu") != "silu":
        raise _refuse("hidden_act", d["hidden_act"], "only 'silu' (SwiGLU) is allowed")
    if d.get("attention_dropout", 0.0):
        raise _refuse("attention_dropout", d["attention_dropout"], "only 0.0 is allowed")
    try:
        d_model, n_heads = int(d["hidden_size"]), int(d["num_attention_heads"])
        n_layers, vocab = int(d["num_hidden_layers"]), int(d["vocab_size"])
        hidden = int(d["intermediate_size"])
    except KeyError as e:
        raise GrowlmError(f"HF config is missing the field {e.args[0]!r}") from None
    head_dim = d.get("head_dim") or d_model // n_heads
    if head_dim * n_heads != d_model:
        raise _refuse("head_dim", head_dim, f"only hidden_size/num_attention_heads = "
                      f"{d_model // n_heads} is allowed")
    kv = d.get("num_key_value_heads") or n_heads
    try:
        return ModelConfig(
            vocab_size=vocab,
            d_model=d_model,
            n_layers=n_layers,
            n_heads=n_heads,
            n_kv_heads=None if kv == n_heads else int(kv),
            ffn_dim=None if hidden == llama_ffn_dim(d_model) else hidden,
            block="full",
            max_seq_len=int(d.get("max_position_embeddings", 2048)),
            rope_theta=_rope_theta(d),
            norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            tie_embeddings=bool(d.get("tie_word_embeddings", False)),
            init_std=float(d.get("initializer_range", 0.02)),
        )
    except ValueError as e:  # pydantic's ValidationError is a ValueError
        raise GrowlmError(f"HF config does not describe a valid growlm model: {e}") from None


# ---------------------------------------------------------------- names and shapes


def expected_shapes(cfg: ModelConfig) -> dict[str, tuple[int, ...]]:
    """growlm parameter name -> shape, built on the meta device so nothing is allocated."""
    from growlm.model.llama import Transformer

    with torch.device("meta"):
        model = Transformer(cfg)
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def to_hf_name(name: str) -> str:
    return name if name.startswith("lm_head.") else f"model.{name}"


def from_hf_name(name: str) -> str:
    return name.removeprefix("model.")


def _check_state(cfg: ModelConfig, state: dict[str, torch.Tensor], where: str) -> None:
    expected = expected_shapes(cfg)
    if cfg.tie_embeddings:
        expected.pop("lm_head.weight")
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    if missing or unexpected:
        raise GrowlmError(
            f"{where} does not match the model config: missing {missing[:3]}"
            f"{'...' if len(missing) > 3 else ''}, unexpected {unexpected[:3]}"
            f"{'...' if len(unexpected) > 3 else ''}"
        )
    for name, shape in expected.items():
        if tuple(state[name].shape) != shape:
            raise GrowlmError(
                f"{where}: tensor {name} has shape {tuple(state[name].shape)}, "
                f"the model config needs {shape}"
            )


# ---------------------------------------------------------------- export


def export_hf(
    cfg: ModelConfig,
    state: dict[str, torch.Tensor],
    out_dir: str | os.PathLike,
    tokenizer_json: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `state` (growlm names) as a HF Llama folder that `from_pretrained` loads.

    The folder is built under a temporary name beside `out_dir` and renamed into place, so an
    interrupted export never leaves a half-written `out_dir`.
    """
    check_exportable(cfg)
    lora = sorted(k for k in state if ".lora_" in k)
    if lora:
        raise GrowlmError(
            f"state still holds LoRA adapter tensors (e.g. {lora[0]}); merge the adapters into "
            "the base weights before export"
        )
    state = dict(state)
    if cfg.tie_embeddings and "lm_head.weight" in state:
        head = state.pop("lm_head.weight")
        if not torch.equal(head, state.get("embed_tokens.weight", head)):
            raise GrowlmError("tie_embeddings is set but lm_head.weight differs from embed_tokens")
    _check_state(cfg, state, "state to export")

    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise GrowlmError(f"output {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not overwrite:
        raise GrowlmError(f"output directory {out} is not empty; use --overwrite to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)

    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp's 0700 would otherwise become out_dir's mode
        _write_folder(cfg, state, tmp, Path(tokenizer_json) if tokenizer_json else None)
        _replace_dir(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def _replace_dir(src: Path, dst: Path) -> None:
    """Move the finished `src` to `dst`; an old `dst` is moved aside first, then deleted."""
    old = None
    if dst.exists():
        old = dst.with_name(f".{dst.name}.old-{os.getpid()}")
        os.replace(dst, old)
    os.replace(src, dst)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _write_folder(cfg, state, folder: Path, tokenizer_json: Path | None) -> None:
    dtype = next(iter(state.values())).dtype
    config = to_hf_config(cfg, dtype)
    special = _special_tokens(tokenizer_json, cfg.vocab_size) if tokenizer_json else {}
    for role in ("bos", "eos"):
        if role in special:
            config[f"{role}_token_id"] = special[role][1]
    tensors = _unaliased({to_hf_name(k): v for k, v in state.items()})
    save_file(tensors, str(folder / WEIGHTS), metadata={"format": "pt"})
    _write_json(folder / "config.json", config)
    gen = {"bos_token_id": config["bos_token_id"], "eos_token_id": config["eos_token_id"]}
    _write_json(folder / "generation_config.json", {k: v for k, v in gen.items() if v is not None})
    if tokenizer_json:
        _write_tokenizer(cfg, tokenizer_json, special, folder)


def _unaliased(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """CPU tensors with no shared storage (safetensors refuses aliases, e.g. a layer that
    growth duplicated by reference): the second name of a shared storage gets a copy."""
    out, seen = {}, set()
    for name, tensor in state.items():
        tensor = tensor.detach().cpu().contiguous()
        ptr = tensor.untyped_storage().data_ptr()
        out[name] = tensor.clone() if ptr in seen else tensor
        seen.add(ptr)
    return out


def _special_tokens(tokenizer_json: Path, vocab_size: int) -> dict[str, tuple[str, int]]:
    """bos/eos (token, id): the first end-of-text marker the vocabulary has, used for both."""
    try:
        data = json.loads(Path(tokenizer_json).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise GrowlmError(f"cannot read tokenizer file {tokenizer_json}: {e}") from None
    vocab = dict((data.get("model") or {}).get("vocab") or {})
    vocab.update({t["content"]: t["id"] for t in data.get("added_tokens") or []})
    if vocab and max(vocab.values()) >= vocab_size:
        raise GrowlmError(
            f"tokenizer {tokenizer_json} has token ids up to {max(vocab.values())} but the model's "
            f"vocab_size is {vocab_size}; export it with the tokenizer it was trained with"
        )
    for token in EOS_CANDIDATES:
        if token in vocab:
            # GPT-2 style tokenizers use one marker for document start and end.
            bos = "<s>" if token == "</s>" and "<s>" in vocab else token
            return {"eos": (token, vocab[token]), "bos": (bos, vocab[bos])}
    return {}


def _write_tokenizer(cfg, tokenizer_json: Path, special: dict, folder: Path) -> None:
    shutil.copyfile(tokenizer_json, folder / "tokenizer.json")
    tokens = {f"{role}_token": tok for role, (tok, _) in special.items()}
    if "eos" in special:
        tokens["unk_token"] = special["eos"][0]
    _write_json(
        folder / "tokenizer_config.json",
        {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "model_max_length": cfg.max_seq_len,
            "clean_up_tokenization_spaces": False,
            "add_bos_token": False,
            "add_eos_token": False,
            **tokens,
        },
    )
    _write_json(folder / "special_tokens_map.json", tokens)


def _write_json(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


# ---------------------------------------------------------------- import


def load_hf_folder(path: str | os.PathLike) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """(ModelConfig, state with growlm names) from a local HF Llama folder (safetensors only).

    For tied embeddings the state holds `lm_head.weight` as the same tensor as
    `embed_tokens.weight`, so `Transformer(cfg).load_state_dict(state)` works directly.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise GrowlmError(f"HF model folder {folder} does not exist or is not a directory")
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise GrowlmError(f"{folder} has no config.json; expected a HF LlamaForCausalLM folder")
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise GrowlmError(f"cannot read {config_path}: {e}") from None
    cfg = from_hf_config(config)

    raw = _read_weights(folder)
    state = {
        from_hf_name(k): v for k, v in raw.items() if not k.endswith(IGNORED_SUFFIXES)
    }
    if cfg.tie_embeddings:
        state.pop("lm_head.weight", None)
    _check_state(cfg, state, f"weights in {folder}")
    if cfg.tie_embeddings:
        state["lm_head.weight"] = state["embed_tokens.weight"]
    return cfg, state


def _weight_files(folder: Path) -> list[Path]:
    if (folder / WEIGHTS).is_file():
        return [folder / WEIGHTS]
    index = folder / WEIGHTS_INDEX
    if index.is_file():
        try:
            weight_map = json.loads(index.read_text(encoding="utf-8"))["weight_map"]
        except (OSError, ValueError, KeyError, TypeError) as e:
            raise GrowlmError(f"cannot read the shard index {index}: {e!r}") from None
        files = [folder / name for name in sorted(set(weight_map.values()))]
        for f in files:
            if f.parent != folder or not f.is_file():
                raise GrowlmError(f"shard {f.name} listed in {index.name} is missing")
        return files
    if any((folder / name).exists() for name in PICKLE_WEIGHTS):
        raise GrowlmError(
            f"{folder} only has pickled weights (pytorch_model.bin); growlm never unpickles: "
            "convert them to model.safetensors first"
        )
    raise GrowlmError(f"{folder} has no {WEIGHTS} or {WEIGHTS_INDEX}")


def _read_weights(folder: Path) -> dict[str, torch.Tensor]:
    state: dict[str, torch.Tensor] = {}
    for file in _weight_files(folder):
        try:
            with safe_open(str(file), framework="pt") as f:
                for key in f.keys():  # noqa: SIM118 (safe_open is not a mapping)
                    if key in state:
                        raise GrowlmError(f"tensor {key} appears in more than one shard")
                    state[key] = f.get_tensor(key)
        except (SafetensorError, OSError) as e:
            raise GrowlmError(
                f"{file} is not a readable safetensors file (truncated or corrupt?): {e}"
            ) from None
    return state
