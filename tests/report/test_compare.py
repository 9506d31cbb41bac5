import json
import math

import pytest

from growlm.cli import main
from growlm.errors import GrowlmError
from growlm.report import compare as cmp
from growlm.report import flops_to_target, format_table, load_run, write_report

BASE_CURVE = [(1e12, 4.0), (1e13, 3.0), (1e14, 2.5)]
# stage 1 (small model) then stage 2; crosses 2.5 between 2e13 (2.9) and 5e13 (2.3): 2/3 of the way
STAGED_CURVE = [(1e12, 4.5), (1e13, 3.5), (2e13, 2.9), (5e13, 2.3), (8e13, 2.2)]
STAGED_STAGES = [1, 1, 2, 2, 2]


# ---------------------------------------------------------------- interpolation

def test_log_interpolation_is_exact_on_a_constructed_curve():
    f, bound = flops_to_target([1e10, 1e12], [4.0, 2.0], 3.0, "log")
    assert f == pytest.approx(1e11, rel=1e-12) and not bound


def test_linear_interpolation_is_exact_on_a_constructed_curve():
    f, bound = flops_to_target([1e10, 1e12], [4.0, 2.0], 3.0, "linear")
    assert f == pytest.approx(5.05e11, rel=1e-12) and not bound


def test_crossing_exactly_at_an_evaluation_point():
    assert flops_to_target([1.0, 2.0, 4.0], [5.0, 3.0, 2.0], 3.0)[0] == pytest.approx(2.0)


def test_first_crossing_wins_on_a_non_monotone_curve():
    f, _ = flops_to_target([1.0, 2.0, 3.0, 4.0], [5.0, 2.0, 6.0, 1.0], 3.0, "linear")
    assert f == pytest.approx(1 + 2 / 3)


def test_first_point_below_target_is_an_upper_bound():
    assert flops_to_target([7.0, 9.0], [1.0, 0.5], 3.0) == (7.0, True)


def test_never_reached_gives_none():
    assert flops_to_target([1.0, 2.0], [5.0, 4.0], 3.0) == (None, False)


def test_unknown_interpolation_is_refused():
    with pytest.raises(GrowlmError, match="unknown interpolation 'cubic'"):
        flops_to_target([1.0], [1.0], 1.0, "cubic")


# ---------------------------------------------------------------- summary

def _pair(make_run, runs_root, shards, **staged_kw):
    base = make_run(runs_root, "standard", BASE_CURVE, shards=shards,
                    memory=[(1600, 4000)])
    staged = make_run(runs_root, "staged", STAGED_CURVE, n_stages=2, stage_of_point=STAGED_STAGES,
                      shards=shards, memory=[(400, 1000), (1200, 3000)], **staged_kw)
    return base, staged


@pytest.mark.parametrize("interp, expected", [("linear", 4e13), ("log", 2e13 * 2.5 ** (2 / 3))])
def test_flops_to_baseline_loss_includes_stage_one_and_gives_the_saving(runs_root, shards, make_run, interp,
                                                                        expected):
    base, staged = _pair(make_run, runs_root, shards)
    runs, b = cmp.load_runs([staged], base)
    rows = cmp.summarize(runs, b, interp=interp)
    assert [r.name for r in rows] == ["standard", "staged"] and rows[0].is_baseline
    assert rows[0].flops_to_target == 1e14 and rows[0].saving == 0.0
    r = rows[1]
    assert r.flops_to_target == pytest.approx(expected, rel=1e-12)
    assert r.saving == pytest.approx(1 - expected / 1e14, rel=1e-12)
    assert r.final_val_loss == 2.2 and r.delta_loss == pytest.approx(-0.3)
    assert r.flops == 8e13 and r.flops_6nd == pytest.approx(7.2e13)


def test_a_small_first_stage_below_the_target_does_not_count(runs_root, shards, make_run):
    base = make_run(runs_root, "standard", BASE_CURVE, shards=shards)
    # stage 1 dips to 2.0 (under the 2.5 target), the grown model starts at 2.6 and crosses later
    curve = [(1e12, 3.0), (5e12, 2.0), (2e13, 2.6), (4e13, 2.4), (6e13, 2.3)]
    dips = make_run(runs_root, "dips", curve, n_stages=2, stage_of_point=[1, 1, 2, 2, 2], shards=shards)
    # already below the target at the grown model's first evaluation: an upper bound
    early = make_run(runs_root, "early", [(1e12, 2.2), (3e13, 2.4), (6e13, 2.1)], n_stages=2,
                     stage_of_point=[1, 2, 2], shards=shards)
    # still in stage 1 of 2: the final model has no evaluation yet
    running = make_run(runs_root, "running", [(1e12, 2.0)], n_stages=2, stage_ends=[],
                       shards=shards)
    runs, b = cmp.load_runs([dips, early, running], base)
    rows = {r.name: r for r in cmp.summarize(runs, b, interp="linear")}
    assert rows["dips"].flops_to_target == pytest.approx(3e13) and not rows["dips"].to_target_bound
    assert (rows["early"].flops_to_target, rows["early"].to_target_bound) == (3e13, True)
    assert rows["running"].flops_to_target is None and rows["running"].saving is None


