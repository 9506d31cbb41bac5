import json
import os
from pathlib import Path

import pytest
import torch

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]


def shared_data_dir() -> Path:
    """Real data for tests: $GROWLM_DATA, else the shared folder beside the checkout."""
    return Path(os.environ.get("GROWLM_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture
def shared_data() -> Path:
    path = shared_data_dir()
    if not (path / "SOURCES.md").is_file():
        pytest.skip(f"shared data folder not found at {path} (set GROWLM_DATA)")
    return path


@pytest.fixture(autouse=True)
def _deterministic():
    torch.manual_seed(0)
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    yield


# config.json of the public models the paper-scale recipes start from (values from their hub
# pages; only what growlm reads)
PUBLIC = {
    "Mistral-7B-v0.3": {"model_type": "mistral", "architectures": ["MistralForCausalLM"],
                        "vocab_size": 32768, "hidden_size": 4096, "intermediate_size": 14336,
                        "num_hidden_layers": 32, "num_attention_heads": 32,
                        "num_key_value_heads": 8, "max_position_embeddings": 32768,
                        "rope_theta": 1000000.0, "rms_norm_eps": 1e-5, "sliding_window": None,
                        "tie_word_embeddings": False},
    "Llama-2-7b-hf": {"model_type": "llama", "architectures": ["LlamaForCausalLM"],
                      "vocab_size": 32000, "hidden_size": 4096, "intermediate_size": 11008,
                      "num_hidden_layers": 32, "num_attention_heads": 32,
                      "num_key_value_heads": 32, "max_position_embeddings": 4096,
                      "rms_norm_eps": 1e-5, "rope_scaling": None, "tie_word_embeddings": False},
    "Qwen2.5-0.5B": {"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"],
                     "vocab_size": 151936, "hidden_size": 896, "intermediate_size": 4864,
                     "num_hidden_layers": 24, "num_attention_heads": 14,
                     "num_key_value_heads": 2, "max_position_embeddings": 32768,
                     "rope_theta": 1000000.0, "rms_norm_eps": 1e-6, "use_sliding_window": False,
                     "sliding_window": 32768, "max_window_layers": 24, "tie_word_embeddings": True},
}


def hf_config_folder(root: Path, name: str) -> Path:
    """A folder holding only config.json for an init source the recipes in recipes/hf name:
    a public model (PUBLIC) or one of the tiny sources (models/tiny-X, the shape of
    recipes/hf/tiny/X-source.toml). Enough to resolve and plan; no weights."""
    from growlm.config import load_recipe
    from growlm.model.hf_config import to_hf_config

    folder = root / name
    folder.mkdir(parents=True, exist_ok=True)
    if name in PUBLIC:
        config = PUBLIC[name]
    else:
        from growlm.recipe_library import library_root

        source = library_root() / "hf" / "tiny" / f"{name.removeprefix('tiny-')}-source.toml"
        config = to_hf_config(load_recipe(source).model)
    (folder / "config.json").write_text(json.dumps(config))
    return folder


def hf_init_overrides(recipe: Path, root: Path) -> list[str]:
    """--set overrides that point a recipes/hf recipe's models/<name> init at a config-only
    folder under root; [] for recipes that start from nothing or from a run."""
    with open(recipe, "rb") as f:
        stages = tomllib.load(f).get("stage", [])
    init = stages[0].get("init", "") if stages else ""
    if not init.startswith("models/"):
        return []
    return [f"stage.1.init={json.dumps(hf_config_folder(root, init.removeprefix('models/')).as_posix())}"]


@pytest.fixture
def hf_public() -> dict:
    """config.json of the public models the paper-scale recipes in recipes/hf start from."""
    return PUBLIC


@pytest.fixture
def hf_init(tmp_path):
    """hf_init(recipe) -> the --set overrides that give it a config-only init folder."""
    return lambda recipe: hf_init_overrides(recipe, tmp_path / "models")
