"""`growlm demo`: an offline, few-minute tour on CPU.

Prepares the built-in corpus (the Python standard library's own sources, present on every
installation), trains a tiny standard baseline and a tiny staged run (Gstack-style: a
2-layer model stacked to 4 layers), and prints the equal-FLOP comparison table and writes the `growlm compare` report.
"""

from __future__ import annotations

import sys
from pathlib import Path

COMMON = """\
[run]
name = "{name}"
out_dir = "{out}"
eval_every = 25
eval_tokens = 32768

[model]           # the final shape of both runs
vocab_size = {vocab}
d_model = 128
n_layers = 4
n_heads = 4
max_seq_len = 128

[data]
train = "{data}"
seq_len = 128

[train]
global_batch_tokens = 4096
micro_batch_size = 8

[optim]
lr = 2e-3

[schedule]
warmup_steps = 20
"""

BASELINE = """
[[stage]]
name = "standard"
steps = {steps}
"""

STAGED = """
[[stage]]           # a 2-layer model, its LR schedule planned over the whole run
name = "small"
n_layers = 2
steps = {small}
schedule_steps = {steps}

[[stage]]           # Gstack: stack the 2 layers twice → 4 layers, fresh optimizer, re-warmup
name = "stacked"
grow = {{ op = "stack", factor = 2 }}
steps = {rest}
"""


def add_arguments(parser) -> None:
    parser.add_argument("--out", default="growlm-demo", help="output folder (default: ./growlm-demo)")
    parser.add_argument("--steps", type=int, default=150, help="optimizer steps per run (default 150)")
    parser.add_argument("--corpus-size", default="3MB", help="how much of the built-in corpus to use")
    parser.add_argument("--quiet", action="store_true", help="no progress bars or stage logs")


def write_recipes(out: Path, data: Path, vocab: int, steps: int) -> dict[str, Path]:
    small = max(1, steps * 2 // 5)
    recipes = {"baseline": COMMON + BASELINE, "staged": COMMON + STAGED}
    paths = {}
    (out / "recipes").mkdir(parents=True, exist_ok=True)
    for name, text in recipes.items():
        path = out / "recipes" / f"{name}.toml"
        path.write_text(text.format(name=name, out=(out / "runs" / name).as_posix(), data=data.as_posix(),
                                    vocab=vocab, steps=steps, small=small, rest=steps - small))
        paths[name] = path
    return paths


def run(args) -> int:
    from growlm import checkpoint as ckpt
    from growlm.config import load_recipe
    from growlm.data import prepare
    from growlm.errors import GrowlmError
    from growlm.eval.scheduled import benchmark_hooks
    from growlm.files import atomic_write_json, check_output_dir
    from growlm.train.trainer import Stopped, Trainer

    if args.steps < 5:
        raise GrowlmError(f"--steps must be at least 5, got {args.steps}")
    out = check_output_dir(args.out, "--out")
    data = out / "data"
    print(f"[1/3] preparing the built-in corpus → {data}")
    shards = prepare(data, [f"builtin:python:{args.corpus_size}"], train_vocab=2048, val_fraction=0.05,
                     progress=not args.quiet)
    summaries = {}
    for i, (name, recipe) in enumerate(write_recipes(out, data, shards.vocab_size, args.steps).items()):
        print(f"[{i + 2}/3] training {name} ({recipe})")
        cfg = load_recipe(recipe)
        resume = bool(ckpt.list_checkpoints(cfg.out_dir / "checkpoints"))
        try:
            summaries[name] = Trainer(cfg, resume=resume, quiet=args.quiet,
                                      hooks=benchmark_hooks(cfg)).run()
        except Stopped as e:  # Ctrl-C or SIGTERM: the run saved a checkpoint; a rerun continues it
            print(f"growlm demo: {e}; run the same command again to continue", file=sys.stderr)
            return e.exit_code
    from growlm.report import format_table, write_report

    runs = [out / "runs" / name for name in summaries]
    print()
    print(format_table(runs, baseline=runs[0]))
    report = write_report(runs, baseline=runs[0], out=out / "report")
    print(f"\nreport (markdown, HTML and plots): {report}")
    print(f"runs, metrics.jsonl and checkpoints: {out / 'runs'}; export one with: "
          f"growlm export {out / 'runs' / 'staged'} hf-model/")
    atomic_write_json(out / "summary.json", summaries)
    return 0
