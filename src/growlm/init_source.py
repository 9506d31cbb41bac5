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


def _is_hf_folder(p: Path) -> bool:
    return (p / "config.json").is_file() and not (p / "meta.json").is_file()


def init_config(path: str, where: str) -> ModelConfig:
    """The ModelConfig of an init source, read from JSON only (no weights)."""
    from growlm.checkpoint import model_config, read_meta

    p = resolve_init(path, where)
    if _is_hf_folder(p):
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


def load_init(path: str, where: str) -> tuple[ModelConfig, dict]:
    """(config, plain weights) of an init source; adapters a checkpoint carries are merged."""
    p = resolve_init(path, where)
    if _is_hf_folder(p):
        from growlm.model.hf import load_hf_folder

        try:
            return load_hf_folder(p)
        except GrowlmError as e:
            raise GrowlmError(f"{where}: {e}") from None
    from growlm.checkpoint import load_model_state

    try:
        cfg, state, meta = load_model_state(p)
    except GrowlmError as e:
        raise GrowlmError(f"{where}: {e}") from None
    if any(".lora_" in k for k in state):
        from growlm.adapters.lora import merged_state_dict

        state = merged_state_dict(state, (meta.get("adapters") or {}).get("scale", 0.0))
    return cfg, state
