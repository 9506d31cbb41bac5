"""Long documents: piecewise encoding (growlm.data.encode) vs one encode call per document.

Joins the shared Wikipedia corpus into a few long documents and encodes them with the GPT-2
tokenizer and with a Llama-2-layout tokenizer (Prepend("▁") normaliser, no pre-tokenizer,
byte fallback; its vocabulary is trained here on the corpus). For each it prints whether the
ids are identical, both wall times and their ratio, and how many tokens the old cut (after a
newline, each piece encoded as its own input) changed.

    python benchmarks/long_documents.py --mb 8 --docs 4
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import sys
import time
from pathlib import Path

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers

from growlm.data.encode import DocumentEncoder
from growlm.data.tokenizer import encoder_for_data, load_tokenizer

REPO = Path(__file__).resolve().parents[1]


def _data_dir() -> Path:
    return Path(os.environ.get("GROWLM_DATA", REPO.parent / "shared" / "data"))


def long_documents(mb: float, n_docs: int) -> list[str]:
    path = _data_dir() / "corpus" / "enwiki_2015_wikiextractor" / "train.jsonl.gz"
    if not path.is_file():
        sys.exit(f"needs {path} (set GROWLM_DATA)")
    target, texts, size = int(mb * 2**20), [], 0
    with gzip.open(path, "rt", encoding="utf-8") as f:
        for line in f:
            texts.append(json.loads(line)["text"])
            size += len(texts[-1])
            if size >= target:
                break
    per_doc = -(-len(texts) // n_docs)
    return ["\n".join(texts[i:i + per_doc]) for i in range(0, len(texts), per_doc)]


def llama2_layout(sample: list[str]) -> Tokenizer:
    trained = Tokenizer(models.BPE())
    trained.normalizer = normalizers.Sequence([normalizers.Prepend("▁"),
                                               normalizers.Replace(" ", "▁")])
    trained.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="never")
    trained.train_from_iterator(sample, trainers.BpeTrainer(
        vocab_size=8000, special_tokens=["<unk>", "<s>", "</s>"], show_progress=False))
    model = json.loads(trained.to_str())["model"]
    vocab = dict(model["vocab"])
    for byte in range(256):
        vocab.setdefault(f"<0x{byte:02X}>", len(vocab))
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, unk_token="<unk>", fuse_unk=True,
                               byte_fallback=True))
    tok.normalizer = trained.normalizer
    tok.add_special_tokens(["<unk>", "<s>", "</s>"])
    return tok


def old_newline_pieces(text: str, piece_chars: int) -> list[str]:
    """The cut growlm used before: after a newline between two non-space characters."""
    cut_re, pieces, start = re.compile(r"(?<=\S)\n(?=\S)"), [], 0
    while len(text) - start > piece_chars:
        cuts = [m.end() for m in cut_re.finditer(text, start + piece_chars // 2,
                                                 start + piece_chars)]
        cut = cuts[-1] if cuts else start + piece_chars
        pieces.append(text[start:cut])
        start = cut
    return pieces + [text[start:]]


def measure(name: str, tok: Tokenizer, docs: list[str], piece_chars: int) -> None:
    tok = encoder_for_data(tok)
    start = time.perf_counter()
    whole = [tok.encode(d, add_special_tokens=False).ids for d in docs]
    t_whole = time.perf_counter() - start
    encoder = DocumentEncoder(tok, piece_chars=piece_chars)
    start = time.perf_counter()
    pieces = [ids.tolist() for ids in encoder.encode(docs)]
    t_pieces = time.perf_counter() - start
    old_extra = 0
    for d, ids in zip(docs, whole):
        parts = tok.encode_batch_fast(old_newline_pieces(d, piece_chars), add_special_tokens=False)
        old_extra += sum(len(p.ids) for p in parts) - len(ids)
    n_tokens = sum(map(len, whole))
    print(f"{name}: {n_tokens:,} tokens; identical ids: {pieces == whole}; "
          f"one call per document {t_whole:.2f} s, pieces {t_pieces:.2f} s "
          f"({encoder.pieces} windows, {encoder.whole} documents whole): "
          f"{t_whole / t_pieces:.2f}x; the old newline cut changed the token count by "
          f"{old_extra:+,}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mb", type=float, default=8.0, help="characters of text, in MiB")
    ap.add_argument("--docs", type=int, default=4, help="long documents to join it into")
    ap.add_argument("--piece-chars", type=int, default=2**20)
    args = ap.parse_args()
    docs = long_documents(args.mb, args.docs)
    print(f"{len(docs)} documents of {min(map(len, docs)):,} to {max(map(len, docs)):,} "
          f"characters; {os.cpu_count()} CPU cores")
    measure("GPT-2", load_tokenizer(_data_dir() / "tokenizers" / "gpt2"), docs, args.piece_chars)
    measure("Llama-2 layout", llama2_layout([d[:2**20] for d in docs]), docs, args.piece_chars)


if __name__ == "__main__":
    main()
