import json

from growlm.cli import main


def test_demo_runs_baseline_and_staged_and_writes_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "6", "--corpus-size", "300KB"]) == 0
    printed = capsys.readouterr().out
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"baseline", "staged"}
    # the staged run's first stage is half as deep, so it costs fewer FLOPs for the same tokens
    assert summary["staged"]["tokens"] == summary["baseline"]["tokens"]
    assert summary["staged"]["flops"] < summary["baseline"]["flops"]
    assert (out / "report" / "report.md").is_file() and (out / "report" / "report.html").is_file()
    assert "report.md" in printed and "baseline" in printed
    # a second run resumes the finished runs instead of training again
    assert main(["demo", "--out", str(out), "--steps", "6", "--corpus-size", "300KB"]) == 0


def test_demo_stopped_by_a_signal_exits_143_in_one_line_and_a_rerun_finishes(tmp_path):
    """SIGTERM during the demo's first run (the fault hook sends it to the process, which then
    goes on as after a real one): one line, exit 128 + 15, and the same command continues."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    src = Path(__file__).resolve().parents[1] / "src"
    env = {**os.environ, "PYTHONPATH": str(src), "GROWLM_FAULT": "train_step:3:term"}
    argv = [sys.executable, "-m", "growlm", "demo", "--out", str(tmp_path / "d"), "--steps", "6",
            "--corpus-size", "300KB", "--quiet"]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 143, proc.stderr
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("growlm demo: stopped by SIGTERM")
    del env["GROWLM_FAULT"]
    assert subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600).returncode == 0
    assert (tmp_path / "d" / "summary.json").is_file()
