"""The checkpoint folder: written atomically, verified when read.

A checkpoint is a folder written under a temporary name and renamed into place once every
file is on disk, so a crash never leaves a folder that looks complete. meta.json (written
last) records each file's size and sha256 and a sha256 of its own content; reading verifies
all of them, so an edited or damaged checkpoint is skipped (resume falls back to the one
before) instead of being trusted. Weights are safetensors; the rest of the training state is
loaded with ``weights_only=True``: nothing is ever unpickled.

This module is the format only. What goes into a checkpoint during training is
`growlm.train.manager.CheckpointManager`'s business.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from growlm.errors import GrowlmError
from growlm.faults import fault
from growlm.files import write_failure
from growlm.model.config import ModelConfig

FORMAT = "growlm-checkpoint"
VERSION = 2
MODEL_FILE, STATE_FILE, META_FILE, TOKENIZER_FILE = (
    "model.safetensors", "train_state.pt", "meta.json", "tokenizer.json")
_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # raw pickle protocol header, torch zip archive
# meta.json keys and their types ("stage" counts from 1); "files" is always there, the rest
# wherever a training run wrote the checkpoint (see `require`)
META_TYPES = {"model": dict, "stage": int, "global_step": int, "stage_step": int,
              "stage_complete": bool, "provenance": dict, "files": dict}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _meta_digest(meta: dict) -> str:
    """sha256 of meta.json's content without its own digest (canonical JSON)."""
    body = {k: v for k, v in meta.items() if k != "meta_sha256"}
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def checkpoint_name(global_step: int) -> str:
    return f"step_{global_step:08d}"


def new_tmp_dir(ckpt_root: Path, global_step: int, tag: str) -> Path:
    """An empty temporary folder for checkpoint `global_step` (cleared if a crash left one)."""
    ckpt_root.mkdir(parents=True, exist_ok=True)
    tmp = ckpt_root / f".tmp-{checkpoint_name(global_step)}-{tag}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    return tmp


def save_checkpoint(ckpt_root: Path, global_step: int, model_state: dict | None, train_state: dict,
                    meta: dict, tokenizer: Path | None = None, *, tmp: Path | None = None,
                    known_files: dict | None = None) -> Path:
    """Write checkpoint `step_<global_step>` atomically; return its path.

    `tmp`/`known_files`: a temporary folder other ranks already wrote shards into, and those
    shards' {relative path: {bytes, sha256}} (growlm.train.dcp); `model_state` is then None.
    Raises `growlm.files.WriteError` (one line) when the disk is full or not writable; no
    partial folder is left behind."""
    final = ckpt_root / checkpoint_name(global_step)
    try:
        if tmp is None:
            tmp = new_tmp_dir(ckpt_root, global_step, str(os.getpid()))
        _write_files(tmp, model_state, train_state, meta, tokenizer, known_files)
    except BaseException as e:  # e.g. a full disk: leave no half-written folder behind
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
        failure = write_failure(e, final)
        if failure is not None:
            raise failure from None
        raise
    fault("checkpoint_before_rename")
    if final.exists():  # re-saving a step after resume: swap, never leave a gap with no copy
        trash = ckpt_root / f".old-{final.name}-{os.getpid()}"
        os.replace(final, trash)
        os.replace(tmp, final)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync(ckpt_root)
    return final


def _write_files(tmp: Path, model_state: dict | None, train_state: dict, meta: dict,
                 tokenizer: Path | None, known_files: dict | None = None) -> None:
    # safetensors refuses aliased tensors (tied embeddings): store each name's own copy.
    tensors, seen = {}, set()
    for name, t in (model_state or {}).items():
        t = t.detach().cpu().contiguous()
        key = t.untyped_storage().data_ptr()
        tensors[name] = t.clone() if key in seen else t
        seen.add(key)
    if model_state is not None:
        save_file(tensors, tmp / MODEL_FILE)
    fault("checkpoint_mid_write")
    torch.save(train_state, tmp / STATE_FILE)
    if tokenizer is not None and Path(tokenizer).is_file():
        shutil.copyfile(tokenizer, tmp / TOKENIZER_FILE)
    files = dict(known_files or {})
    for f in sorted(p for p in tmp.iterdir() if p.is_file()):
        _fsync(f)
        files[f.name] = {"bytes": f.stat().st_size, "sha256": sha256_file(f)}
    meta = {"format": FORMAT, "version": VERSION, **meta, "files": files}
    meta["meta_sha256"] = _meta_digest(meta)
    (tmp / META_FILE).write_text(json.dumps(meta, indent=1))
    _fsync(tmp / META_FILE)


