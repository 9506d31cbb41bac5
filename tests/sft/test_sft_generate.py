import pytest
import torch
from torch import nn

from growlm.cli import main
from growlm.errors import GrowlmError
from growlm.model.config import ModelConfig
from growlm.sft.generate import generate_ids, next_token


class Scripted(nn.Module):
    """Predicts token (last + 1) with certainty; records the context lengths it was given."""

    def __init__(self, vocab: int = 16, max_seq_len: int = 6):
        super().__init__()
        self.cfg = ModelConfig(
            vocab_size=vocab, d_model=8, n_layers=0, n_heads=2, max_seq_len=max_seq_len
        )
        self.dummy = nn.Parameter(torch.zeros(1))
        self.lengths: list[int] = []

    def forward(self, tokens):
        self.lengths.append(tokens.shape[1])
        nxt = (tokens[:, -1:] + 1) % self.cfg.vocab_size
        logits = torch.full((*tokens.shape, self.cfg.vocab_size), -1e4)
        logits[:, -1].scatter_(-1, nxt, 1e4)
        return logits


def test_greedy_stops_at_eos_and_crops_the_context():
    model = Scripted(vocab=16, max_seq_len=6)
    assert generate_ids(model, [3], max_new_tokens=50, eos_id=12) == list(range(4, 12))
    assert max(model.lengths) == 6  # never more than max_seq_len tokens per forward
    assert generate_ids(Scripted(), [3], max_new_tokens=2, eos_id=12) == [4, 5]


def test_top_p_keeps_the_nucleus_only():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05]))
    g = torch.Generator().manual_seed(0)
    draws = {next_token(logits, 1.0, 0.7, g) for _ in range(300)}
    assert draws == {0, 1}  # 0.5 + 0.3 reaches 0.7; tokens 2 and 3 are cut
    assert {next_token(logits, 5.0, 0.01, g) for _ in range(50)} == {0}
    assert len({next_token(logits, 1.0, 1.0, g) for _ in range(300)}) == 4
    assert next_token(logits, 0.0, 0.5, g) == 0


def test_sampling_is_reproducible_from_the_seed():
    logits = torch.zeros(50)
    model = Scripted()
    model.forward = lambda tokens: logits.expand(1, tokens.shape[1], 50)
    a = generate_ids(model, [1], 20, temperature=1.0, seed=4)
    assert a == generate_ids(model, [1], 20, temperature=1.0, seed=4)
    assert a != generate_ids(model, [1], 20, temperature=1.0, seed=5)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"max_new_tokens": 0}, "max-new-tokens"),
        ({"temperature": -1.0}, "temperature"),
        ({"top_p": 0.0}, "top-p"),
        ({"top_p": 1.5}, "top-p"),
    ],
)
def test_bad_sampling_settings(kwargs, match):
    args = {"max_new_tokens": 4, **kwargs}
    with pytest.raises(GrowlmError, match=match):
        generate_ids(Scripted(), [1], **args)


def test_generate_cli_bad_inputs(tmp_path, capsys):
    assert main(["generate", str(tmp_path / "nothing"), "--prompt", "hi"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["generate", str(tmp_path), "--prompt", "hi", "--top-p", "2"]) == 2
    assert "--top-p must be in (0, 1]" in capsys.readouterr().err


# ---------------------------------------------------------------- BOS policy and vocabulary


def with_bos(tokenizer):
    """The same vocabulary plus <s>, which the post-processor puts in front (Llama-2 layout)."""
    from tokenizers import Tokenizer, processors

    tok = Tokenizer.from_str(tokenizer.to_str())
    tok.add_special_tokens(["<s>"])
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A",
                                                       special_tokens=[("<s>", bos)])
    return tok, bos


def test_prompt_follows_the_bos_policy(tokenizer):
    from growlm.data.tokenizer import bos_policy, eos_id
    from growlm.sft.generate import prompt_ids

    text = "Q: What is the capital code of Velmora?\nA: "
    plain = tokenizer.encode(text, add_special_tokens=False).ids
    # Byte-level BPE: nothing in front (no EOS), as transformers gives on the exported folder.
    assert prompt_ids(tokenizer, text, bos_policy(tokenizer)) == plain
    llama, bos = with_bos(tokenizer)
    assert prompt_ids(llama, text, bos_policy(llama)) == [bos, *plain]
    assert prompt_ids(llama, text, bos_policy(llama, "off")) == plain
    # An empty prompt starts a fresh document: from BOS, else from EOS.
    assert prompt_ids(llama, "", bos_policy(llama)) == [bos]
    assert prompt_ids(tokenizer, "", bos_policy(tokenizer)) == [eos_id(tokenizer)]


def test_prompt_ids_equal_transformers_on_the_exported_folder(tmp_path, tokenizer, kit):
    AutoTokenizer = pytest.importorskip("transformers").AutoTokenizer
    from growlm.data.tokenizer import bos_policy
    from growlm.model.hf import export_hf
    from growlm.model.llama import Transformer
    from growlm.sft.generate import prompt_ids

    text = "Q: What is the capital code of Quistan?\nA: "
    for i, tok in enumerate((tokenizer, with_bos(tokenizer)[0])):
        tok_file = tmp_path / f"tokenizer{i}.json"
        tok.save(str(tok_file))
        cfg = kit.TINY.model_copy(update={"vocab_size": tok.get_vocab_size()})
        folder = export_hf(cfg, Transformer(cfg).state_dict(), tmp_path / f"hf{i}",
                           tokenizer_json=tok_file)
        hf_ids = AutoTokenizer.from_pretrained(str(folder))(text)["input_ids"]
        assert prompt_ids(tok, text, bos_policy(tok)) == hf_ids


def test_tokenizer_larger_than_the_model_is_one_line(tmp_path, tokenizer, kit, capsys):
    from tokenizers import Tokenizer, models

    from growlm.model.hf import export_hf
    from growlm.model.llama import Transformer

    tok_file = tmp_path / "tokenizer.json"
    tokenizer.save(str(tok_file))
    folder = export_hf(kit.TINY, Transformer(kit.TINY).state_dict(), tmp_path / "hf",
                       tokenizer_json=tok_file)
    # A prompt token id beyond the embedding would otherwise be an IndexError mid-generation.
    big = Tokenizer(models.WordLevel({f"w{i}": i for i in range(5000)}, unk_token="w0"))
    (folder / "tokenizer.json").write_text(big.to_str(), encoding="utf-8")
    assert main(["generate", str(folder), "--prompt", "w4999"]) == 2
    err = capsys.readouterr().err.strip()
    assert "vocabulary (300)" in err and "(5000)" in err and len(err.splitlines()) == 1
