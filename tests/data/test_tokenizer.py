
import pytest

from growlm.data.tokenizer import eos_id, load_tokenizer, tokenizer_sha256, train_bpe, vocab_size
from growlm.errors import GrowlmError


@pytest.mark.shared_data
def test_gpt2_from_shared_folder_file_and_original_files(tmp_path, shared_data):
    folder = shared_data / "tokenizers" / "gpt2"
    from_dir = load_tokenizer(folder)
    from_file = load_tokenizer(folder / "tokenizer.json")
    # A folder with only OpenAI's original encoder.json + vocab.bpe (links, not copies).
    only_bpe = tmp_path / "gpt2_bpe"
    only_bpe.mkdir()
    for name in ("encoder.json", "vocab.bpe"):
        (only_bpe / name).symlink_to(folder / name)
    from_bpe = load_tokenizer(only_bpe)
    for tok in (from_dir, from_file, from_bpe):
        assert tok.encode("Hello world!").ids == [15496, 995, 0]
        assert vocab_size(tok) == 50257 and eos_id(tok) == 50256
        assert tok.decode(tok.encode(" ünïcode\n\ttabs").ids) == " ünïcode\n\ttabs"
    assert tokenizer_sha256(from_dir) == tokenizer_sha256(from_file)


def test_train_bpe_is_deterministic_and_roundtrips(make_docs):
    docs = make_docs(20)
    a, b = train_bpe(docs, 300), train_bpe(iter(docs), 300)
    assert tokenizer_sha256(a) == tokenizer_sha256(b)
    assert vocab_size(a) == 300 and eos_id(a) == 0
    text = "the frozen model grows — with bytes it never saw: ∑ 🙂"
    assert a.decode(a.encode(text).ids) == text
    assert len(a.encode("the model grows").ids) < len("the model grows")  # merges were learned


def test_missing_and_unknown_tokenizers(tmp_path):
    with pytest.raises(GrowlmError, match="tokenizer .*missing.json.* not found"):
        load_tokenizer(tmp_path / "missing.json")
    with pytest.raises(GrowlmError, match="no tokenizer in folder"):
        load_tokenizer(tmp_path)
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(GrowlmError, match="cannot read tokenizer file .*bad.json"):
        load_tokenizer(tmp_path / "bad.json")


def test_hub_name_failure_is_one_clear_line(monkeypatch):
    from tokenizers import Tokenizer

    def offline(name, *args, **kwargs):
        raise RuntimeError("Model \"x\" on the Hub doesn't have a tokenizer\nmore detail")

    monkeypatch.setattr(Tokenizer, "from_pretrained", staticmethod(offline))
    with pytest.raises(GrowlmError, match="could not be loaded from the HF hub") as info:
        load_tokenizer("no-such-org-growlm/tokenizer")
    assert "\n" not in str(info.value)


def test_tokenizer_without_eos_is_refused():
    from tokenizers import Tokenizer, models

    tok = Tokenizer(models.WordLevel({"a": 0, "[UNK]": 1}, unk_token="[UNK]"))
    with pytest.raises(GrowlmError, match="no end-of-document token"):
        eos_id(tok)