def test_seed_formula_flops_can_be_chosen(runs_root, shards, make_run):
    base, staged = _pair(make_run, runs_root, shards)
    runs, b = cmp.load_runs([staged], base)
    row = cmp.summarize(runs, b, interp="linear", flops="6nd")[1]
    assert row.flops_to_target == pytest.approx(0.9 * 4e13)
    with pytest.raises(GrowlmError, match="unknown FLOPs count"):
        cmp.summarize(runs, b, flops="other")


def test_memory_peaks_and_reductions(runs_root, shards, make_run):
    base, staged = _pair(make_run, runs_root, shards)
    runs, b = cmp.load_runs([staged], base)
    row = cmp.summarize(runs, b)[1]
    assert (row.peak_measured, row.peak_estimated) == (3000, 1200)
    assert row.mem_reduction_measured == pytest.approx(0.25)
    assert row.mem_reduction_estimated == pytest.approx(0.25)


def test_stage_boundaries_come_from_stage_records(runs_root, shards, make_run):
    _, staged = _pair(make_run, runs_root, shards)
    run = load_run(staged)
    assert run.stage_starts("flops") == [(1e13, "s2")]
    assert [s["n_layers"] for s in run.stages()] == [1, 2]


def test_baseline_given_twice_is_counted_once(runs_root, shards, make_run):
    base, staged = _pair(make_run, runs_root, shards)
    runs, _ = cmp.load_runs([base, staged, staged], base)
    assert [r.name for r in runs] == ["standard", "staged"]


# ---------------------------------------------------------------- status

def test_in_progress_run_is_shown_as_such(runs_root, shards, tmp_path, make_run):
    base, _ = _pair(make_run, runs_root, shards)
    partial = make_run(runs_root, "partial", STAGED_CURVE[:3], n_stages=2, stage_of_point=[1, 1, 2],
                       stage_ends=[1], shards=shards)
    run = load_run(partial)
    assert not run.complete and run.status == "in progress (stage 2/2, step 3)"
    md = write_report([partial], base, tmp_path / "rep").read_text()
    assert "in progress (stage 2/2, step 3)" in md
    assert "partial: **in progress" in md
    assert "running" in format_table([partial], base)


def test_complete_run_and_torn_last_line(runs_root, shards, make_run):
    run = load_run(make_run(runs_root, "r", BASE_CURVE, shards=shards, extra_lines='{"kind": "st'))
    assert run.complete and run.status == "complete" and len(run.evals) == 3


