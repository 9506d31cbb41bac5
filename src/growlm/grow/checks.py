"""Can a growth op take a model of shape `old` to shape `new`? One-line errors if not."""

from __future__ import annotations

from growlm.errors import GrowlmError
from growlm.model.config import ModelConfig

DEPTH_OPS = ("stack", "duplicate", "interpolate", "identity", "random", "learn")
INSERT_OPS = ("interpolate", "identity", "random")  # ops that insert layers at chosen places
WIDTH_OPS = ("clone", "split", "zero", "width_random", "width_learn")
# Gstack's G_learn (LiGO): the new weights are linear maps of the old ones, learned for
# `learn_steps` steps at the start of the stage (growlm.grow.ligo, growlm.train.growth)
LEARN_OPS = ("learn", "width_learn")
# Gstack's G_random with MSG's growth masks (`mask_steps`; growlm.grow.masks)
MASK_OPS = ("random", "width_random")
# reuse: a fresh deep model with the embedding/head (and optionally layer-0 parts) copied
GROW_OPS = (*DEPTH_OPS, *WIDTH_OPS, "reuse")
WIDTH_FIELDS = ("d_model", "ffn_dim", "n_heads", "n_kv_heads")
# What makes two models different architectures: tensors one has and the other lacks, or the
# family they export as. Growth between them is refused (mixed-architecture growth).
ARCHITECTURE_FIELDS = ("model_type", "qkv_bias", "o_bias", "qk_norm", "tie_embeddings")

# The GrowSpec fields each op reads; setting any other one is a mistake worth reporting.
ALLOWED_FIELDS = {
    "stack": {"factor", "sources"},
    "duplicate": {"factor"},
    **{op: {"add", "position"} for op in INSERT_OPS},
    **{op: {"factor", *WIDTH_FIELDS} for op in WIDTH_OPS},
    "reuse": {"layer0"},
    "learn": {"factor"},
}
for _op in LEARN_OPS:
    ALLOWED_FIELDS[_op] = ALLOWED_FIELDS[_op] | {"learn_steps", "learn_lr"}
for _op in MASK_OPS:
    ALLOWED_FIELDS[_op] = ALLOWED_FIELDS[_op] | {"mask_steps"}


def _heads(cfg: ModelConfig) -> tuple[int, int, int]:
    return cfg.n_heads, cfg.kv_heads, cfg.head_size


def _group(cfg: ModelConfig) -> int:
    """Query heads per key/value head."""
    return cfg.n_heads // cfg.kv_heads


def check_growth(old: ModelConfig, new: ModelConfig, spec, where: str = "") -> None:
    """Raise GrowlmError (one line starting with `where`) if `spec` cannot take `old` to `new`."""
    op = spec.op
    p = f"{where}.grow" if where else "grow"
    if op not in ALLOWED_FIELDS:
        raise GrowlmError(f"{p}: unknown op {op!r} (allowed: {', '.join(ALLOWED_FIELDS)})")
    extra = sorted(set(spec.model_fields_set) - {"op"} - ALLOWED_FIELDS[op])
    if extra:
        raise GrowlmError(
            f"{p}: '{op}' does not take {', '.join(extra)} "
            f"(it takes {', '.join(sorted(ALLOWED_FIELDS[op])) or 'nothing else'})"
        )
    if old.vocab_size != new.vocab_size:
        raise GrowlmError(
            f"{p}: '{op}' needs the same vocab_size in both models ({old.vocab_size} → {new.vocab_size})"
        )
    for field in ARCHITECTURE_FIELDS:
        a, b = getattr(old, field), getattr(new, field)
        if a != b:
            raise GrowlmError(
                f"{p}: '{op}' cannot change {field} ({a} → {b}): growth keeps the architecture "
                "(model_type, q/k/v and o biases, q/k norms, tied embeddings)"
            )
    if op in DEPTH_OPS:
        _check_depth(old, new, spec, p)
    elif op in WIDTH_OPS:
        _check_width(old, new, spec, p)
    else:
        _check_reuse(old, new, spec, p)


