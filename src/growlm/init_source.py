"""What a stage's `init` names, read in one place.

An init source is
  - a growlm run folder (its newest valid checkpoint) or checkpoint folder;
  - an HF model folder (config.json + safetensors), see `growlm.model.hf`;
  - ``best:<sweep dir>``: the final checkpoint of the best variant of a finished
    `growlm sweep` (the embedding/head reuse paper picks its stage-1 model this way).

`init_config` reads JSON only, so a recipe is checked (and planned) without loading weights;
`load_init` reads the weights, merging LoRA adapters a checkpoint may still carry.
"""

from __future__ import annotations

import json
from pathlib import Path

from growlm.errors import GrowlmError
from growlm.model.config import ModelConfig

SWEEP_FILE = "sweep.json"
BEST_PREFIX = "best:"


def read_sweep_file(path: Path) -> dict | None:
    """sweep.json as a dict; None when absent; one line when unreadable."""
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        raise GrowlmError(f"{path}: unreadable sweep file") from None
    if not isinstance(data, dict) or not isinstance(data.get("variants", []), list):
        raise GrowlmError(f"{path}: not a growlm sweep file (no variants list)")
    for i, entry in enumerate(data.get("variants", []), 1):
        if not (isinstance(entry, dict) and isinstance(entry.get("name"), str)
                and isinstance(entry.get("status"), str)):
            raise GrowlmError(f"{path}: variants.{i} is not a variant record (needs name and status)")
    return data


def best_variant(entries: list[dict]) -> str | None:
    """Name of the complete variant with the lowest final validation loss."""
    done = [e for e in entries if isinstance(e, dict) and e.get("status") == "complete"
            and isinstance(e.get("final_val_loss"), (int, float))]
    return min(done, key=lambda e: e["final_val_loss"])["name"] if done else None


def resolve_best(sweep_dir: str | Path, where: str = "init") -> Path:
    """The final checkpoint of a finished sweep's best variant."""
    from growlm.checkpoint import latest_valid

    sweep_dir = Path(sweep_dir)
    data = read_sweep_file(sweep_dir / SWEEP_FILE)
    if data is None:
        raise GrowlmError(f"{where}: {sweep_dir} is not a sweep directory (no {SWEEP_FILE}); "
                          "run growlm sweep first")
    entries = data.get("variants") or []
    pending = [e.get("name") for e in entries if e.get("status") not in ("complete", "failed")]
    if pending:
        raise GrowlmError(f"{where}: sweep {sweep_dir} is not finished ({len(pending)} of "
                          f"{len(entries)} variants left); run the same growlm sweep again")
    best = best_variant(entries)
    if best is None:
        raise GrowlmError(f"{where}: no variant of sweep {sweep_dir} finished with a validation loss")
    found = latest_valid(sweep_dir / best / "checkpoints")
    if found is None:
        raise GrowlmError(f"{where}: the best run {sweep_dir / best} has no complete checkpoint")
    return found[0]


def resolve_init(path: str, where: str = "init") -> Path:
    """The folder an `init` value names ("best:<sweep dir>" resolved)."""
    if not path.startswith(BEST_PREFIX):
        return Path(path)
    target = path[len(BEST_PREFIX):].strip()
    if not target:
        raise GrowlmError(f"{where}: 'best:' needs a sweep directory, e.g. init = \"best:runs/sweep-s1\"")
    return resolve_best(target, where)


def is_hf_folder(p: Path) -> bool:
    """An HF model folder: a config.json, and neither a growlm checkpoint nor a run folder."""
    return ((p / "config.json").is_file() and not (p / "meta.json").exists()
            and not (p / "checkpoints").is_dir())


def init_config(path: str, where: str) -> ModelConfig:
    """The ModelConfig of an init source, read from JSON only (no weights)."""
    from growlm.checkpoint import model_config, read_meta

    p = resolve_init(path, where)
    if is_hf_folder(p):
        from growlm.files import read_json
        from growlm.model.hf import from_hf_config

        try:
            return from_hf_config(read_json(p / "config.json", "HF model config"))
        except GrowlmError as e:
            raise GrowlmError(f"{where}: {e}") from None
    if not p.exists():
        raise GrowlmError(f"{where}: {path} not found (a growlm run or checkpoint folder, an HF "
                          "model folder, or best:<sweep folder>)")
    metas = [p] if (p / "meta.json").is_file() else sorted((p / "checkpoints").glob("step_*"), reverse=True)
    for ckpt in metas:
        try:
            return model_config(read_meta(ckpt), ckpt)
        except GrowlmError:
            continue
    raise GrowlmError(f"{where}: {path} holds no readable growlm checkpoint or HF config.json")


def check_init_tokenizer(path: str, data_tokenizer_sha256: str, where: str) -> None:
    """GrowlmError when the init source carries a tokenizer.json (an HF folder's own, or the copy
    in a growlm checkpoint) other than the one the data was prepared with: the model would train
    on another tokenizer's ids. A source without one has nothing to compare and passes."""
    from growlm.checkpoint import TOKENIZER_FILE, resolve_checkpoint
    from growlm.data.tokenizer import load_tokenizer, tokenizer_sha256

    p = resolve_init(path, where)
    folder = p if is_hf_folder(p) else resolve_checkpoint(p)
    tok = folder / TOKENIZER_FILE
    if tok.is_file() and tokenizer_sha256(load_tokenizer(tok)) != data_tokenizer_sha256:
        raise GrowlmError(
            f"{where}: {path} comes with its own tokenizer.json, but the data was prepared with a "
            f"different tokenizer; prepare it with `growlm data prepare ... --tokenizer {folder}`")


def load_source(path: Path) -> tuple[ModelConfig, dict, Path | None]:
    """(config, plain weights, tokenizer.json or None) of an HF folder, a growlm run or a
    checkpoint; adapters a checkpoint still carries (saved mid-stage) are merged."""
    path = Path(path)
    if is_hf_folder(path):
        from growlm.model.hf import load_hf_folder

        cfg, state = load_hf_folder(path)
        tok = path / "tokenizer.json"
        return cfg, state, tok if tok.is_file() else None
    from growlm.checkpoint import TOKENIZER_FILE, load_model_state, resolve_checkpoint

    folder = resolve_checkpoint(path)
    cfg, state, meta = load_model_state(folder)
    if any(".lora_" in k for k in state):
        from growlm.adapters.lora import merged_state_dict

        adapters = meta.get("adapters") or {}
        if "scale" not in adapters:
            raise GrowlmError(f"{folder}: holds LoRA tensors but its meta.json has no adapters.scale "
                              "to merge them with")
        state = merged_state_dict(state, float(adapters["scale"]))
    tok = folder / TOKENIZER_FILE
    return cfg, state, tok if tok.is_file() else None


def load_init(path: str, where: str) -> tuple[ModelConfig, dict]:
    """(config, plain weights) of an init source (module docstring)."""
    try:
        cfg, state, _ = load_source(resolve_init(path, where))
    except GrowlmError as e:
        raise GrowlmError(f"{where}: {e}") from None
    return cfg, state