def read_meta(ckpt: Path) -> dict:
    """meta.json of a checkpoint, checked for shape and for its own checksum."""
    path = ckpt / META_FILE
    if not path.is_file():
        raise GrowlmError(f"{ckpt}: incomplete checkpoint (no {META_FILE})")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise GrowlmError(f"{path}: corrupted checkpoint metadata (not JSON)") from None
    if not isinstance(meta, dict):
        raise GrowlmError(f"{path}: corrupted checkpoint metadata (a JSON {type(meta).__name__}, "
                          "not an object)")
    if meta.get("format") != FORMAT:
        raise GrowlmError(f"{ckpt}: not a growlm checkpoint (format {meta.get('format')!r})")
    require(meta, path, [k for k in META_TYPES if k in meta or k == "files"])
    for name, info in meta["files"].items():
        if not (isinstance(info, dict) and isinstance(info.get("bytes"), int)
                and isinstance(info.get("sha256"), str)):
            raise GrowlmError(f"{path}: corrupted checkpoint metadata (files.{name} needs bytes "
                              "and sha256)")
    if meta.get("version", 1) >= 2 and meta.get("meta_sha256") != _meta_digest(meta):
        raise GrowlmError(f"{path}: checkpoint metadata was modified (checksum mismatch)")
    if meta.get("version", 1) < 2 and "stage" in meta:  # version 1 counted stages from 0
        meta["stage"] += 1
    return meta


def require(meta: dict, path: Path, keys) -> None:
    """GrowlmError naming the first of `keys` that meta.json lacks or holds with a wrong type."""
    for key in keys:
        kind, value = META_TYPES[key], meta.get(key)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise GrowlmError(f"{path}: corrupted checkpoint metadata ({key!r} missing or not "
                              f"a {'JSON object' if kind is dict else kind.__name__})")


def verify_checkpoint(ckpt: Path, check_hashes: bool = True) -> dict:
    """Return meta if every listed file is present with the recorded size (and hash)."""
    meta = read_meta(ckpt)
    for name, info in meta["files"].items():
        f = ckpt / name
        if not f.is_file():
            raise GrowlmError(f"{ckpt}: incomplete checkpoint (missing {name})")
        if f.stat().st_size != info["bytes"]:
            raise GrowlmError(
                f"{f}: corrupted checkpoint file (size {f.stat().st_size}, expected {info['bytes']})")
        if check_hashes and sha256_file(f) != info["sha256"]:
            raise GrowlmError(f"{f}: corrupted checkpoint file (checksum mismatch)")
    if MODEL_FILE not in meta["files"] and "sharded" not in meta:
        raise GrowlmError(f"{ckpt}: incomplete checkpoint (no {MODEL_FILE})")
    return meta


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    """Complete-looking checkpoint folders, oldest first (temporaries are ignored)."""
    if not ckpt_root.is_dir():
        return []
    return sorted(p for p in ckpt_root.iterdir()
                  if p.is_dir() and p.name.startswith("step_") and (p / META_FILE).is_file())


def latest_valid(ckpt_root: Path) -> tuple[Path, dict] | None:
    """The newest checkpoint that verifies; damaged newer ones are skipped with a warning."""
    for ckpt in reversed(list_checkpoints(ckpt_root)):
        try:
            return ckpt, verify_checkpoint(ckpt)
        except GrowlmError as e:
            warnings.warn(f"skipping damaged checkpoint: {e}", stacklevel=2)
    return None


def prune_checkpoints(ckpt_root: Path, keep_last: int) -> None:
    """Keep the newest `keep_last` checkpoints plus every stage-boundary checkpoint."""
    ckpts = list_checkpoints(ckpt_root)
    for old in ckpts[:-keep_last] if keep_last else ckpts:
        try:
            if read_meta(old).get("stage_complete"):
                continue
        except GrowlmError:
            pass
        # Rename first: a crash halfway through rmtree must not leave a step_* folder that
        # still has its meta.json but lost some of its files.
        trash = ckpt_root / f".trash-{old.name}-{os.getpid()}"
        os.replace(old, trash)
        fault("checkpoint_prune")
        shutil.rmtree(trash, ignore_errors=True)
    for pattern in (".tmp-*", ".trash-*", ".old-*"):  # leftovers of a crash mid-write or mid-prune
        for tmp in ckpt_root.glob(pattern):
            shutil.rmtree(tmp, ignore_errors=True)


