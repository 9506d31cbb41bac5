"""The stage loop: build → train → checkpoint → grow → ... in one resumable run.

Exact resume: everything that decides the next loss (weights, optimizer, loader position,
RNG, stage index and step, ReLoRA counters) is in the checkpoint, and rebuilding a stage
draws its fresh weights from a per-stage generator, so a killed and resumed run gives
bit-identical losses on CPU.
"""

from __future__ import annotations

import contextlib
import json
import signal
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from growlm.errors import GrowlmError
from growlm.model.llama import cross_entropy
from growlm.stages import ResolvedStage, resolve_stages
from growlm.train import checkpoint as ckpt
from growlm.train.metrics import MetricsWriter
from growlm.train.stage import Rollback, StageRuntime
from growlm.units import human_bytes, human_count


class Stopped(Exception):
    """SIGTERM/SIGINT: a checkpoint was saved; the run resumes with --resume."""


@dataclass
class Counters:
    global_step: int = 0
    tokens: int = 0
    flops: int = 0
    flops_seed: int = 0
    bad_steps: int = 0
    skipped_steps: int = 0
    elapsed: float = 0.0
    last_val_loss: float | None = None
    history: list = field(default_factory=list)
    # non-finite rollbacks: total, and the LR multiplier they left on one stage
    rollbacks: int = 0
    stage_rollbacks: int = 0
    lr_scale: float = 1.0
    lr_scale_stage: int = -1

    def as_dict(self) -> dict:
        return {k: getattr(self, k) for k in ("global_step", "tokens", "flops", "flops_seed",
                                               "bad_steps", "skipped_steps", "elapsed", "last_val_loss",
                                               "rollbacks", "stage_rollbacks", "lr_scale", "lr_scale_stage")}

    def lr_scale_for(self, stage: int) -> float:
        return self.lr_scale if stage == self.lr_scale_stage else 1.0


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise GrowlmError("run.device = 'cuda' but no CUDA device is available")
    return torch.device(name)


def stages_fingerprint(cfg) -> str:
    """What must not change when a run resumes: shapes, stage list, batch and sequence length."""
    keep = {"model": cfg.model.model_dump(), "stage": [s.model_dump() for s in cfg.stage],
            "seq_len": cfg.data.seq_len, "global_batch_tokens": cfg.train.global_batch_tokens,
            "seed": cfg.run.seed}
    return json.dumps(keep, sort_keys=True, default=str)


