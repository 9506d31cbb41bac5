"""The misuse sweep's cases for plan, eval, export, compare, data prepare/verify/info, sft,
generate, demo and the command line itself."""

from __future__ import annotations

import gzip
import json
import shutil
import subprocess
from pathlib import Path

from misuse_workspace import Case, Launch, Workspace, edit_json, newest


def write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def blocker(t: Path) -> Path:
    """A regular file where a folder is expected."""
    return write(t / "file", "x")


def _append(path: Path, data: bytes) -> None:
    path.write_bytes(path.read_bytes() + data)


def copy(src: Path, dest: Path) -> Path:
    return Path(shutil.copytree(src, dest))


def hf_copy(damage):
    def setup(ws: Workspace, t: Path) -> Launch:
        folder = copy(ws.hf, t / "hf")
        damage(folder)
        return Launch(["export", str(folder), str(t / "out")])
    return setup


# ---------------------------------------------------------------- plan

def plan(*args: str, **launch):
    return lambda ws, t: Launch(["plan", *[a.replace("{t}", str(t)) for a in args]], **launch)


def plan_recipe(*args: str, **launch):
    return lambda ws, t: Launch(["plan", ws.recipe(t), *[a.replace("{t}", str(t)) for a in args]], **launch)


STEP = ("step", "--layers", "8", "--d-model", "64")
PLAN_CASES = [
    Case("plan/recipe-missing", plan("{t}/nope.toml")),
    Case("plan/no-target", plan()),
    Case("plan/step-layers-zero", plan("step", "--layers", "0", "--d-model", "64")),
    Case("plan/step-layers-negative", plan("step", "--layers", "-4", "--d-model", "64")),
    Case("plan/step-stages-zero", plan(*STEP, "--stages", "0")),
    Case("plan/step-more-stages-than-layers", plan(*STEP, "--stages", "12")),
    Case("plan/step-d-model-zero", plan("step", "--layers", "8", "--d-model", "0")),
    Case("plan/step-heads-not-dividing", plan(*STEP, "--n-heads", "3")),
    Case("plan/step-kv-heads-not-dividing", plan(*STEP, "--n-heads", "4", "--n-kv-heads", "3")),
    Case("plan/step-vocab-zero", plan(*STEP, "--vocab", "0")),
    Case("plan/step-adapter-rank-negative", plan(*STEP, "--adapter-rank", "-8")),
    Case("plan/step-budget-words", plan(*STEP, "--budget", "lots")),
    Case("plan/step-budget-negative", plan(*STEP, "--budget", "-1GiB")),
    Case("plan/step-budget-too-small", plan(*STEP, "--budget", "1KiB")),
    Case("plan/step-seq-len-zero", plan(*STEP, "--write-recipe", "{t}/r.toml", "--seq-len", "0")),
    Case("plan/step-tokens-words", plan(*STEP, "--write-recipe", "{t}/r.toml", "--tokens", "many")),
    Case("plan/step-write-recipe-under-a-file", lambda ws, t: ["plan", *STEP, "--write-recipe", str(blocker(t) / "r.toml")]),
    Case("plan/step-write-recipe-is-a-folder", plan(*STEP, "--write-recipe", "{t}")),
    Case("plan/gstack-tokens-words", plan("gstack", "--params", "7B", "--tokens", "lots")),
    Case("plan/gstack-params-zero", plan("gstack", "--params", "0", "--tokens", "1B")),
    Case("plan/gstack-flops-negative", plan("gstack", "--params", "1B", "--tokens", "1B", "--flops", "-1e20")),
    Case("plan/gstack-flops-nan", plan("gstack", "--params", "1B", "--tokens", "1B", "--flops", "nan")),
    Case("plan/out-under-a-file", lambda ws, t: ["plan", ws.recipe(t), "--out", str(blocker(t) / "plan")]),
    Case("plan/out-is-a-file", lambda ws, t: ["plan", ws.recipe(t), "--out", str(blocker(t))]),
    Case("plan/set-nan", plan_recipe("--set", "optim.lr=nan")),
    Case("plan/out-empty", plan_recipe("--out", "")),
    Case("plan/step-write-recipe-empty", plan(*STEP, "--write-recipe", "")),
    Case("plan/file-size-limit", plan_recipe("--out", "{t}/plan", fsize=2000, writes=True,
                                             match="File too large")),
]


