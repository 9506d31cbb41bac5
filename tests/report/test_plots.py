"""Plots and report files: every point visible, labels that do not overlap, formats, JSON."""

import json
import re

import pytest

from growlm.cli import main
from growlm.report import load_run
from growlm.report.plan_chart import plot_plan
from growlm.report.plots import _figure, _power_of_ten, log_x, val_loss_figure

BASE = [(1e12, 4.0), (3e12, 3.4), (1e13, 3.0), (3e13, 2.7), (1e14, 2.5)]
STAGED = [(1e12, 4.5), (5e12, 3.5), (2e13, 2.9), (5e13, 2.3), (8e13, 2.2)]


def _pair(make_run, runs_root, shards):
    base = make_run(runs_root, "standard", BASE, shards=shards)
    staged = make_run(runs_root, "staged", STAGED, n_stages=2, stage_of_point=[1, 1, 2, 2, 2],
                      shards=shards)
    return base, staged


def test_val_loss_shows_every_point_of_every_run(runs_root, shards, make_run):
    base, _ = _pair(make_run, runs_root, shards)
    # a run whose whole curve lies far above the others (a median-based clip hid it)
    high = make_run(runs_root, "diverged", [(1e12, 7.9), (1e13, 7.6), (1e14, 7.7)], shards=shards)
    runs = [load_run(base), load_run(high)]
    for x in ("flops", "tokens"):
        _, ax = val_loss_figure(runs, x)
        lo, hi = ax.get_ylim()
        assert lo < 2.5 and hi > 7.9
        left, right = ax.get_xlim()
        xs = [v for r in runs for v in r.curve(x)[0]]
        assert left <= min(xs) and right >= max(xs)


def test_power_of_ten_labels():
    assert _power_of_ten(1e13) == "$10^{13}$"
    assert _power_of_ten(2e13) == "$2\\times10^{13}$"
    assert _power_of_ten(5e-3) == "$5\\times10^{-3}$"


@pytest.mark.parametrize("lo, hi", [(5e11, 1.1e13), (2e12, 9e12), (1e9, 3e12), (1e10, 1e20)])
def test_log_flop_tick_labels_do_not_overlap(lo, hi):
    fig, ax = _figure()
    ax.plot([lo, hi], [1, 2])
    log_x(ax, [lo, hi])
    renderer = fig.canvas.get_renderer()
    fig.draw(renderer)
    boxes = sorted((t.get_window_extent(renderer) for t in ax.get_xticklabels()
                    if t.get_text() and t.get_visible()
                    and ax.get_xlim()[0] <= t.get_position()[0] <= ax.get_xlim()[1]), key=lambda b: b.x0)
    assert len(boxes) >= 2
    assert all(a.x1 < b.x0 for a, b in zip(boxes, boxes[1:]))


def test_formats_are_written_and_the_report_shows_png(runs_root, shards, make_run, tmp_path, capsys):
    base, staged = _pair(make_run, runs_root, shards)
    out = tmp_path / "rep"
    assert main(["compare", str(staged), "--baseline", str(base), "--out", str(out),
                 "--format", "png,svg,pdf"]) == 0
    md = (out / "report.md").read_text()
    for stem in ("val_loss_flops", "val_loss_tokens", "train_loss", "lr", "tokens_per_s", "memory"):
        assert (out / f"{stem}.png").read_bytes()[:4] == b"\x89PNG"
        assert (out / f"{stem}.svg").read_text().lstrip().startswith("<?xml")
        assert (out / f"{stem}.pdf").read_bytes()[:5] == b"%PDF-"
        assert f"]({stem}.png)" in md and f"(also {stem}.svg, {stem}.pdf)" in md
    svg = (out / "memory.svg").read_text()
    assert "model state, estimated" in svg and "peak mem" not in svg  # text stays text in SVG


def test_svg_only_is_embedded_in_the_html(runs_root, shards, make_run, tmp_path):
    base, staged = _pair(make_run, runs_root, shards)
    out = tmp_path / "rep"
    assert main(["compare", str(staged), "--baseline", str(base), "--out", str(out), "--format", "svg"]) == 0
    html = (out / "report.html").read_text()
    assert html.count("data:image/svg+xml;base64,") == 6 and "image/png" not in html
    assert not list(out.glob("*.png"))


