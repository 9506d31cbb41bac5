"""HF `config.json` <-> ModelConfig, for the Llama, Mistral, Qwen2 and Qwen3 families.

Reading is strict: every field growlm's model depends on is checked for its type and range, and
a setting growlm cannot reproduce exactly (a RoPE type it does not implement, a sliding window
that would limit attention, an MLP bias, ...) is refused in one line naming the field. Writing
gives the family's own `model_type`, `architectures` and fields, in both the transformers 4
layout (`rope_theta`, `rope_scaling`) and the transformers 5 one (`rope_parameters`), so that
either version loads the folder with the matching `AutoModelForCausalLM` class.

Fields that do not change the network's function are read leniently and written in a canonical
form: `pretraining_tp` (a tensor-parallel slicing of the same matmuls) is written as 1, and
the Qwen sliding-window bookkeeping (`use_sliding_window`, `max_window_layers`, `layer_types`)
is written for the window growlm keeps, which never limits attention.
"""

from __future__ import annotations

import math

import torch

from growlm.errors import GrowlmError
from growlm.model.config import ModelConfig, RopeScaling, llama_ffn_dim

ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}
# transformers' defaults for fields a config.json may leave out, per family.
_MAX_POSITIONS = {"llama": 2048, "mistral": 4096 * 32, "qwen2": 32768, "qwen3": 32768}
_DEFAULT_WINDOW = 4096  # MistralConfig / Qwen2Config / Qwen3Config default sliding_window
_DEFAULT_MAX_WINDOW_LAYERS = 28
_QWEN3_HEAD_DIM = 128
_LLAMA3_KEYS = ("low_freq_factor", "high_freq_factor", "original_max_position_embeddings")
DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}
_MISSING = object()


def _refuse(field: str, value, allowed: str) -> GrowlmError:
    return GrowlmError(f"HF config field {field}={value!r} is not supported; {allowed}")


# ---------------------------------------------------------------- typed field readers


def _get(d: dict, field: str, default=_MISSING):
    if field in d:
        return d[field]
    if default is _MISSING:
        raise GrowlmError(f"HF config is missing the field {field!r}")
    return default


