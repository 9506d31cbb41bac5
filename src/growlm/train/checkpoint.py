"""Atomic, verifiable checkpoints.

A checkpoint is a directory written under a temporary name and renamed into place once
every file is on disk, so a crash never leaves a directory that looks complete. meta.json
(written last) records each file's size and sha256; loading verifies them, and resume falls
back to the previous checkpoint when the newest is damaged. Weights are safetensors; the
rest of the training state is loaded with ``weights_only=True``: nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import warnings
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from growlm.errors import GrowlmError
from growlm.model.config import ModelConfig

FORMAT = "growlm-checkpoint"
MODEL_FILE, STATE_FILE, META_FILE, TOKENIZER_FILE = (
    "model.safetensors", "train_state.pt", "meta.json", "tokenizer.json")
_PICKLE_MAGIC = (b"\x80", b"PK\x03\x04")  # raw pickle protocol header, torch zip archive


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


_fault_hits: dict[str, int] = {}


def fault(point: str) -> None:
    """Test hook: GROWLM_FAULT=<point>[:N[:kill]] ends the process the N-th time it passes
    here (only the rank GROWLM_FAULT_RANK when that is set): os._exit(17), or SIGKILL with
    ":kill". Points: train_step (after backward, before the optimizer step), relora_merge
    (before a ReLoRA merge-and-reset), checkpoint_mid_write, checkpoint_before_rename,
    checkpoint_prune (an old checkpoint renamed aside, not yet deleted), stage_boundary (right
    after a stage's boundary checkpoint)."""
    spec = os.environ.get("GROWLM_FAULT")
    if not spec:
        return
    only = os.environ.get("GROWLM_FAULT_RANK")
    if only is not None and only != os.environ.get("RANK", "0"):
        return
    name, _, rest = spec.partition(":")
    nth, _, how = rest.partition(":")
    if name == point:
        _fault_hits[point] = _fault_hits.get(point, 0) + 1
        if _fault_hits[point] == int(nth or 1):
            if how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            os._exit(17)


def checkpoint_name(global_step: int) -> str:
    return f"step_{global_step:08d}"


def save_checkpoint(ckpt_root: Path, global_step: int, model_state: dict | None, train_state: dict,
                    meta: dict, tokenizer: Path | None = None, *, tmp: Path | None = None,
                    known_files: dict | None = None) -> Path:
    """`tmp`/`known_files`: a temporary directory other ranks already wrote shards into, and
    those shards' {relative path: {bytes, sha256}} (growlm.train.dcp); `model_state` is then None."""
    ckpt_root.mkdir(parents=True, exist_ok=True)
    final = ckpt_root / checkpoint_name(global_step)
    if tmp is None:
        tmp = ckpt_root / f".tmp-{final.name}-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
    try:
        _write_files(tmp, model_state, train_state, meta, tokenizer, known_files)
    except BaseException:  # e.g. a full disk: leave no half-written directory behind
        shutil.rmtree(tmp, ignore_errors=True)
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
        files[f.name] = {"bytes": f.stat().st_size, "sha256": _sha256(f)}
    meta = {"format": FORMAT, "version": 1, **meta, "files": files}
    (tmp / META_FILE).write_text(json.dumps(meta, indent=1))
    _fsync(tmp / META_FILE)


def read_meta(ckpt: Path) -> dict:
    path = ckpt / META_FILE
    if not path.is_file():
        raise GrowlmError(f"{ckpt}: incomplete checkpoint (no {META_FILE})")
    try:
        meta = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise GrowlmError(f"{path}: corrupted checkpoint metadata") from None
    if meta.get("format") != FORMAT:
        raise GrowlmError(f"{ckpt}: not a growlm checkpoint (format {meta.get('format')!r})")
    return meta


def verify_checkpoint(ckpt: Path, check_hashes: bool = True) -> dict:
    """Return meta if every listed file is present with the recorded size (and hash)."""
    meta = read_meta(ckpt)
    for name, info in meta.get("files", {}).items():
        f = ckpt / name
        if not f.is_file():
            raise GrowlmError(f"{ckpt}: incomplete checkpoint (missing {name})")
        if f.stat().st_size != info["bytes"]:
            raise GrowlmError(
                f"{f}: corrupted checkpoint file (size {f.stat().st_size}, expected {info['bytes']})")
        if check_hashes and _sha256(f) != info["sha256"]:
            raise GrowlmError(f"{f}: corrupted checkpoint file (checksum mismatch)")
    if MODEL_FILE not in meta.get("files", {}) and "sharded" not in meta:
        raise GrowlmError(f"{ckpt}: incomplete checkpoint (no {MODEL_FILE})")
    return meta


def list_checkpoints(ckpt_root: Path) -> list[Path]:
    """Complete-looking checkpoint dirs, oldest first (temporaries are ignored)."""
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
        # Rename first: a crash halfway through rmtree must not leave a step_* directory that
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
    """A checkpoint dir, or a run dir (→ its newest valid checkpoint)."""
    path = Path(path)
    if not path.exists():
        raise GrowlmError(f"checkpoint not found: {path}")
    if path.is_file():
        _refuse_pickle(path)
        raise GrowlmError(f"{path}: expected a checkpoint or run directory, not a file")
    if (path / META_FILE).is_file():
        return path
    if (path / "checkpoints").is_dir():
        found = latest_valid(path / "checkpoints")
        if found is None:
            raise GrowlmError(f"{path}: run has no complete checkpoint")
        return found[0]
    raise GrowlmError(f"{path}: not a growlm run or checkpoint directory (no {META_FILE})")


def load_model_state(path: str | Path) -> tuple[ModelConfig, dict[str, torch.Tensor], dict]:
    ckpt = resolve_checkpoint(path)
    meta = verify_checkpoint(ckpt)
    try:
        if "sharded" in meta:  # torch.distributed.checkpoint shards of an FSDP run
            from growlm.train.dcp import read_model_state

            state = read_model_state(ckpt, meta)
        else:
            state = load_file(ckpt / MODEL_FILE)
    except (SafetensorError, OSError, ValueError) as e:
        raise GrowlmError(f"{ckpt / MODEL_FILE}: unreadable weights ({e})") from None
    try:
        cfg = ModelConfig(**meta["model"])
    except Exception:
        raise GrowlmError(f"{ckpt / META_FILE}: invalid model config") from None
    return cfg, state, meta


def load_train_state(ckpt: Path) -> dict:
    try:
        with warnings.catch_warnings():  # torch warns about odd pickles before refusing them
            warnings.simplefilter("ignore")
            return torch.load(ckpt / STATE_FILE, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise GrowlmError(f"{ckpt}: incomplete checkpoint (no {STATE_FILE})") from None
    except Exception as e:  # UnpicklingError for anything but plain tensors and containers
        raise GrowlmError(f"{ckpt / STATE_FILE}: refused or unreadable training state ({type(e).__name__})") from None
