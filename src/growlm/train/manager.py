"""What a training checkpoint holds, saved and restored through one manager.

Every piece of state that decides the next loss is a Stateful object — it has `state_dict()` and
`load_state_dict()` — and the manager stores each under its name in train_state.pt:

    model       model.safetensors (or FSDP shards, growlm.train.dcp)
    optimizer   the stage's optimizer (mid-stage checkpoints)
    moments     optimizer state by parameter name (boundary checkpoints, when the next stage maps it)
    loader      the data loader's position
    rng         the global generators (growlm.train.state.RNGState)
    counters    steps, tokens, FLOPs, rollbacks (growlm.train.state.Counters)
    relora      ReLoRA's reset count

A boundary checkpoint (`stage_complete`) is the stage's `HandOff` on disk: plain weights plus
the moments. meta.json records the stage, steps, the recipe's fingerprint and the provenance;
the folder format itself is growlm.checkpoint's.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

from growlm import checkpoint as ckpt
from growlm.errors import GrowlmError
from growlm.faults import fault

REQUIRED = {"loader": dict, "rng": dict, "counters": dict}


@dataclass
class Saved:
    """A checkpoint read back: where it is, its meta.json and its train_state.pt."""

    path: Path
    meta: dict
    state: dict

    @property
    def stage_index(self) -> int:
        return self.meta["stage"] - 1

    @property
    def complete(self) -> bool:
        return bool(self.meta["stage_complete"])


class CheckpointManager:
    def __init__(self, root: Path, keep_last: int, fingerprint: str, dist=None,
                 tokenizer: Path | None = None, log=print):
        self.root, self.keep_last, self.fingerprint = Path(root), keep_last, fingerprint
        self.dist, self.tokenizer, self.log = dist, tokenizer, log
        self.rank = dist.rank if dist else 0

    # ------------------------------------------------------------------ save
    def save(self, *, step: int, stage, stage_step: int, counters, states: dict, weights=None,
             built=None, complete: bool = False) -> Path | None:
        """Write checkpoint `step`. `built` (a BuiltStage) gives the provenance, and mid-stage the
        model and optimizer; at the boundary (`complete`) `weights` are the hand-off's plain
        weights and `states` hold its moments. Every rank calls this; the path is returned on
        rank 0."""
        train_state = {name: obj.state_dict() if hasattr(obj, "state_dict") else obj
                       for name, obj in states.items()}
        meta = {"model": stage.model.model_dump(), "stage": stage.number, "stage_name": stage.name,
                "global_step": step, "stage_step": stage_step, "tokens": counters.tokens,
                "flops": counters.flops, "stage_complete": complete, "fingerprint": self.fingerprint,
                "provenance": built.provenance if built is not None else {},
                "adapters": built.adapter_info() if built is not None and not complete else None}
        sharded = self.dist is not None and self.dist.sharded
        path = None
        if not complete:
            if sharded:
                from growlm.train.dcp import save_sharded

                path = save_sharded(self.dist, self.root, step, built.model, built.optimizer, train_state,
                                    meta, self.tokenizer)
            else:
                train_state["optimizer"] = built.optimizer.state_dict()
                if self.rank == 0:
                    path = ckpt.save_checkpoint(self.root, step, built.model.state_dict(), train_state, meta,
                                                tokenizer=self.tokenizer)
        elif self.rank == 0:
            path = ckpt.save_checkpoint(self.root, step, weights, train_state, meta, tokenizer=self.tokenizer)
        if self.rank == 0:
            ckpt.prune_checkpoints(self.root, self.keep_last)
            self.log(f"checkpoint {path}")
        if self.dist:
            self.dist.barrier()
        if complete:
            fault("stage_boundary")
        return path

    # ------------------------------------------------------------------ read
    def all(self) -> list[Path]:
        return ckpt.list_checkpoints(self.root)

    def latest(self) -> tuple[Saved | None, list[str]]:
        """The newest checkpoint that verifies and belongs to this recipe, and the messages of
        the damaged ones skipped on the way."""
        with warnings.catch_warnings(record=True) as damaged:
            warnings.simplefilter("always")
            found = ckpt.latest_valid(self.root)
        skipped = [str(w.message) for w in damaged]
        if found is None:
            return None, skipped
        path, meta = found
        ckpt.require(meta, path / ckpt.META_FILE, ckpt.META_TYPES)
        if meta.get("fingerprint") not in (None, self.fingerprint):
            raise GrowlmError(f"{path}: this checkpoint was written by a recipe with other settings "
                              "(model, stages, data, batch, optimizer, schedule or seed); resume with "
                              "the original recipe and --set values, or start a new run")
        return Saved(path, meta, self.read_state(path)), skipped

    @staticmethod
    def read_state(path: Path) -> dict:
        state = ckpt.load_train_state(path)
        for key, kind in REQUIRED.items():
            if not isinstance(state.get(key), kind):
                raise GrowlmError(f"{path / ckpt.STATE_FILE}: training state lacks {key!r} "
                                  f"(a {kind.__name__}); the checkpoint is damaged")
        return state

    @staticmethod
    def weights(saved: Saved) -> dict | None:
        """A mid-stage checkpoint's whole weights, or None when they are FSDP shards (those are
        read into the sharded model by `restore_stage`)."""
        if "sharded" in saved.meta:
            return None
        return ckpt.load_model_state(saved.path)[1]

    def restore_stage(self, built, saved: Saved) -> None:
        """Load a mid-stage checkpoint's optimizer state and ReLoRA count (and its weights, when
        sharded) into a stage rebuilt with the same structure (growlm.train.boundary.rebuild_stage)."""
        state = saved.state
        if "sharded" in saved.meta:
            from growlm.train.dcp import load_sharded

            load_sharded(saved.path, saved.meta, state, built.model, built.optimizer)
        else:
            try:
                built.optimizer.load_state_dict(state["optimizer"])
            except (RuntimeError, KeyError, ValueError) as e:
                first = str(e).strip().splitlines()[0][:200] if str(e).strip() else type(e).__name__
                raise GrowlmError(f"{saved.path}: checkpoint does not fit the stage's model or "
                                  f"optimizer ({first}); resume with the recipe that wrote it") from None
        if built.relora is not None and "relora" in state:
            built.relora.load_state_dict(state["relora"])
        built.opt_state = "restored"
