"""Memory of one training stage: parameter counts, model state, and the step's peak.

**Model state** is weights, gradients and optimizer state. Bytes per parameter depend on the
precision (growlm.plan.precision): in the papers' bf16 mixed precision (Lee et al., STEP) a
trainable parameter costs 16 bytes — bf16 weight (2) and gradient (2), fp32 master copy (4)
and two fp32 Adam moments (8) — and a frozen one only its bf16 weight (2); growlm stores
weights in fp32 (CPU and CUDA alike), so a trainable parameter is 4 + 4 + 8 = 16 bytes and a
frozen one 4. An adapter parameter is trainable and fp32 (16 bytes) under every precision:
``trainable·P_trainable + frozen·P_frozen + 16·P_adapter``. torch's AdamW also keeps a 4-byte
step counter per parameter tensor (`optimizer_state` counts it; the papers' formula does not).

**GaLore** (Zhao et al. 2024) keeps Adam's moments on a rank-r projection of each projected
m×n gradient: such a weight costs its weight, gradient and master copy, two moments of
r·max(m, n) values and a projector of r·min(m, n) values — in bf16 mixed precision
``8·m·n + 8·r·max(m, n) + 4·r·min(m, n)`` bytes instead of 16·m·n. The weights it does not
project (embedding, head, norms) cost the usual bytes.

**The peak** of a step (`estimate_peak`) is weights + optimizer state + buffers (RoPE tables)
+ the step's token batches + the largest of the moments of growlm.plan.activations (the loss,
the backward through each layer) and the optimizer step: every gradient plus the optimizer's
temporaries. Those temporaries: none for a fused AdamW (CUDA); two of the largest trainable
tensor for torch's per-tensor AdamW (CPU: the square root of the second moment and the update
built from it); for GaLore the largest of two such for an unprojected tensor and, for a
projected m×n one, its projected gradient and update (2·r·max(m, n)) plus the update
projected back (m·n). GaLore's SVD at a projector refresh is not counted.

`benchmarks/memory_vs_plan.py` checks the estimate against the measured peak
(growlm.memory_probe) across stage kinds, micro-batch sizes, sequence lengths, vocabularies
and activation checkpointing on CPU.
"""

from __future__ import annotations

import fnmatch
import math
from dataclasses import dataclass

import growlm.plan.activations as act
from growlm.errors import GrowlmError
from growlm.model.config import ModelConfig
from growlm.plan.layout import Trainability
from growlm.plan.precision import ADAPTER_BYTES, BF16_MIXED, Precision

# The papers' bf16 mixed-precision bytes per parameter (STEP's integer program uses these).
BYTES_TRAINABLE = BF16_MIXED.trainable
BYTES_FROZEN = BF16_MIXED.frozen
BYTES_ADAPTER = ADAPTER_BYTES
ADAM_STEP_BYTES = 4  # torch's AdamW keeps its step count as an fp32 tensor per parameter


def model_state_bytes(trainable: int, frozen: int, adapter: int = 0,
                      precision: Precision = BF16_MIXED) -> int:
    """Bytes of weights, gradients and Adam state (see the module docstring)."""
    for what, n in (("trainable", trainable), ("frozen", frozen), ("adapter", adapter)):
        if n < 0:
            raise GrowlmError(f"{what} parameter count must be ≥ 0, got {n}")
    return precision.trainable * trainable + precision.frozen * frozen + ADAPTER_BYTES * adapter


def galore_matrix_bytes(shape: tuple[int, int], rank: int, precision: Precision = BF16_MIXED) -> int:
    """Model state of one GaLore-projected m×n weight (see the module docstring)."""
    m, n = shape
    r = min(rank, m, n)  # the SVD of an m×n gradient has min(m, n) directions
    per_weight = precision.weight + precision.grad + precision.master
    return per_weight * m * n + precision.moment * (2 * r * max(m, n) + r * min(m, n))


def galore_saving_bytes(shapes, rank: int, precision: Precision = BF16_MIXED) -> int:
    """Bytes GaLore saves against AdamW on the projected `shapes`."""
    return sum(precision.trainable * m * n - galore_matrix_bytes((m, n), rank, precision)
               for m, n in shapes)


def galore_groups_saving(param_groups, precision: Precision = BF16_MIXED) -> int:
    """`galore_saving_bytes` over a live GaLore optimizer's groups (those with a `rank`)."""
    return sum(galore_saving_bytes([tuple(p.shape) for p in g["params"] if p.dim() == 2], g["rank"],
                                   precision)
               for g in param_groups if g.get("rank") is not None)


def galore_shapes(cfg: ModelConfig, frozen: set[str], adapters: dict[str, int] | int = 0
                  ) -> list[tuple[int, int]]:
    """Shapes of the trainable weights growlm's GaLore projects: the 2-D ones outside the
    embedding and head (`growlm.optim.galore.DEFAULT_REGULAR`), each parameter once."""
    state = Trainability(cfg, frozen, adapters)
    shapes = {w.param: w.shape for w in state.weights}
    return [shapes[name] for name in _galore_params(state)]


