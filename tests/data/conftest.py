import json
import random
from pathlib import Path

import pytest

WORDS = ("the model grows in stages and each stage reuses what the last one learned while "
         "frozen layers keep their weights and new layers train on fresh tokens").split()


def _docs(n: int, seed: int = 0, words: int = 60) -> list[str]:
    rng = random.Random(seed)
    return [f"Document {i}. " + " ".join(rng.choice(WORDS) for _ in range(words)) + "\n"
            for i in range(n)]


@pytest.fixture
def make_docs():
    """make_docs(n, seed=0, words=60) -> n small deterministic documents."""
    return _docs


@pytest.fixture
def write_jsonl():
    def write(path: Path, rows: list) -> Path:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
        return path

    return write


@pytest.fixture
def corpus(tmp_path) -> tuple[Path, list[str]]:
    """A folder of 30 small text files, one document each (sorted names = document order)."""
    folder = tmp_path / "corpus"
    folder.mkdir()
    docs = _docs(30)
    for i, doc in enumerate(docs):
        (folder / f"doc_{i:03d}.txt").write_text(doc, encoding="utf-8")
    return folder, docs


@pytest.fixture
def messages() -> list[str]:
    """A log sink for prepare(log=messages.append)."""
    return []
