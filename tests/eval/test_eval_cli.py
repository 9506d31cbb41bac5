import json

import pytest

from growlm.cli import main
from growlm.errors import GrowlmError
from growlm.eval.suite import flatten_results, parse_tasks
from growlm.model.hf import export_hf


@pytest.fixture
def hf_model(tmp_path, model, tokenizer):
    tok = tmp_path / "tokenizer.json"
    tokenizer.save(str(tok))
    return export_hf(model.cfg, model.state_dict(), tmp_path / "hf", tokenizer_json=tok)


def test_unknown_task_is_one_line_exit_2(hf_model, capsys):
    assert main(["eval", str(hf_model), "--tasks", "arc_easy,squad"]) == 2
    err = capsys.readouterr().err.strip()
    assert "unknown task 'squad'" in err and "hellaswag" in err and len(err.splitlines()) == 1


def test_parse_tasks_aliases_and_dedup():
    assert parse_tasks("arc_e, lambada_openai,arc_easy") == ["arc_easy", "lambada"]
    with pytest.raises(GrowlmError, match="no tasks"):
        parse_tasks(" , ")


@pytest.mark.shared_data
def test_eval_writes_table_and_json(hf_model, shared_data, tmp_path, capsys):
    out = tmp_path / "res" / "eval.json"
    code = main(["eval", str(hf_model), "--tasks", "arc_easy,winogrande,wordsim,wikitext",
                 "--data-dir", str(shared_data), "--limit", "2", "--seq-len", "64",
                 "--json", str(out)])
    assert code == 0
    table = capsys.readouterr().out
    assert "arc_easy" in table and "acc_norm" in table and "wordsim/simlex999" in table
    data = json.loads(out.read_text())
    res = data["results"]
    assert res["arc_easy"]["n"] == 2 and res["wikitext"]["documents"] == 2
    assert res["average"]["tasks"] == ["arc_easy", "winogrande"]
    assert data["model"]["source"] == "hf"
    flat = flatten_results(res)
    assert "arc_easy/acc_norm" in flat and "wordsim/men/coverage" in flat


def test_data_dir_required(hf_model, monkeypatch, capsys):
    monkeypatch.delenv("GROWLM_DATA", raising=False)
    assert main(["eval", str(hf_model), "--tasks", "piqa"]) == 2
    assert "--data-dir" in capsys.readouterr().err


def test_ppl_needs_val_shards(hf_model, capsys):
    assert main(["eval", str(hf_model), "--tasks", "ppl"]) == 2
    assert "--val-shards" in capsys.readouterr().err


def test_compare_embeddings(hf_model, tmp_path, make_model, tokenizer, capsys):
    other = make_model(tokenizer.get_vocab_size(), seed=5)
    tok = tmp_path / "tokenizer.json"
    b = export_hf(other.cfg, other.state_dict(), tmp_path / "b", tokenizer_json=tok)
    out = tmp_path / "cmp.json"
    assert main(["eval", "compare-embeddings", str(hf_model), str(hf_model), "--k", "5",
                 "--json", str(out)]) == 0
    assert json.loads(out.read_text())["overlap"] == pytest.approx(1.0)
    assert main(["eval", "compare-embeddings", str(hf_model), str(b), "--matrix", "head"]) == 0
    assert "top-100 neighbour overlap (head)" in capsys.readouterr().out


def test_compare_embeddings_bad_inputs(hf_model, tmp_path, make_model, capsys):
    assert main(["eval", "compare-embeddings", str(hf_model), str(hf_model),
                 "--k", "100000"]) == 2
    assert "k=100000 is out of range" in capsys.readouterr().err
    small = make_model(64)
    from tokenizers import Tokenizer, models

    tok = Tokenizer(models.WordLevel({f"w{i}": i for i in range(64)}, unk_token="w0"))
    tok.save(str(tmp_path / "small_tok.json"))
    c = export_hf(small.cfg, small.state_dict(), tmp_path / "c",
                  tokenizer_json=tmp_path / "small_tok.json")
    assert main(["eval", "compare-embeddings", str(hf_model), str(c)]) == 2
    assert "different vocabularies" in capsys.readouterr().err
    assert main(["eval", "compare-embeddings", str(hf_model)]) == 2
    assert "exactly two" in capsys.readouterr().err


def test_seq_len_beyond_the_model_refused(hf_model, capsys):
    assert main(["eval", str(hf_model), "--tasks", "ppl", "--seq-len", "4096"]) == 2
    assert "--seq-len 4096" in capsys.readouterr().err
