"""`growlm sft` end to end through the Trainer: learning, metrics, checkpoints, exact resume,
`growlm generate` on the result, and bad inputs."""

import json

import pytest

from growlm.cli import main


def recipe(tmp_path, template, **sft) -> str:
    sft_lines = "".join(f"{k} = {json.dumps(v)}\n" for k, v in sft.items())
    path = tmp_path / "sft.toml"
    path.write_text(f"""
[run]
log_every = 1
[data]
seq_len = 48
[optim]
lr = 3e-3
[schedule]
warmup_steps = 10
min_lr_ratio = 0.1
[sft]
template = {json.dumps(str(template))}
batch_size = 4
{sft_lines}""")
    return str(path)


def steps_of(run_dir):
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in records if r["kind"] == "step"], [r for r in records if r["kind"] == "eval"]


@pytest.fixture(autouse=True)
def _fast(kit, one_thread):
    kit.trainer_modules()


def test_sft_learns_and_generate_reads_the_run(
    kit, tiny_checkpoint, data_file, qa_toml, tmp_path, capsys
):
    out = tmp_path / "sft"
    # 8 examples pack into 4 rows of 48 tokens: one step per epoch at 4 rows per step
    args = [
        "sft",
        str(tiny_checkpoint),
        "--data",
        str(data_file),
        "--out",
        str(out),
        "--quiet",
        "--recipe",
        recipe(tmp_path, qa_toml, epochs=200, val_fraction=0.0),
    ]
    assert main(args) == 0
    steps, _ = steps_of(out)
    assert len(steps) == 200 and steps[-1]["loss"] < 0.05
    assert steps[0]["lr"] < steps[9]["lr"]  # warm-up, then cosine
    ckpt = sorted((out / "checkpoints").iterdir())[-1]
    assert (ckpt / "tokenizer.json").is_file()
    assert json.loads((ckpt / "meta.json").read_text())["model"]["d_model"] == 64
    assert "done: 200 steps" in capsys.readouterr().out
    for name, code in kit.CAPITALS:
        assert (
            main(["generate", str(out), "--prompt", kit.question(name), "--template", str(qa_toml)])
            == 0
        )
        assert capsys.readouterr().out == f"{code}\n"


def test_sft_resume_gives_the_same_losses(
    tiny_checkpoint, data_file, qa_toml, tmp_path, monkeypatch
):
    from growlm.sft.trainer import SFTTrainer

    rec = recipe(tmp_path, qa_toml, epochs=8, val_fraction=0.25, packing=False)
    base = [
        "sft",
        str(tiny_checkpoint),
        "--data",
        str(data_file),
        "--recipe",
        rec,
        "--quiet",
        "--set",
        "run.ckpt_every=3",
    ]
    assert main([*base, "--out", str(tmp_path / "a")]) == 0
    monkeypatch.setattr(
        SFTTrainer, "stop_requested", property(lambda self: self.counters.global_step >= 7)
    )
    assert main([*base, "--out", str(tmp_path / "b")]) == 143
    monkeypatch.undo()
    assert main([*base, "--out", str(tmp_path / "b"), "--resume"]) == 0
    (steps_a, evals_a), (steps_b, evals_b) = steps_of(tmp_path / "a"), steps_of(tmp_path / "b")
    assert len(steps_a) == 12  # 6 train examples (2 held out) × 8 epochs / 4 rows per step
    assert [s["loss"] for s in steps_a] == [s["loss"] for s in steps_b]
    # the default cadence: about 20 validation points over the run, here every step of 12
    assert len(evals_a) == 12 and [e["val_loss"] for e in evals_a] == [e["val_loss"] for e in evals_b]
    assert evals_a[-1]["val_loss"] > 0


def test_sft_bad_inputs_are_one_line(kit, tiny_checkpoint, data_file, qa_toml, tmp_path, capsys):
    rec = recipe(tmp_path, qa_toml, epochs=1)
    base = ["sft", str(tiny_checkpoint), "--recipe", rec, "--out", str(tmp_path / "x"), "--quiet"]
    bad = kit.capital_records()
    del bad[4]["instruction"]
    cases = [
        (
            ["--data", str(kit.write_jsonl(tmp_path / "bad.jsonl", bad))],
            "bad.jsonl: line 5: record has no 'instruction'",
        ),
        (["--data", str(kit.write_jsonl(tmp_path / "none.jsonl", []))], "empty dataset"),
        (
            ["--data", str(data_file), "--set", "sft.template={prompt_no_input='{question}'}"],
            "unknown placeholder {question}",
        ),
        (["--data", str(data_file), "--set", "sft.epoch=3"], "sft.epoch: unknown key"),
        (
            ["--data", str(data_file), "--set", "model.d_model=128"],
            "[model] comes from the checkpoint",
        ),
        (
            ["--data", str(data_file), "--set", "data.seq_len=4", "--set", "sft.overlong='drop'"],
            "all 8 examples are longer than the context",
        ),
        # settings and the output folder are checked before the data is tokenized: a data
        # problem does not hide them
        (
            ["--data", str(data_file), "--set", "data.seq_len=4", "--set", "sft.overlong='drop'",
             "--set", "optim.lr=nan"],
            "optim.lr: Input should be a finite number",
        ),
    ]
    into_source = ["sft", str(tiny_checkpoint), "--recipe", rec, "--out", str(tiny_checkpoint), "--quiet"]
    runs = [(base, extra, message) for extra, message in cases]
    runs.append((into_source, ["--data", str(data_file), "--set", "data.seq_len=4", "--set",
                               "sft.overlong='drop'"], "holds the source checkpoint"))
    for argv, extra, message in runs:
        assert main([*argv, *extra]) == 2, message
        err = capsys.readouterr().err
        assert message in err and err.count("\n") <= 2 and "Traceback" not in err, err
    assert not (tmp_path / "x").exists()


def test_sft_drop_counts_are_reported(kit, tiny_checkpoint, data_file, qa_toml, tmp_path, capsys):
    rows = kit.capital_records() + [{"instruction": "long " * 40, "output": "x"}]
    data = kit.write_jsonl(tmp_path / "d.jsonl", rows)
    assert (
        main(
            [
                "sft",
                str(tiny_checkpoint),
                "--data",
                str(data),
                "--out",
                str(tmp_path / "r"),
                "--recipe",
                recipe(tmp_path, qa_toml, epochs=1, overlong="drop", val_fraction=0.0),
            ]
        )
        == 0
    )
    captured = capsys.readouterr()
    assert (
        "1 of 9 examples are longer than the context (49 tokens = seq_len + 1): dropped 1"
        in captured.err
    )
    assert "9 records → 8 examples" in captured.out and "1 dropped" in captured.out
