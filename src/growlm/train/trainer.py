"""The stage loop: check → build → train → hand over → ... in one resumable run.

Before anything is written, every stage of the recipe is built on the meta device through the
same boundary the run uses (growlm.train.boundary.check_recipe), and the data and the run folder
are checked, so a recipe that cannot finish fails before its first step.

Exact resume: everything that decides the next loss (weights, optimizer, loader position, RNG,
stage and step, ReLoRA's reset count) is in the checkpoint, and a stage's fresh weights come
from a per-stage generator, so a killed and resumed run gives bit-identical losses on CPU.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import time
from pathlib import Path

import torch

from growlm.errors import GrowlmError
from growlm.stages import resolve_stages
from growlm.train import boundary, growth
from growlm.train.hooks import (
    CompileWatch,
    FaultInjection,
    ModelStateBytes,
    PeakMemoryProbe,
    Progress,
)
from growlm.train.manager import CheckpointManager, Saved
from growlm.train.metrics import MetricsWriter
from growlm.train.state import Counters, RNGState
from growlm.train.step import IGNORE_INDEX, token_loss_sum, train_step

PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12}  # bf16 dense


class Stopped(Exception):
    """SIGTERM/SIGINT: a checkpoint was saved; the run resumes with --resume."""

    def __init__(self, signum: int, step: int):
        self.signum, self.step = signum, step
        name = signal.Signals(signum).name if signum in signal.Signals._value2member_map_ else signum
        super().__init__(f"stopped by {name} at step {step}; a checkpoint was saved")

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class Rollback(Exception):
    """A non-finite step under `train.nonfinite = "rollback"`: the trainer reloads the last
    checkpoint. `position` is the loader position just past the offending batch."""

    def __init__(self, stage_index: int, step: int, position: int):
        super().__init__(f"non-finite loss/gradient at step {step}")
        self.stage_index, self.step, self.position = stage_index, step, position


def pick_device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise GrowlmError("run.device = 'cuda' but no CUDA device is available")
    return torch.device(name)


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


def stages_fingerprint(cfg) -> str:
    """Every setting that changes the numbers a run computes. A run resumes only with the
    same fingerprint; it is kept in run.json and in every checkpoint. Left out: where and how
    often things are written or logged, and how the work is spread (micro-batch size, ranks,
    activation checkpointing), which change memory and speed, not the result."""
    keep = {"model": cfg.model.model_dump(), "stage": [s.model_dump() for s in cfg.stage],
            "data": cfg.data.model_dump(), "optim": cfg.optim.model_dump(),
            "schedule": cfg.schedule.model_dump(),
            "train": cfg.train.model_dump(exclude={"micro_batch_size"}), "seed": cfg.run.seed}
    return json.dumps(keep, sort_keys=True, default=str)


class Trainer:
    """Runs a recipe's stages. `hooks`: extra growlm.train.hooks.Hook objects (the command
    layer adds the `[eval]` benchmarks this way)."""

    def __init__(self, cfg, resume: bool = False, dist=None, quiet: bool = False, hooks=()):
        self.cfg = cfg
        self.stages = resolve_stages(cfg, cfg.source)
        self.checked = boundary.check_recipe(cfg, self.stages)  # every stage, on meta, first
        growth.check_runtime(self.stages, dist, cfg.run)
        if cfg.eval.tasks and not any(getattr(h, "scores_benchmarks", False) for h in hooks):
            raise GrowlmError("eval.tasks: this trainer was built without the benchmark hook; "
                              "run the recipe with growlm train (or pass growlm.eval.scheduled hooks)")
        self.resume, self.quiet, self.dist = resume, quiet, dist
        self.rank = dist.rank if dist else 0
        self.world = dist.world_size if dist else 1
        self.verbose = self.rank == 0 and not quiet
        self.device = dist.device if dist else pick_device(cfg.run.device)
        self.out = cfg.out_dir
        self.ckpt_root = self.out / "checkpoints"
        self.counters, self.rng = Counters(), RNGState()
        self.faults, self.state_bytes = FaultInjection(), ModelStateBytes()
        self.probe = PeakMemoryProbe(cfg.run.memory_probe_steps, cfg.run.memory_probe_every, self.device)
        self.hooks = [Progress(cfg.run.log_every), self.state_bytes, self.probe, *hooks]
        self.compile_watch = CompileWatch() if cfg.run.compile else None
        if self.compile_watch is not None:
            self.hooks.append(self.compile_watch)
        self.metrics: MetricsWriter | None = None
        self._stop_signal: int | None = None
        self._skip_to: tuple[int, int] | None = None  # (stage index, loader position) after a rollback
        self.accounting: dict = {}
        seqs = cfg.train.global_batch_tokens // cfg.data.seq_len
        per_rank = cfg.train.micro_batch_size * self.world
        if seqs % per_rank:
            raise GrowlmError(
                f"train.global_batch_tokens / data.seq_len = {seqs} sequences per step is not divisible by "
                f"micro_batch_size × world size = {per_rank}")
        self.accum = seqs // per_rank
        from growlm.train.parallel import Parallelism, check_compile

        if cfg.run.compile:
            check_compile(self.device)
        self.parallel = Parallelism(cfg.run, dist, self.device)

    # ------------------------------------------------------------------ output
    def log(self, msg: str) -> None:
        if self.verbose:
            from growlm.progress import log_line

            log_line(msg)

    def warn(self, msg: str) -> None:
        if self.rank == 0:
            print(f"warning: {msg}", flush=True)

    # ------------------------------------------------------------------ data
    def _open_data(self):
        from growlm.data.training import open_training_data

        data = open_training_data(self.cfg.data.train, self.cfg.data.val, self.cfg.data.seq_len,
                                  self.cfg.run.seed, rank=self.rank, world_size=self.world)
        if data.vocab_size > self.cfg.model.vocab_size:
            raise GrowlmError(
                f"data.train: shards use a tokenizer with {data.vocab_size} tokens but model.vocab_size is "
                f"{self.cfg.model.vocab_size} (prepare the data with the model's tokenizer or raise vocab_size)")
        if self.cfg.stage[0].init is not None:
            from growlm.init_source import check_init_tokenizer

            check_init_tokenizer(self.cfg.stage[0].init, data.tokenizer_sha256,
                                 f"{self.cfg.source}: stage.1.init")
        self.tokenizer_path = data.tokenizer_path
        self.train_tokens = data.tokens_available
        self.loader = data.loader
        self.val_tokens = data.val_tokens

    def _data_notes(self) -> list[str]:
        """Warnings about the data a recipe will read (printed once at a fresh start)."""
        planned = sum(s.tokens for s in self.stages)
        available = getattr(self, "train_tokens", None)
        if not available or planned <= 2 * available:
            return []
        return [f"the stages read {planned:,} tokens, about {planned / available:,.0f} passes over "
                f"data.train's {available:,} tokens; the data will repeat"]

    # ------------------------------------------------------------------ run folder
    def _check_run_dir(self, manager: CheckpointManager) -> Saved | None:
        """Read-only checks of an existing run folder; returns the checkpoint to resume from."""
        from growlm.files import read_json
        from growlm.train.resume import check_resumable, check_run_folder

        check_run_folder(self.out)
        run_file = self.out / "run.json"
        has_any = bool(manager.all())
        if has_any and not self.resume:
            raise GrowlmError(f"{self.out} already holds checkpoints; pass --resume to continue it, "
                              "or set run.name / run.out_dir for a new run")
        if run_file.is_file() and (self.resume or has_any):
            old = read_json(run_file, "run record").get("fingerprint")
            if old != manager.fingerprint:
                raise GrowlmError(f"{self.out}: the recipe's settings changed since the run started (model, "
                                  "stages, data, optimizer, schedule, batch or seed); resume with the original "
                                  "recipe and --set values, or start a new run")
        saved, damaged = manager.latest()
        if self.resume and has_any and saved is None:
            newest = damaged[0].removeprefix("skipping damaged checkpoint: ") if damaged else "?"
            raise GrowlmError(f"{self.ckpt_root}: no readable checkpoint to resume from; all {len(damaged)} "
                              f"are damaged (newest: {newest})")
        if saved is not None:
            check_resumable(saved, self.stages, self.checked, self.loader)
        for msg in damaged:  # falling back past damaged checkpoints: say which ones
            self.warn(msg)
        if self.resume and saved is None:
            self.log(f"--resume: {self.out} has no checkpoint yet; starting from the beginning")
        return saved

    def _write_run_record(self) -> None:
        from growlm.files import atomic_write_json

        record = {"fingerprint": stages_fingerprint(self.cfg), "recipe": self.cfg.source,
                  "config": self.cfg.model_dump(mode="json")}
        atomic_write_json(self.out / "run.json", record)

    # ------------------------------------------------------------------ main loop
    def run(self) -> dict:
        from growlm.train.lock import RunLock

        self._open_data()  # first: bad data must not leave a run folder behind
        manager = self._manager()
        with RunLock(self.out, enabled=self.rank == 0):
            saved = self._check_run_dir(manager)
            if saved is None and self.rank == 0:
                self._start_notes()
            self.manager = manager
            self._run_stages(saved)
        return self.summary()

    def _manager(self) -> CheckpointManager:
        return CheckpointManager(self.ckpt_root, self.cfg.run.keep_last, stages_fingerprint(self.cfg), self.dist,
                                 self.tokenizer_path, log=self.log)

    def _start_notes(self) -> None:
        from growlm.stages import recipe_notes
        from growlm.train.disk import check_disk_budget

        for note in [*recipe_notes(self.cfg, self.stages), *self._data_notes()]:
            self.warn(note)
        for name, theirs, ours in self.cfg.init_overrides:
            self.warn(f"stage.1.init: [model] sets {name} = {ours!r}; the init source has {theirs!r} "
                      "(a deliberate override)")
        check_disk_budget(self.cfg, self.stages, self.out, self.tokenizer_path, self.checked)

    def _run_stages(self, saved: Saved | None) -> None:
        metrics_path = self.out / "metrics.jsonl"
        # The hand-off lives on the trainer, not in a local: a stage takes it and drops it once
        # built, so the previous stage's weights are not held through the next one's training.
        self._handoff, start, resume = self._restore(saved, metrics_path)
        self.metrics = self._open_metrics(metrics_path)
        if self.rank == 0:  # after the metrics sinks started: a sink that cannot start writes nothing
            self._write_run_record()
        old_handlers = self._install_signals()
        try:
            while True:
                try:
                    for i in range(start, len(self.stages)):
                        self._handoff = self._stage(i, resume)
                        resume = None
                    break
                except Rollback as rb:
                    self._handoff, start, resume = self._rollback(rb, metrics_path)
        finally:
            self.probe.close()
            self._restore_signals(old_handlers)
            if self.metrics:
                self.metrics.close()

    def _open_metrics(self, metrics_path: Path) -> MetricsWriter | None:
        if self.rank != 0:
            return None
        return MetricsWriter(metrics_path, self.cfg.run.tensorboard, self.cfg.run.wandb, self.cfg.run.name,
                             config=self.cfg.model_dump(mode="json"))

    def _restore(self, saved: Saved | None, metrics_path: Path):
        """(hand-off, first stage index, checkpoint to resume inside that stage)."""
        if saved is None:
            if self.rank == 0 and metrics_path.exists():
                metrics_path.unlink()  # records of an attempt that never reached a checkpoint
            return None, 0, None
        self.counters = Counters()
        self.counters.load_state_dict(saved.state["counters"])
        if self.rank == 0:
            MetricsWriter.truncate(metrics_path, saved.meta["global_step"], saved.meta["stage"])
        self.log(f"resuming from {saved.path} (stage {saved.meta['stage']}, step {saved.meta['global_step']})")
        if not saved.complete:
            return None, saved.stage_index, saved
        from growlm.checkpoint import load_model_state

        cfg, weights, _ = load_model_state(saved.path)
        done = self.stages[saved.stage_index]
        handoff = boundary.HandOff(cfg, weights, saved.state.get("moments", saved.state.get("named_optimizer", {})),
                                   done.optimizer)
        self.loader.load_state_dict(saved.state["loader"])
        self.rng.load_state_dict(saved.state["rng"])
        return handoff, saved.stage_index + 1, None

    def _rollback(self, rb: Rollback, metrics_path: Path):
        """train.nonfinite = "rollback": reload the newest checkpoint, scale this stage's LR by
        train.rollback_lr_factor (again for each further rollback in the stage), and move the
        loader past the offending batch. The checkpoint brings back the loader position and RNG,
        so without that skip a data-caused NaN would recur at the same step for ever."""
        old, tcfg = self.counters, self.cfg.train
        n = old.stage_rollbacks + 1 if old.lr_scale_stage == rb.stage_index else 1
        if n > tcfg.max_rollbacks:
            raise GrowlmError(f"training diverged: non-finite loss/gradient at step {rb.step} after {n - 1} "
                              f"rollbacks in stage {rb.stage_index + 1} (train.max_rollbacks = "
                              f"{tcfg.max_rollbacks}; lower the LR or check the data)")
        if self.metrics:
            self.metrics.close()
        saved, _ = self.manager.latest()
        self.counters = Counters()
        restored = self._restore(saved, metrics_path)
        c = self.counters
        c.rollbacks, c.skipped_steps = old.rollbacks + 1, old.skipped_steps
        c.stage_rollbacks, c.lr_scale_stage = n, rb.stage_index
        c.lr_scale = tcfg.rollback_lr_factor ** n
        self._skip_to = (rb.stage_index, rb.position)
        self.metrics = self._open_metrics(metrics_path)
        back_to = saved.meta["global_step"] if saved else 0
        if self.metrics:
            self.metrics.log({"kind": "rollback", "stage": rb.stage_index + 1, "step": back_to, "bad_step": rb.step,
                              "lr_scale": c.lr_scale, "loader_position": rb.position, "rollbacks": c.rollbacks})
        self.warn(f"{rb} (stage {rb.stage_index + 1}); rolled back to step {back_to}, LR × {c.lr_scale:g} "
                  f"for the rest of the stage, skipping the data up to sequence {rb.position}")
        return restored

    # ------------------------------------------------------------------ one stage
    def _stage(self, i: int, resume: Saved | None):
        handoff, self._handoff = self._handoff, None
        stage = self.stages[i]
        previous = self.stages[i - 1] if i else None
        if resume is not None:
            built = boundary.rebuild_stage(self.cfg, stage, resume.meta["provenance"],
                                           self.manager.weights(resume), parallel=self.parallel,
                                           device=self.device)
            self.manager.restore_stage(built, resume)
            self.loader.load_state_dict(resume.state["loader"])
            start = resume.meta["stage_step"]
            built.growth = growth.resume_phase(self.cfg, stage, built, resume.state, start, str(resume.path))
        else:
            built = boundary.enter_stage(self.cfg, stage, handoff, previous, parallel=self.parallel,
                                         device=self.device)
            if stage.spec.data == "restart":
                self.loader.position = 0
            start = 0
        del handoff  # loaded into the stage's model
        built.module = self.parallel.wrap(built.model, built.optimizer)
        if resume is not None:
            self.rng.load_state_dict(resume.state["rng"])
        if self._skip_to is not None and self._skip_to[0] == stage.index:  # past the bad batch
            self.loader.position = max(self.loader.position, self._skip_to[1])
            self._skip_to = None
        self.accounting = boundary.stage_accounting(built, self.cfg, device_type=self.device.type,
                                                    world_size=self.world)
        self._train(built, start)
        return self._leave(built)

    def _train(self, built, start: int) -> None:
        stage, cfg = built.stage, self.cfg
        if start == 0:
            self._stage_event("start", built)
        for hook in self.hooks:
            hook.stage_start(self, built, start)
        every = _eval_every(cfg.run.eval_every, sum(s.steps for s in self.stages))
        for stage_step in range(start, stage.steps):
            record = self._step(built, stage_step)
            last = stage_step + 1 == stage.steps
            if every and (stage_step + 1) % every == 0 and not last:
                self.evaluate(built)
            for hook in self.hooks:
                hook.step_end(self, built, record, last)
            if self.stop_requested and not last:
                self._save(built, stage_step + 1)
                raise Stopped(self._stop_signal or signal.SIGTERM, self.counters.global_step)
            if cfg.run.ckpt_every and (stage_step + 1) % cfg.run.ckpt_every == 0 and not last:
                self._save(built, stage_step + 1)
        self.evaluate(built)
        for hook in self.hooks:
            hook.stage_end(self, built)

    def _step(self, built, stage_step: int) -> dict:
        for hook in self.hooks:
            hook.step_start(self, built, stage_step)
        t0, c, stage = time.perf_counter(), self.counters, built.stage
        lr = stage.lr * stage.lr_factor(stage_step) * c.lr_scale_for(stage.index)
        self.faults.begin_step(c.global_step + 1)
        batches = [tuple(t.to(self.device, non_blocking=True) for t in
                         self.loader.next_batch(self.cfg.train.micro_batch_size)) for _ in range(self.accum)]
        phase_fields = growth.step_fields(built, stage_step)
        acct = self.accounting.get("growth_phase") if "phase" in phase_fields else None
        if acct is not None:  # the learning phase trains the growth maps (growlm.train.growth)
            lr = acct["lr"] * c.lr_scale_for(stage.index)
            result = built.growth.train_step(built, batches, lr=lr, grad_clip=self.cfg.optim.grad_clip,
                                             autocast=self.autocast, hooks=[self.faults])
        else:
            result = train_step(built, batches, lr=lr, grad_clip=self.cfg.optim.grad_clip, dist=self.dist,
                                autocast=self.autocast, hooks=[self.faults, self.state_bytes])
        if not result.finite:
            self._nonfinite(result, stage)
        else:
            c.bad_steps = 0
        if built.relora is not None:
            built.relora.step(stage_step + 1)
        dt = time.perf_counter() - t0
        tokens = self.cfg.train.global_batch_tokens
        fpt = (acct or self.accounting)["flops_per_token"]
        c.global_step += 1
        c.tokens += tokens
        c.flops += fpt["exact"] * tokens + (acct["map_flops_per_step"] if acct else 0)
        c.flops_6nd += fpt["6nd"] * tokens
        c.elapsed += dt
        tps = tokens / dt
        peak = peak_flops(self.device)
        record = {"kind": "step", "stage": stage.number, "stage_name": stage.name, "step": c.global_step,
                  "stage_step": stage_step + 1, "tokens": c.tokens, "flops": c.flops, "flops_6nd": c.flops_6nd,
                  "loss": result.loss, "target_tokens": result.target_tokens, "lr": lr,
                  "grad_norm": result.grad_norm, "tokens_per_s": tps,
                  "mfu": (fpt["exact"] * tps / peak / self.world) if peak else None,
                  "time": c.elapsed, "skipped_steps": c.skipped_steps, "rollbacks": c.rollbacks,
                  **phase_fields}
        for hook in self.hooks:
            hook.step_record(self, built, record)
        if self.metrics is not None:
            self.metrics.log(record)
        growth.after_step(self, built, stage_step)
        return record

    def _nonfinite(self, result, stage) -> None:
        c, tcfg = self.counters, self.cfg.train
        bad_step = c.global_step + 1
        if tcfg.nonfinite == "stop":
            raise GrowlmError(f"non-finite loss/gradient (loss {result.loss}, grad norm {result.grad_norm}) at "
                              f"step {bad_step}; stopped as train.nonfinite = 'stop' (lower the LR or check the data)")
        if tcfg.nonfinite == "rollback":
            raise Rollback(stage.index, bad_step, self.loader.position)
        c.bad_steps += 1
        c.skipped_steps += 1
        self.warn(f"non-finite loss/gradient at step {bad_step}; step skipped")
        if c.bad_steps >= tcfg.max_bad_steps:
            raise GrowlmError(f"training diverged: {c.bad_steps} consecutive non-finite steps at step "
                              f"{bad_step} (lower the LR or check the data)")

    def _leave(self, built):
        """The boundary: hand-off, end record, boundary checkpoint."""
        nxt = built.stage.index + 1
        next_stage = self.stages[nxt] if nxt < len(self.stages) else None
        handoff = boundary.leave_stage(built, next_stage, self.parallel)
        self._check_finite(handoff, built.stage)
        # The end record goes first: a resume from the boundary checkpoint keeps it, a resume
        # from an earlier one drops it (it is logged again), so a kill in between loses nothing.
        self._stage_event("end", built)
        states = {"moments": handoff.moments, "loader": self.loader, "rng": self.rng, "counters": self.counters}
        self.manager.save(step=self.counters.global_step, stage=built.stage, stage_step=built.stage.steps,
                          counters=self.counters, states=states, weights=handoff.state, built=built,
                          complete=True)
        c = self.counters
        loss = "-" if c.last_val_loss is None else f"{c.last_val_loss:.4f}"
        self.log(f"stage {built.stage.number} '{built.stage.name}' done: val loss {loss}, "
                 f"{c.tokens:,} tokens, {c.flops:.3e} FLOPs")
        return handoff

    def _check_finite(self, handoff, stage) -> None:
        """A run whose weights or final validation loss are not finite must not end green."""
        bad = next((k for k, v in handoff.state.items() if v.is_floating_point() and not torch.isfinite(v).all()), None)
        loss = self.counters.last_val_loss
        if self.counters.bad_steps >= stage.steps:  # finite, but only because nothing was trained
            raise GrowlmError(f"training diverged: every step of stage {stage.number} was non-finite and "
                              "skipped; lower the LR, use train.nonfinite = 'rollback', or check the data")
        if bad is not None or (loss is not None and not math.isfinite(loss)):
            what = f"weight {bad}" if bad is not None else f"validation loss {loss}"
            n = self.counters.skipped_steps
            skipped = f"{n} step{' was' if n == 1 else 's were'} skipped"
            raise GrowlmError(f"training diverged: stage {stage.number} ended with a non-finite {what} "
                              f"({skipped}); lower the LR, use train.nonfinite = 'rollback', or check the data")

    def _save(self, built, stage_step: int) -> None:
        states = {"loader": self.loader, "rng": self.rng, "counters": self.counters}
        if built.relora is not None:
            states["relora"] = built.relora
        if built.growth is not None:
            states["growth"] = built.growth
        self.manager.save(step=self.counters.global_step, stage=built.stage, stage_step=stage_step,
                          counters=self.counters, states=states, built=built)

    def _stage_event(self, event: str, built) -> None:
        if self.metrics is None:
            return
        c, stage = self.counters, built.stage
        self.metrics.log({"kind": "stage", "event": event, "stage": stage.number, "name": stage.name,
                          "step": c.global_step, "tokens": c.tokens, "flops": c.flops,
                          "params": self.accounting["params"], "flops_per_token": self.accounting["flops_per_token"],
                          "memory": self._memory(measured=event == "end"), "optimizer_state": built.opt_state,
                          "steps": stage.steps, "model": stage.model.model_dump()})

    def _memory(self, measured: bool) -> dict:
        """The planner's estimates for this run's device and precision and, at a stage's end,
        model-state bytes counted on the live tensors after the stage's first update and the
        largest peak the probe measured over the stage's probed steps (activations included)."""
        mem = dict(self.accounting["memory"])
        mem["model_state_bytes"] = self.state_bytes.bytes if measured else None
        mem["peak_measured_bytes"] = self.probe.peak_bytes if measured else None
        mem["peak_measured_by"] = self.probe.measured_by if measured else None
        return mem

    # ------------------------------------------------------------------ evaluation
    def autocast(self):
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def evaluate(self, built) -> None:
        loss = self.val_loss(built.model)
        if loss is None:
            return
        c = self.counters
        c.last_val_loss = loss
        if self.metrics is not None:
            self.metrics.log({"kind": "eval", "stage": built.stage.number, "step": c.global_step, "tokens": c.tokens,
                              "flops": c.flops, "flops_6nd": c.flops_6nd, "val_loss": loss})

    @torch.no_grad()
    def val_loss(self, model) -> float | None:
        """Mean token loss over `run.eval_tokens` validation tokens (whole sequences)."""
        if self.val_tokens is None:
            return None
        seq, bs = self.cfg.data.seq_len, self.cfg.train.micro_batch_size
        n_seq = max(1, min(self.cfg.run.eval_tokens // seq, (len(self.val_tokens) - 1) // seq))
        was_training = model.training
        model.eval()
        total, count = 0.0, 0
        for start in range(0, n_seq, bs):
            rows = range(start, min(start + bs, n_seq))
            chunk = torch.stack([torch.from_numpy(self.val_tokens[r * seq: r * seq + seq + 1].astype("int64"))
                                 for r in rows]).to(self.device)
            with self.autocast():
                total += float(token_loss_sum(model, chunk[:, :-1], chunk[:, 1:]))
            count += int((chunk[:, 1:] != IGNORE_INDEX).sum())
        model.train(was_training)
        return total / count

    def summary(self) -> dict:
        c = self.counters
        return {"out_dir": str(self.out), "steps": c.global_step, "tokens": c.tokens, "flops": c.flops,
                "flops_6nd": c.flops_6nd, "val_loss": c.last_val_loss, "skipped_steps": c.skipped_steps,
                "rollbacks": c.rollbacks, "elapsed_s": c.elapsed, "tokens_per_s": c.tokens / max(c.elapsed, 1e-9)}

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
    def stop_signal(self) -> int | None:
        """The SIGTERM/SIGINT received and not yet acted on (one that came during the last
        step or the final checkpoint: the run finished anyway), else None."""
        return self._stop_signal

    @property
    def stop_requested(self) -> bool:
        # Ranks may see a signal at different steps; they must agree, or one would enter the
        # checkpoint's collectives while another enters the next step's.
        local = self._stop_signal is not None
        return self.dist.any(local) if self.dist else local


def _eval_every(setting, total_steps: int) -> int:
    """run.eval_every in steps; "auto" gives about 20 validation points over the whole run."""
    if setting == "auto":
        return max(1, math.ceil(total_steps / 20))
    return int(setting)
