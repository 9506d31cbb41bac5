"""Tiny models for growth tests, with weights that look trained (norm weights not all ones)."""

import pytest
import torch

from growlm.model import ModelConfig, Transformer


def _tiny(**changes) -> ModelConfig:
    # init_std 0.2 gives logits of order 1, so an absolute tolerance means something
    base = dict(
        vocab_size=97, d_model=32, n_layers=2, n_heads=4, ffn_dim=64, max_seq_len=16, init_std=0.2
    )
    return ModelConfig(**{**base, **changes})


def _model(cfg: ModelConfig, seed: int = 0) -> Transformer:
    gen = torch.Generator().manual_seed(seed)
    model = Transformer(cfg)
    model.init_weights(gen)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 1:
                p.copy_(1 + 0.3 * torch.randn(p.shape, generator=gen))
    return model.eval()


def _logits(cfg: ModelConfig, state: dict, tokens: torch.Tensor) -> torch.Tensor:
    model = Transformer(cfg)
    model.load_state_dict(state)
    with torch.no_grad():
        return model.eval()(tokens)


@pytest.fixture
def tiny():
    return _tiny


@pytest.fixture
def make_model():
    return _model


@pytest.fixture
def logits_of():
    return _logits


@pytest.fixture
def tokens():
    return torch.randint(0, 97, (2, 16), generator=torch.Generator().manual_seed(1))
