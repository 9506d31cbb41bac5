import os
from pathlib import Path

import pytest
import torch

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
