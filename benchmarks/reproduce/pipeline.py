"""The reproduction's tasks and where each keeps its runs; `outcome` reads them back for the report.

Folders under the work folder (every one resumable):
  sweeps/<method>-stage1/     reuse methods: the small model's LR search (Lee et al. keep the
                              lowest validation loss)
  sweeps/<method>/            the method's LR search (search.py), seed 1
  sweeps/<method>-seed<k>/run the best LR again with run.seed = k (k = 2 … scale.seeds)
                              (a method that borrows another's best LR, methods.lr_source: one
                              run at that LR in sweeps/<method>/, and no seeds)
  side/shards, sweeps/wordsim-<model>-seed<k>/run
                              claim (a) on the side vocabulary (methods.WordSimSide)
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import methods as M
import search as S

CORPUS = "corpus/enwiki_2015_wikiextractor"
TASKS = "wikitext,lambada,hellaswag,piqa,arc_easy,arc_challenge,openbookqa,winogrande,wordsim"
SIDE_MODELS = {"standard": "standard", "one-layer": "reuse-one-layer-attn"}  # side → main method


@dataclass
class Context:
    scale: M.Scale
    data_dir: Path
    work: Path
    log: object = print

    @property
    def shards(self) -> Path:
        return self.work / "shards"

    @property
    def side_shards(self) -> Path:
        return self.work / "side" / "shards"

    def sweep_dir(self, name: str) -> Path:
        return self.work / "sweeps" / name

    def target(self) -> int:
        return M.baseline_flops(self.scale, self.shards)

    def ladder(self) -> list[str]:
        low, high = self.scale.ladder
        return [M.lr_value(self.scale, k) for k in range(low, high + 1)]

    def recipe(self, name: str, text: str) -> Path:
        path = self.work / "recipes" / f"{name}.toml"
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.is_file() or path.read_text() != text:
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(text)
            tmp.replace(path)
        return path


# ---------------------------------------------------------------- data

def prepare_main(ctx: Context) -> None:
    from growlm.data import prepare

    corpus = ctx.data_dir / CORPUS
    shards = prepare(ctx.shards, [corpus / "train.jsonl.gz"],
                     val_inputs=[corpus / "validation.jsonl.gz"], train_vocab=ctx.scale.vocab,
                     progress=False, log=ctx.log, **ctx.scale.prepare)
    ctx.log(f"shards: {shards.num_tokens('train'):,} train / {shards.num_tokens('val'):,} val "
            f"tokens, vocab {shards.vocab_size}")


def prepare_side(ctx: Context) -> None:
    from growlm.data import prepare

    side = ctx.scale.wordsim_side
    corpus = ctx.data_dir / CORPUS
    need = side.steps * ctx.scale.batch_tokens
    prepare(ctx.side_shards, [corpus / "train.jsonl.gz"], val_inputs=[corpus / "validation.jsonl.gz"],
            tokenizer=ctx.data_dir / side.tokenizer, max_tokens=2 * need + 100_000, progress=False,
            log=ctx.log)


# ---------------------------------------------------------------- LR searches and seeds

def _search(ctx: Context, name: str, text: str, key: str, max_runs: int | None = None) -> dict:
    values = ctx.ladder()
    return S.run_search(ctx.recipe(name, text), key, values, ctx.sweep_dir(name), ctx.scale.lr,
                        ctx.log, max_runs, ctx.scale.ladder[0])


def best_value(summary: dict, key: str) -> str | None:
    best = next((v for v in summary.get("variants", []) if v["name"] == summary.get("best")), None)
    if best is None:
        return None
    return next(o.split("=", 1)[1] for o in best["overrides"] if o.startswith(key + "="))


def stage1_lr(ctx: Context, m: M.Method, run: bool) -> str | None:
    """The reuse method's stage-1 LR: its small model's search, run to the end when `run`."""
    if m.small is None:
        return None
    name = f"{m.name}-stage1"
    if not run:
        return best_value(S.read_summary(ctx.sweep_dir(name)), "optim.lr")
    best = best_value(_search(ctx, name, M.stage1_recipe(m, ctx.scale, ctx.shards), "optim.lr"),
                      "optim.lr")
    if best is None:
        raise RuntimeError(f"{name}: every LR of the small model's search diverged")
    return best


def method_text(ctx: Context, m: M.Method, lr_s1: str | None) -> tuple[str, dict]:
    return M.method_recipe(m, ctx.scale, ctx.shards, ctx.target(), lr_s1)


def task_centre(ctx: Context, m: M.Method) -> None:
    """The reuse stage-1 search, then the method's run at lr0: every method gets one run early."""
    lr_s1 = stage1_lr(ctx, m, run=True)
    text, _ = method_text(ctx, m, lr_s1)
    _search(ctx, m.name, text, m.sweep_key, max_runs=1)


