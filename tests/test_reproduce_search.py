"""benchmarks/reproduce: the LR search that walks a ×2 ladder until its best rung is bracketed,
the task scheduler that runs the reproduction's tasks in parallel processes, and the task list
(seeds after each method's search, evaluations last)."""

import importlib
import sys
from pathlib import Path
from types import SimpleNamespace as NS

import pytest

REPRO = Path(__file__).resolve().parents[1] / "benchmarks" / "reproduce"
MODULES = ("methods", "search", "tasks", "pipeline", "run")


@pytest.fixture(scope="module")
def mods():
    sys.path.insert(0, str(REPRO))
    try:
        yield NS(**{m: importlib.import_module(m) for m in MODULES})
    finally:
        sys.path.remove(str(REPRO))
        for m in (*MODULES, "spread", "claims"):
            sys.modules.pop(m, None)


def _walk(search, loss_of, low=-4, high=4):
    """The rungs the search runs, in order, for a loss curve over rungs."""
    losses, order = {}, []
    while (k := search.next_rung(losses, low, high)) is not None:
        assert k not in losses and low <= k <= high
        order.append(k)
        losses[k] = loss_of(k)
    return order, losses


@pytest.mark.parametrize("optimum, runs", [(0, 3), (1, 3), (2, 4), (-1, 4), (-3, 6), (4, 5)])
def test_search_brackets_the_optimum_in_few_runs(mods, optimum, runs):
    order, losses = _walk(mods.search, lambda k: (k - optimum) ** 2 + 5.0)
    assert mods.search.best_rung(losses) == optimum
    assert len(order) == runs and order[:2] == [0, 1]
    expected_edge = "high" if optimum == 4 else None
    assert mods.search.edge(losses) == expected_edge
    assert mods.search.margin(losses) == 1.0  # the closest tried neighbour's excess


def test_search_stops_at_the_ladders_end_and_says_so(mods):
    order, losses = _walk(mods.search, lambda k: -k, low=-2, high=2)  # higher is always better
    assert order == [0, 1, 2] and mods.search.edge(losses, -2, 2) == "high"
    order, losses = _walk(mods.search, lambda k: k, low=-2, high=2)
    assert order == [0, 1, -1, -2] and mods.search.edge(losses, -2, 2) == "low"


def test_a_diverged_rung_counts_as_worse_than_any_finished_one(mods):
    order, losses = _walk(mods.search, lambda k: None if k >= 1 else 5.0 - 0.1 * k)
    assert order == [0, 1, -1] and mods.search.best_rung(losses) == 0
    assert mods.search.edge(losses) is None and mods.search.margin(losses) == pytest.approx(0.1)
    assert mods.search.edge({0: None, 1: None}) == "unfinished"
    assert mods.search.edge({0: 5.0, 1: 5.1}) == "unfinished"  # rung -1 not run yet


def test_finished_losses_read_a_sweep_summary(mods):
    summary = {"variants": [
        {"overrides": ["stage.2.lr=0.006"], "status": "complete", "final_val_loss": 4.2},
        {"overrides": ["stage.2.lr=0.012"], "status": "failed", "final_val_loss": None},
        {"overrides": ["stage.2.lr=0.003"], "status": "in progress", "final_val_loss": 4.5},
        {"overrides": ["stage.2.lr=0.0015"], "status": "pending"}]}
    assert mods.search.finished_losses(summary, "stage.2.lr", 6e-3) == {0: 4.2, 1: None}


def test_ladder_values_round_trip_to_their_rungs(mods):
    scale = mods.methods.SCALES["chinchilla"]
    low, high = scale.ladder
    values = [mods.methods.lr_value(scale, k) for k in range(low, high + 1)]
    assert len(set(values)) == len(values)
    assert [mods.search.rung_of(v, scale.lr) for v in values] == list(range(low, high + 1))


# ---------------------------------------------------------------- the task list

def test_tasks_run_seeds_after_each_search_and_evaluations_last(mods, tmp_path):
    scale = mods.methods.SCALES["chinchilla"]
    ctx = mods.pipeline.Context(scale, tmp_path, tmp_path)
    everything = [m.name for m in mods.methods.METHODS]
    lent = [m.name for m in mods.methods.METHODS if m.family == "operators"]
    names = [n for n in everything if n not in lent]
    tasks = mods.run.build_tasks(ctx, everything, ["child"])
    mods.tasks.check_graph(tasks)
    by = {t.name: t for t in tasks}
    for m in names:
        for k in range(2, scale.seeds + 1):
            assert by[f"seed{k}:{m}"].after == (f"search:{m}",)
        assert set(by[f"eval:{m}"].after) == {f"search:{m}", "seed2:" + m, "seed3:" + m}
        assert set(by[f"search:{m}"].after) == {f"centre:{n}" for n in names}
        assert by[f"eval:{m}"].args == ["child", "--task", f"eval:{m}"]
    # the operator family at gstack's LR: one run after gstack's search, no centre and no seeds
    assert len(lent) == 7
    for m in lent:
        assert by[f"search:{m}"].after == ("search:gstack",)
        assert by[f"eval:{m}"].after == (f"search:{m}",)
        assert not {f"centre:{m}", f"seed2:{m}"} & set(by)
    side = [t.name for t in tasks if t.name.startswith("side:")]
    assert len(side) == 2 * scale.seeds
    assert by["side:one-layer:seed1"].after == ("prepare-side", "centre:reuse-one-layer-attn")
    order = [t.name for t in tasks]
    assert max(order.index(f"centre:{m}") for m in names) < min(order.index(f"search:{m}") for m in names)
    # without the One Layer reuse there is no side run; without seeds no seed tasks
    few = mods.run.build_tasks(ctx, ["standard", "gstack"], [])
    assert not [t for t in few if t.name.startswith(("side", "prepare-side"))]
    one = mods.run.build_tasks(mods.pipeline.Context(mods.methods.SCALES["cpu"], tmp_path, tmp_path),
                               ["standard"], [])
    assert [t.name for t in one] == ["centre:standard", "search:standard", "eval:standard"]