class Trainer:
    def __init__(self, cfg, resume: bool = False, dist=None, quiet: bool = False):
        self.cfg = cfg
        self.stages: list[ResolvedStage] = resolve_stages(cfg)
        self.resume = resume
        self.quiet = quiet
        self.dist = dist  # growlm.train.distributed.Dist or None
        self.evals = None  # growlm.train.evals.ScheduledEvals when the recipe has [eval] tasks
        self.rank = dist.rank if dist else 0
        self.world = dist.world_size if dist else 1
        self.device = dist.device if dist else pick_device(cfg.run.device)
        self.out = cfg.out_dir
        self.ckpt_root = self.out / "checkpoints"
        self.counters = Counters()
        self._stop_signal: int | None = None
        seqs = cfg.train.global_batch_tokens // cfg.data.seq_len
        per_rank = cfg.train.micro_batch_size * self.world
        if seqs % per_rank:
            raise GrowlmError(
                f"train.global_batch_tokens / data.seq_len = {seqs} sequences per step is not divisible by "
                f"micro_batch_size × world size = {per_rank}")
        self.accum = seqs // per_rank

    # ------------------------------------------------------------------ setup
    def _log(self, msg: str) -> None:
        if self.rank == 0 and not self.quiet:
            from tqdm.auto import tqdm

            tqdm.write(msg)  # above a running progress bar, not through it

    def _open_data(self):
        from growlm.data.training import open_training_data

        data = open_training_data(self.cfg.data.train, self.cfg.data.val, self.cfg.data.seq_len,
                                  self.cfg.run.seed, rank=self.rank, world_size=self.world)
        if data.vocab_size > self.cfg.model.vocab_size:
            raise GrowlmError(
                f"data.train: shards use a tokenizer with {data.vocab_size} tokens but model.vocab_size is "
                f"{self.cfg.model.vocab_size} (prepare the data with the model's tokenizer or raise vocab_size)")
        self.tokenizer_path = data.tokenizer_path
        self.loader = data.loader
        self.val_tokens = data.val_tokens
        if self.cfg.eval.tasks:
            from growlm.train.evals import ScheduledEvals

            self.evals = ScheduledEvals(self.cfg.eval, self.tokenizer_path, self.val_tokens)

    def _check_run_dir(self) -> tuple[Path, dict] | None:
        run_file = self.out / "run.json"
        fingerprint = stages_fingerprint(self.cfg)
        with warnings.catch_warnings(record=True) as damaged:  # re-raised below, or summed up
            warnings.simplefilter("always")
            found = ckpt.latest_valid(self.ckpt_root) if self.ckpt_root.exists() else None
        has_any = bool(ckpt.list_checkpoints(self.ckpt_root))
        if has_any and not self.resume:
            raise GrowlmError(f"{self.out} already holds checkpoints; pass --resume to continue it, "
                              "or set run.name / run.out_dir for a new run")
        if run_file.is_file() and (self.resume or has_any):
            old = json.loads(run_file.read_text()).get("fingerprint")
            if old != fingerprint:
                raise GrowlmError(f"{self.out}: the recipe's model, stages, batch or seed changed since the run "
                                  "started; resume with the original recipe or start a new run")
        if self.resume and has_any and found is None:
            newest = str(damaged[0].message).removeprefix("skipping damaged checkpoint: ") if damaged else "?"
            raise GrowlmError(f"{self.ckpt_root}: no readable checkpoint to resume from; all {len(damaged)} "
                              f"are damaged (newest: {newest})")
        for w in damaged:  # falling back past damaged checkpoints: say which ones
            warnings.warn(w.message, stacklevel=2)
        if self.rank == 0:
            self.out.mkdir(parents=True, exist_ok=True)
            tmp = run_file.with_suffix(".tmp")
            tmp.write_text(json.dumps({"fingerprint": fingerprint, "config": self.cfg.model_dump(mode="json")},
                                      indent=1))
            tmp.replace(run_file)
        return found

    # ------------------------------------------------------------------ main loop
    def run(self) -> dict:
        self._open_data()  # first: bad data must not leave a run directory behind
        found = self._check_run_dir()
        if found is None and self.rank == 0:  # before a new run starts: will its checkpoints fit?
            from growlm.train.disk import check_disk_budget

            check_disk_budget(self.cfg, self.stages, self.out, self.tokenizer_path)
        metrics_path = self.out / "metrics.jsonl"
        prev, start, resume_state = self._restore(found, metrics_path)
        self.metrics = self._open_metrics(metrics_path)
        old_handlers = self._install_signals()
        try:
            while True:
                try:
                    for stage in self.stages[start:]:
                        runtime = StageRuntime(self, stage, prev, resume_state)
                        prev = runtime.train()
                        resume_state = None
                    break
                except Rollback as rb:
                    prev, start, resume_state = self._rollback(rb, metrics_path)
        finally:
            self._restore_signals(old_handlers)
            if self.metrics:
                self.metrics.close()
        return self.summary()

    def _open_metrics(self, metrics_path: Path) -> MetricsWriter | None:
        if self.rank != 0:
            return None
        return MetricsWriter(metrics_path, self.cfg.run.tensorboard, self.cfg.run.wandb, self.cfg.run.name)

    def _restore(self, found: tuple[Path, dict] | None, metrics_path: Path):
        """(prev, start stage, resume_state) from a checkpoint, or a fresh start when None."""
        if found is None:
            if self.rank == 0 and metrics_path.exists():
                metrics_path.unlink()  # records of an attempt that never reached a checkpoint
            return None, 0, None
        path, meta = found
        train_state = ckpt.load_train_state(path)
        self.counters = Counters(**train_state["counters"])
        if self.rank == 0:
            MetricsWriter.truncate(metrics_path, meta["global_step"], meta["stage"])
        self._log(f"resuming from {path} (stage {meta['stage'] + 1}, step {meta['global_step']})")
        if meta.get("stage_complete"):
            cfg, state, _ = ckpt.load_model_state(path)
            self._last_opt = train_state.get("named_optimizer") or {}
            self.loader.load_state_dict(train_state["loader"])
            self._restore_rng(train_state)
            return (cfg, state), meta["stage"] + 1, None
        return None, meta["stage"], (path, meta, train_state)

    def _rollback(self, rb: Rollback, metrics_path: Path):
        """train.nonfinite = "rollback": reload the newest checkpoint, scale this stage's LR by
        train.rollback_lr_factor (again for each further rollback in the stage), and move the
        loader past the offending batch. The checkpoint brings back the loader position and RNG,
        so without that skip a data-caused NaN would recur at the same step for ever."""
        old, tcfg = self.counters, self.cfg.train
        n = old.stage_rollbacks + 1 if old.lr_scale_stage == rb.stage else 1
        if n > tcfg.max_rollbacks:
            raise GrowlmError(f"training diverged: non-finite loss/gradient at step {rb.step} after {n - 1} "
                              f"rollbacks in stage {rb.stage + 1} (train.max_rollbacks = {tcfg.max_rollbacks}; "
                              "lower the LR or check the data)")
        if self.metrics:
            self.metrics.close()
        found = ckpt.latest_valid(self.ckpt_root)
        self.counters = Counters()
        restored = self._restore(found, metrics_path)
        c = self.counters
        c.rollbacks, c.skipped_steps = old.rollbacks + 1, old.skipped_steps
        c.stage_rollbacks, c.lr_scale_stage = n, rb.stage
        c.lr_scale = tcfg.rollback_lr_factor ** n
        self._skip_to = (rb.stage, rb.position)
        self.metrics = self._open_metrics(metrics_path)
        back_to = found[1]["global_step"] if found else 0
        if self.metrics:
            self.metrics.log({"kind": "rollback", "stage": rb.stage, "step": back_to, "bad_step": rb.step,
                              "lr_scale": c.lr_scale, "loader_position": rb.position, "rollbacks": c.rollbacks})
        if self.rank == 0:
            print(f"warning: {rb} (stage {rb.stage + 1}); rolled back to step {back_to}, LR × {c.lr_scale:g} "
                  f"for the rest of the stage, skipping the data up to sequence {rb.position}", flush=True)
        return restored

    def summary(self) -> dict:
        c = self.counters
        return {"out_dir": str(self.out), "steps": c.global_step, "tokens": c.tokens, "flops": c.flops,
                "flops_seed": c.flops_seed, "val_loss": c.last_val_loss, "skipped_steps": c.skipped_steps,
                "rollbacks": c.rollbacks, "elapsed_s": c.elapsed, "tokens_per_s": c.tokens / max(c.elapsed, 1e-9)}

    # ------------------------------------------------------------------ helpers used by stages
    def autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    @torch.no_grad()
    def val_loss(self, model) -> float | None:
        if self.val_tokens is None:
            return None
        seq, bs = self.cfg.data.seq_len, self.cfg.train.micro_batch_size
        n_seq = min(self.cfg.run.eval_tokens // seq, (len(self.val_tokens) - 1) // seq)
        n_seq = max(n_seq, 1)
        was_training = model.training
        model.eval()
        total, count = 0.0, 0
        for start in range(0, n_seq, bs):
            rows = range(start, min(start + bs, n_seq))
            chunk = torch.stack([torch.from_numpy(self.val_tokens[r * seq: r * seq + seq + 1].astype("int64"))
                                 for r in rows]).to(self.device)
            with self.autocast():
                logits = model(chunk[:, :-1])
            total += cross_entropy(logits, chunk[:, 1:]).item() * len(rows)
            count += len(rows)
        model.train(was_training)
        return total / count

    def rng_state(self) -> dict:
        state = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def _restore_rng(self, train_state: dict) -> None:
        rng = train_state["rng"]
        torch.set_rng_state(rng["torch"])
        if "cuda" in rng and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(rng["cuda"])

    def save(self, stage: ResolvedStage, stage_step: int, model, opt, extra: dict, stage_complete: bool,
             provenance: dict, adapters: dict | None) -> None:
        sharded = self.dist is not None and self.dist.sharded
        state = {"optimizer": opt.state_dict() if opt is not None and not sharded else {},
                 "loader": self.loader.state_dict(), "rng": self.rng_state(),
                 "counters": self.counters.as_dict(), **extra}
        meta = {"model": stage.model.model_dump(), "stage": stage.index, "stage_name": stage.name,
                "global_step": self.counters.global_step, "stage_step": stage_step,
                "tokens": self.counters.tokens, "flops": self.counters.flops,
                "stage_complete": stage_complete, "provenance": provenance, "adapters": adapters}
        if sharded:  # every rank writes its shards (growlm.train.dcp)
            from growlm.train.dcp import save_sharded

            path = save_sharded(self, model, opt, state, meta)
        elif self.rank == 0:
            path = ckpt.save_checkpoint(self.ckpt_root, self.counters.global_step, model.state_dict(), state,
                                        meta, tokenizer=self.tokenizer_path)
        if self.rank == 0:
            ckpt.prune_checkpoints(self.ckpt_root, self.cfg.run.keep_last)
            self._log(f"checkpoint {path}")
        if self.dist:
            self.dist.barrier()

    # ------------------------------------------------------------------ signals
    def _install_signals(self):
        def handler(signum, _frame):
            self._stop_signal = signum
        old = {}
        for sig in (signal.SIGTERM, signal.SIGINT):
            try:
                old[sig] = signal.signal(sig, handler)
            except ValueError:  # not the main thread
                pass
        return old

    def _restore_signals(self, old) -> None:
        for sig, h in old.items():
            signal.signal(sig, h)

    @property
    def stop_requested(self) -> bool:
        # Ranks may see a signal at different steps; they must agree, or one would enter the
        # checkpoint's collectives while another enters the next step's.
        local = self._stop_signal is not None
        return self.dist.any(local) if self.dist else local

    def plain_state(self, model) -> dict:
        """The model's whole state as CPU tensors (gathered from the shards under FSDP)."""
        if self.dist is not None and self.dist.sharded:
            return self.dist.full_state(model)
        return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def describe_stage(stage: ResolvedStage, params: dict, fpt: dict, mem: dict, opt_state: str) -> str:
    return (f"stage {stage.index + 1} '{stage.name}': {stage.model.n_layers} layers × d{stage.model.d_model}, "
            f"{stage.steps} steps (schedule horizon {stage.schedule_steps}), lr {stage.lr:g} | params "
            f"trainable {human_count(params['trainable'])}, frozen {human_count(params['frozen'])}, adapter "
            f"{human_count(params['adapter'])} | FLOPs/token exact {human_count(fpt['exact'])} "
            f"(seed formula {human_count(fpt['seed'])}) | model-state memory est. "
            f"{human_bytes(mem['estimated_bytes'])} | optimizer state {opt_state}")