def _galore_params(state: Trainability) -> list[str]:
    from growlm.optim.galore import DEFAULT_REGULAR

    seen: set[str] = set()
    out = []
    for w in state.weights:
        if w.param in seen or len(w.shape) != 2 or not state.trainable(w):
            continue
        seen.add(w.param)
        if not any(fnmatch.fnmatchcase(w.param, g) for g in DEFAULT_REGULAR):
            out.append(w.param)
    return out


# ---------------------------------------------------------------- parameters

def adapter_params_by_linear(cfg: ModelConfig, spec, frozen: set[str]) -> dict[str, int]:
    """Adapter parameters per targeted linear: rank·(in + out) for each linear whose module name
    (e.g. ``layers.3.self_attn.q_proj``) matches one of ``spec.targets`` (globs); with
    ``spec.on == "frozen"`` only linears whose weight is frozen. `spec` is an AdapterSpec."""
    if spec is None:
        return {}
    state = Trainability(cfg, frozen)
    out: dict[str, int] = {}
    for module, w in state.by_module.items():
        if not any(fnmatch.fnmatchcase(module, pattern) for pattern in spec.targets):
            continue
        if spec.on == "frozen" and state.trainable(w):
            continue
        out[module] = spec.rank * sum(w.shape)
    return out


def adapter_params(cfg: ModelConfig, adapter_spec, frozen: set[str]) -> int:
    """Total adapter parameters of a stage (see `adapter_params_by_linear`)."""
    return sum(adapter_params_by_linear(cfg, adapter_spec, frozen).values())


def param_counts(cfg: ModelConfig, frozen: set[str], adapters: dict[str, int] | int = 0) -> dict:
    """Parameters by part (embedding, head, layers, norm, adapters) and trainable / frozen.

    A tied head adds no parameters (``head`` is 0) and trains or freezes with the embedding."""
    state = Trainability(cfg, frozen, adapters)
    parts = {"embedding": 0, "head": 0, "layers": 0, "norm": 0}
    trainable = frozen_n = 0
    seen: set[str] = set()
    for w in state.weights:
        if w.param in seen:
            continue
        seen.add(w.param)
        part = ("embedding" if w.kind == "embedding" else "head" if w.name == "lm_head.weight"
                else "norm" if w.layer is None else "layers")
        parts[part] += w.params
        if state.trainable(w):
            trainable += w.params
        else:
            frozen_n += w.params
    adapter = sum(state.adapter_params.values())
    return {**parts, "adapter": adapter, "trainable": trainable, "frozen": frozen_n,
            "total": trainable + frozen_n + adapter}


def tensor_bytes(tensors) -> int:
    """Bytes held by the given tensors (non-tensors are skipped): what model-state memory
    measures on live weights, gradients and optimizer state."""
    import torch

    return sum(t.numel() * t.element_size() for t in tensors if torch.is_tensor(t))

# ---------------------------------------------------------------- the step's peak

@dataclass(frozen=True)
class PeakEstimate:
    """Estimated bytes of one training step (module docstring); all figures in bytes."""

    precision: str
    weights: int  # parameters as stored, adapters included
    gradients: int  # every trainable parameter's gradient
    optimizer_state: int  # moments, master copies, GaLore projectors, AdamW step counters
    buffers: int  # the RoPE cos/sin tables
    batches: int  # the step's int64 input and target tokens
    activations: int  # kept for the backward when the forward ends
    peak: int
    moment: str  # when the peak happens: "loss forward", "backward, layer 3", "optimizer step"
    moments: tuple[act.Moment, ...]  # every moment counted, in bytes above weights, optimizer
    # state, buffers and batches

    @property
    def model_state(self) -> int:
        return self.weights + self.gradients + self.optimizer_state

    def as_dict(self) -> dict:
        return {"precision": self.precision, "weights": self.weights, "gradients": self.gradients,
                "optimizer_state": self.optimizer_state, "buffers": self.buffers,
                "batches": self.batches,
                "activations": self.activations, "peak": self.peak, "peak_moment": self.moment}


def _tensors(state: Trainability) -> list[tuple[str, tuple[int, ...], bool, bool]]:
    """(name, shape, trainable, is an adapter factor) of every parameter tensor, LoRA's A and B
    included."""
    out, seen = [], set()
    for w in state.weights:
        if w.param in seen:
            continue
        seen.add(w.param)
        out.append((w.param, w.shape, state.trainable(w), False))
        if state.adapted(w):
            r = state.adapter_rank(w)
            out += [(f"{w.module}.lora_A", (r, w.shape[1]), True, True),
                    (f"{w.module}.lora_B", (w.shape[0], r), True, True)]
    return out