@pytest.mark.parametrize("value, message", [("pdf", "add png or svg"), ("png,gif", "allowed plot formats")])
def test_bad_format_is_one_line(runs_root, shards, make_run, tmp_path, capsys, value, message):
    base, staged = _pair(make_run, runs_root, shards)
    assert main(["compare", str(staged), "--baseline", str(base), "--out", str(tmp_path / "r"),
                 "--format", value]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert not (tmp_path / "r").exists()


def test_wide_tables_scroll_instead_of_being_cut(runs_root, shards, make_run, tmp_path):
    base, staged = _pair(make_run, runs_root, shards)
    main(["compare", str(staged), "--baseline", str(base), "--out", str(tmp_path / "r")])
    html = (tmp_path / "r" / "report.html").read_text()
    assert html.count('<div class="table"><table>') == html.count("<table>") >= 3
    assert ".table { overflow-x: auto;" in html


def test_no_raw_floats_in_any_output(runs_root, shards, make_run, tmp_path, capsys):
    base = make_run(runs_root, "standard", [(1.234567e12, 4.923047304153442), (9.87654321e13, 2.51234567)],
                    shards=shards)
    staged = make_run(runs_root, "staged", [(1.1e12, 4.1234567), (7.7777777e13, 2.3333333)], shards=shards)
    main(["compare", str(staged), "--baseline", str(base), "--out", str(tmp_path / "r")])
    printed = capsys.readouterr().out
    md = (tmp_path / "r" / "report.md").read_text()
    for text in (printed, md):
        assert not re.search(r"\d\.\d{5,}", text), re.search(r"\d\.\d{5,}", text)
        assert "e+" not in text
    assert "4.9230" not in md and "2.5123" in md and "9.88e13" in md


def test_few_evaluations_are_pointed_out(runs_root, shards, make_run, tmp_path):
    base, staged = _pair(make_run, runs_root, shards)
    sparse = make_run(runs_root, "sparse", [(1e12, 4.0), (8e13, 2.3)], shards=shards)
    md = (tmp_path / "r" / "report.md")
    main(["compare", str(staged), str(sparse), "--baseline", str(base), "--out", str(md.parent)])
    text = md.read_text()
    assert "sparse: only 2 validation points" in text and "set run.eval_every" in text


def test_json_output(runs_root, shards, make_run, tmp_path, capsys):
    base, staged = _pair(make_run, runs_root, shards)
    assert main(["compare", str(staged), "--baseline", str(base), "--out", str(tmp_path / "r"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["baseline"] == "standard" and [r["name"] for r in data["runs"]] == ["standard", "staged"]
    row = data["runs"][1]
    assert row["memory"]["model_state_bytes"] == 2000 * 2 and row["memory"]["peak_measured_bytes"] is None
    assert row["final_val_loss"] == 2.2 and row["path"] == str(staged)
    target = tmp_path / "numbers.json"
    assert main(["compare", str(staged), "--baseline", str(base), "--out", str(tmp_path / "r"),
                 "--json", str(target)]) == 0
    assert "staged" in capsys.readouterr().out  # the table is still printed
    assert json.loads(target.read_text())["runs"][1]["name"] == "staged"


def test_plan_chart_formats_and_measured_labels(tmp_path):
    def entry(name, gib):
        return {"name": name, "memory": {"model_state_bytes": gib * 2**30, "activation_bytes": 2**30,
                                         "total_bytes_checkpointed": gib * 2**30},
                "flops": {"6nd": 1e20 * gib, "exact": 1.1e20 * gib}}

    stages = [entry("small", 1), entry("grown", 2)]
    stages[0]["measured"] = {"model_state_bytes": 2**30, "peak_measured_bytes": 3 * 2**30, "flops": 1e20}
    stages[0]["as_run"] = {"precision": "fp32", "peak_bytes": 3 * 2**30}
    plan = {"run": "t", "stages": stages, "baseline": entry("baseline", 3),
            "memory_precision": {"name": "bf16-mixed"}}
    path = plot_plan(plan, tmp_path / "plan.png", formats=["svg", "pdf"])
    assert path.read_bytes()[:4] == b"\x89PNG" and (tmp_path / "plan.pdf").read_bytes()[:5] == b"%PDF-"
    svg = (tmp_path / "plan.svg").read_text()
    # a measured peak sits beside the run's own estimate (its precision named), not beside the
    # bars of the plan's precision alone
    assert "peak, measured" in svg and "peak as run (fp32), est." in svg and "measured peak" not in svg
    assert "(bf16-mixed)" in svg
    # only model state measured (a run from before the probe): labelled as model state
    stages[0]["measured"] = {"model_state_bytes": 2**30, "flops": 1e20}
    plot_plan(plan, tmp_path / "state.svg")
    assert "model state, measured" in (tmp_path / "state.svg").read_text()
    # an older plan's single figure is labelled as what it was
    stages[0]["measured"] = {"peak_bytes": 2**30, "flops": 1e20}
    plot_plan(plan, tmp_path / "old.svg")
    assert "model state (CPU) / peak (GPU)" in (tmp_path / "old.svg").read_text()
