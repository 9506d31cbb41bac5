"""Parity with transformers for every supported family, on tiny random models made here.

HF → growlm: a model built with transformers' own config class is saved and loaded by growlm;
the logits agree to 1e-5 in fp32. growlm → HF: export gives the same family, which
`AutoModelForCausalLM` loads as the matching class with the same logits.
"""

import json

import pytest
import torch

from growlm.errors import GrowlmError
from growlm.model import Transformer
from growlm.model.hf import export_hf, from_hf_config, load_hf_folder, to_hf_config

transformers = pytest.importorskip("transformers")

COMMON = dict(vocab_size=128, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
              num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
              rms_norm_eps=1e-6)
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16,
               "rope_theta": 500000.0}
# family name → (config class, HF class name, extra config fields)
FAMILIES = {
    "llama3": ("LlamaConfig", "LlamaForCausalLM",
               dict(rope_parameters=LLAMA3_ROPE, tie_word_embeddings=True)),
    "smollm": ("LlamaConfig", "LlamaForCausalLM",
               dict(tie_word_embeddings=True, num_key_value_heads=4)),
    "llama_bias_linear": ("LlamaConfig", "LlamaForCausalLM",
                          dict(attention_bias=True, head_dim=8,
                               rope_parameters={"rope_type": "linear", "factor": 2.0,
                                                "rope_theta": 10000.0})),
    "mistral": ("MistralConfig", "MistralForCausalLM", dict(head_dim=24, sliding_window=None)),
    "mistral_window": ("MistralConfig", "MistralForCausalLM", dict(sliding_window=64)),
    "qwen2": ("Qwen2Config", "Qwen2ForCausalLM", dict(tie_word_embeddings=True)),
    "qwen3": ("Qwen3Config", "Qwen3ForCausalLM", dict(head_dim=24)),
    "qwen3_bias": ("Qwen3Config", "Qwen3ForCausalLM", dict(head_dim=16, attention_bias=True)),
}
# config.json fields that must come back from an export exactly as the source wrote them
KEPT = ("model_type", "architectures", "vocab_size", "hidden_size", "intermediate_size",
        "num_hidden_layers", "num_attention_heads", "num_key_value_heads", "head_dim",
        "max_position_embeddings", "rms_norm_eps", "rope_parameters", "attention_bias",
        "mlp_bias", "tie_word_embeddings", "sliding_window", "use_sliding_window", "hidden_act")