def test_seed_runs_repeat_the_searchs_best_lr(mods, tmp_path, monkeypatch):
    import json

    scale = mods.methods.SCALES["smoke"]
    ctx = mods.pipeline.Context(scale, tmp_path, tmp_path)
    sweep = ctx.sweep_dir("gstack")
    sweep.mkdir(parents=True)
    (sweep / "sweep.json").write_text(json.dumps({"variants": [
        {"name": "optim.lr=0.003", "overrides": ["optim.lr=0.003"], "status": "complete"},
        {"name": "optim.lr=0.006", "overrides": ["optim.lr=0.006"], "status": "complete"}],
        "best": "optim.lr=0.006"}))
    calls = []
    monkeypatch.setattr(mods.pipeline, "method_text", lambda ctx, m, lr_s1: ("recipe", {}))
    import growlm.sweep

    monkeypatch.setattr(growlm.sweep, "run_sweep", lambda recipe, sets, out, **kw: calls.append((sets, out)))
    mods.pipeline.task_seed(ctx, mods.methods.method("gstack"), 2)
    assert calls == [(["optim.lr=0.006", "run.seed=2"], ctx.sweep_dir("gstack-seed2"))]
    dirs = mods.pipeline.seed_dirs(ctx, mods.methods.method("gstack"))
    assert dirs == [sweep / "optim.lr=0.006", None]  # seed 2 has not finished


def test_a_borrowed_lr_runs_once_at_the_lenders_best(mods, tmp_path, monkeypatch):
    import json

    scale = mods.methods.SCALES["chinchilla"]
    ctx = mods.pipeline.Context(scale, tmp_path, tmp_path)
    (tmp_path / "sweeps" / "gstack").mkdir(parents=True)
    (tmp_path / "sweeps" / "gstack" / "sweep.json").write_text(json.dumps({"variants": [
        {"name": "optim.lr=0.012", "overrides": ["optim.lr=0.012"], "status": "complete"}],
        "best": "optim.lr=0.012"}))
    calls = []
    monkeypatch.setattr(mods.pipeline, "method_text", lambda ctx, m, lr_s1: ("recipe", {}))
    import growlm.sweep

    monkeypatch.setattr(growlm.sweep, "run_sweep",
                        lambda recipe, sets, out, **kw: calls.append((sets, out, kw["only"])))
    op = mods.methods.method("ops-width-learn")
    mods.pipeline.task_search(ctx, op)
    (sets, out, only), = calls
    assert out == ctx.sweep_dir("ops-width-learn") and sets == [f"optim.lr={','.join(ctx.ladder())}"]
    # the lender's rung of the ladder, so that the run reads back as a search's rung does
    chosen, = (v for v in growlm.sweep.variants([("optim.lr", ctx.ladder())]) if v["name"] in only)
    assert chosen["overrides"] == ["optim.lr=0.012"]
    assert mods.pipeline.seed_dirs(ctx, op) == [None]  # one seed, not run yet


# ---------------------------------------------------------------- the scheduler

def _task(mods, name, code, after=()):
    return mods.tasks.Task(name, after, [sys.executable, "-c", code])


def test_scheduler_respects_dependencies_and_records_cpu(mods, tmp_path):
    marks = tmp_path / "order.txt"
    write = f"open({str(marks)!r}, 'a').write('{{}}\\n')"
    tasks = [_task(mods, "a", write.format("a")), _task(mods, "b", write.format("b")),
             _task(mods, "c", write.format("c"), after=("a", "b"))]
    progress = mods.tasks.Progress(tmp_path / "progress.json")
    said = []
    assert mods.tasks.run_tasks(tasks, 2, tmp_path / "logs", progress, said.append, 0.01) == 0
    assert marks.read_text().splitlines()[-1] == "c"
    assert {n: t["status"] for n, t in progress.data["tasks"].items()} == {
        "a": "done", "b": "done", "c": "done"}
    assert all(t["cpu_s"] >= 0 for t in progress.data["tasks"].values())
    assert (tmp_path / "logs" / "c.log").is_file()


def test_scheduler_stops_after_a_failure(mods, tmp_path):
    tasks = [_task(mods, "bad", "import sys; print('boom'); sys.exit(2)"),
             _task(mods, "later", "pass", after=("bad",))]
    progress = mods.tasks.Progress(tmp_path / "progress.json")
    said = []
    assert mods.tasks.run_tasks(tasks, 2, tmp_path / "logs", progress, said.append, 0.01) == 2
    assert "later" not in progress.data["tasks"]
    assert any("bad failed (exit 2)" in s for s in said) and any("boom" in s for s in said)


def test_task_graph_must_name_earlier_tasks(mods):
    with pytest.raises(ValueError, match="depends on b"):
        mods.tasks.check_graph([mods.tasks.Task("a", ("b",)), mods.tasks.Task("b")])