def _refuse_pickle(path: Path) -> None:
    with open(path, "rb") as f:
        head = f.read(4)
    if head[:1] == _PICKLE_MAGIC[0] or head == _PICKLE_MAGIC[1]:
        raise GrowlmError(f"{path}: is a pickle file; growlm loads weights only from safetensors")


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or a run folder (→ its newest valid checkpoint)."""
    path = Path(path)
    if not path.exists():
        raise GrowlmError(f"checkpoint not found: {path}")
    if path.is_file():
        _refuse_pickle(path)
        raise GrowlmError(f"{path}: expected a checkpoint or run folder, not a file")
    if (path / META_FILE).is_file():
        return path
    if (path / "checkpoints").is_dir():
        found = latest_valid(path / "checkpoints")
        if found is None:
            raise GrowlmError(f"{path}: run has no complete checkpoint")
        return found[0]
    raise GrowlmError(f"{path}: not a growlm run or checkpoint folder (no {META_FILE})")


def model_config(meta: dict, where: Path) -> ModelConfig:
    """The ModelConfig a checkpoint's meta.json records."""
    try:
        return ModelConfig(**meta["model"])
    except Exception:
        raise GrowlmError(f"{where / META_FILE}: invalid model config") from None


def load_model_state(path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor], dict]:
    """(config, weights, meta) of a checkpoint or of a run's newest valid checkpoint."""
    ckpt = resolve_checkpoint(path)
    meta = verify_checkpoint(ckpt)
    try:
        if "sharded" in meta:  # torch.distributed.checkpoint shards of an FSDP run
            state = read_sharded_model_state(ckpt, meta)
        else:
            state = load_file(ckpt / MODEL_FILE)
    except (SafetensorError, OSError, ValueError) as e:
        raise GrowlmError(f"{ckpt / MODEL_FILE}: unreadable weights ({e})") from None
    return model_config(meta, ckpt), state, meta


def load_train_state(ckpt: Path) -> dict:
    try:
        with warnings.catch_warnings():  # torch warns about odd pickles before refusing them
            warnings.simplefilter("ignore")
            state = torch.load(ckpt / STATE_FILE, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise GrowlmError(f"{ckpt}: incomplete checkpoint (no {STATE_FILE})") from None
    except Exception as e:  # UnpicklingError for anything but plain tensors and containers
        raise GrowlmError(f"{ckpt / STATE_FILE}: refused or unreadable training state ({type(e).__name__})") from None
    if not isinstance(state, dict):
        raise GrowlmError(f"{ckpt / STATE_FILE}: training state is a {type(state).__name__}, not a dict")
    return state


def read_sharded_model_state(ckpt_dir: Path, meta: dict) -> dict[str, torch.Tensor]:
    """The whole model of a sharded (FSDP, torch.distributed.checkpoint) checkpoint in this
    process, for export, eval or a later stage's `init`; reads files only, whether or not a
    process group exists. DCP's safetensors reader reads JSON headers, never a pickle."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint import HuggingFaceStorageReader
    from torch.distributed.checkpoint.api import CheckpointException

    sharded = meta["sharded"]
    shard_dir = ckpt_dir / sharded["dir"]
    metadata = HuggingFaceStorageReader(str(shard_dir)).read_metadata()
    tensors = {key: torch.empty(m.size, dtype=m.properties.dtype)
               for key, m in metadata.state_dict_metadata.items() if key.startswith("model.")}
    try:
        with warnings.catch_warnings():  # loading without a process group is intended here
            warnings.filterwarnings("ignore", message="torch.distributed is disabled")
            dcp.load(tensors, storage_reader=HuggingFaceStorageReader(str(shard_dir)), no_dist=True)
    except (CheckpointException, RuntimeError, AssertionError, KeyError) as e:
        raise GrowlmError(f"{shard_dir}: unreadable sharded weights ({type(e).__name__})") from None
    for alias, source in sharded.get("aliases", {}).items():
        tensors[alias] = tensors[source]
    return {key.removeprefix("model."): t for key, t in tensors.items()}