def task_search(ctx: Context, m: M.Method) -> None:
    """The method's LR search; for a method that borrows another's LR, its one run at that LR."""
    from growlm.sweep import run_sweep, variants

    text, _ = method_text(ctx, m, stage1_lr(ctx, m, run=False))
    source = M.lr_source(m, ctx.scale)
    if source is None:
        _search(ctx, m.name, text, m.sweep_key)
        return
    lr = best_value(S.read_summary(ctx.sweep_dir(source)), M.method(source).sweep_key)
    if lr is None:
        raise RuntimeError(f"{m.name}: {source} has no best LR to run at")
    # that rung of the ladder sweep, so that the run is recorded as a search's runs are
    values = ctx.ladder()
    rung = S.rung_of(lr, ctx.scale.lr) - ctx.scale.ladder[0]
    grid = variants([(m.sweep_key, values)])
    run_sweep(ctx.recipe(m.name, text), [f"{m.sweep_key}={','.join(values)}"], ctx.sweep_dir(m.name),
              quiet=True, log=ctx.log, only=[grid[rung]["name"]])


def task_seed(ctx: Context, m: M.Method, seed: int) -> None:
    from growlm.sweep import run_sweep

    key = m.sweep_key
    best = best_value(S.read_summary(ctx.sweep_dir(m.name)), key)
    if best is None:
        raise RuntimeError(f"{m.name}: no finished LR to repeat with seed {seed}")
    text, _ = method_text(ctx, m, stage1_lr(ctx, m, run=False))
    name = f"{m.name}-seed{seed}"
    run_sweep(ctx.recipe(name, text), [f"{key}={best}", f"run.seed={seed}"], ctx.sweep_dir(name),
              quiet=True, log=ctx.log)


def seed_dirs(ctx: Context, m: M.Method) -> list[Path | None]:
    """Run folders of seeds 1 … n of the method's best LR (None: not run yet)."""
    summary = S.read_summary(ctx.sweep_dir(m.name))
    first = ctx.sweep_dir(m.name) / summary["best"] if summary.get("best") else None
    rest = [ctx.sweep_dir(f"{m.name}-seed{k}") / "run" for k in range(2, M.seed_count(m, ctx.scale) + 1)]
    return [first, *(d if _complete(d) else None for d in rest)]


def _complete(run_dir: Path) -> bool:
    entry = S.read_summary(run_dir.parent)
    return any(v["name"] == run_dir.name and v.get("status") == "complete"
               for v in entry.get("variants", []))


# ---------------------------------------------------------------- evaluation

def evaluate(ctx: Context, run_dir: Path, tasks: str) -> None:
    from growlm.cli import main as growlm

    if (run_dir / "eval.json").is_file():
        return
    rc = growlm(["eval", str(run_dir), "--tasks", tasks, "--data-dir", str(ctx.data_dir),
                 "--limit", str(ctx.scale.eval_limit), "--json", str(run_dir / "eval.json"),
                 "--quiet", "--batch-size", "32"])
    if rc != 0:
        raise RuntimeError(f"evaluation of {run_dir} failed (exit {rc})")


