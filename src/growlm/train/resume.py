"""Read-only checks of a run folder and of the checkpoint a run resumes from.

They run before the trainer writes anything (run.json, metrics.jsonl, a checkpoint), so a
folder that cannot be continued is refused in one line and left exactly as it was. A
checkpoint's meta.json is covered by its own checksum and its fingerprint must equal the
recipe's; these checks add what the checksum cannot prove: that the checkpoint's stage, steps,
model, provenance, weights and training state are ones this recipe can have written, and that
its data position belongs to the data the recipe now reads.
"""

from __future__ import annotations

import numbers
from pathlib import Path

from growlm import checkpoint as ckpt
from growlm.errors import GrowlmError

RUN_FILES = {"checkpoints": True, "run.json": False, "metrics.jsonl": False}  # name: is a folder


def check_run_folder(out: Path) -> None:
    """The run folder can be written, and what it already holds has the right kind: a file
    where growlm keeps a file, a folder where it keeps a folder."""
    from growlm.files import check_output_dir

    check_output_dir(out, "run folder")
    for name, folder in RUN_FILES.items():
        path = Path(out) / name
        if path.exists() and path.is_dir() != folder:
            want, got = ("a folder", "a file") if folder else ("a file", "a folder")
            raise GrowlmError(f"{path}: is {got}, but a run keeps {want} there; move it away or "
                              "use another run folder")


def check_resumable(saved, stages, checked, loader) -> None:
    """GrowlmError naming the file and field when checkpoint `saved` (a manager.Saved) cannot be
    the state of this recipe's run. `stages`: the resolved stages; `checked`: the stages built on
    the meta device (boundary.check_recipe); `loader`: the data loader the run reads."""
    meta, where = saved.meta, saved.path / ckpt.META_FILE
    n = len(stages)
    if not 1 <= meta["stage"] <= n:
        raise GrowlmError(f"{where}: stage {meta['stage']} is not a stage of the recipe (1..{n})")
    index = meta["stage"] - 1
    stage = stages[index]
    lo, hi = (stage.steps, stage.steps) if saved.complete else (1, stage.steps - 1)
    if not lo <= meta["stage_step"] <= hi:
        raise GrowlmError(f"{where}: stage_step {meta['stage_step']} is outside stage {stage.number}'s "
                          f"{'final step' if saved.complete else 'steps'} ({lo}..{hi})")
    expected = sum(s.steps for s in stages[:index]) + meta["stage_step"]
    if meta["global_step"] != expected:
        raise GrowlmError(f"{where}: global_step {meta['global_step']} does not follow from stage "
                          f"{stage.number}, step {meta['stage_step']} (expected {expected})")
    _check_model(meta, stage, where)
    _check_provenance(meta["provenance"], checked[index].provenance, where)
    if "sharded" not in meta:
        _check_weights(saved, stage, checked[index])
    _check_state(saved, loader, meta["global_step"])


def _check_model(meta: dict, stage, where: Path) -> None:
    from pydantic import ValidationError

    from growlm.model.config import ModelConfig

    try:
        model = ModelConfig.model_validate(meta["model"])
    except ValidationError as e:
        raise GrowlmError(f"{where}: model is not a valid model config "
                          f"({e.errors()[0]['msg']})") from None
    if model != stage.model:
        raise GrowlmError(f"{where}: model is not stage {stage.number}'s model in the recipe")


def _check_provenance(found: dict, built: dict, where: Path) -> None:
    """Same parameter names as the stage the recipe builds, each with a well-formed entry (a
    resumed stage freezes "inherited" parameters by reading it)."""
    if set(found) != set(built):
        extra = sorted(set(found) ^ set(built))[0]
        raise GrowlmError(f"{where}: provenance does not list the stage's parameters (e.g. {extra})")
    for name, entry in found.items():
        if (not isinstance(entry, dict) or not isinstance(entry.get("inherited"), bool)
                or not isinstance(entry.get("kind"), str)
                or not all(isinstance(s, str) for s in entry.get("sources") or [])):
            raise GrowlmError(f"{where}: provenance.{name} is malformed (needs kind, sources, inherited)")


def _check_weights(saved, stage, built) -> None:
    """Names and shapes of model.safetensors (read from its header, no tensor is loaded)."""
    from safetensors import SafetensorError, safe_open

    from growlm.grow.common import expected_shapes

    path = saved.path / ckpt.MODEL_FILE
    want = (expected_shapes(stage.model) if saved.complete
            else {k: v.shape for k, v in built.model.state_dict().items()})
    try:
        with safe_open(str(path), framework="pt") as f:
            have = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as e:
        raise GrowlmError(f"{path}: unreadable weights ({e})") from None
    for name in sorted(set(want) | set(have)):
        if name not in have or name not in want or tuple(want[name]) != have[name]:
            got = have.get(name, "missing")
            raise GrowlmError(f"{path}: tensor {name} is {got}, but stage {stage.number}'s model "
                              f"needs {tuple(want[name]) if name in want else 'no such tensor'}")


def _check_state(saved, loader, global_step: int) -> None:
    where = saved.path / ckpt.STATE_FILE
    state = saved.state
    data = state["loader"]
    ours = loader.state_dict()
    for key in ("kind", "fingerprint", "seed", "position"):  # what loading reads, as this loader has it
        if key not in ours:
            continue
        value, kind = data.get(key), numbers.Integral if isinstance(ours[key], numbers.Integral) else str
        if isinstance(value, bool) or not isinstance(value, kind) or (kind is not str and value < 0):
            raise GrowlmError(f"{where}: loader.{key} is missing or malformed ({value!r})")
    if data.get("fingerprint", getattr(loader, "fingerprint", None)) != getattr(loader, "fingerprint", None):
        raise GrowlmError(f"{where}: the data position belongs to other data than the recipe now reads "
                          "(the shards at data.train were prepared again, or data.seq_len changed); "
                          "resume with the data the run trained on, or start a new run")
    for key, value in state["counters"].items():  # a NaN validation loss is a number too
        if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
            raise GrowlmError(f"{where}: counters.{key} is not a number ({value!r})")
    if state["counters"].get("global_step") != global_step:
        raise GrowlmError(f"{where}: counters.global_step {state['counters'].get('global_step')!r} "
                          f"disagrees with meta.json's global_step {global_step}")
    import torch

    if not torch.is_tensor(state["rng"].get("torch")) or state["rng"]["torch"].dtype != torch.uint8:
        raise GrowlmError(f"{where}: rng.torch is not a generator state")
