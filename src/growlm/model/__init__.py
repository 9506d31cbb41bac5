from growlm.model.config import ModelConfig
from growlm.model.llama import Transformer

__all__ = ["ModelConfig", "Transformer"]