def _optimizer(state: Trainability, prec: Precision, optimizer: str, galore_rank: int | None):
    """(optimizer state bytes, temporaries of its step) for the trainable tensors. LoRA factors
    are fp32 with fp32 moments and no master copy under every precision."""
    tensors = [(name, s, adapter) for name, s, trainable, adapter in _tensors(state) if trainable]
    projected = set(_galore_params(state)) if optimizer == "galore" else set()
    moments = workspace = 0
    for name, shape, adapter in tensors:
        n = math.prod(shape)
        moment, master = (4, 0) if adapter else (prec.moment, prec.master)
        if name in projected or (optimizer == "galore" and adapter):  # GaLore projects LoRA's too
            m, k = shape
            r = min(galore_rank, m, k)
            moments += master * n + moment * (2 * r * max(m, k) + r * min(m, k))
            workspace = max(workspace, moment * (2 * r * max(m, k) + n))
            continue
        moments += (master + 2 * moment) * n
        workspace = max(workspace, 2 * moment * n)
    if optimizer == "adamw":
        moments += ADAM_STEP_BYTES * len(tensors) if prec is not BF16_MIXED else 0
        if prec.fused_optimizer:
            workspace = 0
    return moments, workspace


def _weight_copies(state: Trainability, prec: Precision) -> int:
    """Autocast's low-precision copies alive through the backward: trainable linears' (cached)
    and frozen linears' on the gradient path (saved for their input gradient)."""
    if not prec.weight_copy:
        return 0
    seen, total = set(), 0
    for w in state.weights:
        if w.kind != "linear" or w.param in seen:
            continue
        if state.trainable(w) or state.grad_reaches(w.slot) or state.adapted(w):
            seen.add(w.param)
            total += prec.weight_copy * w.params
    return total


def activation_bytes(cfg: ModelConfig, batch: int, seq_len: int, frozen: set[str],
                     adapters: dict[str, int] | int = 0, *, checkpointing: bool = False,
                     fused_attention: bool = True, precision: Precision = BF16_MIXED,
                     loss_impl: str | None = None) -> int:
    """Bytes kept for the backward when the forward of one micro-batch of `batch` × `seq_len`
    tokens ends (growlm.plan.activations). Raises GrowlmError for a non-positive size."""
    return act.activation_bytes(Trainability(cfg, frozen, adapters), act.Tokens(batch, seq_len),
                                precision, loss_impl=loss_impl or default_loss_impl(precision),
                                checkpointing=checkpointing, fused_attention=fused_attention)


def default_loss_impl(prec: Precision) -> str:
    """The chunked loss's implementation a run in `prec` uses without Liger-Kernel: torch's
    fused op only with an fp32 head computing in fp32 (growlm.model.loss.loss_impl)."""
    return "torch" if prec.activation == 4 and prec.weight == 4 else "checkpoint"


def estimate_peak(cfg: ModelConfig, frozen: set[str], adapters: dict[str, int] | int, batch: int,
                  seq_len: int, *, precision: Precision = BF16_MIXED, loss_impl: str | None = None,
                  optimizer: str = "adamw", galore_rank: int | None = None,
                  checkpointing: bool = False, accumulation: int = 1,
                  fused_attention: bool = True) -> PeakEstimate:
    """Peak bytes of one training step of micro-batches of `batch` × `seq_len` tokens, with
    `accumulation` micro-batches per step (module docstrings of this module and of
    growlm.plan.activations). `adapters` as for `Trainability`; `optimizer` "adamw" or
    "galore" (with `galore_rank`); `loss_impl` defaults to `default_loss_impl(precision)`.

    Raises GrowlmError for a non-positive batch, sequence length or accumulation count."""
    if accumulation <= 0:
        raise GrowlmError(f"gradient accumulation must be ≥ 1 micro-batch, got {accumulation}")
    if optimizer == "galore" and not galore_rank:
        raise GrowlmError("a GaLore estimate needs its rank")
    tokens = act.Tokens(batch, seq_len)
    state = Trainability(cfg, frozen, adapters)
    impl = loss_impl or default_loss_impl(precision)
    seen: set[str] = set()
    stored = sum(w.params for w in state.weights if not (w.param in seen or seen.add(w.param)))
    weights = precision.weight * stored + 4 * sum(state.adapter_params.values())
    optimizer_state, workspace = _optimizer(state, precision, optimizer, galore_rank)
    timeline = act.step_moments(state, tokens, precision, loss_impl=impl, checkpointing=checkpointing,
                                accumulation=accumulation, fused_attention=fused_attention)
    gradients, activations = timeline.gradients, timeline.activations
    copies = _weight_copies(state, precision)
    moments = [act.Moment(m.name, m.bytes + copies) for m in timeline.moments]
    if gradients:
        moments.append(act.Moment("optimizer step", gradients + workspace))
    rope = 2 * cfg.max_seq_len * cfg.head_size * 4  # cos and sin buffers, fp32
    batches = accumulation * 2 * tokens.n * 8  # int64 inputs and targets
    top = max(moments, key=lambda m: m.bytes, default=act.Moment("no backward", 0))
    return PeakEstimate(precision.name, weights, gradients, optimizer_state, rope, batches,
                        activations, weights + optimizer_state + rope + batches + top.bytes,
                        top.name, tuple(moments))
