"""Growth phases: the first steps of a stage whose growth op needs more than a one-off copy.

learn (`op = "learn"` / `"width_learn"`, Gstack's G_learn / LiGO). For the stage's first
  `learn_steps` steps only the growth maps train (growlm.grow.ligo), on the large model's
  language-model loss: the forward runs `torch.func.functional_call` of the stage's model with
  the weights the maps generate from the small model's, which stay fixed. The maps have their
  own AdamW (the recipe's betas and eps, no weight decay, which would pull the identity maps
  towards zero) at a constant `learn_lr` (default: the stage's peak LR). After every learning
  step the model's parameters are set to the weights the maps now generate, so evaluations,
  checkpoints and the stage's later steps see the current large model; when the phase ends
  those are simply the plain weights it trains from (the stage's LR schedule runs on the
  stage's step clock, learning steps included).

  Cost, counted exactly: per token, the large model's forward and backward with the
  generated weights trainable and the copied ones (depth: embedding, final norm, head) frozen
  (growlm.plan.flops); per step, the maps' matmuls forward and backward plus the forward of
  the update that refreshes the model's weights (growlm.grow.ligo.map_flops). The 6·N·D
  formula counts the model part only, with the generated weights as trainable.

  Memory (`accounting`, in the run's precision, growlm.plan.precision): the fixed small
  weights (as frozen weights count), the maps (as trainable ones), the generated weights and
  their gradients (twice a frozen weight), the stage's model, which holds the current weights
  but has no gradients or optimizer state yet (a frozen weight), and the large model's
  activations with the generated weights trainable. This is model state plus activations, not
  the step timeline of growlm.plan.activations.

mask (`op = "random"` / `"width_random"` with `mask_steps`, MSG). The growth masks of
  growlm.grow.masks are set to c = t / mask_steps before stage step t (0-based) and removed
  ("folded") before step `mask_steps`, or at the stage's end if it is not longer; the model
  then trains and exports as a plain Llama. The ramp position is the stage step, which every
  checkpoint holds; the phase also saves it, and checks the two agree on resume.

Each phase is Stateful (`state_dict` / `load_state_dict`): the checkpoint manager saves it
under "growth" in mid-stage checkpoints while the phase runs (a learning phase's state holds
the small model's weights and the maps, so such a checkpoint is that much larger). The weights
of a mid-ramp checkpoint are the plain grown model's: evaluated or exported on their own they
compute the model at c = 1, not the masked one being trained; boundary checkpoints come after
the fold.
"""

from __future__ import annotations

import math
from types import SimpleNamespace

import torch
from torch import nn

from growlm.errors import GrowlmError
from growlm.grow import ligo
from growlm.model.config import ModelConfig
from growlm.train.step import IGNORE_INDEX, StepResult


