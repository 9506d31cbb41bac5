"""`growlm eval RUN_OR_CKPT --tasks ...` and `growlm eval compare-embeddings A B`.

Data folder rule: --data-dir when given, else the GROWLM_DATA environment variable; tasks that
read files (wikitext, zero-shot with --source local, wordsim) refuse to run without one.
Held-out shards for task ppl: --val-shards when given, else the run's own (run.json's
recipe: data.val, else data.train's val split), when RUN_OR_CKPT is a training run.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from pathlib import Path

from growlm.errors import GrowlmError

COMPARE = "compare-embeddings"
DEVICES = ("auto", "cpu", "cuda")
STDOUT = "-"
_EPILOG = f"""\
forms:
  growlm eval RUN_OR_CKPT [--tasks T1,T2|SUITE] [options]
      score a growlm run (newest checkpoint), a checkpoint folder or a HF model folder (Llama, Mistral, Qwen2, Qwen3)
  growlm eval {COMPARE} A B [--matrix embedding|head] [--k 100]
      top-k nearest-neighbour overlap of two models' embedding (or head) matrices

suites: gstack (LAMBADA, ARC-c, ARC-e, LogiQA, PIQA, SciQ, WinoGrande + WikiText; average of
acc), reuse_step (LAMBADA, HellaSwag, PIQA, ARC-e, ARC-c, OpenBookQA, WinoGrande + WikiText;
average of each task's headline score).
--json alone prints the results as JSON on stdout (the table then goes to stderr);
--json FILE writes them to FILE. Give --json after the model path.
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from growlm.data.tokenizer import BOS_CHOICES
    from growlm.eval.suite import ALL_TASKS, DEFAULT_TASKS, SUITES
    from growlm.eval.tasks import SOURCES

    parser.usage = ("growlm eval RUN_OR_CKPT [--tasks T1,T2] [options]\n"
                    f"       growlm eval {COMPARE} A B [--matrix embedding|head] [--k 100]")
    parser.epilog = _EPILOG
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.add_argument("paths", nargs="+", metavar="RUN_OR_CKPT",
                        help=f"a growlm run/checkpoint dir or HF model folder (Llama, Mistral, Qwen2, Qwen3); or '{COMPARE} A B'")
    parser.add_argument("--tasks",
                        help=f"comma-separated tasks or suites, from: {', '.join(ALL_TASKS)}; "
                             f"suites {', '.join(SUITES)} (default: {','.join(DEFAULT_TASKS)}, "
                             "plus ppl when held-out shards are known)")
    parser.add_argument("--data-dir", help="the shared data folder (default: $GROWLM_DATA)")
    parser.add_argument("--val-shards", help="prepared shard dir whose 'val' split task ppl "
                        "uses (default: the run's own, from its run.json)")
    parser.add_argument("--source", choices=SOURCES, default="local",
                        help="zero-shot data: local files in the data folder, or the HF hub")
    parser.add_argument("--limit", type=int, help="at most N examples (documents, windows) per "
                        "task, for quick looks")
    parser.add_argument("--batch-size", type=int, default=32, help="sequences per forward pass")
    parser.add_argument("--seq-len", type=int, help="context window (default: the model's)")
    parser.add_argument("--stride", type=int, help="wikitext sliding-window stride "
                        "(default: the context window, as lm-eval)")
    parser.add_argument("--tokenizer", help="tokenizer.json to use instead of the stored one")
    parser.add_argument("--bos", choices=BOS_CHOICES, default="auto",
                        help="BOS token in front of every context and document: auto = what "
                             "the tokenizer's post-processor adds, as in training data and "
                             "transformers (default: auto)")
    parser.add_argument("--device", choices=DEVICES, default="auto",
                        help="where to run the model (default: cuda when available)")
    parser.add_argument("--json", dest="json_out", nargs="?", const=STDOUT, metavar="FILE",
                        help="results as JSON: on stdout when no FILE is given, else into FILE")
    parser.add_argument("--quiet", action="store_true", help="no progress reports")
    parser.add_argument("--matrix", choices=("embedding", "head"), default="embedding",
                        help=f"{COMPARE}: which vocabulary matrix to compare")
    parser.add_argument("--k", type=int, default=100, help=f"{COMPARE}: neighbours per token")


def resolve_device(name: str) -> str:
    """'cpu' or 'cuda' for --device; asking for cuda without CUDA is a one-line error."""
    import torch

    if name not in DEVICES:
        raise GrowlmError(f"--device {name!r}; allowed: {', '.join(DEVICES)}")
    if name == "cuda" and not torch.cuda.is_available():
        raise GrowlmError("--device cuda, but this torch build sees no CUDA device; "
                          "use --device cpu or auto")
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def _check_positive(args) -> None:
    for name in ("limit", "batch_size", "seq_len", "stride", "k"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise GrowlmError(f"--{name.replace('_', '-')} must be a positive integer, "
                              f"got {value}")


def _check_paths(args) -> None:
    """A path option given empty (or with a NUL byte) is refused, not taken as absent."""
    from growlm.files import check_path

    for name in ("val_shards", "tokenizer", "data_dir"):
        if getattr(args, name) is not None:
            check_path(getattr(args, name), f"--{name.replace('_', '-')}")


def _check_json_target(json_out: str | None) -> None:
    """Refuse an unwritable --json FILE before any model is loaded or scored."""
    if json_out is not None and json_out != STDOUT:
        from growlm.files import check_output_file

        check_output_file(json_out, "--json")


def run_val_shards(path: str | Path) -> str | None:
    """The held-out shard folder a training run used (its recipe's data.val, else data.train,
    whose 'val' split serves), or None when `path` is not a run folder."""
    from growlm.files import read_json

    run_file = Path(path) / "run.json"
    if not run_file.is_file():
        return None
    run = read_json(run_file, "run record")
    data = (run.get("config") or {}).get("data") if isinstance(run.get("config"), dict) else None
    if not isinstance(data, dict):
        raise GrowlmError(f"{run_file}: field 'config.data' is missing or not an object")
    chosen = data.get("val") or data.get("train")
    if chosen is not None and not isinstance(chosen, str):
        raise GrowlmError(f"{run_file}: field 'config.data.val'/'train' should be a path string")
    return chosen


def _val_shards(args, wants_ppl: bool) -> str | None:
    if args.val_shards is not None:
        return args.val_shards
    found = run_val_shards(args.paths[0])
    if found is not None and not Path(found).is_dir():
        if wants_ppl:
            raise GrowlmError(f"task ppl: the run's held-out shards {found} (run.json "
                              "config.data) are not a folder from here; pass --val-shards DIR")
        return None
    return found


def _emit(data: dict, json_out: str | None) -> None:
    from growlm.files import atomic_write_json, to_json_safe

    if json_out == STDOUT:
        sys.stdout.write(json.dumps(to_json_safe(data), indent=2, allow_nan=False) + "\n")
        sys.stdout.flush()
    elif json_out is not None:
        Path(json_out).parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(json_out, data, indent=2)


def run(args: argparse.Namespace) -> int:
    _check_positive(args)
    _check_paths(args)
    _check_json_target(args.json_out)
    if args.paths[0] == COMPARE:
        return _run_compare(args)
    if len(args.paths) != 1:
        raise GrowlmError(f"expected one model path (or '{COMPARE} A B'), got {len(args.paths)}")
    from growlm.eval.suite import DEFAULT_TASKS, parse_tasks

    tasks = parse_tasks(args.tasks) if args.tasks is not None else None  # before any loading
    val_shards = _val_shards(args, tasks is None or "ppl" in tasks)
    if tasks is None:
        tasks = parse_tasks(("ppl", *DEFAULT_TASKS) if val_shards else DEFAULT_TASKS)
    device = resolve_device(args.device)
    # With JSON on stdout, everything else (progress lines, the table) goes to stderr.
    to_stderr = args.json_out == STDOUT
    with contextlib.redirect_stdout(sys.stderr) if to_stderr else contextlib.nullcontext():
        results, info = _evaluate(args, tasks, val_shards, device)
    _emit({"model": info, "limit": args.limit, "bos": args.bos, "results": results},
          args.json_out)
    return 0


def _evaluate(args, tasks: list[str], val_shards: str | None, device: str):
    from growlm.eval.loading import load_for_eval
    from growlm.eval.suite import evaluate, format_table

    model, tokenizer, info = load_for_eval(args.paths[0], device=device,
                                           tokenizer_path=args.tokenizer)
    results = evaluate(model, tokenizer, tasks, data_dir=args.data_dir, val_shards=val_shards,
                       source=args.source, limit=args.limit, batch_size=args.batch_size,
                       seq_len=args.seq_len, stride=args.stride, progress=not args.quiet,
                       bos=args.bos)
    print(format_table(results), flush=True)
    return results, info


def _run_compare(args: argparse.Namespace) -> int:
    if len(args.paths) != 3:
        raise GrowlmError(f"{COMPARE} needs exactly two model paths, got {len(args.paths) - 1}")
    from growlm.eval.loading import load_for_eval
    from growlm.eval.neighbours import neighbour_overlap, same_vocabulary
    from growlm.eval.wordsim import vocab_matrices

    device = resolve_device(args.device)
    (model_a, tok_a, _), (model_b, tok_b, _) = (
        load_for_eval(p, device=device, tokenizer_path=args.tokenizer) for p in args.paths[1:])
    if tok_a is not None and tok_b is not None and not same_vocabulary(tok_a, tok_b):
        raise GrowlmError(f"{args.paths[1]} and {args.paths[2]} use different vocabularies "
                          "(their tokenizers differ); neighbour overlap needs the same one")
    a = vocab_matrices(model_a)[args.matrix]
    b = vocab_matrices(model_b)[args.matrix]
    to_stderr = args.json_out == STDOUT
    with contextlib.redirect_stdout(sys.stderr) if to_stderr else contextlib.nullcontext():
        overlap = neighbour_overlap(a, b, k=args.k, progress=not args.quiet)
        print(f"top-{args.k} neighbour overlap ({args.matrix}): {overlap:.4f} "
              f"over {a.shape[0]} tokens", flush=True)
    _emit({"a": args.paths[1], "b": args.paths[2], "matrix": args.matrix, "k": args.k,
           "overlap": overlap, "vocab_size": int(a.shape[0])}, args.json_out)
    return 0
