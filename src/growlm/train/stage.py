"""One stage of a run: build its model, train it for its steps, checkpoint, hand over."""

from __future__ import annotations

import math
import os
import time

import torch

from growlm.errors import GrowlmError
from growlm.model.llama import cross_entropy
from growlm.train import build
from growlm.train.checkpoint import fault

PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12}  # bf16 dense


def peak_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((v for k, v in PEAK_FLOPS.items() if k in name), None)


def lr_factor(stage, spec, step: int) -> float:
    from growlm.optim import schedule

    adapters = spec.adapters
    if adapters is not None and adapters.kind == "relora":
        from growlm.adapters.relora import reset_interval

        return schedule.jagged_cosine(step, stage.warmup_steps, stage.schedule_steps, stage.min_lr_ratio,
                                      reset_interval(adapters), adapters.rewarmup_steps)
    if stage.schedule == "constant":
        return schedule.constant(step, stage.warmup_steps)
    if stage.schedule == "linear":
        return schedule.linear(step, stage.warmup_steps, stage.schedule_steps, stage.min_lr_ratio)
    return schedule.warmup_cosine(step, stage.warmup_steps, stage.schedule_steps, stage.min_lr_ratio)


class Rollback(Exception):
    """A non-finite step under `train.nonfinite = "rollback"`: the trainer reloads the last
    checkpoint. `position` is the loader position just past the offending batch."""

    def __init__(self, stage: int, step: int, position: int):
        super().__init__(f"non-finite loss/gradient at step {step}")
        self.stage, self.step, self.position = stage, step, position


def injected_nonfinite(global_step: int, done: set[int]) -> str | None:
    """Test hook: GROWLM_FAULT_NAN="5,9:inf,12:grad" makes the loss NaN (or inf), or one
    gradient NaN ("grad"), at those global steps (1-based). Each listed step is poisoned only
    the first time a trainer reaches it (`done` records them), so a rollback that replays it
    trains on."""
    spec = os.environ.get("GROWLM_FAULT_NAN")
    if not spec or global_step in done:
        return None
    for item in spec.split(","):
        step, _, kind = item.strip().partition(":")
        if step.isdigit() and int(step) == global_step:
            done.add(global_step)
            return kind or "nan"
    return None


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if torch.is_tensor(t))


