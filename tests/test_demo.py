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
