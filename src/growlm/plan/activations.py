"""Activation memory of a training step, and the step's bytes over time above its model state.

Why a timeline and not "model state + activations": within one step the activations and the
gradients are never all alive together. The forward keeps activations for the backward; the
backward frees them layer by layer while it creates the gradients; the optimizer step runs on
the gradients after every activation is gone. So the peak is the largest of a few moments,
each counted here: the loss (every activation kept, plus the loss's own buffers), the backward
through each layer (the activations below it, the gradients above it, the layer's workspace),
and the optimizer step (every gradient plus the optimizer's temporaries, added by
`growlm.plan.memory`). With gradient accumulation the second and later micro-batches run with
the previous ones' gradients alive, which the timeline adds.

**Kept per layer** for B sequences of T tokens, N = B·T, with ``s = stream bytes · N`` (the
residual stream and RMSNorm outputs) and ``a = activation bytes · N`` (matmul outputs; see
growlm.plan.precision), in the spirit of Korthikanti et al. 2022 ("Reducing Activation
Recomputation in Large Transformer Models", whose GPT layer keeps ``T·B·d·(34 + 5·heads·T/d)``
bytes), redone for this model: RMSNorm, SwiGLU, no dropout, and a fused attention kernel that
keeps no T×T matrix:

=====================================  ==============  =====================================
tensor                                 size            kept when
=====================================  ==============  =====================================
input of input_layernorm               s·d             norm trainable or gradient reaches it
its output (input of q, k, v)          s·d             q, k or v trainable / adapted
inputs of the q/k norms (Qwen3)        a·(q + kv)      a gradient must reach q / k
Q, K, V after RoPE                     a·(q + 2·kv)    the attention core needs a backward
RoPE's saved sin (and cos) tables      2·T·hd·act      as Q, K (cos too when it is cast)
attention output (input of o_proj)     a·q             core backward (the kernel needs it) or
                                                       o_proj trainable / adapted
softmax log-sum-exp (fp32)             4·heads·N       core backward
input of post_attention_layernorm      s·d             as for the first norm
its output (input of gate, up)         s·d             gate or up trainable / adapted
gate, up outputs and SiLU(gate)        3·a·f           a gradient must reach gate/up
product (input of down_proj)           a·f             down trainable / adapted
adapter bottleneck (A·x)               a·r             per adapted linear
=====================================  ==============  =====================================

Here hd is the head width, q = n_heads·hd and kv = n_kv_heads·hd (q = d unless head_dim is
set apart). For a trainable MHA layer without q/k norms in fp32 this is ``4·N·(8·d + 4·f)`` bytes, measured exactly on CPU
(tests/plan/test_memory.py). With ``fused_attention=False`` (eager softmax) the probabilities
add ``act·heads·T·N``. Frozen layers that no gradient reaches keep nothing.

**The loss** is chunked (growlm.model.loss): at most c = `chunk_positions(V)` positions of
logits exist at a time. Per implementation (`growlm.model.loss.loss_impl`):

- ``"torch"`` (CPU, fp32 head): the forward computes the gradients of the hidden states
  (N·d) and of the head weight (V·d, when it trains) and keeps them; each chunk's logits
  (c·V fp32) and hidden rows (c·d) are transient. At the start of the backward the two
  gradients are allocated once more before the saved ones are freed.
- ``"checkpoint"`` (autocast without Liger, or a wrapped head): the forward keeps only the
  final norm's output (N·d; the chunks are views of it); the backward recomputes each chunk and holds three fp32 chunk-sized tensors at once
  (the log-softmax and the gradients into and out of it; for a LoRA-wrapped head the base and
  adapter logits and their sum), ``12·c·V`` bytes, then the head weight's gradient in the
  compute dtype, plus the gradient of the hidden states (N·d).
- ``"liger"`` (CUDA with Liger-Kernel): counted as "torch" (gradients computed in the
  forward, one chunk of fp32 logits); Liger picks its own chunk size, so this is approximate.

**Backward workspace** of a layer: the gradients of the SwiGLU branch (2·a·f) or of Q, K, V
and the attention output (a·(2·q + 2·kv)), whichever is larger, plus the gradient flowing
down the residual stream (2·s·d).

**Activation checkpointing** (each block recomputed in the backward): a block keeps only its
input (s·d) when the backward reaches it; the backward recomputes one block's full set at a time.

Not modelled: the forward's own transients (smaller than the loss moment), allocator rounding
and fragmentation (none on CPU; CUDA's caching allocator rounds to 512 bytes), DDP's gradient
buckets, and FSDP's sharding (the estimate is for one process holding the whole model).
"""

