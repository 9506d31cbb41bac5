import json
import random
from pathlib import Path

import pytest
from tokenizers import (
    Regex,
    Tokenizer,
    decoders,
    models,
    normalizers,
    pre_tokenizers,
    processors,
    trainers,
)

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


# ---------------------------------------------------------------- tokenizer layouts
# Small tokenizers of the common pipeline layouts, trained here (no downloads), for the
# "pieces give the whole document's ids" property.

LAYOUT_WORDS = ("the model grows in stages and each stage reuses what the last one learned while "
         "frozen layers keep their weights, new layers train on fresh tokens. Größe café naïve "
         "東京 データ 😀 x=3.14 don't it's (see [1]) e-mail").split()
SPACES = [" "] * 12 + ["  ", "\n", "\n\n", "\t", " \n", ",  ", ". "]
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}"
                r"\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


def mixed_text(n_words: int, seed: int) -> str:
    rng = random.Random(seed)
    parts = []
    for _ in range(n_words):
        parts += [rng.choice(LAYOUT_WORDS), rng.choice(SPACES)]
    return "".join(parts)


def _corpus() -> list[str]:
    return [mixed_text(200, seed) for seed in range(30)] + ["<|endoftext|> </s> [SEP] <s>"]


def _train(tok: Tokenizer, trainer) -> Tokenizer:
    tok.train_from_iterator(_corpus(), trainer=trainer)
    return tok


def byte_level(add_prefix_space: bool) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=True)
    return _train(tok, trainers.BpeTrainer(vocab_size=400, special_tokens=["<|endoftext|>"],
                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                           show_progress=False))


def llama3_style() -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    return _train(tok, trainers.BpeTrainer(vocab_size=400, special_tokens=["<|end_of_text|>"],
                                           initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                           show_progress=False))


def metaspace_unigram() -> Tokenizer:
    """T5/SentencePiece style: NFKC, collapsed spaces, Metaspace that prepends "▁"."""
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.Sequence([normalizers.NFKC(),
                                           normalizers.Replace(Regex(" {2,}"), " ")])
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    return _train(tok, trainers.UnigramTrainer(vocab_size=300, special_tokens=["</s>", "<unk>"],
                                               unk_token="<unk>", show_progress=False))


def llama2_style() -> Tokenizer:
    """Llama-2's tokenizer.json layout: no pre-tokenizer; the normaliser prepends "▁" and turns
    spaces into "▁"; BPE with byte fallback. The vocabulary is trained per word, as
    SentencePiece does, so no piece continues past a word start."""
    trained = Tokenizer(models.BPE())
    trained.normalizer = normalizers.Sequence([normalizers.Prepend("▁"),
                                               normalizers.Replace(" ", "▁")])
    trained.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
    _train(trained, trainers.BpeTrainer(vocab_size=350, special_tokens=["<unk>", "<s>", "</s>"],
                                        show_progress=False))
    model = json.loads(trained.to_str())["model"]
    vocab = dict(model["vocab"])
    for byte in range(256):
        vocab.setdefault(f"<0x{byte:02X}>", len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True,
                               byte_fallback=True))
    tok.normalizer = trained.normalizer
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(),
                                     decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return tok


def wordpiece_bert() -> Tokenizer:
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece()
    return _train(tok, trainers.WordPieceTrainer(vocab_size=300, special_tokens=["[UNK]", "[SEP]"],
                                                 show_progress=False))


def stripped_whitespace_split() -> Tokenizer:
    """A Strip normaliser (drops the ends of every input) before whitespace splitting."""
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.normalizer = normalizers.Sequence([normalizers.Strip(), normalizers.Lowercase()])
    tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                                 pre_tokenizers.Punctuation()])
    return _train(tok, trainers.BpeTrainer(vocab_size=300, special_tokens=["[UNK]", "[SEP]"],
                                           show_progress=False))


def whole_text_bpe() -> Tokenizer:
    """No pre-tokenizer at all: merges learn to cross spaces, so no cut is safe."""
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    return _train(tok, trainers.BpeTrainer(vocab_size=600, special_tokens=["<unk>", "</s>"],
                                           show_progress=False))


SAFE_LAYOUTS = {
    "byte-level": lambda: byte_level(False),
    "byte-level-prefix-space": lambda: byte_level(True),
    "llama3-regex": llama3_style,
    "metaspace-unigram": metaspace_unigram,
    "llama2-prepend-normaliser": llama2_style,
    "wordpiece-bert": wordpiece_bert,
    "strip-normaliser": stripped_whitespace_split,
}


@pytest.fixture
def build_layout():
    """build_layout(name) -> a fresh tokenizer of that layout (SAFE_LAYOUTS or "whole-text")."""
    return lambda name: whole_text_bpe() if name == "whole-text" else SAFE_LAYOUTS[name]()


@pytest.fixture
def safe_layout(request) -> Tokenizer:
    """Each tokenizer layout of SAFE_LAYOUTS in turn (see pytest_generate_tests)."""
    return SAFE_LAYOUTS[request.param]()


@pytest.fixture
def text_maker():
    """text_maker(n_words, seed) -> text with words, spaces, newlines, tabs and non-ASCII."""
    return mixed_text


def pytest_generate_tests(metafunc):
    if "safe_layout" in metafunc.fixturenames:
        metafunc.parametrize("safe_layout", sorted(SAFE_LAYOUTS), indirect=True)