# ---------------------------------------------------------------- eval

def evaluate(*args: str, source: str = "run", **launch):
    def setup(ws: Workspace, t: Path) -> Launch:
        model = {"run": ws.run, "hf": ws.hf}[source]
        return Launch(["eval", str(model), "--quiet", *[a.replace("{t}", str(t)).replace("{shards}", str(ws.shards))
                                                        .replace("{other}", str(ws.other))
                                                        .replace("{big}", str(ws.big)) for a in args]], **launch)
    return setup


PPL = ("--tasks", "ppl", "--val-shards", "{shards}")
EVAL_CASES = [
    Case("eval/seq-len-beyond-model", evaluate(*PPL, "--seq-len", "4096")),
    Case("eval/stride-longer-than-window", evaluate(*PPL, "--seq-len", "32", "--stride", "1000")),
    Case("eval/limit-negative", evaluate(*PPL, "--limit", "-1")),
    Case("eval/tokenizer-missing", evaluate(*PPL, "--tokenizer", "{t}/nope.json")),
    Case("eval/tokenizer-garbage", lambda ws, t: ["eval", str(ws.run), "--quiet", *PPL[:2], "--val-shards",
                                                   str(ws.shards), "--tokenizer", str(write(t / "tok.json", "{"))]),
    Case("eval/tokenizer-larger-than-model", evaluate(*PPL, "--tokenizer", "{big}/tokenizer.json")),
    Case("eval/val-shards-missing", evaluate("--tasks", "ppl", "--val-shards", "{t}/nope")),
    Case("eval/val-shards-of-another-tokenizer", evaluate("--tasks", "ppl", "--val-shards", "{other}")),
    Case("eval/val-shards-beyond-the-vocab", evaluate("--tasks", "ppl", "--val-shards", "{big}")),
    Case("eval/data-dir-missing", evaluate("--tasks", "wikitext", "--data-dir", "{t}/nope")),
    Case("eval/json-under-a-file", lambda ws, t: ["eval", str(ws.run), "--quiet", *PPL[:2], "--val-shards",
                                                   str(ws.shards), "--json", str(blocker(t) / "e.json")]),
    Case("eval/json-is-a-folder", evaluate(*PPL, "--json", "{t}")),
    Case("eval/shards-as-model", lambda ws, t: ["eval", str(ws.shards), "--quiet", "--tasks", "ppl"]),
    Case("eval/empty-folder-as-model", lambda ws, t: ["eval", str(t), "--quiet", *PPL[:2], "--val-shards", str(ws.shards)]),
    Case("eval/run-without-checkpoints", lambda ws, t: _run_without_checkpoints(ws, t, "eval")),
    Case("eval/compare-one-model", lambda ws, t: ["eval", "compare-embeddings", str(ws.run)]),
    Case("eval/compare-k-beyond-vocab", lambda ws, t: ["eval", "compare-embeddings", str(ws.run), str(ws.hf),
                                                       "--k", "100000"]),
    Case("eval/compare-with-shards", lambda ws, t: ["eval", "compare-embeddings", str(ws.run), str(ws.shards)]),
    Case("eval/device-cuda", evaluate(*PPL, "--device", "cuda")),
    Case("eval/tasks-empty", evaluate("--tasks", "")),
    Case("eval/stride-without-wikitext", evaluate(*PPL, "--stride", "16")),
    Case("eval/val-shards-empty", evaluate("--tasks", "ppl", "--val-shards", "")),
    Case("eval/json-empty", evaluate(*PPL, "--json", "")),
    Case("eval/option-abbreviated", evaluate("--tasks", "ppl", "--val-sh", "{shards}")),
    Case("eval/file-size-limit-on-json", evaluate(*PPL, "--json", "{t}/e.json", fsize=20, writes=True,
                                                  match="File too large")),
]


