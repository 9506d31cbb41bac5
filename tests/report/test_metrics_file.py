"""metrics.jsonl: robust reading, standard JSON, resume truncation, write failures."""

import errno
import json

import pytest

from growlm.errors import GrowlmError
from growlm.files import WriteError
from growlm.report import load_run
from growlm.train.metrics import MetricsWriter, read_metrics


def _lines(*records) -> bytes:
    return b"".join(json.dumps(r).encode() + b"\n" for r in records)


def test_torn_last_line_is_skipped_silently(tmp_path, recwarn):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(_lines({"kind": "step", "step": 1}) + b'{"kind": "st')
    problems = []
    assert read_metrics(path, problems) == [{"kind": "step", "step": 1}]
    assert problems == [] and not recwarn.list


def test_garbage_and_non_utf8_lines_are_skipped_and_named(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(_lines({"kind": "step", "step": 1}) + b"\xff\xfe not text\n" + b"[1, 2]\n"
                     + b"garbage\n" + _lines({"kind": "step", "step": 2}))
    problems = []
    assert [r["step"] for r in read_metrics(path, problems)] == [1, 2]
    assert problems == [f"{path}: skipped 3 unreadable lines (lines 2, 3, 4): not a UTF-8 JSON object"]
    with pytest.warns(UserWarning, match="skipped 3 unreadable lines"):
        read_metrics(path)


def test_missing_file_reads_as_empty(tmp_path):
    assert read_metrics(tmp_path / "nope.jsonl") == []


def test_report_reader_survives_a_damaged_file(runs_root, shards, make_run):
    run = make_run(runs_root, "r", [(1e12, 4.0), (1e13, 3.0)], shards=shards, extra_lines="garbage\n{}x\n")
    (run / "metrics.jsonl").write_bytes((run / "metrics.jsonl").read_bytes() + b"\xc3\x28\n")
    loaded = load_run(run)
    assert len(loaded.evals) == 2 and loaded.complete
    assert len(loaded.problems) == 1 and "metrics.jsonl: skipped 3 unreadable lines" in loaded.problems[0]


def test_records_are_standard_json(tmp_path):
    path = tmp_path / "metrics.jsonl"
    writer = MetricsWriter(path)
    writer.log({"kind": "step", "step": 1, "loss": float("nan"), "grad_norm": float("inf"),
                "nested": {"x": float("-inf")}})
    writer.close()
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text) == {"kind": "step", "step": 1, "loss": None, "grad_norm": None,
                                "nested": {"x": None}, "nonfinite": {"loss": "nan", "grad_norm": "inf"}}


def test_a_torn_line_does_not_glue_onto_the_next_record(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(_lines({"kind": "step", "step": 1}) + b'{"kind": "step", "st')
    writer = MetricsWriter(path)
    writer.log({"kind": "step", "step": 2})
    writer.close()
    problems = []
    assert [r["step"] for r in read_metrics(path, problems)] == [1, 2] and problems == []


def test_a_full_disk_is_one_write_error(tmp_path, monkeypatch):
    writer = MetricsWriter(tmp_path / "metrics.jsonl")

    def full(*_args):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(writer._file, "write", full)
    with pytest.raises(WriteError, match="No space left on device while writing .*metrics.jsonl"):
        writer.log({"kind": "step", "step": 1})
    monkeypatch.undo()
    writer.close()


def test_an_unreadable_file_is_one_line(tmp_path):
    (tmp_path / "metrics.jsonl").mkdir()
    with pytest.raises(GrowlmError, match="metrics.jsonl: cannot read metrics"):
        read_metrics(tmp_path / "metrics.jsonl")


# ---------------------------------------------------------------- resume

def _two_stage_records(first: int) -> list[dict]:
    """Stage 1 (steps 1-4, a mid-stage checkpoint at 2, boundary checkpoint at 4), stage 2
    started at step 4 and ran to step 6; `first` is the number of the first stage."""
    s1, s2 = first, first + 1
    return [{"kind": "stage", "event": "start", "stage": s1, "step": 0},
            *({"kind": "step", "stage": s1, "step": i} for i in range(1, 5)),
            {"kind": "eval", "stage": s1, "step": 2}, {"kind": "eval", "stage": s1, "step": 4},
            {"kind": "tasks", "stage": s1, "step": 4},
            {"kind": "stage", "event": "end", "stage": s1, "step": 4},
            {"kind": "stage", "event": "start", "stage": s2, "step": 4},
            {"kind": "step", "stage": s2, "step": 5},
            {"kind": "rollback", "stage": s2, "step": 4, "bad_step": 6},
            {"kind": "step", "stage": s2, "step": 5}, {"kind": "step", "stage": s2, "step": 6}]


@pytest.mark.parametrize("first", [0, 1])
def test_truncate_keeps_what_came_before_the_checkpoint(tmp_path, first):
    path = tmp_path / "metrics.jsonl"
    records = _two_stage_records(first)
    path.write_bytes(_lines(*records))
    # the boundary checkpoint at step 4: stage 1 complete, stage 2 is redone from its start;
    # the rollback happened and stays on record
    MetricsWriter.truncate(path, 4, first)
    assert read_metrics(path) == records[:9] + [records[11]]
    # a mid-stage checkpoint at step 2: stage 1's end (and all after it) is dropped
    MetricsWriter.truncate(path, 2, first)
    kept = read_metrics(path)
    assert [(r["kind"], r["step"]) for r in kept] == [("stage", 0), ("step", 1), ("step", 2), ("eval", 2),
                                                      ("rollback", 4)]


def test_truncate_drops_garbage_and_writes_standard_json(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_bytes(b'{"kind": "step", "step": 1, "loss": NaN}\nxx\n')
    with pytest.warns(UserWarning, match="line 2"):
        MetricsWriter.truncate(path, 5, 0)
    assert path.read_text() == '{"kind": "step", "step": 1, "loss": null, "nonfinite": {"loss": "nan"}}\n'