def _check_depth(old: ModelConfig, new: ModelConfig, spec, p: str) -> None:
    op, n_old, n_new = spec.op, old.n_layers, new.n_layers
    for field in ("d_model", "n_heads", "kv_heads", "head_size", "hidden_dim", "block"):
        a, b = getattr(old, field), getattr(new, field)
        if a != b:
            raise GrowlmError(
                f"{p}: '{op}' is a depth op and cannot change {field} ({a} → {b}); "
                "widen with clone, split, zero or width_random in a separate stage"
            )
    if n_new < n_old:
        raise GrowlmError(f"{p}: '{op}' cannot grow to fewer layers than the source ({n_old} → {n_new})")
    if n_new == n_old:
        raise GrowlmError(f"{p}: '{op}' must add layers, but the depth stays {n_old}")
    if n_old == 0 and op in ("stack", "duplicate", "interpolate", "learn"):
        raise GrowlmError(
            f"{p}: '{op}' needs a source with at least one layer (use identity or random from 0 layers)"
        )
    if op in ("stack", "learn"):
        if spec.sources is not None:
            bad = [i for i in spec.sources if not 0 <= i < n_old]
            if bad:
                raise GrowlmError(
                    f"{p}.sources: indices {bad} out of range for a {n_old}-layer source (0..{n_old - 1})"
                )
            if len(spec.sources) != n_new:
                raise GrowlmError(
                    f"{p}.sources: {len(spec.sources)} source indices for a {n_new}-layer target "
                    "(one per target layer)"
                )
        if spec.factor is not None and n_new != spec.factor * n_old:
            raise GrowlmError(
                f"{p}: factor {spec.factor} makes {spec.factor * n_old} layers from {n_old}, "
                f"but the target has {n_new}"
            )
    elif op == "duplicate":
        if spec.factor is not None and n_new != spec.factor * n_old:
            raise GrowlmError(
                f"{p}: factor {spec.factor} makes {spec.factor * n_old} layers from {n_old}, "
                f"but the target has {n_new}"
            )
        if n_new % n_old:
            raise GrowlmError(
                f"{p}: 'duplicate' needs the target depth to be a multiple of the source's "
                f"({n_old} → {n_new}; use stack with sources for other depths)"
            )
    elif spec.add is not None and n_new != n_old + spec.add:
        raise GrowlmError(f"{p}: add {spec.add} makes {n_old + spec.add} layers, but the target has {n_new}")


def _check_width(old: ModelConfig, new: ModelConfig, spec, p: str) -> None:
    op = spec.op
    for field in ("n_layers", "block"):
        a, b = getattr(old, field), getattr(new, field)
        if a != b:
            raise GrowlmError(
                f"{p}: '{op}' is a width op and cannot change {field} ({a} → {b}); "
                "grow depth in a separate stage"
            )
    if new.head_size != old.head_size:
        hd = old.head_size
        want = new.d_model // hd if new.d_model % hd == 0 else None
        hint = f"n_heads = {want}" if want else f"a d_model that is a multiple of {hd}"
        raise GrowlmError(
            f"{p}: '{op}' keeps head_dim = {hd} (RoPE works per head), but the target's "
            f"head_dim is {new.head_size} (d_model {new.d_model} / n_heads {new.n_heads}); "
            f"use {hint}, or set head_dim = {hd}"
        )
    sizes = {
        "d_model": (old.d_model, new.d_model),
        "ffn_dim": (old.hidden_dim, new.hidden_dim),
        "n_kv_heads": (old.kv_heads, new.kv_heads),
        "query heads per kv head": (_group(old), _group(new)),
    }
    for name, (a, b) in sizes.items():
        if b < a:
            raise GrowlmError(f"{p}: '{op}' cannot shrink {name} ({a} → {b})")
    if all(a == b for a, b in sizes.values()):
        raise GrowlmError(f"{p}: '{op}' does not change the width (d_model {old.d_model}, ffn_dim {old.hidden_dim})")
    if spec.factor is not None and new.d_model != spec.factor * old.d_model:
        raise GrowlmError(
            f"{p}: factor {spec.factor} makes d_model {spec.factor * old.d_model}, "
            f"but the target has {new.d_model}"
        )
    if op == "clone":
        for name, (a, b) in sizes.items():
            if b % a:
                raise GrowlmError(
                    f"{p}: 'clone' needs {name} to grow by an integer factor ({a} → {b}); "
                    "use 'split' for other sizes"
                )


def _check_reuse(old: ModelConfig, new: ModelConfig, spec, p: str) -> None:
    if old.d_model != new.d_model:
        raise GrowlmError(
            f"{p}: 'reuse' needs the same width in both models (d_model {old.d_model} → {new.d_model})"
        )
    parts = {"none": (), "attn": ("attn",), "ffn": ("ffn",), "attn_ffn": ("attn", "ffn")}[spec.layer0]
    if parts and (old.n_layers == 0 or new.n_layers == 0):
        raise GrowlmError(
            f"{p}.layer0: '{spec.layer0}' copies layer 0, but the source has {old.n_layers} and "
            f"the target {new.n_layers} layers"
        )
    a, b = _heads(old), _heads(new)
    if "attn" in parts and a != b:
        raise GrowlmError(
            f"{p}.layer0: copying attention needs the same heads (n_heads/kv heads/head_dim "
            f"{'/'.join(map(str, a))} → {'/'.join(map(str, b))})"
        )
    if "ffn" in parts:
        if old.block != "full" or new.block != "full":
            raise GrowlmError(
                f"{p}.layer0: copying the FFN needs full blocks in both models "
                f"(source {old.block}, target {new.block})"
            )
        if old.hidden_dim != new.hidden_dim:
            raise GrowlmError(
                f"{p}.layer0: copying the FFN needs the same ffn_dim ({old.hidden_dim} → {new.hidden_dim})"
            )