from __future__ import annotations

from dataclasses import dataclass

from growlm.errors import GrowlmError
from growlm.model.loss import chunk_positions
from growlm.plan.layout import GATE_UP_SLOT, POST_NORM_SLOT, Trainability, Weight, layer_base
from growlm.plan.precision import Precision

LOGSUMEXP_BYTES = 4  # the attention kernel's per-row softmax statistics are fp32
_MLP = ("mlp.gate_proj.weight", "mlp.up_proj.weight", "mlp.down_proj.weight")


@dataclass(frozen=True)
class Tokens:
    """One micro-batch: `batch` sequences of `seq_len` tokens."""

    batch: int
    seq_len: int

    def __post_init__(self):
        if self.batch <= 0 or self.seq_len <= 0:
            raise GrowlmError(f"micro-batch size and sequence length must be positive, got "
                              f"{self.batch}, {self.seq_len}")

    @property
    def n(self) -> int:
        return self.batch * self.seq_len


@dataclass(frozen=True)
class LayerCost:
    kept: int  # bytes saved for the backward (without checkpointing)
    mlp_kept: int  # the part of `kept` the MLP's backward frees (post-norm onwards)
    grads: int  # bytes of the weight and adapter gradients its backward creates
    mlp_grads: int  # the part of `grads` made by the MLP's backward
    first_grads: tuple[int, int]  # the gradient each half makes first (down_proj, o_proj)
    workspace: tuple[int, int]  # transient bytes of the MLP's and the attention's backward
    backward: bool  # whether the backward runs through it at all


def _by_layer(state: Trainability) -> list[dict[str, Weight]]:
    """Each layer's weights by their name inside the layer ("self_attn.q_proj.weight", ...)."""
    out: list[dict[str, Weight]] = [{} for _ in range(state.cfg.n_layers)]
    for w in state.weights:
        if w.layer is not None:
            out[w.layer][w.name.removeprefix(f"layers.{w.layer}.")] = w
    return out


def grad_bytes(state: Trainability, weights, prec: Precision) -> int:
    """Gradient bytes of the given weights: trainable ones in `prec`, adapters in fp32."""
    seen: set[str] = set()
    total = 0
    for w in weights:
        if w.param in seen:
            continue
        seen.add(w.param)
        if state.trainable(w):
            total += w.params * prec.grad
        if state.adapted(w):
            total += 4 * state.adapter_params[w.module]
    return total