class StageRuntime:
    def __init__(self, trainer, stage, prev, resume_state):
        self.t, self.stage, self.spec = trainer, stage, stage.spec
        cfg = trainer.cfg
        seed = cfg.run.seed * 1009 + stage.index
        if resume_state is not None:
            path, meta, train_state = resume_state
            from growlm.train.checkpoint import load_model_state

            # a sharded checkpoint is loaded after sharding, each rank reading its own slices
            state = None if "sharded" in meta else load_model_state(path)[1]
            self.provenance = meta["provenance"]
            self.model = build.new_model(stage.model, seed)
            self._freeze_and_adapt(seed)
            if state is not None:
                self.model.load_state_dict(state, strict=True)
            self.start_step = meta["stage_step"]
        else:
            state, self.provenance = build.initial_state(stage, prev, seed)
            self.model = build.new_model(stage.model, seed)
            self.model.load_state_dict(state, strict=True)
            self._freeze_and_adapt(seed)
            self.start_step = 0
        if cfg.run.activation_checkpointing:
            from growlm.train.distributed import apply_activation_checkpointing

            apply_activation_checkpointing(self.model)
        if trainer.dist is not None:  # FSDP: shard before the optimizer sees the parameters
            self.model = trainer.dist.prepare(self.model)
        self.model.to(trainer.device)
        self.model.train()
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.opt = build.build_optimizer(self.model, cfg.optim, stage.optimizer, stage.lr, trainer.device)
        self.opt_state_mode = "reset"
        if resume_state is not None and "sharded" in resume_state[1]:
            from growlm.train.dcp import load_sharded

            load_sharded(*resume_state, self.model, self.opt)
            trainer.loader.load_state_dict(resume_state[2]["loader"])
            self.opt_state_mode = "restored"
        elif resume_state is not None:
            self.opt.load_state_dict(resume_state[2]["optimizer"])
            trainer.loader.load_state_dict(resume_state[2]["loader"])
            self.opt_state_mode = "restored"
        elif self.spec.optimizer_state == "map" and prev is not None and getattr(trainer, "_last_opt", None):
            n = build.map_optimizer_state(self.opt, self.model, trainer._last_opt, self.provenance)
            self.opt_state_mode = f"mapped ({n} tensors)"
        if trainer.dist is not None:  # full moments from a checkpoint or the last stage → shards
            trainer.dist.localize_optimizer_state(self.opt)
        if resume_state is None and self.spec.data == "restart":
            trainer.loader.position = 0
        self.relora = None
        if self.spec.adapters is not None and self.spec.adapters.kind == "relora":
            from growlm.adapters.relora import ReLoRA

            if trainer.dist is not None:  # FSDP prunes sharded optimizer state its own way
                ReLoRA = trainer.dist.relora_class()  # noqa: N806
            self.relora = ReLoRA(self.model, self.opt, self.spec.adapters, stage_steps=stage.steps, seed=seed)
            if resume_state is not None and "relora" in resume_state[2]:
                self.relora.load_state_dict(resume_state[2]["relora"])
        self.compiled = self.model if trainer.dist is None else trainer.dist.wrap(self.model)
        if cfg.run.compile and trainer.device.type == "cuda":
            torch.compiler.reset()  # compile caches do not notice requires_grad changes
            self.compiled = torch.compile(self.compiled)
        if resume_state is not None:
            trainer._restore_rng(resume_state[2])
        skip = getattr(trainer, "_skip_to", None)
        if skip is not None and skip[0] == stage.index:  # after a rollback: pass the bad batch
            trainer.loader.position = max(trainer.loader.position, skip[1])
            trainer._skip_to = None
        self._account()

    # ------------------------------------------------------------------ build pieces
    def _freeze_and_adapt(self, seed: int) -> None:
        from growlm.freeze import apply_freeze, check_trainable, select_frozen

        names = [n for n, _ in self.model.named_parameters(remove_duplicate=False)]
        self.frozen = select_frozen(names, self.spec.freeze, self.provenance) if self.spec.freeze else set()
        apply_freeze(self.model, self.frozen)
        self.adapter_names = []
        if self.spec.adapters is not None:
            from growlm.adapters.lora import apply_adapters

            self.adapter_names = apply_adapters(self.model, self.spec.adapters, self.frozen,
                                                generator=torch.Generator().manual_seed(seed))
        check_trainable(self.model, f"stage.{self.stage.index + 1}")

    def _adapter_info(self) -> dict | None:
        if not self.adapter_names:
            return None
        from growlm.adapters.lora import adapter_scale

        a = self.spec.adapters
        return {"scale": adapter_scale(a), "rank": a.rank, "kind": a.kind}

    def _account(self) -> None:
        from growlm.plan.flops import count_flops
        from growlm.plan.memory import galore_groups_saving, model_state_bytes

        adapter_params = {}
        for name, mod in self.model.named_modules():
            if hasattr(mod, "lora_A"):
                adapter_params[f"{name}.weight"] = mod.lora_A.numel() + mod.lora_B.numel()
        n_adapter = sum(adapter_params.values())
        seen, trainable, frozen = set(), 0, 0
        for n, p in self.model.named_parameters():
            if id(p) in seen or ".lora_" in n:
                continue
            seen.add(id(p))
            if p.requires_grad:
                trainable += p.numel()
            else:
                frozen += p.numel()
        self.params = {"trainable": trainable, "frozen": frozen, "adapter": n_adapter,
                       "total": trainable + frozen + n_adapter}
        fc = count_flops(self.stage.model, self.frozen, adapter_params, self.t.cfg.data.seq_len)
        self.fpt = {"seed": int(fc.seed), "exact": int(fc.exact_total), "attention": int(fc.attention)}
        # GaLore groups keep a smaller, projected state (0 saving for AdamW)
        estimate = model_state_bytes(trainable, frozen, n_adapter) - galore_groups_saving(self.opt.param_groups)
        self.mem = {"estimated_bytes": int(estimate), "measured_peak_bytes": 0}

    # ------------------------------------------------------------------ training
    def _stage_event(self, event: str) -> None:
        if self.t.metrics is None:
            return
        self.t.metrics.log({"kind": "stage", "event": event, "stage": self.stage.index, "name": self.stage.name,
                            "step": self.t.counters.global_step, "tokens": self.t.counters.tokens,
                            "flops": self.t.counters.flops, "params": self.params,
                            "flops_per_token": self.fpt, "memory": self.mem,
                            "optimizer_state": self.opt_state_mode, "steps": self.stage.steps,
                            "model": self.stage.model.model_dump()})

    def _measure_memory(self) -> int:
        if self.t.device.type == "cuda":
            return int(torch.cuda.max_memory_allocated(self.t.device))
        params = {id(p): p for p in self.model.parameters()}.values()
        grads = [p.grad for p in params if p.grad is not None]
        states = [v for s in self.opt.state.values() for v in s.values()]
        return tensor_bytes(params) + tensor_bytes(grads) + tensor_bytes(states)

    def step(self, stage_step: int) -> tuple[float, float, float]:
        t, cfg = self.t, self.t.cfg
        factor = lr_factor(self.stage, self.spec, stage_step) * t.counters.lr_scale_for(self.stage.index)
        for group in self.opt.param_groups:
            group["lr"] = self.stage.lr * factor
        poison = injected_nonfinite(t.counters.global_step + 1, t.__dict__.setdefault("_poisoned", set()))
        loss_sum = torch.zeros((), device=t.device)
        for micro in range(t.accum):
            x, y = t.loader.next_batch(cfg.train.micro_batch_size)
            x, y = x.to(t.device, non_blocking=True), y.to(t.device, non_blocking=True)
            sync = t.dist.no_sync(self.compiled, micro < t.accum - 1) if t.dist else _null()
            with sync, t.autocast():
                loss = cross_entropy(self.compiled(x), y)
                if poison in ("nan", "inf") and micro == 0:
                    loss = loss * float(poison)
                (loss / t.accum).backward()
            loss_sum += loss.detach()
        if poison == "grad":
            next(p for p in self.trainable if p.grad is not None).grad.view(-1)[0] = math.nan
        fault("train_step")  # backward done, optimizer step not yet taken
        loss_val = (loss_sum / t.accum)
        if t.dist:
            loss_val = t.dist.mean(loss_val)
        clip = cfg.optim.grad_clip if cfg.optim.grad_clip > 0 else math.inf
        grad_norm = torch.nn.utils.clip_grad_norm_(self.trainable, clip)
        loss_f, gn_f = float(loss_val), float(grad_norm)
        if math.isfinite(loss_f) and math.isfinite(gn_f):
            self.opt.step()
            t.counters.bad_steps = 0
            if self.mem["measured_peak_bytes"] == 0 or t.device.type == "cuda":
                # after the step, before zero_grad: weights, gradients and optimizer state all live
                self.mem["measured_peak_bytes"] = self._measure_memory()
        else:
            bad_step = t.counters.global_step + 1
            if cfg.train.nonfinite == "stop":
                raise GrowlmError(f"non-finite loss/gradient (loss {loss_f}, grad norm {gn_f}) at step {bad_step}; "
                                  "stopped as train.nonfinite = 'stop' (lower the LR or check the data)")
            if cfg.train.nonfinite == "rollback":
                self.opt.zero_grad(set_to_none=True)
                raise Rollback(self.stage.index, bad_step, t.loader.position)
            t.counters.bad_steps += 1
            t.counters.skipped_steps += 1
            print(f"warning: non-finite loss/gradient at step {bad_step}; step skipped")
            if t.counters.bad_steps >= cfg.train.max_bad_steps:
                raise GrowlmError(f"training diverged: {t.counters.bad_steps} consecutive non-finite steps at step "
                                  f"{bad_step} (lower the LR or check the data)")
        self.opt.zero_grad(set_to_none=True)
        return loss_f, gn_f, self.stage.lr * factor

    def train(self):
        t, stage, cfg = self.t, self.stage, self.t.cfg
        if self.start_step == 0:
            t._log(_describe(stage, self.params, self.fpt, self.mem, self.opt_state_mode))
            self._stage_event("start")
        tokens_per_step = cfg.train.global_batch_tokens
        peak = peak_flops(t.device)
        bar = _progress(stage, self.start_step, t.rank == 0 and not t.quiet)
        for stage_step in range(self.start_step, stage.steps):
            t0 = time.perf_counter()
            loss, grad_norm, lr = self.step(stage_step)
            if self.relora is not None:
                if self.relora.is_reset_step(stage_step + 1):
                    fault("relora_merge")
                self.relora.step(stage_step + 1)
            dt = time.perf_counter() - t0
            c = t.counters
            c.global_step += 1
            c.tokens += tokens_per_step
            c.flops += self.fpt["exact"] * tokens_per_step
            c.flops_seed += self.fpt["seed"] * tokens_per_step
            c.elapsed += dt
            tps = tokens_per_step / dt
            if t.metrics is not None:
                t.metrics.log({"kind": "step", "stage": stage.index, "stage_name": stage.name,
                               "step": c.global_step, "stage_step": stage_step + 1, "tokens": c.tokens,
                               "flops": c.flops, "flops_seed": c.flops_seed, "loss": loss, "lr": lr,
                               "grad_norm": grad_norm, "tokens_per_s": tps,
                               "mfu": (self.fpt["exact"] * tps / peak / t.world) if peak else None,
                               "mem_bytes": self.mem["measured_peak_bytes"], "time": c.elapsed,
                               "skipped_steps": c.skipped_steps, "rollbacks": c.rollbacks})
            if bar is not None:
                bar.set_postfix(loss=f"{loss:.3f}", lr=f"{lr:.2e}", tok_s=f"{tps:,.0f}")
                bar.update(1)
            last = stage_step + 1 == stage.steps
            if cfg.run.eval_every and (stage_step + 1) % cfg.run.eval_every == 0 and not last:
                self._eval()
            if t.evals is not None and t.evals.due(stage_step + 1) and not last:
                self._score_tasks()
            if t.stop_requested and not last:
                self._save(stage_step + 1, complete=False)
                raise _stopped(t)
            if cfg.run.ckpt_every and (stage_step + 1) % cfg.run.ckpt_every == 0 and not last:
                self._save(stage_step + 1, complete=False)
        if bar is not None:
            bar.close()
        self._eval()
        if t.evals is not None:
            self._score_tasks()
        return self._finish()

    def _eval(self) -> None:
        t = self.t
        loss = t.val_loss(self.model)
        if loss is None:
            return
        t.counters.last_val_loss = loss
        if t.metrics is not None:
            c = t.counters
            t.metrics.log({"kind": "eval", "stage": self.stage.index, "step": c.global_step, "tokens": c.tokens,
                           "flops": c.flops, "flops_seed": c.flops_seed, "val_loss": loss})

    def _score_tasks(self) -> None:
        from growlm.train.evals import headline

        t, c = self.t, self.t.counters
        flat, seconds = t.evals.run(self.model, t.autocast())
        if t.metrics is not None:
            t.metrics.log({"kind": "tasks", "stage": self.stage.index, "step": c.global_step,
                           "tokens": c.tokens, "flops": c.flops, "flops_seed": c.flops_seed,
                           "seconds": seconds, **flat})
        t._log(f"step {c.global_step} tasks ({seconds:.1f} s): {headline(flat)}")

    def _save(self, stage_step: int, complete: bool) -> None:
        extra = {"relora": self.relora.state_dict()} if self.relora is not None else {}
        self.t.save(self.stage, stage_step, self.model, self.opt, extra, complete, self.provenance,
                    self._adapter_info())

    def _finish(self):
        """Merge adapters, save the boundary checkpoint, and hand the plain state to the next stage."""
        if self.t.dist is not None:  # FSDP: the eval's forward left the root gathered
            self.t.dist.reshard(self.model)
        if self.adapter_names:
            from growlm.adapters.lora import unwrap_adapters

            unwrap_adapters(self.model)
        nxt = self.stage.index + 1
        maps = nxt < len(self.t.stages) and self.t.stages[nxt].spec.optimizer_state == "map"
        # The next stage copies Adam moments by parameter name; keep them in the boundary
        # checkpoint too, so resuming exactly at the boundary maps the same state.
        named = build.named_optimizer_state(self.opt, self.model) if maps else {}
        self.t._last_opt = named
        # The end record goes first: a resume from the boundary checkpoint keeps it, a resume
        # from an earlier one drops it (it is logged again), so a kill in between loses nothing.
        self._stage_event("end")
        self.t.save(self.stage, self.stage.steps, self.model, None, {"named_optimizer": named}, True,
                    self.provenance, None)
        fault("stage_boundary")
        self.t._log(f"stage {self.stage.index + 1} '{self.stage.name}' done: val loss "
                    f"{self.t.counters.last_val_loss}, {self.t.counters.tokens:,} tokens, "
                    f"{self.t.counters.flops:.3e} FLOPs")
        return self.stage.model, self.t.plain_state(self.model)


def _describe(stage, params, fpt, mem, opt_state):
    from growlm.train.trainer import describe_stage

    return describe_stage(stage, params, fpt, mem, opt_state)


def _stopped(t):
    from growlm.train.trainer import Stopped

    return Stopped(f"stopped by signal {t._stop_signal} at step {t.counters.global_step}; "
                   f"resume with: growlm train RECIPE --resume")


def _null():
    import contextlib

    return contextlib.nullcontext()


def _progress(stage, start, enabled):
    from growlm.progress import progress

    return progress(stage.steps, stage.name, enabled=enabled, initial=start, unit="step") if enabled else None
