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


# ---------------------------------------------------------------- suites

def test_suites_expand_and_average_as_their_papers():
    from growlm.eval.suite import SUITES, format_table, suite_averages

    gstack = parse_tasks("gstack")
    assert gstack == ["lambada", "arc_challenge", "arc_easy", "logiqa", "piqa", "sciq",
                      "winogrande", "wikitext"]
    assert parse_tasks("reuse_step,gstack")[:7] == list(SUITES["reuse_step"].zero_shot)
    results = {t: {"acc": 0.1 * (i + 1), "score": 0.9} for i, t in enumerate(gstack[:7])}
    averages = suite_averages(results)
    assert list(averages) == ["gstack"]  # reuse_step's tasks are not all there
    assert averages["gstack"]["score"] == pytest.approx(0.4) and averages["gstack"]["metric"] == "acc"
    results.update({t: {"acc": 0.0, "score": 0.5} for t in ("hellaswag", "openbookqa")})
    assert suite_averages(results)["reuse_step"]["score"] == pytest.approx(
        (0.9 * 5 + 0.5 * 2) / 7)
    assert "gstack  average acc of 7 tasks  0.4000" in format_table({"gstack": averages["gstack"]})


# ---------------------------------------------------------------- output, progress, defaults

@pytest.fixture
def shards(tmp_path, tokenizer):
    from growlm.data.prepare import prepare

    docs = tmp_path / "docs"
    docs.mkdir()
    for i in range(6):
        (docs / f"d{i}.txt").write_text("The cat sat on the mat. The dog sat on the log. " * 8)
    tok = tmp_path / "tok.json"
    tokenizer.save(str(tok))
    prepare(tmp_path / "shards", [docs], tokenizer=tok, val_fraction=0.4, progress=False,
            log=lambda *a: None)
    return tmp_path / "shards"


def test_json_alone_goes_to_stdout_and_the_rest_to_stderr(hf_model, shards, capsys):
    assert main(["eval", str(hf_model), "--tasks", "ppl", "--val-shards", str(shards),
                 "--seq-len", "16", "--json"]) == 0
    out, err = capsys.readouterr()
    data = json.loads(out)
    assert data["results"]["ppl"]["tokens"] > 0 and data["bos"] == "auto"
    # Not a terminal: plain progress lines, on stderr here because stdout carries the JSON.
    assert "eval task 1/1" in err and "ppl" in err and "perplexity" in err


def test_progress_lines_when_piped_and_quiet_silences_them(hf_model, shards, capsys):
    assert main(["eval", str(hf_model), "--tasks", "ppl", "--val-shards", str(shards),
                 "--seq-len", "16"]) == 0
    out = capsys.readouterr().out
    assert "eval task 1/1" in out and "val loss seq" in out and "loss" in out
    assert main(["eval", str(hf_model), "--tasks", "ppl", "--val-shards", str(shards),
                 "--seq-len", "16", "--quiet"]) == 0
    assert "eval task" not in capsys.readouterr().out


def test_nan_is_written_as_null(tmp_path, capsys):
    from growlm.cli.eval import STDOUT, _emit

    _emit({"rho": float("nan"), "n": [1.0, float("inf")]}, STDOUT)
    assert json.loads(capsys.readouterr().out) == {"rho": None, "n": [1.0, None]}
    path = tmp_path / "sub" / "eval.json"
    _emit({"rho": float("nan")}, str(path))
    assert json.loads(path.read_text(), parse_constant=lambda c: pytest.fail(c)) == {"rho": None}


def test_ppl_defaults_to_the_runs_own_shards(hf_model, shards, capsys):
    # A run folder's run.json names the recipe's data; eval finds the held-out shards there.
    (hf_model / "run.json").write_text(json.dumps(
        {"fingerprint": "x", "config": {"data": {"train": str(shards), "val": None}}}))
    assert main(["eval", str(hf_model), "--tasks", "ppl", "--seq-len", "16", "--quiet"]) == 0
    assert "ppl" in capsys.readouterr().out
    (hf_model / "run.json").write_text(json.dumps(
        {"config": {"data": {"train": str(shards), "val": str(shards.parent / "gone")}}}))
    assert main(["eval", str(hf_model), "--tasks", "ppl"]) == 2
    err = capsys.readouterr().err
    assert "gone" in err and "--val-shards" in err and len(err.strip().splitlines()) == 1


