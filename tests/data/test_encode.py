"""Long documents encoded in pieces give the ids of the whole document, for many tokenizer
layouts (conftest.py builds them with `tokenizers`; no downloads)."""

import numpy as np
import pytest

from growlm.data.encode import DocumentEncoder
from growlm.data.tokenizer import encoder_for_data


def _whole(tok, text: str) -> list[int]:
    return tok.encode(text, add_special_tokens=False).ids


def test_pieces_give_the_whole_documents_ids(safe_layout, text_maker):
    tok = encoder_for_data(safe_layout)
    docs = [text_maker(900, seed) for seed in (101, 102)]  # ~5-6k characters each
    docs[1] = " leading space, trailing newline " + docs[1] + "\n"
    docs.append("short document")
    encoder = DocumentEncoder(tok, piece_chars=400, context_chars=40)
    got = encoder.encode(docs)
    for doc, ids in zip(docs, got):
        assert ids.dtype == np.int64
        assert ids.tolist() == _whole(tok, doc)
    assert encoder.pieces > 20 and encoder.whole == 0  # really encoded in pieces


def test_many_piece_and_context_sizes(safe_layout, text_maker):
    tok = encoder_for_data(safe_layout)
    for seed, (piece, context) in enumerate([(2, 1), (7, 3), (50, 1), (120, 200), (333, 17)]):
        text = (" " if seed % 2 else "") + text_maker(150, seed) + ("x" if seed % 3 else " ")
        encoder = DocumentEncoder(tok, piece_chars=piece, context_chars=context)
        assert encoder.encode([text])[0].tolist() == _whole(tok, text), (piece, context)
        assert encoder.whole == 0


@pytest.mark.parametrize("layout", ["metaspace-unigram", "llama2-prepend-normaliser",
                                    "byte-level-prefix-space"])
def test_cuts_encoded_as_separate_inputs_would_gain_a_token(layout, build_layout, text_maker):
    # The property above is not vacuous: a cut after a newline between two words (where
    # byte-level BPE never merges) encoded as two inputs gains a "▁" or space token here.
    tok = encoder_for_data(build_layout(layout))
    text = text_maker(300, 7) + "words\nacross a newline " + text_maker(300, 8)
    cut = text.index("\nacross") + 1
    assert _whole(tok, text[:cut]) + _whole(tok, text[cut:]) != _whole(tok, text)
    pieces = DocumentEncoder(tok, piece_chars=len(text) // 4, context_chars=30)
    assert pieces.encode([text])[0].tolist() == _whole(tok, text)
    assert pieces.pieces >= 2 and pieces.whole == 0


def test_a_tokenizer_that_merges_across_spaces_falls_back_to_whole_documents(build_layout,
                                                                             text_maker):
    tok = encoder_for_data(build_layout("whole-text"))
    docs = [text_maker(900, seed) for seed in (5, 6)]
    encoder = DocumentEncoder(tok, piece_chars=400, context_chars=40)
    got = encoder.encode(docs)
    assert [ids.tolist() for ids in got] == [_whole(tok, d) for d in docs]
    assert encoder.whole == 2


def test_documents_without_a_safe_cut_are_encoded_whole(build_layout):
    tok = encoder_for_data(build_layout("byte-level"))
    docs = ["東京データ" * 300, "word\n" * 400, "x" * 1000]
    encoder = DocumentEncoder(tok, piece_chars=200, context_chars=20)
    assert [ids.tolist() for ids in encoder.encode(docs)] == [_whole(tok, d) for d in docs]
    assert encoder.pieces == 0 and encoder.whole == 3


def test_literal_special_token_text_inside_a_long_document(build_layout, text_maker):
    tok = encoder_for_data(build_layout("byte-level"))
    text = (text_maker(200, 3) + " <|endoftext|> ") * 8
    got = DocumentEncoder(tok, piece_chars=300, context_chars=30).encode([text])[0].tolist()
    assert got == _whole(tok, text)
    assert tok.token_to_id("<|endoftext|>") not in got
