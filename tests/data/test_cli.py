import json

import pytest

from growlm.cli import main


def test_prepare_verify_info_from_the_command_line(tmp_path, corpus, capsys):
    folder, _ = corpus
    out = tmp_path / "out"
    args = ["data", "prepare", str(out), str(folder), "--train-tokenizer", "300",
            "--val-fraction", "0.1", "--quiet", "--shard-tokens", "1K"]
    assert main(args) == 0
    assert main(args) == 0
    assert "up to date" in capsys.readouterr().out
    assert main(["data", "verify", str(out)]) == 0
    assert "OK" in capsys.readouterr().out
    assert main(["data", "info", str(out), "--json"]) == 0
    meta = json.loads(capsys.readouterr().out)
    assert meta["splits"]["train"]["docs"] == 27


def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys):
    code = main(["data", "prepare", str(tmp_path / "out"), str(tmp_path / "missing.jsonl"),
                 "--train-tokenizer", "300", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().count("\n") == 0 and "input path not found" in err
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "train_00000.bin").write_bytes(b"\0\0")
    assert main(["data", "verify", str(tmp_path / "out")]) == 2
    assert "meta.json is missing" in capsys.readouterr().err


def test_progress_in_a_log_is_plain_lines_and_quiet_turns_it_off(tmp_path, corpus, capsys):
    folder, _ = corpus
    base = ["data", "prepare", str(tmp_path / "a"), str(folder), "--train-tokenizer", "300",
            "--val-fraction", "0.1"]
    assert main(base) == 0
    out = capsys.readouterr().out  # not a terminal: plain lines, no carriage returns
    assert "\r" not in out
    for expected in ("training a byte-level BPE", "tokenizer training: read", "computing merges",
                     "tokenizer trained in", "tokenizing ", "wrote "):
        assert expected in out, (expected, out)
    base[2] = str(tmp_path / "b")
    assert main(base + ["--quiet"]) == 0
    out = capsys.readouterr().out
    assert "tokenizing " not in out and "tokenizer training:" not in out
    assert "tokenizer trained in" in out and "wrote " in out  # results, not progress
    assert "--no-progress" not in _help(["data", "prepare", "--help"], capsys)


def _help(argv, capsys) -> str:
    try:
        main(argv)
    except SystemExit as e:
        assert e.code == 0
    return capsys.readouterr().out


def test_every_data_command_has_a_description(capsys):
    text = _help(["data", "--help"], capsys)
    for sub in ("prepare", "verify", "info"):
        assert sub in text
        lines = _help(["data", sub, "--help"], capsys).splitlines()
        # usage, a blank line, then the description (not straight to the arguments)
        description = lines[lines.index("") + 1]
        assert description and not description.startswith(("positional", "options")), lines


def test_json_output_to_stdout_or_file(tmp_path, corpus, capsys):
    folder, _ = corpus
    out = tmp_path / "out"
    assert main(["data", "prepare", str(out), str(folder), "--train-tokenizer", "300",
                 "--val-fraction", "0.1", "--quiet"]) == 0
    capsys.readouterr()
    assert main(["data", "info", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == json.loads((out / "meta.json").read_text())
    assert main(["data", "info", str(out), "--json", str(tmp_path / "info.json")]) == 0
    assert json.loads((tmp_path / "info.json").read_text()) == printed
    assert "tokenizer" in capsys.readouterr().out  # the table is still printed
    assert main(["data", "verify", str(out), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] is True and report["splits"]["train"] == printed["splits"]["train"]["tokens"]
    assert report["files_hashed"] == 2


def test_hub_flags_read_a_hub_dataset_and_need_hub(tmp_path, monkeypatch, make_docs, capsys):
    datasets = pytest.importorskip("datasets")
    calls = []

    def fake_load(name, config=None, split=None, streaming=False):
        calls.append((name, config, split, streaming))
        return iter([{"text": d} for d in make_docs(40)])

    monkeypatch.setattr(datasets, "load_dataset", fake_load)
    assert main(["data", "prepare", str(tmp_path / "out"), "--hub", "org/corpus", "--hub-config",
                 "small", "--streaming", "--train-tokenizer", "300", "--val-fraction", "0.1",
                 "--quiet"]) == 0
    assert calls[-1] == ("org/corpus", "small", "train", True)
    capsys.readouterr()
    code = main(["data", "prepare", str(tmp_path / "o2"), str(tmp_path / "x.txt"), "--hub-split",
                 "test", "--train-tokenizer", "300"])
    assert code == 2 and "apply to a --hub dataset" in capsys.readouterr().err