def task_evaluate(ctx: Context, m: M.Method) -> None:
    """The seeds' benchmarks on seed 1; word similarity (cheap: no forward pass) on every seed,
    for claim (a)'s spread."""
    dirs = seed_dirs(ctx, m)
    if dirs[0] is not None:
        evaluate(ctx, dirs[0], TASKS)
    for d in dirs[1:]:
        if d is not None:
            evaluate(ctx, d, "wordsim")


# ---------------------------------------------------------------- claim (a) on the side vocabulary

def side_lr(ctx: Context, which: str) -> str | None:
    m = M.method(SIDE_MODELS[which])
    if m.small is not None:
        return stage1_lr(ctx, m, run=False)
    return best_value(S.read_summary(ctx.sweep_dir(m.name)), m.sweep_key)


def side_dir(ctx: Context, which: str, seed: int) -> Path:
    return ctx.sweep_dir(f"wordsim-{which}-seed{seed}") / "run"


def task_side(ctx: Context, which: str, seed: int) -> None:
    from growlm.sweep import run_sweep

    lr = side_lr(ctx, which)
    if lr is None:
        raise RuntimeError(f"claim (a) side run: no best LR for {SIDE_MODELS[which]} yet")
    text = M.wordsim_side_recipes(ctx.scale, ctx.side_shards)[which]
    name = f"wordsim-{which}-seed{seed}"
    run_sweep(ctx.recipe(name, text), [f"optim.lr={lr}", f"run.seed={seed}"], ctx.sweep_dir(name),
              quiet=True, log=ctx.log)
    evaluate(ctx, side_dir(ctx, which, seed), "wordsim")


# ---------------------------------------------------------------- reading it back

def outcome(ctx: Context, m: M.Method) -> dict:
    """What the report needs of a method: its searches, best LR, stages and seed runs."""
    source = M.lr_source(m, ctx.scale)
    out: dict = {"method": m.name, "family": m.family, "sweeps": [], "lr_source": source,
                 "seeds": M.seed_count(m, ctx.scale)}
    lr_s1 = None
    if m.small is not None:
        s1 = S.read_summary(ctx.sweep_dir(f"{m.name}-stage1"))
        lr_s1 = best_value(s1, "optim.lr")
        out["sweeps"].append(_sweep_record("stage 1 (small model alone)", "optim.lr", s1, ctx))
    summary = S.read_summary(ctx.sweep_dir(m.name))
    record = _sweep_record("full run", m.sweep_key, summary, ctx)
    if source is not None:  # not a search: no bracket to report
        record.update(edge="borrowed", margin=None, source=source)
    out["sweeps"].append(record)
    _, out["stages"] = method_text(ctx, m, lr_s1)
    out["lr_s1"] = lr_s1
    out["best_lr"] = best_value(summary, m.sweep_key)
    out["seed_dirs"] = [str(d) if d else None for d in seed_dirs(ctx, m)]
    out["best_dir"] = out["seed_dirs"][0]
    return out


def _sweep_record(what: str, key: str, summary: dict, ctx: Context) -> dict:
    low, high = ctx.scale.ladder
    losses = S.finished_losses(summary, key, ctx.scale.lr)
    return {"what": what, "key": key, "variants": [v for v in summary.get("variants", [])
                                                   if v.get("status") != "pending"],
            "best": summary.get("best"), "edge": S.edge(losses, low, high),
            "margin": S.margin(losses),
            "rungs": {str(k): v for k, v in sorted(losses.items())}}


def side_outcome(ctx: Context) -> dict | None:
    side = ctx.scale.wordsim_side
    if side is None:
        return None
    out = {"tokenizer": side.tokenizer, "vocab": side.vocab, "steps": side.steps, "runs": {}}
    for which in SIDE_MODELS:
        out["runs"][which] = []
        for seed in range(1, ctx.scale.seeds + 1):
            path = side_dir(ctx, which, seed) / "eval.json"
            if path.is_file():
                data = json.loads(path.read_text())
                out["runs"][which].append(data.get("results", data).get("wordsim"))
    return out