def layer_cost(state: Trainability, i: int, w: dict[str, Weight], tokens: Tokens, prec: Precision,
               fused_attention: bool = True) -> LayerCost:
    """What layer i keeps, creates and needs in its backward (table in the module docstring);
    `w` maps the layer's weights as `_by_layer` does."""
    cfg = state.cfg
    d, f, hd = cfg.d_model, cfg.hidden_dim, cfg.head_size
    q_out, kv_out = cfg.q_dim, cfg.kv_dim
    s, a = prec.stream * tokens.n, prec.activation * tokens.n
    base = layer_base(i)
    up, act = state.grad_reaches, state.active
    needs = {x: state.projection_needs_grad(i, x) for x in "qkv"}
    core = any(needs.values())
    rank = {k: a * state.adapter_rank(x) for k, x in w.items() if state.adapted(x)}
    kept = sum(v for k, v in rank.items() if k not in _MLP)
    if state.trainable(w["input_layernorm.weight"]) or up(base):
        kept += s * d
    if any(act(w[f"self_attn.{x}_proj.weight"]) for x in "qkv"):
        kept += s * d
    if core:
        kept += a * (q_out + 2 * kv_out) + LOGSUMEXP_BYTES * cfg.n_heads * tokens.n
        tables = 1 if prec.activation == 4 else 2  # sin, plus cos when cast to the compute dtype
        kept += 2 * tables * tokens.seq_len * hd * prec.activation
        if not fused_attention:
            kept += a * cfg.n_heads * tokens.seq_len
    if cfg.qk_norm:  # the q/k norms keep their inputs (the q_proj and k_proj outputs)
        kept += a * (q_out * needs["q"] + kv_out * needs["k"])
    if core or act(w["self_attn.o_proj.weight"]):
        kept += a * q_out
    mlp_kept = 0
    mlp_backward = False
    if cfg.block == "full":
        gate, up_proj, down = (w[x] for x in _MLP)
        mlp_kept = sum(v for k, v in rank.items() if k in _MLP)
        if state.trainable(w["post_attention_layernorm.weight"]) or up(base + POST_NORM_SLOT):
            mlp_kept += s * d
        if act(gate) or act(up_proj):
            mlp_kept += s * d
        mlp_backward = up(base + GATE_UP_SLOT) or any(act(w[x]) for x in _MLP)
        if up(base + GATE_UP_SLOT) or act(gate) or act(up_proj):
            mlp_kept += 3 * a * f
        if act(down):
            mlp_kept += a * f
    backward = state.first_active_slot < layer_base(i + 1)
    mlp = [x for k, x in w.items() if k.startswith(("mlp.", "post_attention_layernorm."))]
    grads = grad_bytes(state, w.values(), prec)
    mlp_grads = grad_bytes(state, mlp, prec)
    first = (grad_bytes(state, [w["mlp.down_proj.weight"]], prec) if cfg.block == "full" else 0,
             grad_bytes(state, [w["self_attn.o_proj.weight"]], prec))
    workspace = (0, 0)
    if backward:  # the gradient flowing down the residual stream is alive throughout
        attn = a * (2 * q_out + 2 * kv_out) if core else a * q_out
        workspace = (2 * a * f + s * d if mlp_backward else 0, attn + s * d)
    return LayerCost(kept + mlp_kept, mlp_kept, grads, mlp_grads, first, workspace, backward)


@dataclass(frozen=True)
class LossCost:
    kept: int  # saved by the forward until the loss's backward (besides the head's gradient)
    head_grad_in_forward: bool  # the head weight's gradient is made in the forward
    forward_workspace: int  # transient during the forward of the loss
    backward_workspace: int  # transient during the loss's backward


def loss_cost(state: Trainability, tokens: Tokens, prec: Precision, impl: str) -> LossCost:
    """The chunked loss's buffers (module docstring); `impl` as growlm.model.loss.loss_impl."""
    cfg = state.cfg
    d, vocab = cfg.d_model, cfg.vocab_size
    head = next(w for w in state.weights if w.name == "lm_head.weight")
    trains_head = state.trainable(head)
    chunk = min(tokens.n, chunk_positions(vocab))
    head_grad = vocab * d * prec.grad if trains_head else 0
    if impl in ("torch", "liger"):
        grad_hidden = tokens.n * d * prec.stream
        return LossCost(grad_hidden, trains_head, chunk * (vocab + d) * 4, grad_hidden + head_grad)
    if impl != "checkpoint":
        raise GrowlmError(f"loss implementation {impl!r}: expected torch, liger or checkpoint")
    hidden = tokens.n * d * prec.stream  # the final norm's output: the chunks are views of it
    # three chunk-sized fp32 tensors at once: the log-softmax, the gradient coming into it
    # and the one leaving it (or, for a wrapped head, the base and adapter outputs and their
    # sum); then the head weight's gradient in the compute dtype beside one chunk's gradient
    weight_grad = vocab * d * prec.activation if trains_head else 0
    workspace = max(12 * chunk * vocab, chunk * vocab * 4 + weight_grad)
    return LossCost(hidden, False, 0, workspace + tokens.n * d * prec.stream)


@dataclass(frozen=True)
class Moment:
    """Bytes alive at one moment of the step, above the weights, optimizer state, buffers and
    batches (which are alive throughout)."""

    name: str
    bytes: int


@dataclass(frozen=True)
class Timeline:
    moments: list[Moment]  # the forward/backward moments (none when nothing trains)
    gradients: int  # bytes of every gradient of the step
    activations: int  # bytes kept for the backward when the forward ends (`activation_bytes`)