def _run_without_checkpoints(ws: Workspace, t: Path, command: str) -> list[str]:
    run = copy(ws.run, t / "run")
    shutil.rmtree(run / "checkpoints")
    if command == "eval":
        return ["eval", str(run), "--quiet", "--tasks", "ppl", "--val-shards", str(ws.shards)]
    return [command, str(run), str(t / "out")]


# ---------------------------------------------------------------- export

def _export_onto(target):
    """export --overwrite whose output is the source itself (or inside it): the source must survive."""
    def setup(ws: Workspace, t: Path) -> Launch:
        run, hf = copy(ws.run, t / "run"), copy(ws.hf, t / "hf")
        src, out, kind = target(run, hf)
        return Launch(["export", str(src), str(out), "--overwrite"], protect=[(kind, src)])
    return setup


def _leftover_then_export(ws: Workspace, t: Path) -> Launch:
    tmp = write(t / ".out.growlm-export-tmp" / "model.safetensors", b"partial").parent

    def after(folder, result, handle):
        return [] if not tmp.exists() and (t / "out" / "config.json").is_file() else ["the killed export's folder is still there"]
    return Launch(["export", str(ws.run), str(t / "out")], expect="ok", after=after, protect=[("hf", t / "out")])


def _bad_tokenizer_in_run(ws: Workspace, t: Path) -> list[str]:
    run = copy(ws.run, t / "run")
    from misuse_workspace import rehash

    c = newest(run)
    (c / "tokenizer.json").write_text('{"model": 5}')
    rehash(c)
    return ["export", str(run), str(t / "out")]


EXPORT_CASES = [
    Case("export/onto-its-own-source", _export_onto(lambda run, hf: (hf, hf, "hf"))),
    Case("export/onto-the-runs-checkpoints", _export_onto(lambda run, hf: (run, run / "checkpoints", "run"))),
    Case("export/onto-the-run-folder", _export_onto(lambda run, hf: (run, run, "run"))),
    Case("export/onto-the-folder-above", _export_onto(lambda run, hf: (hf, hf.parent, "hf"))),
    Case("export/out-under-a-file", lambda ws, t: ["export", str(ws.run), str(blocker(t) / "out")]),
    Case("export/out-is-a-file", lambda ws, t: ["export", str(ws.run), str(blocker(t))]),
    Case("export/overwrite-abbreviated", lambda ws, t: ["export", str(ws.run), str(copy(ws.hf, t / "hf")), "--over"]),
    Case("export/out-empty", lambda ws, t: ["export", str(ws.run), ""]),
    Case("export/out-is-a-file-overwrite", lambda ws, t: ["export", str(ws.run), str(blocker(t)), "--overwrite"]),
    Case("export/source-is-shards", lambda ws, t: ["export", str(ws.shards), str(t / "out")]),
    Case("export/source-empty-folder", lambda ws, t: ["export", str((t / "e").mkdir() or t / "e"), str(t / "out")]),
    Case("export/source-is-a-json-file", lambda ws, t: ["export", str(ws.tokenizer), str(t / "out")]),
    Case("export/source-is-a-safetensors-file", lambda ws, t: ["export", str(ws.hf / "model.safetensors"), str(t / "out")]),
    Case("export/run-without-checkpoints", lambda ws, t: _run_without_checkpoints(ws, t, "export")),
    Case("export/config-heads-zero", hf_copy(lambda f: edit_json(f / "config.json", num_attention_heads=0))),
    Case("export/config-hidden-null", hf_copy(lambda f: edit_json(f / "config.json", hidden_size=None))),
    Case("export/config-a-list", hf_copy(lambda f: (f / "config.json").write_text("[1, 2]"))),
    Case("export/config-not-utf8", hf_copy(lambda f: (f / "config.json").write_bytes(b"\xff\xfe{}"))),
    Case("export/config-layers-string", hf_copy(lambda f: edit_json(f / "config.json", num_hidden_layers="2"))),
    Case("export/config-rope-theta-negative", hf_copy(lambda f: edit_json(f / "config.json", rope_theta=-1))),
    Case("export/config-vocab-smaller-than-weights", hf_copy(lambda f: edit_json(f / "config.json", vocab_size=100))),
    Case("export/tokenizer-malformed-in-hf", hf_copy(lambda f: (f / "tokenizer.json").write_text('{"model": 5}'))),
    Case("export/tokenizer-malformed-in-run", _bad_tokenizer_in_run),
    Case("export/killed-export-leftover-then-rerun", _leftover_then_export),
    Case("export/file-size-limit", lambda ws, t: Launch(["export", str(ws.run), str(t / "out")], fsize=8000,
                                                        writes=True, match="File too large")),
    Case("export/tmpfs-full", lambda ws, t: _on_tmpfs(t, 64 * 1024, ["export", str(ws.run), "{disk}/out"])),
]


