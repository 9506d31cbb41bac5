"""`growlm eval RUN_OR_CKPT --tasks ...` and `growlm eval compare-embeddings A B`.

Data folder rule: --data-dir when given, else the GROWLM_DATA environment variable; tasks that
read files (wikitext, zero-shot with --source local, wordsim) refuse to run without one.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from growlm.errors import GrowlmError

COMPARE = "compare-embeddings"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from growlm.eval.suite import ALL_TASKS, DEFAULT_TASKS

    parser.usage = ("growlm eval RUN_OR_CKPT [--tasks T1,T2] [options]\n"
                    f"       growlm eval {COMPARE} A B [--matrix embedding|head] [--k 100]")
    parser.add_argument("paths", nargs="+", metavar="RUN_OR_CKPT",
                        help=f"a growlm run/checkpoint dir or HF Llama folder; or '{COMPARE} A B'")
    parser.add_argument("--tasks",
                        help=f"comma-separated, from: {', '.join(ALL_TASKS)} (default: "
                             f"{','.join(DEFAULT_TASKS)}, plus ppl when --val-shards is given)")
    parser.add_argument("--data-dir", help="the shared data folder (default: $GROWLM_DATA)")
    parser.add_argument("--val-shards", help="prepared shard dir whose 'val' split task ppl uses")
    parser.add_argument("--source", choices=("local", "hf"), default="local",
                        help="zero-shot data: local files in the data folder, or the HF hub")
    parser.add_argument("--limit", type=int, help="at most N examples (documents, windows) per "
                        "task, for quick looks")
    parser.add_argument("--batch-size", type=int, default=32, help="sequences per forward pass")
    parser.add_argument("--seq-len", type=int, help="context window (default: the model's)")
    parser.add_argument("--stride", type=int, help="wikitext sliding-window stride "
                        "(default: the context window, as lm-eval)")
    parser.add_argument("--tokenizer", help="tokenizer.json to use instead of the stored one")
    parser.add_argument("--device", default="auto", help="cpu, cuda, cuda:1, ... (default: auto)")
    parser.add_argument("--json", dest="json_out", help="also write the results to this file")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.add_argument("--matrix", choices=("embedding", "head"), default="embedding",
                        help=f"{COMPARE}: which vocabulary matrix to compare")
    parser.add_argument("--k", type=int, default=100, help=f"{COMPARE}: neighbours per token")


def _device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _write_json(path: str, data: dict) -> None:
    """Write through a temporary file so an interrupted run leaves no half-written JSON."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(data, indent=2, allow_nan=True) + "\n", encoding="utf-8")
    os.replace(tmp, out)


def _check_positive(args) -> None:
    for name in ("limit", "batch_size", "seq_len", "stride", "k"):
        value = getattr(args, name)
        if value is not None and value < 1:
            raise GrowlmError(f"--{name.replace('_', '-')} must be a positive integer, "
                              f"got {value}")


def run(args: argparse.Namespace) -> int:
    _check_positive(args)
    if args.paths[0] == COMPARE:
        return _run_compare(args)
    if len(args.paths) != 1:
        raise GrowlmError(f"expected one model path (or '{COMPARE} A B'), got {len(args.paths)}")
    from growlm.eval.loading import load_for_eval
    from growlm.eval.suite import DEFAULT_TASKS, evaluate, format_table, parse_tasks

    default = ("ppl", *DEFAULT_TASKS) if args.val_shards else DEFAULT_TASKS
    tasks = parse_tasks(args.tasks or default)  # refuse bad names before loading anything
    model, tokenizer, info = load_for_eval(args.paths[0], device=_device(args.device),
                                           tokenizer_path=args.tokenizer)
    results = evaluate(model, tokenizer, tasks, data_dir=args.data_dir,
                       val_shards=args.val_shards, source=args.source, limit=args.limit,
                       batch_size=args.batch_size, seq_len=args.seq_len, stride=args.stride,
                       progress=not args.no_progress and sys.stderr.isatty())
    print(format_table(results))
    if args.json_out:
        _write_json(args.json_out, {"model": info, "limit": args.limit, "results": results})
    return 0


def _run_compare(args: argparse.Namespace) -> int:
    if len(args.paths) != 3:
        raise GrowlmError(f"{COMPARE} needs exactly two model paths, got {len(args.paths) - 1}")
    from growlm.eval.loading import load_for_eval
    from growlm.eval.neighbours import neighbour_overlap, same_vocabulary
    from growlm.eval.wordsim import vocab_matrices

    device = _device(args.device)
    (model_a, tok_a, _), (model_b, tok_b, _) = (
        load_for_eval(p, device=device, tokenizer_path=args.tokenizer) for p in args.paths[1:])
    if tok_a is not None and tok_b is not None and not same_vocabulary(tok_a, tok_b):
        raise GrowlmError(f"{args.paths[1]} and {args.paths[2]} use different vocabularies "
                          "(their tokenizers differ); neighbour overlap needs the same one")
    a = vocab_matrices(model_a)[args.matrix]
    b = vocab_matrices(model_b)[args.matrix]
    overlap = neighbour_overlap(a, b, k=args.k)
    print(f"top-{args.k} neighbour overlap ({args.matrix}): {overlap:.4f} "
          f"over {a.shape[0]} tokens")
    if args.json_out:
        _write_json(args.json_out, {"a": args.paths[1], "b": args.paths[2],
                                    "matrix": args.matrix, "k": args.k, "overlap": overlap,
                                    "vocab_size": int(a.shape[0])})
    return 0