def step_moments(state: Trainability, tokens: Tokens, prec: Precision, *, loss_impl: str,
                 checkpointing: bool = False, accumulation: int = 1,
                 fused_attention: bool = True) -> Timeline:
    """The forward/backward moments of one step, the bytes of all its gradients and of the
    activations kept when the forward ends.

    Each moment's bytes are above weights, optimizer state, buffers and batches
    (growlm.plan.memory adds those, and the optimizer step's moment). `accumulation` > 1:
    micro-batches after the first find every gradient alive and add theirs into them through
    temporaries."""
    cfg = state.cfg
    norm, head = (w for w in state.weights if w.name in ("norm.weight", "lm_head.weight"))
    if state.first_active_slot > head.slot:
        return Timeline([], 0, 0)  # nothing trains: no backward
    layers = [layer_cost(state, i, w, tokens, prec, fused_attention) for i, w in enumerate(_by_layer(state))]
    s = prec.stream * tokens.n
    embed = state.weights[0]
    loss = loss_cost(state, tokens, prec, loss_impl)
    tail_grads = grad_bytes(state, [norm, head], prec)
    embed_grads = grad_bytes(state, [embed], prec) if not cfg.tie_embeddings else 0
    all_grads = sum(x.grads for x in layers) + tail_grads + embed_grads
    kept_in = [s * cfg.d_model if (checkpointing and x.kept) else x.kept for x in layers]
    tail_in = s * cfg.d_model if (state.trainable(norm) or state.grad_reaches(norm.slot)) else 0
    held = all_grads if accumulation > 1 else 0  # earlier micro-batches' gradients
    persist = accumulation == 1  # a new gradient becomes .grad rather than a temporary
    # the final norm's output is alive through the loss (the "checkpoint" loss keeps it: its
    # `kept` already counts it)
    kept = sum(kept_in) + tail_in + loss.kept + (s * cfg.d_model if loss_impl != "checkpoint" else 0)
    head_grad = head.params * prec.grad if state.trainable(head) else 0
    # "torch"/"liger" make the head's gradient in the forward; "checkpoint" in the backward,
    # where it becomes .grad (or, accumulating, a temporary inside the workspace)
    early = head_grad if loss.head_grad_in_forward else 0
    late = early if loss.head_grad_in_forward else (head_grad if persist else 0)
    moments = [Moment("loss forward", held + kept + early + loss.forward_workspace),
               Moment("loss backward", held + kept + late + loss.backward_workspace)]
    level = held + sum(kept_in) + tail_in + (tail_grads if persist else 0)
    for i in reversed(range(cfg.n_layers)):
        x = layers[i]
        if not x.backward:
            continue
        # with checkpointing the block's input is all that was kept; the backward recomputes
        # its full set first
        alive = level + (x.kept - kept_in[i] if checkpointing else 0)
        mlp_ws, attn_ws = x.workspace
        if mlp_ws:
            moments.append(Moment(f"backward, layer {i} MLP", alive + x.first_grads[0] + mlp_ws))
        alive += (x.mlp_grads if persist else 0) - x.mlp_kept
        moments.append(Moment(f"backward, layer {i} attention", alive + x.first_grads[1] + attn_ws))
        level = alive + (x.grads - x.mlp_grads if persist else 0) - (x.kept - x.mlp_kept)
    if state.trainable(embed):
        # the embedding's dense gradient: a new .grad, or a temporary added into a tied head's
        moments.append(Moment("backward, embedding", level + embed.params * prec.grad))
    return Timeline(moments, all_grads, sum(kept_in) + tail_in + loss.kept)


def activation_bytes(state: Trainability, tokens: Tokens, prec: Precision, *, loss_impl: str,
                     checkpointing: bool = False, fused_attention: bool = True) -> int:
    """Bytes kept for the backward when the forward ends (layers, final norm, the loss's saved
    tensors; the head weight's gradient is a gradient and not counted here)."""
    return step_moments(state, tokens, prec, loss_impl=loss_impl, checkpointing=checkpointing,
                        fused_attention=fused_attention).activations