class LearnPhase:
    kind = "learn"

    def __init__(self, cfg, stage, old: ModelConfig, small: dict[str, torch.Tensor],
                 maps: dict[str, torch.Tensor], device: torch.device | str):
        spec = stage.spec.grow
        self.old, self.new, self.spec = old, stage.model, spec
        self.steps, self.lr = spec.learn_steps, spec.learn_lr or stage.lr
        self.meta = torch.device(device).type == "meta"
        self.device = torch.device(device)
        self.small = {k: v.detach().to(self.device, torch.float32) for k, v in small.items()}
        self.maps = {k: nn.Parameter(v.detach().to(self.device, torch.float32).clone())
                     for k, v in sorted(maps.items())}
        self.optimizer = torch.optim.AdamW(list(self.maps.values()), lr=self.lr, betas=cfg.optim.betas,
                                           eps=cfg.optim.eps, weight_decay=0.0)
        self.stacked = ligo.stack_layers(self.small, old, self.new) if ligo.is_depth(spec) else None
        self.generated = ligo.generated_names(self.new, spec)
        self.tally = ligo.map_flops(old, self.new, spec)
        self.step = 0  # learning steps done

    def learning(self, stage_step: int) -> bool:
        return stage_step < self.steps

    @property
    def map_params(self) -> int:
        return sum(p.numel() for p in self.maps.values())

    def weights(self) -> dict[str, torch.Tensor]:
        return ligo.apply_maps(self.maps, self.small, self.old, self.new, self.spec, stacked=self.stacked)

    def train_step(self, built, batches, *, lr: float, grad_clip: float, autocast, hooks=()) -> StepResult:
        """One learning step on `batches` (the step's micro-batches): the weights are generated
        once, each micro-batch's backward fills their gradients, and one backward through the
        maps follows; the loss is normalised as in growlm.train.step."""
        from torch.func import functional_call

        for group in self.optimizer.param_groups:
            group["lr"] = lr
        model = built.model
        names = [n for n, _ in model.named_parameters()]  # a tied head follows the embedding
        generated = self.weights()
        leaves = {n: generated[n].detach().requires_grad_(n in self.generated) for n in names}
        n_target = max(sum(int((y != IGNORE_INDEX).sum()) for _, y in batches), 1)
        loss_sum = None
        for i, (x, y) in enumerate(batches):
            with autocast():
                loss = functional_call(model, leaves, (x,), {"labels": y})
                for hook in hooks:
                    loss = hook.pre_backward(loss, i)
                (loss / n_target).backward()
            loss_sum = loss.detach() if loss_sum is None else loss_sum + loss.detach()
        outs = [(generated[n], leaves[n].grad) for n in names if leaves[n].grad is not None]
        torch.autograd.backward([o for o, _ in outs], [g for _, g in outs])
        shim = SimpleNamespace(trainable=list(self.maps.values()), model=model)
        for hook in hooks:
            hook.post_backward(shim)
        clip = grad_clip if grad_clip > 0 else math.inf
        grad_norm = float(torch.nn.utils.clip_grad_norm_(list(self.maps.values()), clip))
        result = StepResult(float(loss_sum) / n_target, grad_norm, n_target)
        if result.finite:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.sync(model)
        return result

    @torch.no_grad()
    def sync(self, model: nn.Module) -> None:
        """Set `model`'s parameters to the weights the maps generate now."""
        values = self.weights()
        for name, p in model.named_parameters():
            p.copy_(values[name])

    # ------------------------------------------------------------------ checkpoint
    def state_dict(self) -> dict:
        return {"kind": self.kind, "step": self.step, "old_model": self.old.model_dump(mode="json"),
                "small": {k: v.detach().cpu() for k, v in self.small.items()},
                "maps": {k: v.detach().cpu() for k, v in self.maps.items()},
                "optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        if sorted(state.get("maps", {})) != sorted(self.maps):
            raise GrowlmError("growth: the saved growth maps do not fit this stage's growth")
        with torch.no_grad():
            for k, p in self.maps.items():
                p.copy_(state["maps"][k])
        self.optimizer.load_state_dict(state["optimizer"])
        self.step = int(state["step"])

    # ------------------------------------------------------------------ accounting
    def accounting(self, cfg, precision) -> dict:
        """FLOPs and memory of the learning phase (module docstring); bytes per parameter and
        activation in `precision` (a growlm.plan.precision.Precision, the run's)."""
        from growlm.plan.flops import count_flops
        from growlm.plan.memory import activation_bytes

        fixed = {n for n in _param_names(self.new) if n not in self.generated}
        fc = count_flops(self.new, fixed, {}, cfg.data.seq_len)
        gen = sum(p for n, p in _param_sizes(self.new).items() if n in self.generated)
        small = sum(_param_sizes(self.old).values())
        large = sum(_param_sizes(self.new).values())
        state = (precision.frozen * small + precision.trainable * self.map_params
                 + 2 * precision.frozen * gen + precision.frozen * large)
        batch, seq = cfg.train.micro_batch_size, cfg.data.seq_len
        act_plain = activation_bytes(self.new, batch, seq, fixed, precision=precision)
        act_ckpt = activation_bytes(self.new, batch, seq, fixed, checkpointing=True, precision=precision)
        act = act_ckpt if cfg.run.activation_checkpointing else act_plain
        return {"kind": self.kind, "steps": self.steps, "lr": self.lr, "map_params": self.map_params,
                "flops_per_token": {"6nd": int(fc.six_nd), "exact": int(fc.exact_total),
                                    "attention": int(fc.attention)},
                "map_flops_per_step": int(2 * self.tally.forward + self.tally.backward),
                "memory": {"model_state_estimated_bytes": int(state), "activation_estimated_bytes": int(act),
                           "peak_estimated_bytes": int(state + act), "activation_bytes": int(act_plain),
                           "activation_bytes_checkpointed": int(act_ckpt)}}


def _param_sizes(cfg: ModelConfig) -> dict[str, int]:
    """Parameter name → size, a tied head once (as the embedding)."""
    from growlm.grow.common import HEAD, expected_shapes

    return {n: math.prod(s) for n, s in expected_shapes(cfg).items() if not (cfg.tie_embeddings and n == HEAD)}


def _param_names(cfg: ModelConfig) -> set[str]:
    from growlm.grow.common import expected_shapes

    return set(expected_shapes(cfg))


class MaskPhase:
    kind = "mask"

    def __init__(self, model: nn.Module, old: ModelConfig, new: ModelConfig, spec, start_step: int = 0):
        from growlm.grow.masks import GrowthMasks

        self.old, self.steps = old, spec.mask_steps
        self.masks = GrowthMasks(model, old, new, spec)
        self.next_step = start_step
        self.begin_step(start_step)

    def learning(self, stage_step: int) -> bool:
        return False

    def begin_step(self, stage_step: int) -> bool:
        """Set the ramp for stage step `stage_step`; True when this folds the masks away."""
        self.next_step = stage_step
        if stage_step >= self.steps:
            return self.fold()
        self.masks.set(stage_step / self.steps)
        return False

    @property
    def c(self) -> float:
        return self.masks.c if self.masks.attached else 1.0

    def fold(self) -> bool:
        was = self.masks.attached
        self.masks.remove()
        return was

    @property
    def active(self) -> bool:
        return self.masks.attached

    def state_dict(self) -> dict:
        return {"kind": self.kind, "step": self.next_step, "mask_steps": self.steps,
                "old_model": self.old.model_dump(mode="json")}

    def load_state_dict(self, state: dict) -> None:
        if state.get("mask_steps") != self.steps or state.get("step") != self.next_step:
            raise GrowlmError(f"growth: the saved mask ramp (step {state.get('step')} of "
                              f"{state.get('mask_steps')}) does not match the checkpoint's stage step "
                              f"{self.next_step} of {self.steps}; the checkpoint is damaged")


# ---------------------------------------------------------------- the trainer's side

def step_fields(built, stage_step: int) -> dict:
    """What a step record says about the growth phase: {"phase": "learn"} for a learning
    step, {"mask": c} for a masked one, else nothing."""
    phase = built.growth
    if phase is None:
        return {}
    if phase.kind == "learn":
        return {"phase": "learn"} if phase.learning(stage_step) else {}
    return {"mask": phase.c}


def after_step(trainer, built, stage_step: int) -> None:
    """Move the phase past stage step `stage_step`: the next mask value, or the end of the
    phase ("materialised": the learned weights are the model's; "folded": the masks are gone),
    logged as a "growth" record before any checkpoint of this step, so a resume keeps it."""
    event = _advance(built, stage_step)
    if event is None:
        return
    c, stage = trainer.counters, built.stage
    if trainer.metrics is not None:
        trainer.metrics.log({"kind": "growth", "event": event, "stage": stage.number, "step": c.global_step,
                             "tokens": c.tokens, "flops": c.flops, "flops_6nd": c.flops_6nd})
    trainer.log(f"stage {stage.number}: growth {event} after stage step {stage_step + 1}")


def _advance(built, stage_step: int) -> str | None:
    phase = built.growth
    if phase is None:
        return None
    if phase.kind == "learn":
        if phase.learning(stage_step + 1):
            return None
        built.growth = None
        return "materialised"
    folded = phase.begin_step(stage_step + 1)
    if not phase.active:
        built.growth = None
    return "folded" if folded else None


# ---------------------------------------------------------------- building and resuming

def make_phase(cfg, stage, built, old: ModelConfig, small: dict | None, maps: dict | None,
               device, start_step: int = 0):
    """The growth phase `stage` needs (None when its op has none)."""
    g = stage.spec.grow
    if g is None:
        return None
    if g.op in ligo_ops():
        if start_step >= g.learn_steps:
            return None
        return LearnPhase(cfg, stage, old, small, maps, device)
    if g.mask_steps is not None and start_step < g.mask_steps:
        return MaskPhase(built.model, old, stage.model, g, start_step)
    return None


def ligo_ops() -> tuple[str, ...]:
    from growlm.grow.checks import LEARN_OPS

    return LEARN_OPS


def resume_phase(cfg, stage, built, saved_state: dict, stage_step: int, where: str):
    """The growth phase of a stage resumed at `stage_step` from a mid-stage checkpoint."""
    g = stage.spec.grow
    if g is None:
        return None
    running = stage_step < g.learn_steps if g.op in ligo_ops() else (
        g.mask_steps is not None and stage_step < g.mask_steps)
    if not running:
        return None
    state = saved_state.get("growth")
    if not isinstance(state, dict) or not isinstance(state.get("old_model"), dict):
        raise GrowlmError(f"{where}: the checkpoint lacks the state of the stage's growth phase; "
                          "it is damaged")
    try:
        old = ModelConfig(**state["old_model"])
    except Exception:  # noqa: BLE001 — pydantic's error, reported as damage in one line
        raise GrowlmError(f"{where}: the checkpoint's growth state names an invalid model") from None
    if g.op in ligo_ops():
        if state.get("step") != stage_step or not isinstance(state.get("maps"), dict):
            raise GrowlmError(f"{where}: the checkpoint's learning phase (step {state.get('step')}) does not "
                              f"match its stage step {stage_step}; the checkpoint is damaged")
        phase = LearnPhase(cfg, stage, old, state["small"], state["maps"], built.model.embed_tokens.weight.device)
    else:
        phase = MaskPhase(built.model, old, stage.model, g, stage_step)
    phase.load_state_dict(state)
    return phase


def check_runtime(stages, dist, run_cfg) -> None:
    """Refuse, before the first step, the settings growth phases do not support."""
    for stage in stages:
        g = stage.spec.grow
        if g is None:
            continue
        where = f"{stage.where}.grow"
        if g.op in ligo_ops() and dist is not None:
            raise GrowlmError(f"{where}: '{g.op}' learns its growth maps in one process; run this recipe "
                              "without torchrun")
        if g.mask_steps is not None:
            if dist is not None and dist.sharded:
                raise GrowlmError(f"{where}.mask_steps: growth masks are forward hooks that FSDP's sharded "
                                  "modules do not support; use run.distributed = \"ddp\" or one process")
            if run_cfg.compile:
                raise GrowlmError(f"{where}.mask_steps: growth masks change the forward every step, which "
                                  "torch.compile would recompile; set run.compile = false")