def _on_tmpfs(t: Path, size: int, argv: list[str], **launch) -> Launch:
    disk = t / "disk"
    disk.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)], check=True)

    def after(folder, result, handle):
        left = sorted(p.name for p in disk.rglob("*"))
        subprocess.run(["umount", str(disk)], check=False)
        return [f"left on the full disk: {', '.join(left[:3])}"] if left else []
    return Launch([a.replace("{disk}", str(disk)) for a in argv], writes=True, match="No space left", after=after,
                  **launch)


# ---------------------------------------------------------------- compare

def compare(*args: str, damage=None, **launch):
    def setup(ws: Workspace, t: Path) -> Launch:
        run = ws.run
        if damage is not None:
            run = copy(ws.run, t / "run")
            damage(run)
        return Launch(["compare", str(run), "--baseline", str(ws.run), "--out", str(t / "report"),
                       *[a.replace("{t}", str(t)) for a in args]], **launch)
    return setup


COMPARE_CASES = [
    Case("compare/baseline-is-shards", lambda ws, t: ["compare", str(ws.run), "--baseline", str(ws.shards),
                                                      "--out", str(t / "report")]),
    Case("compare/baseline-empty-folder", lambda ws, t: ["compare", str(ws.run), "--baseline", str(t),
                                                         "--out", str(t / "report")]),
    Case("compare/run-missing", lambda ws, t: ["compare", str(t / "nope"), "--baseline", str(ws.run),
                                               "--out", str(t / "report")]),
    Case("compare/out-under-a-file", lambda ws, t: ["compare", str(ws.run), "--baseline", str(ws.run),
                                                    "--out", str(blocker(t) / "report")]),
    Case("compare/out-is-a-file", lambda ws, t: ["compare", str(ws.run), "--baseline", str(ws.run),
                                                 "--out", str(blocker(t))]),
    Case("compare/format-gif", compare("--format", "gif")),
    Case("compare/format-empty", compare("--format", "")),
    Case("compare/neighbours-zero", compare("--neighbours", "0")),
    Case("compare/neighbours-beyond-vocab", lambda ws, t: ["compare", str(ws.sweep / "optim.lr=1e-3"), "--baseline",
                                                           str(ws.run), "--out", str(t / "report"), "--neighbours", "300"]),
    Case("compare/out-empty", (lambda ws, t: ["compare", str(ws.run), "--baseline", str(ws.run),
                                                                      "--out", ""])),
    Case("compare/json-empty", compare("--json", "")),
    Case("compare/json-is-a-folder", compare("--json", "{t}")),
    Case("compare/json-under-a-file", lambda ws, t: ["compare", str(ws.run), "--baseline", str(ws.run), "--out",
                                                     str(t / "report"), "--json", str(blocker(t) / "c.json")]),
    Case("compare/metrics-empty", compare(damage=lambda r: (r / "metrics.jsonl").write_text(""))),
    Case("compare/metrics-all-garbage", compare(damage=lambda r: (r / "metrics.jsonl").write_bytes(b"\xff\n{\n[1]\n"))),
    Case("compare/metrics-not-utf8-line", compare(damage=lambda r: _append(r / "metrics.jsonl", b"\xff\xfe\n"),
                                                  expect="warn", match=r"metrics\.jsonl.*unreadable line")),
    Case("compare/run-json-garbled", compare(damage=lambda r: (r / "run.json").write_text("{"))),
    Case("compare/metrics-is-a-folder", compare(damage=lambda r: ((r / "metrics.jsonl").unlink(),
                                                                  (r / "metrics.jsonl").mkdir()))),
    Case("compare/file-size-limit", compare(fsize=3000, writes=True, match="File too large")),
]