def _int(d: dict, field: str, default=_MISSING, minimum: int = 1) -> int:
    value = _get(d, field, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise GrowlmError(f"HF config field {field}={value!r}: must be an integer >= {minimum}")
    return value


def _opt_int(d: dict, field: str, default=None, minimum: int = 1) -> int | None:
    return None if _get(d, field, default) is None else _int(d, field, default, minimum)


def _float(d: dict, field: str, default=_MISSING, *, positive: bool = True) -> float:
    value = _get(d, field, default)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (positive and value <= 0):
        need = "a positive number" if positive else "a finite number"
        raise GrowlmError(f"HF config field {field}={value!r}: must be {need}")
    return float(value)


def _bool(d: dict, field: str, default: bool = False) -> bool:
    value = _get(d, field, default)
    if not isinstance(value, bool):
        raise GrowlmError(f"HF config field {field}={value!r}: must be true or false")
    return value


# ---------------------------------------------------------------- reading


def from_hf_config(d: dict) -> ModelConfig:
    """ModelConfig from a HF config dict of a supported family; anything growlm's model cannot
    reproduce exactly is refused (GrowlmError, one line naming the field)."""
    if not isinstance(d, dict):
        raise GrowlmError(f"HF config must be a JSON object, got {type(d).__name__}")
    family = d.get("model_type")
    if family not in ARCHITECTURES:
        raise _refuse("model_type", family, f"allowed: {', '.join(ARCHITECTURES)}")
    arch = ARCHITECTURES[family]
    archs = d.get("architectures") or [arch]
    if archs != [arch]:
        raise _refuse("architectures", archs, f"a '{family}' folder must hold [{arch!r}]")
    _check_unsupported(d)
    d_model, n_heads = _int(d, "hidden_size"), _int(d, "num_attention_heads")
    n_layers = _int(d, "num_hidden_layers")
    hidden = _int(d, "intermediate_size")
    kv = _opt_int(d, "num_key_value_heads") or n_heads
    if n_heads % kv:
        raise GrowlmError(f"HF config field num_key_value_heads={kv}: must divide "
                          f"num_attention_heads ({n_heads})")
    head_dim = _opt_int(d, "head_dim", _QWEN3_HEAD_DIM if family == "qwen3" else None)
    if head_dim is None and d_model % n_heads:
        raise GrowlmError(f"HF config field num_attention_heads={n_heads}: must divide "
                          f"hidden_size ({d_model}) when head_dim is not given")
    if (head_dim or d_model // n_heads) % 2:
        raise GrowlmError(f"HF config field head_dim={head_dim or d_model // n_heads}: must be even "
                          "for RoPE")
    if head_dim == d_model // n_heads and d_model % n_heads == 0:
        head_dim = None  # the derived width: keep the config in its shortest form
    max_pos = _int(d, "max_position_embeddings", _MAX_POSITIONS[family])
    theta, scaling = _rope(d, max_pos)
    qkv_bias, o_bias = _biases(d, family)
    fields = dict(
        vocab_size=_int(d, "vocab_size"),
        d_model=d_model,
        n_layers=n_layers,
        n_heads=n_heads,
        n_kv_heads=None if kv == n_heads else kv,
        ffn_dim=None if hidden == llama_ffn_dim(d_model) else hidden,
        block="full",
        model_type=family,
        head_dim=head_dim,
        qkv_bias=qkv_bias,
        o_bias=o_bias,
        qk_norm=family == "qwen3",
        max_seq_len=max_pos,
        rope_theta=theta,
        rope_scaling=scaling,
        sliding_window=_sliding_window(d, family, n_layers, max_pos),
        norm_eps=_float(d, "rms_norm_eps", 1e-6),
        tie_embeddings=_bool(d, "tie_word_embeddings", False),
        init_std=_float(d, "initializer_range", 0.02),
    )
    try:
        return ModelConfig(**fields)
    except ValueError as e:  # pydantic's ValidationError is a ValueError
        errors = getattr(e, "errors", None)
        msg = errors()[0]["msg"] if errors else str(e)
        raise GrowlmError(f"HF config does not describe a valid model: {msg.removeprefix('Value error, ')}") from None


def _check_unsupported(d: dict) -> None:
    if d.get("hidden_act", "silu") != "silu":
        raise _refuse("hidden_act", d["hidden_act"], "only 'silu' (SwiGLU) is allowed")
    if d.get("attention_dropout", 0.0) not in (0, 0.0, None):
        raise _refuse("attention_dropout", d["attention_dropout"], "only 0.0 is allowed")
    if d.get("mlp_bias", False):
        raise _refuse("mlp_bias", d["mlp_bias"], "growlm's MLP has no biases (false)")
    if d.get("quantization_config"):
        raise _refuse("quantization_config", "...", "growlm reads unquantized weights only")
    if d.get("partial_rotary_factor", 1.0) not in (1, 1.0, None):
        raise _refuse("partial_rotary_factor", d["partial_rotary_factor"], "only 1.0 is allowed")
    _opt_int(d, "pretraining_tp", 1)  # slicing of the same matmuls: any value, same function


def _biases(d: dict, family: str) -> tuple[bool, bool]:
    if family == "qwen2":
        return True, False  # Qwen2 always has q/k/v biases and never an o_proj bias
    if family == "mistral":
        if d.get("attention_bias", False):
            raise _refuse("attention_bias", d["attention_bias"], "Mistral has no attention biases")
        return False, False
    bias = _bool(d, "attention_bias", False)
    return bias, bias


def _rope(d: dict, max_pos: int) -> tuple[float, RopeScaling | None]:
    """rope_theta and scaling from either layout (transformers 4: rope_theta + rope_scaling;
    transformers 5: rope_parameters). transformers 5 prefers rope_scaling when both are given."""
    top_theta = _float(d, "rope_theta", 10000.0) if d.get("rope_theta") is not None else None
    for field in ("rope_scaling", "rope_parameters"):
        if d.get(field) is not None and not isinstance(d[field], dict):
            raise GrowlmError(f"HF config field {field}={d[field]!r}: must be an object or null")
    spec = dict(d.get("rope_scaling") or d.get("rope_parameters") or {})
    field = "rope_scaling" if d.get("rope_scaling") else "rope_parameters"
    theta = top_theta if top_theta is not None else 10000.0
    if "rope_theta" in spec:
        inner = _float(spec, "rope_theta")
        if top_theta is not None and inner != top_theta:
            raise GrowlmError(
                f"HF config: rope_theta = {top_theta} and {field}.rope_theta = {inner} disagree"
            )
        theta = inner
    rope_type = spec.pop("rope_type", spec.pop("type", "default"))
    spec.pop("rope_theta", None)
    if spec.get("partial_rotary_factor", 1.0) not in (1, 1.0):
        raise _refuse(f"{field}.partial_rotary_factor", spec["partial_rotary_factor"], "only 1.0 is allowed")
    spec.pop("partial_rotary_factor", None)
    allowed = {"default": (), "linear": ("factor",), "llama3": ("factor", *_LLAMA3_KEYS)}
    if rope_type not in allowed:
        raise _refuse(f"{field}.rope_type", rope_type, "allowed: default, linear, llama3")
    extra = sorted(set(spec) - set(allowed[rope_type]))
    if extra:
        raise _refuse(f"{field}.{extra[0]}", spec[extra[0]],
                      f"RoPE type {rope_type!r} takes {', '.join(allowed[rope_type]) or 'no parameters'}")
    if rope_type == "default":
        return theta, None
    values = {"factor": _float(spec, "factor")}
    if rope_type == "llama3":
        values |= {"low_freq_factor": _float(spec, "low_freq_factor"),
                   "high_freq_factor": _float(spec, "high_freq_factor"),
                   # transformers falls back to max_position_embeddings when it is absent
                   "original_max_position_embeddings": _int(spec, "original_max_position_embeddings", max_pos)}
    try:
        return theta, RopeScaling(rope_type=rope_type, **values)
    except ValueError as e:
        raise GrowlmError(f"HF config field {field}: {e.errors()[0]['msg'].removeprefix('Value error, ')}") from None


def _sliding_window(d: dict, family: str, n_layers: int, max_pos: int) -> int | None:
    """The window growlm keeps (None or one that never binds); refuse one that would bind."""
    if family == "llama":
        if d.get("sliding_window") is not None:
            raise _refuse("sliding_window", d["sliding_window"], "Llama has no sliding window (null)")
        return None
    window = _opt_int(d, "sliding_window", _DEFAULT_WINDOW)
    if family == "mistral":
        used = window is not None
    else:  # Qwen: only with use_sliding_window, and only on layers from max_window_layers up
        types = d.get("layer_types")
        kinds = ("full_attention", "sliding_attention")
        if types is not None and (not isinstance(types, list) or any(t not in kinds for t in types)):
            raise _refuse("layer_types", types, "a list of 'full_attention' / 'sliding_attention' or null")
        if not _bool(d, "use_sliding_window", False):
            return None  # transformers sets sliding_window to None in this case
        first = _int(d, "max_window_layers", _DEFAULT_MAX_WINDOW_LAYERS, minimum=0)
        # transformers 5 reads layer_types when given, 4 reads max_window_layers: a window
        # either of them would apply counts as used
        used = window is not None and ("sliding_attention" in (types or []) or first < n_layers)
        if not used:
            return None
    if used and window < max_pos:
        raise _refuse("sliding_window", window,
                      f"growlm attends to the whole context; only null or a window of at least "
                      f"max_position_embeddings ({max_pos}) is allowed")
    return window


# ---------------------------------------------------------------- writing


def check_exportable(cfg: ModelConfig) -> None:
    """GrowlmError when HF's classes cannot hold `cfg` (attention-only blocks, no layers)."""
    if cfg.block != "full":
        raise GrowlmError(
            f"cannot export block={cfg.block!r}: HF decoder layers always have an MLP; "
            "only block='full' models can be exported"
        )
    if cfg.n_layers == 0:
        raise GrowlmError(
            "cannot export a 0-layer (bigram) model: HF models need num_hidden_layers >= 1"
        )


def _rope_fields(cfg: ModelConfig) -> dict:
    scaling = cfg.rope_scaling.model_dump(exclude_none=True) if cfg.rope_scaling else None
    params = {"rope_type": "default", **(scaling or {}), "rope_theta": cfg.rope_theta}
    # transformers < 5 reads rope_theta / rope_scaling, >= 5 reads rope_parameters.
    return {"rope_theta": cfg.rope_theta, "rope_scaling": scaling, "rope_parameters": params}


def _family_fields(cfg: ModelConfig) -> dict:
    if cfg.model_type == "llama":
        return {"head_dim": cfg.head_size, "attention_bias": cfg.qkv_bias, "mlp_bias": False,
                "pretraining_tp": 1}
    if cfg.model_type == "mistral":
        return {"head_dim": cfg.head_size, "sliding_window": cfg.sliding_window}
    window = cfg.sliding_window is not None
    fields = {
        "use_sliding_window": window,
        "sliding_window": cfg.sliding_window,
        "max_window_layers": cfg.n_layers,
        "layer_types": ["full_attention"] * cfg.n_layers,
    }
    if cfg.model_type == "qwen3":
        return {"head_dim": cfg.head_size, "attention_bias": cfg.qkv_bias, **fields}
    return ({"head_dim": cfg.head_dim} if cfg.head_dim is not None else {}) | fields


def to_hf_config(cfg: ModelConfig, dtype: torch.dtype = torch.float32) -> dict:
    """The config.json dict of `cfg`'s family (its `model_type`). Refuses shapes HF cannot hold."""
    check_exportable(cfg)
    return {
        "architectures": [ARCHITECTURES[cfg.model_type]],
        "model_type": cfg.model_type,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.hidden_dim,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.kv_heads,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "initializer_range": cfg.init_std,
        "rms_norm_eps": cfg.norm_eps,
        **_rope_fields(cfg),
        **_family_fields(cfg),
        "attention_dropout": 0.0,
        "tie_word_embeddings": cfg.tie_embeddings,
        "use_cache": True,
        "bos_token_id": None,
        "eos_token_id": None,
        "torch_dtype": DTYPE_NAMES.get(dtype, "float32"),
    }