def test_not_a_run_directory_is_refused(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(GrowlmError, match="not a growlm run"):
        load_run(tmp_path / "empty")
    with pytest.raises(GrowlmError, match="run directory not found"):
        load_run(tmp_path / "nope")


# ---------------------------------------------------------------- refusal

def test_different_tokenizers_are_refused(runs_root, tmp_path, make_run, write_shards_meta):
    a = make_run(runs_root, "a", BASE_CURVE, shards=write_shards_meta(tmp_path / "s1", "a" * 64))
    b = make_run(runs_root, "b", BASE_CURVE, shards=write_shards_meta(tmp_path / "s2", "b" * 64))
    with pytest.raises(GrowlmError, match="different tokenizers: a .aaaa.* vs b .bbbb"):
        write_report([b], a, tmp_path / "rep")
    assert not (tmp_path / "rep" / "report.md").exists()


def test_different_training_data_is_refused(runs_root, tmp_path, make_run, write_shards_meta):
    a = make_run(runs_root, "a", BASE_CURVE, shards=write_shards_meta(tmp_path / "s1", fingerprint="x"))
    b = make_run(runs_root, "b", BASE_CURVE, shards=write_shards_meta(tmp_path / "s2", fingerprint="y"))
    with pytest.raises(GrowlmError, match="different data: a and b have different training shards"):
        cmp.check_comparable(cmp.load_runs([b], a)[0])


def test_different_validation_data_is_refused(runs_root, tmp_path, shards, make_run,
                                              write_shards_meta):
    val = write_shards_meta(tmp_path / "val", fingerprint="v")
    a = make_run(runs_root, "a", BASE_CURVE, shards=shards)
    b = make_run(runs_root, "b", BASE_CURVE, shards=shards, val=val)
    with pytest.raises(GrowlmError, match="different validation shards"):
        cmp.check_comparable(cmp.load_runs([b], a)[0])


def test_unknown_data_is_a_warning_not_a_refusal(runs_root, shards, make_run):
    a = make_run(runs_root, "a", BASE_CURVE, shards=shards)
    b = make_run(runs_root, "b", BASE_CURVE)  # shards path does not exist
    warnings = cmp.check_comparable(cmp.load_runs([b], a)[0])
    assert warnings == ["b: tokenizer unknown (shards and checkpoints not found); not checked"]


def test_cli_refusal_is_one_line_and_exit_2(runs_root, tmp_path, capsys, make_run,
                                           write_shards_meta):
    a = make_run(runs_root, "a", BASE_CURVE, shards=write_shards_meta(tmp_path / "s1", "a" * 64))
    b = make_run(runs_root, "b", BASE_CURVE, shards=write_shards_meta(tmp_path / "s2", "b" * 64))
    assert main(["compare", str(b), "--baseline", str(a), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "different tokenizers" in err


# ---------------------------------------------------------------- files

EVAL = {"wikitext": {"word_perplexity": 812.5, "token_perplexity": 90.0},
        "piqa": {"acc": 0.55, "acc_norm": 0.56, "score": 0.56, "n": 10},
        "average": {"score": 0.56, "tasks": ["piqa"]},
        "wordsim": {"simlex999": {"embedding": 0.1, "head": 0.2, "kept": 5, "total": 10, "coverage": 0.5},
                    "men": {"embedding": 0.3, "head": float("nan"), "kept": 1, "total": 10,
                            "coverage": 0.1}}}


def test_report_files_are_written(runs_root, shards, tmp_path, capsys, make_run):
    base, staged = _pair(make_run, runs_root, shards, eval_results=EVAL)
    out = tmp_path / "report"
    assert main(["compare", str(staged), "--baseline", str(base), "--out", str(out),
                 "--interp", "linear"]) == 0
    printed = capsys.readouterr().out
    assert "staged" in printed and "4.00e13" in printed and "+60.0%" in printed
    md = (out / "report.md").read_text()
    html = (out / "report.html").read_text()
    pngs = ["val_loss_flops.png", "val_loss_tokens.png", "train_loss.png", "lr.png",
            "tokens_per_s.png", "memory.png"]
    for name in pngs:
        assert (out / name).stat().st_size < 300_000
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({name})" in md
    assert html.count("data:image/png;base64,") == len(pngs)
    assert "| staged | complete | 2 | 2.2000 | -0.3000 |" in md
    assert "4.00e13 | +60.0%" in md and "interpolated linearly in FLOPs" in md
    # evaluation tables: wikitext, zero-shot, word similarity (NaN skipped in the mean)
    assert "WikiText-2 word ppl" in md and "812.5" in md and "0.5600" in md
    assert "| staged | 0.1000 / 0.2000 (5) | 0.3000 / - (1) |" in md  # rho, and its pairs
    assert "simlex999 emb / head (pairs)" in md
    assert "0.2000 | 0.2000 |" in md  # mean rho: embedding (0.1+0.3)/2, head 0.2
    for text in ("Summary", "Stages", "Word similarity", "staged"):
        assert text in html


def test_write_report_returns_the_markdown_path_and_format_table(runs_root, shards, tmp_path, make_run):
    base, staged = _pair(make_run, runs_root, shards)
    path = write_report([str(staged)], str(base), tmp_path / "r")
    assert path == tmp_path / "r" / "report.md" and path.with_suffix(".html").is_file()
    table = format_table([staged], base, interp="linear")
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["run", "status", "val"]
    assert lines[2].startswith("standard *") and "complete" in lines[2]
    assert "staged" in lines[3] and "+60.0%" in lines[3] and "-25.0%" not in lines[3]


def test_neighbour_overlap_table_from_checkpoints(runs_root, shards, tmp_path, make_run):
    import torch

    from growlm.checkpoint import save_checkpoint

    base, staged = _pair(make_run, runs_root, shards)
    g = torch.Generator().manual_seed(0)
    emb = torch.randn(40, 8, generator=g)
    for run, head in ((base, torch.randn(40, 8, generator=g)), (staged, torch.randn(40, 8, generator=g))):
        save_checkpoint(run / "checkpoints", 5, {"embed_tokens.weight": emb, "lm_head.weight": head},
                        {}, {"model": {}, "stage": 0})
    md = write_report([staged], base, tmp_path / "r", neighbours=5).read_text()
    row = next(line for line in md.splitlines() if line.startswith("| staged | 1.0000"))
    head_overlap = float(row.split("|")[3])
    assert 0 <= head_overlap < 0.9  # random heads share few neighbours; identical embeddings all


def test_run_json_and_eval_json_are_read(runs_root, shards, make_run):
    run = load_run(make_run(runs_root, "e", BASE_CURVE, shards=shards, eval_results=EVAL))
    assert run.tokenizer_sha == "a" * 64 and run.data_id.startswith("data-1|")
    assert cmp.eval_value(run, "wikitext/word_perplexity") == 812.5
    assert math.isclose(cmp.eval_value(run, "wordsim:embedding"), 0.2)
    json.loads((run.path / "eval.json").read_text())
