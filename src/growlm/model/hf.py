"""HF model folders (Llama, Mistral, Qwen2, Qwen3) <-> growlm (ModelConfig, state dict).

growlm parameter names are HF's without the leading `model.` (the head keeps `lm_head.`), so
the weights map by a rename; the config maps through `growlm.model.hf_config`. Only
safetensors are read or written; pickles are refused and no remote code is ever run.
`transformers` itself is not needed here: the folder format is plain JSON + safetensors.

Export writes into a temporary folder with a fixed name beside the target
(`.<name>.growlm-export-tmp`) and renames it into place, so an interrupted export never leaves
a half-written target, and the next export to the same place clears what a killed one left.
(So one target has one exporter at a time: a second export to it clears the first's folder.)
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from growlm.errors import GrowlmError
from growlm.files import atomic_write_json, check_output_dir, read_json, write_failure
from growlm.model.config import ModelConfig
from growlm.model.hf_config import (  # noqa: F401 (re-exported: the module's public API)
    ARCHITECTURES,
    DTYPE_NAMES,
    check_exportable,
    from_hf_config,
    to_hf_config,
)
from growlm.model.hf_tokenizer import (
    SPECIAL_ID_FIELDS,
    copy_side_files,
    read_tokenizer_json,
    special_tokens,
    write_tokenizer_files,
)

WEIGHTS = "model.safetensors"
WEIGHTS_INDEX = "model.safetensors.index.json"
PICKLE_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")
# Keys some older HF checkpoints carry that are recomputed buffers, not weights.
IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)
TMP_SUFFIX = ".growlm-export-tmp"
OLD_SUFFIX = ".growlm-export-old"


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
            f"{'...' if len(unexpected) > 3 else ''} (for a {cfg.model_type} model)"
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
    source_folder: str | os.PathLike | None = None,
) -> Path:
    """Write `state` (growlm names) as a HF folder of `cfg.model_type` that `from_pretrained`
    loads. `source_folder`, an HF folder being re-exported, supplies the tokenizer files and
    special-token ids verbatim (instead of `tokenizer_json`).

    Raises GrowlmError for a state or config HF cannot hold, a malformed tokenizer, or an
    unusable output path; `growlm.files.WriteError` (a GrowlmError) when a write fails.
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
    tokenizer = _tokenizer_plan(cfg, tokenizer_json, source_folder)

    out = check_output_dir(out_dir, "export output")
    tmp, old = _side_names(out)
    try:
        _clear_leftovers(out, tmp, old)
        if out.is_dir() and any(out.iterdir()) and not overwrite:
            raise GrowlmError(f"output directory {out} is not empty; use --overwrite to replace it")
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        _write_folder(cfg, state, tmp, tokenizer)
        _replace_dir(tmp, out, old)
    except BaseException as e:
        shutil.rmtree(tmp, ignore_errors=True)
        failure = write_failure(e, out)
        if failure is not None:
            raise failure from None
        raise
    return out


def _side_names(out: Path) -> tuple[Path, Path]:
    return out.with_name(f".{out.name}{TMP_SUFFIX}"), out.with_name(f".{out.name}{OLD_SUFFIX}")


def _clear_leftovers(out: Path, tmp: Path, old: Path) -> None:
    """Undo what a killed export left: its half-written temporary folder, and an old output
    that it had moved aside but not yet replaced (put back, since no new one took its place)."""
    shutil.rmtree(tmp, ignore_errors=True)
    if old.exists():
        if out.exists():
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(old, out)


def _replace_dir(src: Path, dst: Path, old: Path) -> None:
    """Move the finished `src` to `dst`; an old `dst` is moved aside first, then deleted."""
    if dst.exists():
        os.replace(dst, old)
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)


def _tokenizer_plan(cfg: ModelConfig, tokenizer_json, source_folder) -> dict:
    """What export writes for the tokenizer, checked before anything is written."""
    if source_folder is not None:
        source = Path(source_folder)
        config = read_json(source / "config.json", "HF config")
        ids = {k: config.get(k) for k in SPECIAL_ID_FIELDS if config.get(k) is not None}
        if (source / "tokenizer.json").is_file():
            read_tokenizer_json(source / "tokenizer.json", cfg.vocab_size)
        return {"copy_from": source, "ids": ids}
    if tokenizer_json is None:
        return {}
    path = Path(tokenizer_json)
    data = read_tokenizer_json(path, cfg.vocab_size)
    special = special_tokens(path, data)
    ids = {f"{role}_token_id": idx for role, (_, idx) in special.items()}
    return {"path": path, "data": data, "special": special, "ids": ids}


def _write_folder(cfg: ModelConfig, state, folder: Path, tokenizer: dict) -> None:
    dtype = next(iter(state.values())).dtype
    config = to_hf_config(cfg, dtype) | tokenizer.get("ids", {})
    tensors = _unaliased({to_hf_name(k): v for k, v in state.items()})
    save_file(tensors, str(folder / WEIGHTS), metadata={"format": "pt"})
    atomic_write_json(folder / "config.json", config, indent=2)
    copied = copy_side_files(tokenizer["copy_from"], folder) if "copy_from" in tokenizer else []
    if "generation_config.json" not in copied:
        gen = {k: config.get(k) for k in SPECIAL_ID_FIELDS}
        atomic_write_json(folder / "generation_config.json",
                          {k: v for k, v in gen.items() if v is not None}, indent=2)
    if "path" in tokenizer:
        write_tokenizer_files(folder, tokenizer["path"], tokenizer["data"], tokenizer["special"],
                              cfg.max_seq_len)


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


# ---------------------------------------------------------------- import


def read_hf_config(folder: str | os.PathLike) -> ModelConfig:
    """The ModelConfig of an HF folder, from its config.json only (no weights are read).
    Errors name the file: `<folder>/config.json: <problem>`."""
    folder = Path(folder)
    config_path = folder / "config.json"
    if not config_path.is_file():
        raise GrowlmError(f"{folder} has no config.json; expected a HF model folder "
                          f"({', '.join(ARCHITECTURES.values())})")
    config = read_json(config_path, "HF config", expect=object)
    try:
        return from_hf_config(config)
    except GrowlmError as e:
        raise GrowlmError(f"{config_path}: {e}") from None


def load_hf_folder(path: str | os.PathLike) -> tuple[ModelConfig, dict[str, torch.Tensor]]:
    """(ModelConfig, state with growlm names) from a local HF folder (safetensors only).

    For tied embeddings the state holds `lm_head.weight` as the same tensor as
    `embed_tokens.weight`, so `Transformer(cfg).load_state_dict(state)` works directly.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise GrowlmError(f"HF model folder {folder} does not exist or is not a directory")
    cfg = read_hf_config(folder)
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
        weight_map = read_json(index, "shard index").get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise GrowlmError(f"{index}: weight_map must map tensor names to file names")
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