# ---------------------------------------------------------------- data prepare / verify / info

def prepare(*args: str, inputs=None, **launch):
    def setup(ws: Workspace, t: Path) -> Launch:
        given = inputs(ws, t) if inputs else [str(ws.docs)]
        return Launch(["data", "prepare", str(t / "out"), *given, "--quiet",
                       *[a.replace("{t}", str(t)).replace("{tok}", str(ws.tokenizer)) for a in
                         (args or ("--tokenizer", "{tok}"))]], **launch)
    return setup


def jsonl(*rows, name: str = "in.jsonl", raw: bytes | None = None):
    def inputs(ws: Workspace, t: Path) -> list[str]:
        data = raw if raw is not None else "".join(json.dumps(r) + "\n" for r in rows).encode()
        return [str(write(t / name, data))]
    return inputs


TOK = ("--tokenizer", "{tok}")
DATA_CASES = [
    Case("data/out-is-a-file", lambda ws, t: ["data", "prepare", str(blocker(t)), str(ws.docs), "--quiet",
                                              "--tokenizer", str(ws.tokenizer)]),
    Case("data/out-under-a-file", lambda ws, t: ["data", "prepare", str(blocker(t) / "out"), str(ws.docs),
                                                 "--quiet", "--tokenizer", str(ws.tokenizer)]),
    Case("data/val-fraction-one", prepare(*TOK, "--val-fraction", "1")),
    Case("data/val-fraction-negative", prepare(*TOK, "--val-fraction", "-0.1")),
    Case("data/val-fraction-nan", prepare(*TOK, "--val-fraction", "nan")),
    Case("data/workers-negative", prepare(*TOK, "--workers", "-1")),
    Case("data/workers-huge", prepare(*TOK, "--workers", "5000")),
    Case("data/train-tokenizer-huge", prepare("--train-tokenizer", "99999999999")),
    Case("data/train-tokenizer-tiny", prepare("--train-tokenizer", "100")),
    Case("data/train-tokenizer-zero", prepare("--train-tokenizer", "0")),
    Case("data/shard-tokens-zero", prepare(*TOK, "--shard-tokens", "0")),
    Case("data/max-tokens-zero", prepare(*TOK, "--max-tokens", "0")),
    Case("data/tokenizer-sample-zero", prepare("--train-tokenizer", "300", "--tokenizer-sample", "0")),
    Case("data/tokenizer-missing", prepare("--tokenizer", "{t}/nope.json")),
    Case("data/tokenizer-garbage", lambda ws, t: ["data", "prepare", str(t / "out"), str(ws.docs), "--quiet",
                                                  "--tokenizer", str(write(t / "tok.json", '{"model": 5}'))]),
    Case("data/text-field-missing", prepare(*TOK, inputs=jsonl({"content": "hello world"}))),
    Case("data/jsonl-garbage-line", prepare(*TOK, inputs=jsonl(raw=b'{"text": "a"}\n{"text": \n'))),
    Case("data/jsonl-text-not-a-string", prepare(*TOK, inputs=jsonl({"text": 5}, {"text": "a b"}))),
    Case("data/jsonl-rows-not-objects", prepare(*TOK, inputs=jsonl([1, 2], "x"))),
    Case("data/parquet-garbage", prepare(*TOK, inputs=jsonl(raw=b"not parquet", name="in.parquet"))),
    Case("data/gzip-garbage", prepare(*TOK, inputs=jsonl(raw=b"not gzip", name="in.jsonl.gz"))),
    Case("data/gzip-truncated", prepare(*TOK, inputs=jsonl(raw=gzip.compress(b'{"text": "a b c"}\n' * 200)[:60],
                                                           name="in.jsonl.gz"))),
    Case("data/lone-surrogates", prepare(*TOK, "--val-fraction", "0", inputs=jsonl(*[{"text": "a \ud800 b " * 50}] * 4),
                                         expect="warn", match="surrogate")),
    Case("data/out-empty", lambda ws, t: ["data", "prepare", "", str(ws.docs), "--quiet", "--tokenizer", str(ws.tokenizer)]),
    Case("data/overwrite-abbreviated", prepare(*TOK, "--overw")),
    Case("data/verify-json-empty", lambda ws, t: ["data", "verify", str(ws.shards), "--json", ""]),
    Case("data/binary-txt", prepare(*TOK, inputs=jsonl(raw=bytes(range(256)) * 40, name="in.txt"))),
    Case("data/folder-without-text", prepare(*TOK, inputs=lambda ws, t: [str((t / "empty").mkdir() or t / "empty")])),
    Case("data/builtin-bad-size", prepare(*TOK, inputs=lambda ws, t: ["builtin:python:lots"])),
    Case("data/builtin-unknown", prepare(*TOK, inputs=lambda ws, t: ["builtin:rust"])),
    Case("data/hub-offline", prepare(*TOK, inputs=lambda ws, t: ["--hub", "nosuch/dataset"])),
    Case("data/out-holds-its-input", lambda ws, t: Launch(
        ["data", "prepare", str(t / "in"), str(write(t / "in" / "docs.txt", "some text " * 500)), "--quiet",
         "--tokenizer", str(ws.tokenizer), "--overwrite"],
        after=lambda f, r, h: [] if (t / "in" / "docs.txt").is_file() else ["the input file was deleted"])),
    Case("data/out-holds-other-shards", lambda ws, t: Launch(
        ["data", "prepare", str(copy(ws.other, t / "out")), str(ws.docs), "--quiet", "--tokenizer", str(ws.tokenizer)],
        protect=[("shards", t / "out")])),
    Case("data/out-is-a-run-folder", lambda ws, t: Launch(
        ["data", "prepare", str(copy(ws.run, t / "run")), str(ws.docs), "--quiet", "--tokenizer", str(ws.tokenizer),
         "--overwrite"], protect=[("run", t / "run")])),
    Case("data/file-size-limit", prepare(*TOK, fsize=3000, writes=True, match="File too large")),
    Case("data/tmpfs-full", lambda ws, t: _on_tmpfs(t, 8 * 1024, ["data", "prepare", "{disk}/out", str(ws.docs),
                                                                  "--quiet", "--tokenizer", str(ws.tokenizer)])),
    Case("data/verify-missing", lambda ws, t: ["data", "verify", str(t / "nope")]),
    Case("data/verify-a-file", lambda ws, t: ["data", "verify", str(ws.tokenizer)]),
    Case("data/verify-meta-a-list", lambda ws, t: ["data", "verify", str(_shards_with(ws, t, "[1]"))]),
    Case("data/verify-meta-without-splits", lambda ws, t: ["data", "verify", str(_shards_with(ws, t, None, splits=None))]),
    Case("data/verify-meta-splits-garbage", lambda ws, t: ["data", "verify", str(_shards_with(ws, t, None, splits={"train": 5}))]),
    Case("data/verify-json-under-a-file", lambda ws, t: ["data", "verify", str(ws.shards), "--json", str(blocker(t) / "v.json")]),
    Case("data/info-a-run-folder", lambda ws, t: ["data", "info", str(ws.run)]),
    Case("data/info-meta-tokenizer-missing", lambda ws, t: ["data", "info", str(_shards_with(ws, t, None, tokenizer=None))]),
    Case("data/info-json-is-a-folder", lambda ws, t: ["data", "info", str(ws.shards), "--json", str(t)]),
]


