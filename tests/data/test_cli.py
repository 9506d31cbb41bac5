import json

from growlm.cli import main


def test_prepare_verify_info_from_the_command_line(tmp_path, corpus, capsys):
    folder, _ = corpus
    out = tmp_path / "out"
    args = ["data", "prepare", str(out), str(folder), "--train-tokenizer", "300",
            "--val-fraction", "0.1", "--no-progress", "--shard-tokens", "1K"]
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
                 "--train-tokenizer", "300", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert err.strip().count("\n") == 0 and "input path not found" in err
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "train_00000.bin").write_bytes(b"\0\0")
    assert main(["data", "verify", str(tmp_path / "out")]) == 2
    assert "meta.json is missing" in capsys.readouterr().err
