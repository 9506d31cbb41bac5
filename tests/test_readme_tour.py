"""README.md's tour, run as a newcomer would: every line of its first ```bash block, in order,
in an empty folder, offline, with no data folder and none of the optional packages (the
extras of pyproject.toml) importable.

The commands are read from README.md itself, so the tour cannot drift from what this test
runs. One substitution keeps it to a few minutes on 2 CPU cores: `growlm train` and
`growlm sweep` get `--set` overrides (SHRINK) that run every stage for STEPS steps of 4
sequences instead of the recipes' hundreds of steps of 16 (ReLoRA merging every STEPS / 2
steps), and `growlm sft` gets SFT_SHRINK (4 steps of 8 rows instead of 2 epochs of 64); a
`--set` the tour line gives for the same key is replaced, not repeated. Everything else runs
exactly as printed. After each line the test checks that it exited 0 and left what the next
lines read (shards, run folders, a report, an HF folder, JSON).
"""

from __future__ import annotations

import json
import re
import shlex
import sys
from pathlib import Path

import pytest

from growlm.cli import main
from growlm.config import load_recipe
from growlm.data.shards import open_shards

README = Path(__file__).resolve().parents[1] / "README.md"
STEPS = 4
SHRINK = {"train.global_batch_tokens": "512", "train.micro_batch_size": "4",
          "run.eval_tokens": "1024", "schedule.warmup_steps": "1"}
SFT_SHRINK = {"sft.epochs": "0.05", "sft.batch_size": "8"}  # 4 steps of 8 rows
# The extras of pyproject.toml: `pip install growlm` alone must run the tour.
OPTIONAL = ("transformers", "accelerate", "datasets", "pyarrow", "pytorch_optimizer",
            "liger_kernel", "tensorboard", "wandb")


def tour_commands(text: str) -> list[list[str]]:
    """The argument lists of the tour's commands: the first ```bash block after '## A tour',
    one command per line, comments dropped."""
    section = text.split("\n## A tour\n", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "README.md: no ```bash block after '## A tour'"
    commands = [shlex.split(line, comments=True) for line in block.group(1).splitlines()]
    return [c for c in commands if c]


def test_the_tour_is_the_readme_commands():
    commands = tour_commands(README.read_text(encoding="utf-8"))
    assert len(commands) >= 10
    assert all(c[0] == "growlm" for c in commands), "every tour line is a growlm command"
    assert {c[1] for c in commands} >= {"recipes", "data", "train", "compare", "eval", "export",
                                       "sweep", "sft", "generate", "plan"}


def shrunk(argv: list[str]) -> list[str]:
    """`argv` with SHRINK and STEPS steps per stage for a train or sweep line, SFT_SHRINK for
    an sft line, else as it is (see the module)."""
    if argv[1] == "sft":
        return [*argv, *[x for k, v in SFT_SHRINK.items() for x in ("--set", f"{k}={v}")]]
    if argv[1] not in ("train", "sweep"):
        return argv
    wanted = dict(SHRINK)
    for i, stage in enumerate(load_recipe(argv[2]).stage, 1):
        wanted[f"stage.{i}.steps"] = str(STEPS)
        if stage.adapters is not None and stage.adapters.reset_every:  # ReLoRA: merge once
            wanted[f"stage.{i}.adapters.reset_every"] = str(STEPS // 2)
            wanted[f"stage.{i}.adapters.rewarmup_steps"] = "1"
    out, i = [], 0
    while i < len(argv):
        if argv[i] == "--set" and argv[i + 1].split("=", 1)[0] in wanted:
            key = argv[i + 1].split("=", 1)[0]
            out += ["--set", f"{key}={wanted.pop(key)}"]
            i += 2
            continue
        out.append(argv[i])
        i += 1
    return out + [x for key, value in wanted.items() for x in ("--set", f"{key}={value}")]


def run_line(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        code = main(argv[1:])
    except SystemExit as e:  # --help
        code = e.code
    out = capsys.readouterr()
    return int(code or 0), out.out, out.err


def option(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv and argv.index(name) + 1 < len(argv) else None


def check(argv: list[str], out: str, err: str, cwd: Path) -> None:
    """What a tour line must leave behind for the lines after it."""
    command = argv[1] if argv[1] != "data" else f"data {argv[2]}"
    if command == "--help":
        assert "recipes" in out and "train" in out
    elif command == "recipes":
        assert "tiny/step-2stage" in out
    elif command == "data prepare":
        assert open_shards(cwd / argv[3]).vocab_size == int(option(argv, "--train-tokenizer"))
    elif command in ("train", "plan") and argv[2] not in ("step", "gstack"):
        cfg = load_recipe(argv[2])
        run_dir = cfg.out_dir
        if command == "train":  # every stage ran to its end and left a checkpoint
            records = [json.loads(line) for line in (run_dir / "metrics.jsonl").open()]
            ends = [r["stage"] for r in records if r["kind"] == "stage" and r["event"] == "end"]
            assert ends == list(range(1, len(cfg.stage) + 1)), (run_dir, ends)
            assert list((run_dir / "checkpoints").iterdir())
        else:
            assert json.loads((run_dir / "plan.json").read_text())["stages"]
            assert (run_dir / "plan.png").stat().st_size > 0
    elif command == "plan":
        result = json.loads(out)
        assert result["layers_per_stage"] if argv[2] == "step" else result["growth_factor"]
    elif command == "compare":
        report = cwd / option(argv, "--out")
        assert (report / "report.md").is_file() and (report / "report.html").is_file()
        for fmt in option(argv, "--format").split(","):
            assert list(report.rglob(f"*.{fmt}")), fmt
    elif command == "eval":
        results = json.loads((cwd / option(argv, "--json")).read_text())
        assert "ppl" in json.dumps(results)
    elif command == "export":
        folder = cwd / argv[3]
        assert json.loads((folder / "config.json").read_text())["num_hidden_layers"] > 0
        assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    elif command == "sweep":
        summary = json.loads((cwd / option(argv, "--out") / "sweep.json").read_text())
        assert [v["status"] for v in summary["variants"]] == ["complete"] * 2
    elif command == "sft":
        run_dir = cwd / "runs" / f"{Path(argv[2]).name}-sft"
        assert list((run_dir / "checkpoints").iterdir())
        assert "longer than the context" not in err  # the built-in set fits the tiny context
    elif command == "generate":
        assert out.strip()


@pytest.mark.slow
def test_readme_tour_runs_top_to_bottom(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("GROWLM_DATA", raising=False)  # a fresh machine has no data folder
    for name in OPTIONAL:  # ... nor the optional packages: importing one fails
        monkeypatch.setitem(sys.modules, name, None)
    for argv in tour_commands(README.read_text(encoding="utf-8")):
        code, out, err = run_line(shrunk(argv), capsys)
        assert code == 0, f"{shlex.join(argv)} exited {code}: {err.strip()[-2000:]}"
        assert "Traceback" not in err, shlex.join(argv)
        check(argv, out, err, tmp_path)