def _shards_with(ws: Workspace, t: Path, text: str | None, **changes) -> Path:
    shards = copy(ws.shards, t / "shards")
    if text is not None:
        (shards / "meta.json").write_text(text)
    else:
        meta = json.loads((shards / "meta.json").read_text())
        for k, v in changes.items():
            if v is None:
                meta.pop(k, None)
            else:
                meta[k] = v
        (shards / "meta.json").write_text(json.dumps(meta))
    return shards


# ---------------------------------------------------------------- sft

def sft(*args: str, data=None, source: str = "run", **launch):
    def setup(ws: Workspace, t: Path) -> Launch:
        given = data(t) if data else ws.sft_data
        model = {"run": ws.run, "hf": ws.hf}[source]
        # the plain template: the workspace model's 64-token context holds its examples whole,
        # so each case fails for its own mistake and not for the data's length
        return Launch(["sft", str(model), "--data", str(given), "--out", str(t / "sft"), "--quiet",
                       "--set", 'sft.template="plain"', *[a.replace("{t}", str(t)) for a in args]], **launch)
    return setup


SFT_CASES = [
    Case("sft/data-missing", sft(data=lambda t: t / "nope.jsonl")),
    Case("sft/data-malformed", sft(data=lambda t: write(t / "d.json", "[{"))),
    Case("sft/data-records-without-fields", sft(data=lambda t: write(t / "d.jsonl", '{"question": "x"}\n' * 10))),
    Case("sft/data-empty", sft(data=lambda t: write(t / "d.jsonl", ""))),
    Case("sft/data-output-not-text", sft(data=lambda t: write(t / "d.jsonl", '{"instruction": "x", "output": 5}\n' * 10))),
    Case("sft/recipe-with-model", lambda ws, t: ["sft", str(ws.run), "--data", str(ws.sft_data), "--out",
                                                 str(t / "sft"), "--quiet", "--recipe",
                                                 str(write(t / "s.toml", "[model]\nd_model = 64\n"))]),
    Case("sft/epochs-zero", sft("--set", "sft.epochs=0")),
    Case("sft/epochs-nan", sft("--set", "sft.epochs=nan")),
    Case("sft/batch-size-zero", sft("--set", "sft.batch_size=0")),
    Case("sft/val-fraction-one", sft("--set", "sft.val_fraction=1")),
    Case("sft/lr-nan", sft("--set", "optim.lr=nan")),
    Case("sft/seq-len-beyond-model", sft("--set", "data.seq_len=4096")),
    Case("sft/stage-grow", sft("--set", 'stage.1.grow={op="stack", factor=2}')),
    Case("sft/template-unknown", sft("--set", 'sft.template="nosuch"')),
    Case("sft/template-file-broken", lambda ws, t: ["sft", str(ws.run), "--data", str(ws.sft_data), "--out",
                                                    str(t / "sft"), "--quiet", "--set",
                                                    f'sft.template="{write(t / "tpl.toml", "[[[")}"']),
    Case("sft/out-is-the-source", lambda ws, t: Launch(["sft", str(copy(ws.run, t / "run")), "--data", str(ws.sft_data),
                                                        "--out", str(t / "run"), "--quiet"], protect=[("run", t / "run")])),
    Case("sft/out-under-a-file", lambda ws, t: ["sft", str(ws.run), "--data", str(ws.sft_data), "--out",
                                                str(blocker(t) / "sft"), "--quiet"]),
    Case("sft/out-empty", (lambda ws, t: ["sft", str(ws.run), "--data", str(ws.sft_data), "--out", "",
                                                               "--quiet"])),
    Case("sft/source-missing", lambda ws, t: ["sft", str(t / "nope"), "--data", str(ws.sft_data), "--quiet"]),
    Case("sft/source-without-tokenizer", lambda ws, t: ["sft", str(_hf_without_tokenizer(ws, t)), "--data",
                                                        str(ws.sft_data), "--out", str(t / "sft"), "--quiet"]),
    Case("sft/source-is-shards", lambda ws, t: ["sft", str(ws.shards), "--data", str(ws.sft_data), "--out",
                                                str(t / "sft"), "--quiet"]),
]