# ---------------------------------------------------------------- bad inputs, one line each

def _bad_tokenizer(tmp):
    (tmp / "bad_tok.json").write_text('{"model": {"type": "BPE", "vocab": 3}}')
    return ["--tokenizer", str(tmp / "bad_tok.json")]


def _sciq_not_an_array(tmp):
    (tmp / "data/eval/sciq").mkdir(parents=True)
    (tmp / "data/eval/sciq/test.json").write_text('{"question": "q"}')
    return ["--tasks", "sciq", "--data-dir", str(tmp / "data")]


def _piqa_wrong_field(tmp):
    (tmp / "data/eval/llm_foundry_icl").mkdir(parents=True)
    (tmp / "data/eval/llm_foundry_icl/piqa.jsonl").write_text(
        '{"query": "Question: q\\n", "choices": ["a"], "gold": 0}\n')
    return ["--tasks", "piqa", "--data-dir", str(tmp / "data")]


def _json_under_a_file(tmp):
    (tmp / "afile").write_text("x")
    return ["--tasks", "ppl", "--json", str(tmp / "afile" / "eval.json")]


def _not_wikitext(tmp):
    (tmp / "data/corpus/wikitext-2-raw").mkdir(parents=True)
    (tmp / "data/corpus/wikitext-2-raw/wiki.test.raw").write_text("plain text\n")
    return ["--tasks", "wikitext", "--data-dir", str(tmp / "data")]


BAD_INPUTS = [
    (_bad_tokenizer, "bad_tok.json"),
    (_sciq_not_an_array, "test.json: expected a JSON array"),
    (_piqa_wrong_field, "piqa.jsonl:1: field 'choices' should be a list of 2 strings"),
    (_json_under_a_file, "afile, which is a file, not a folder"),
    (_not_wikitext, "wiki.test.raw does not look like raw WikiText"),
    (lambda tmp: ["--tasks", "arc_easy,squad"], "unknown task 'squad'"),
    (lambda tmp: ["--limit", "0"], "--limit must be a positive integer"),
    (lambda tmp: ["--source", "hf"], "invalid choice: 'hf'"),
    (lambda tmp: ["--bos", "maybe"], "invalid choice: 'maybe'"),
    (lambda tmp: ["--device", "cuda:1"], "invalid choice: 'cuda:1'"),
    (lambda tmp: ["--tasks", "ppl", "--val-shards", str(tmp / "none")], "none"),
]


@pytest.mark.parametrize("make_args,message", BAD_INPUTS,
                         ids=[m[:24] for _, m in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2(hf_model, tmp_path, capsys, make_args, message):
    args = make_args(tmp_path)
    try:
        code = main(["eval", str(hf_model), *args])
    except SystemExit as e:  # argparse refuses a bad choice itself
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert message in err and len(err.splitlines()) == 1, err


def test_cuda_on_a_cpu_build_is_one_line(hf_model, capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    assert main(["eval", str(hf_model), "--tasks", "ppl", "--device", "cuda"]) == 2
    err = capsys.readouterr().err.strip()
    assert "--device cuda" in err and len(err.splitlines()) == 1


def test_a_bad_file_late_in_the_list_fails_before_any_scoring(hf_model, tmp_path, capsys):
    icl = tmp_path / "data/eval/llm_foundry_icl"
    icl.mkdir(parents=True)
    (icl / "piqa.jsonl").write_text(
        '{"query": "Question: Open a jar\\n", "choices": ["twist", "pull"], "gold": 0}\n')
    args = ["eval", str(hf_model), "--data-dir", str(tmp_path / "data"), "--seq-len", "32"]
    assert main([*args, "--tasks", "piqa"]) == 0
    assert "eval task 1/1" in capsys.readouterr().out
    assert main([*args, "--tasks", "piqa,sciq"]) == 2  # sciq's file is missing
    out, err = capsys.readouterr()
    assert "eval task" not in out and "sciq" in err and "not found" in err
