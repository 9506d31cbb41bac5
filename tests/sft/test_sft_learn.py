"""A tiny model fine-tuned on the made-up capital codes answers every question exactly, and
the prompt text it was shown (but never trained on) stays unlearned."""

import pytest
import torch

from growlm.cli import main
from growlm.data.tokenizer import eos_id
from growlm.model.llama import Transformer, cross_entropy
from growlm.sft.data import read_records, tokenize_records
from growlm.sft.generate import generate_text
from growlm.sft.loader import SFTLoader, build_row

STEPS = 200


def per_token_losses(model, ex, eos, seq_len):
    """(mean loss on prompt targets, mean loss on response targets) over all examples."""
    prompt, response = [], []
    with torch.no_grad():
        for toks, mask in zip(ex.tokens, ex.train):
            x, _ = build_row([toks], [mask], seq_len, eos)
            logits = model(torch.from_numpy(x)[None])[0, : len(toks) - 1]
            losses = torch.nn.functional.cross_entropy(
                logits, torch.from_numpy(toks[1:]).long(), reduction="none"
            )
            trained = torch.from_numpy(mask[1:])
            prompt.append(losses[~trained][1:])  # skip predicting the first word after the start
            response.append(losses[trained])
    return torch.cat(prompt).mean().item(), torch.cat(response).mean().item()


@pytest.fixture(autouse=True)
def _one_thread(one_thread):
    pass


@pytest.fixture(scope="module")
def fine_tuned(kit, tokenizer, tmp_path_factory):
    torch.set_num_threads(1)  # tiny model: one thread is fastest, and robust on a busy machine
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("learn") / "capitals.jsonl"
    path.write_text("".join(__import__("json").dumps(r) + "\n" for r in kit.capital_records()))
    eos = eos_id(tokenizer)
    ex, _ = tokenize_records(read_records(str(path)), kit.QA, tokenizer, eos, kit.SEQ_LEN)
    model = Transformer(kit.TINY)
    before = per_token_losses(model, ex, eos, kit.SEQ_LEN)
    loader = SFTLoader(ex, kit.SEQ_LEN, seed=0, packing=True, pad_id=eos)
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3, weight_decay=0.0)
    for _ in range(STEPS):
        x, y = loader.next_batch(4)
        loss = cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()
    return model, ex, before


def test_answers_exactly_with_greedy_decoding(kit, fine_tuned, tokenizer):
    model = fine_tuned[0]
    answers = {
        code: generate_text(
            model, tokenizer, kit.question(name), template=kit.QA, max_new_tokens=12
        )
        for name, code in kit.CAPITALS
    }
    assert answers == {code: code for _, code in kit.CAPITALS}


def test_prompt_tokens_were_not_trained_on(kit, fine_tuned, tokenizer):
    model, ex, (prompt_before, _) = fine_tuned
    prompt_after, response_after = per_token_losses(model, ex, eos_id(tokenizer), kit.SEQ_LEN)
    assert response_after < 0.05
    # The prompt is the same few words in every example: a model trained on it would predict
    # it almost perfectly. Masked, its loss stays of the order of the untrained model's.
    assert prompt_after > 1.0 and prompt_after > 0.2 * prompt_before


def test_generate_cli_on_an_exported_hf_folder(
    kit, fine_tuned, tokenizer, tmp_path, qa_toml, capsys
):
    from growlm.model.hf import export_hf

    tok = tmp_path / "tokenizer.json"
    tok.write_text(tokenizer.to_str())
    folder = export_hf(kit.TINY, fine_tuned[0].state_dict(), tmp_path / "hf", tokenizer_json=tok)
    name, code = kit.CAPITALS[3]
    assert (
        main(["generate", str(folder), "--prompt", kit.question(name), "--template", str(qa_toml)])
        == 0
    )
    assert capsys.readouterr().out == f"{code}\n"
    # sampling at a low temperature with a tight nucleus still gives the memorised answer
    assert (
        main(
            [
                "generate",
                str(folder),
                "--prompt",
                kit.question(name),
                "--template",
                str(qa_toml),
                "--temperature",
                "0.7",
                "--top-p",
                "0.5",
                "--seed",
                "3",
            ]
        )
        == 0
    )
    assert capsys.readouterr().out == f"{code}\n"