def _hf_without_tokenizer(ws: Workspace, t: Path) -> Path:
    hf = copy(ws.hf, t / "hf")
    for p in hf.glob("tokenizer*"):
        p.unlink()
    return hf


# ---------------------------------------------------------------- generate

def gen(*args: str, source: str = "run"):
    def setup(ws: Workspace, t: Path) -> list[str]:
        model = {"run": ws.run, "hf": ws.hf, "shards": ws.shards}[source]
        return ["generate", str(model), "--prompt", "def ", "--max-new-tokens", "4", *args]
    return setup


def _hf_with_big_tokenizer(ws: Workspace, t: Path) -> list[str]:
    hf = copy(ws.hf, t / "hf")
    shutil.copyfile(ws.big / "tokenizer.json", hf / "tokenizer.json")
    return ["generate", str(hf), "--prompt", "def ", "--max-new-tokens", "4"]


GENERATE_CASES = [
    Case("generate/max-new-tokens-zero", gen("--max-new-tokens", "0")),
    Case("generate/temperature-negative", gen("--temperature", "-1")),
    Case("generate/temperature-nan", gen("--temperature", "nan")),
    Case("generate/temperature-inf", gen("--temperature", "inf")),
    Case("generate/top-p-zero", gen("--top-p", "0")),
    Case("generate/top-p-nan", gen("--top-p", "nan")),
    Case("generate/seed-huge", gen("--temperature", "1", "--seed", str(2**70))),
    Case("generate/seed-negative", gen("--temperature", "1", "--seed", "-1")),
    Case("generate/source-missing", lambda ws, t: ["generate", str(t / "nope"), "--prompt", "x"]),
    Case("generate/source-is-shards", gen(source="shards")),
    Case("generate/template-unknown", gen("--template", "nosuch")),
    Case("generate/input-without-template", gen("--input", "x")),
    Case("generate/device-cuda", gen("--device", "cuda")),
    Case("generate/tokenizer-larger-than-model", _hf_with_big_tokenizer),
]