def _hf_model(name: str):
    config_cls, _, extra = FAMILIES[name]
    config = getattr(transformers, config_cls)(**(COMMON | extra))
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
    with torch.no_grad():  # weights that look trained: norms and biases away from 1 and 0
        for pname, p in model.named_parameters():
            if p.dim() == 1:
                p.copy_((0.5 + torch.rand_like(p)) if "norm" in pname else 0.1 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """name → (folder saved by transformers, the HF model)."""
    out = {}
    for name in FAMILIES:
        model = _hf_model(name)
        folder = tmp_path_factory.mktemp(name)
        model.save_pretrained(folder)
        out[name] = (folder, model)
    return out


def _tokens(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, 128, (2, 64), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", FAMILIES)
def test_hf_to_growlm_logits(name, saved):
    folder, hf = saved[name]
    cfg, state = load_hf_folder(folder)
    model = Transformer(cfg)
    model.load_state_dict(state)
    with torch.no_grad():
        ours, theirs = model.eval()(_tokens()), hf(_tokens()).logits
    assert (ours - theirs).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", FAMILIES)
def test_growlm_to_hf_export_loads_as_the_same_family(name, saved, tmp_path):
    folder, _ = saved[name]
    cfg, state = load_hf_folder(folder)
    model = Transformer(cfg)
    model.load_state_dict(state)
    export_hf(cfg, state, tmp_path / "out")
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "out", attn_implementation="eager")
    assert type(hf).__name__ == FAMILIES[name][1]
    with torch.no_grad():
        diff = (model.eval()(_tokens(2)) - hf.eval()(_tokens(2)).logits).abs().max().item()
    assert diff <= 1e-5
    source = json.loads((folder / "config.json").read_text())
    exported = json.loads((tmp_path / "out" / "config.json").read_text())
    for key in KEPT:
        if key in source:
            assert exported[key] == source[key], key
    assert load_hf_folder(tmp_path / "out")[0] == cfg  # and back: the same ModelConfig


@pytest.mark.parametrize("name", FAMILIES)
def test_config_round_trip(name, saved):
    cfg, _ = load_hf_folder(saved[name][0])
    assert from_hf_config(to_hf_config(cfg)) == cfg
    assert cfg.model_type == to_hf_config(cfg)["model_type"]


def test_features_are_read_from_each_family(saved):
    cfgs = {name: load_hf_folder(saved[name][0])[0] for name in FAMILIES}
    assert cfgs["llama3"].rope_scaling.rope_type == "llama3" and cfgs["llama3"].rope_theta == 5e5
    assert cfgs["llama3"].tie_embeddings and cfgs["smollm"].tie_embeddings
    assert cfgs["llama_bias_linear"].qkv_bias and cfgs["llama_bias_linear"].o_bias
    assert cfgs["llama_bias_linear"].rope_scaling.factor == 2.0
    assert cfgs["mistral"].head_dim == 24 and cfgs["mistral"].sliding_window is None
    assert cfgs["mistral_window"].sliding_window == 64
    assert (cfgs["qwen2"].qkv_bias, cfgs["qwen2"].o_bias) == (True, False)
    assert cfgs["qwen3"].qk_norm and cfgs["qwen3"].head_dim == 24 and not cfgs["qwen3"].qkv_bias
    assert cfgs["qwen3_bias"].o_bias


def test_transformers_4_layout_is_read():
    """Older folders spell RoPE as rope_theta + rope_scaling (with "type" in the oldest)."""
    v4 = {"model_type": "llama", "architectures": ["LlamaForCausalLM"], "vocab_size": 128,
          "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 2,
          "num_attention_heads": 4, "rope_theta": 500000.0,
          "rope_scaling": {"type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                           "high_freq_factor": 4.0, "original_max_position_embeddings": 16}}
    cfg = from_hf_config(v4)
    assert cfg.rope_theta == 5e5 and cfg.rope_scaling.original_max_position_embeddings == 16
    assert cfg.max_seq_len == 2048  # LlamaConfig's default
    qwen3 = {**v4, "model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"],
             "rope_scaling": None}
    assert from_hf_config(qwen3).head_size == 128  # Qwen3Config's default head_dim


def _config(name: str, **changes) -> dict:
    config_cls, arch, extra = FAMILIES[name]
    d = getattr(transformers, config_cls)(**(COMMON | extra)).to_dict()
    return {**d, "architectures": [arch], **changes}


@pytest.mark.parametrize("name, changes, field", [
    ("llama3", {"rope_parameters": {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4,
                                    "original_max_position_embeddings": 16}}, "rope_type"),
    ("llama3", {"rope_parameters": {"rope_type": "dynamic", "factor": 4.0}}, "rope_type"),
    ("llama3", {"rope_scaling": {"rope_type": "longrope", "short_factor": [1.0]}}, "rope_type"),
    ("llama3", {"rope_parameters": {"rope_type": "linear", "factor": 2.0, "beta_fast": 3}}, "beta_fast"),
    ("mistral", {"sliding_window": 16}, "sliding_window"),
    ("qwen2", {"use_sliding_window": True, "sliding_window": 16, "max_window_layers": 0}, "sliding_window"),
    ("qwen3", {"use_sliding_window": True, "sliding_window": 16, "max_window_layers": 1}, "sliding_window"),
    ("llama3", {"model_type": "gemma"}, "model_type"),
    ("llama3", {"model_type": None}, "model_type"),
    ("qwen2", {"architectures": ["LlamaForCausalLM"]}, "architectures"),
    ("mistral", {"attention_bias": True}, "attention_bias"),
    ("llama3", {"mlp_bias": True}, "mlp_bias"),
    ("llama3", {"quantization_config": {"quant_method": "gptq"}}, "quantization_config"),
    ("llama3", {"rope_theta": 1e4}, "disagree"),
])
def test_configs_growlm_cannot_represent_are_refused(name, changes, field):
    with pytest.raises(GrowlmError, match=field) as e:
        from_hf_config(_config(name, **changes))
    assert "\n" not in str(e.value)


def test_unused_windows_are_accepted():
    """A window the model never reaches, or one the config switches off, changes nothing."""
    assert from_hf_config(_config("qwen2", use_sliding_window=False, sliding_window=16)).sliding_window is None
    assert from_hf_config(_config("qwen3", use_sliding_window=True, sliding_window=16,
                                  max_window_layers=2, layer_types=None)).sliding_window is None
    assert from_hf_config(_config("mistral", sliding_window=64)).sliding_window == 64