# ---------------------------------------------------------------- demo and the command line

DEMO_CASES = [
    Case("demo/steps-zero", lambda ws, t: ["demo", "--out", str(t / "d"), "--steps", "0"]),
    Case("demo/steps-negative", lambda ws, t: ["demo", "--out", str(t / "d"), "--steps", "-5"]),
    Case("demo/corpus-size-words", lambda ws, t: ["demo", "--out", str(t / "d"), "--corpus-size", "lots"]),
    Case("demo/corpus-size-zero", lambda ws, t: ["demo", "--out", str(t / "d"), "--corpus-size", "0"]),
    Case("demo/out-under-a-file", lambda ws, t: ["demo", "--out", str(blocker(t) / "d")]),
    Case("demo/out-is-a-file", lambda ws, t: ["demo", "--out", str(blocker(t))]),
    Case("demo/out-empty", lambda ws, t: Launch(["demo", "--out", "", "--steps", "5", "--corpus-size", "lots"],
                                                match="empty path")),
    Case("cli/unknown-command", lambda ws, t: ["frobnicate"]),
    Case("cli/train-without-recipe", lambda ws, t: ["train"]),
    Case("cli/data-unknown-subcommand", lambda ws, t: ["data", "shuffle", str(ws.shards)]),
    Case("cli/option-typo", lambda ws, t: ["train", ws.recipe(t), "--resum"]),
]

IO_CASES = [*PLAN_CASES, *EVAL_CASES, *EXPORT_CASES, *COMPARE_CASES, *DATA_CASES, *SFT_CASES, *GENERATE_CASES,
            *DEMO_CASES]
