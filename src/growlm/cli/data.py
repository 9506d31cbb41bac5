"""`growlm data prepare | verify | info`."""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import signal
import sys
from decimal import Decimal

from growlm.errors import GrowlmError
from growlm.units import human_count

_PREPARE_EPILOG = """\
inputs: .txt/.md/.rst(.gz) files (one document per file; see --txt-docs), .jsonl(.gz) and
.parquet files (one document per row, field --text-field), folders (searched recursively),
globs ("data/*.jsonl.gz"), builtin:python[:SIZE] (the Python standard library, offline), and
a dataset on the HF hub with --hub NAME. Counts take K, M, B, T (powers of 10) or Ki, Mi, Gi (of 2).
Examples:
  growlm data prepare shards/demo builtin:python --train-tokenizer 4096
  growlm data prepare shards/wiki train.jsonl.gz --val validation.jsonl.gz --tokenizer gpt2
  growlm data prepare shards/fw --hub HuggingFaceFW/fineweb-edu --hub-config sample-10BT \\
      --tokenizer gpt2 --max-tokens 1B
Ctrl-C (exit 130) or SIGTERM (exit 143) stop it without leaving a partial folder; the same
command starts again from the beginning.
"""
_JSON_HELP = "print the JSON to stdout, or write it to FILE (put --json after PATH)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="data_command", metavar="{prepare,verify,info}")
    sub.required = True
    p = sub.add_parser("prepare", help="tokenize text into token shards",
                       description="Tokenize text into token shards (meta.json + .bin files).",
                       epilog=_PREPARE_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("out_dir", help="output folder")
    p.add_argument("inputs", nargs="*", help="files, folders, globs or builtin:python[:SIZE]")
    tok = p.add_mutually_exclusive_group()
    tok.add_argument("--tokenizer", metavar="SPEC",
                     help="tokenizer.json file, folder (tokenizer.json or encoder.json+vocab.bpe)"
                     " or HF hub name such as gpt2")
    tok.add_argument("--train-tokenizer", metavar="VOCAB",
                     help="train a byte-level BPE of this vocab size on the training documents "
                     "(258 to 4Mi)")
    p.add_argument("--text-field", default="text", help="jsonl/parquet/HF field (default: text)")
    val = p.add_mutually_exclusive_group()
    val.add_argument("--val-fraction", type=float, default=0.01,
                     help="fraction of documents held out for validation, in [0, 1) "
                     "(default 0.01; 0: none)")
    val.add_argument("--val", nargs="+", metavar="INPUT", help="separate validation inputs")
    p.add_argument("--txt-docs", choices=("file", "paragraph", "line"), default="file",
                   help="what one document is in text files (default: the whole file)")
    p.add_argument("--max-tokens", metavar="N", help="stop when the train split has N tokens")
    p.add_argument("--shard-tokens", metavar="N", default="64Mi",
                   help="tokens per shard file (default 64Mi = 67108864)")
    p.add_argument("--workers", type=int, default=None,
                   help="tokenizer threads, 0 to 1024 (default and 0: all cores)")
    p.add_argument("--tokenizer-sample", metavar="CHARS", default="200M",
                   help="characters of text used to train the tokenizer (default 200M)")
    p.add_argument("--hub", metavar="NAME",
                   help="dataset on the HF hub to read (needs datasets + network)")
    p.add_argument("--hub-config", metavar="C", help="hub dataset configuration")
    p.add_argument("--hub-split", metavar="S", help="hub split (default: train)")
    p.add_argument("--streaming", action="store_true", help="stream the hub dataset")
    p.add_argument("--overwrite", action="store_true",
                   help="replace shards in OUT_DIR that were prepared from other inputs/options")
    p.add_argument("--quiet", action="store_true",
                   help="no progress (bars in a terminal, periodic lines in a log)")

    v = sub.add_parser("verify", help="check shard files against meta.json (sha256 included)",
                       description="Check a prepared folder: meta.json, every shard file's size "
                       "and sha256, the tokenizer file, and that each split ends with EOS. "
                       "Exit 0 when all is well, 2 with one line naming the first problem.")
    v.add_argument("path", help="prepared shard folder")
    v.add_argument("--no-hashes", action="store_true", help="check sizes and structure only")
    v.add_argument("--json", nargs="?", const="-", metavar="FILE", help=_JSON_HELP)

    i = sub.add_parser("info", help="print a prepared folder's metadata",
                       description="Print a prepared folder's tokenizer, dtype, splits (tokens, "
                       "documents, files) and sources; --json gives meta.json itself.")
    i.add_argument("path", help="prepared shard folder")
    i.add_argument("--json", nargs="?", const="-", metavar="FILE", help=_JSON_HELP)


def run(args: argparse.Namespace) -> int:
    if args.data_command == "prepare":
        return _prepare(args)
    if args.data_command == "verify":
        return _verify(args)
    return _info(args)


_COUNT = re.compile(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*")
_SCALES = {"": 1, "K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9, "T": 10**12,
           "KI": 2**10, "MI": 2**20, "GI": 2**30, "TI": 2**40}
_MAX_COUNT = 2**63 - 1


def _count(value, what: str) -> int | None:
    """A whole count such as 300, 50K, 1.5M or 64Mi, read exactly (units.parse_count would
    truncate 300.5 to 300, and overflow on 1e400); GrowlmError otherwise."""
    if value is None:
        return None
    text = str(value)
    m = _COUNT.fullmatch(text)
    if not m or m.group(2).upper() not in _SCALES:
        raise GrowlmError(f"cannot read {what} {text!r}: expected a whole count such as 300, "
                          "50K, 1.5M, 2B or 64Mi")
    try:
        exact = Decimal(m.group(1)) * _SCALES[m.group(2).upper()]
    except ArithmeticError:  # an exponent beyond what Decimal holds
        raise GrowlmError(f"{what} {text!r} is too large (at most {_MAX_COUNT})") from None
    if exact != exact.to_integral_value():
        raise GrowlmError(f"{what} {text!r} is not a whole number")
    if exact > _MAX_COUNT:
        raise GrowlmError(f"{what} {text!r} is too large (at most {_MAX_COUNT})")
    return int(exact)


class _Terminated(BaseException):
    """SIGTERM, raised where the main thread is, so that clean-up code runs."""


@contextlib.contextmanager
def _sigterm_raises():
    def handler(signum, frame):
        raise _Terminated

    try:
        old = signal.signal(signal.SIGTERM, handler)
    except ValueError:  # not the main thread: leave signals alone
        old = None
    try:
        yield
    finally:
        if old is not None:
            signal.signal(signal.SIGTERM, old)


def _prepare(args) -> int:
    from growlm.data.prepare import prepare
    from growlm.data.sources import HFDataset

    inputs: list = list(args.inputs)
    if args.hub:
        inputs.append(HFDataset(args.hub, args.hub_config, args.hub_split or "train",
                                args.streaming))
    elif args.hub_config or args.hub_split or args.streaming:  # honoured or refused
        raise GrowlmError("--hub-config, --hub-split and --streaming apply to a --hub dataset; "
                          "give --hub NAME")
    if not inputs:
        raise GrowlmError("no inputs given: name files, folders, globs, builtin:python, or --hub NAME")
    counts = {name: _count(getattr(args, name), flag) for name, flag in (
        ("train_tokenizer", "--train-tokenizer"), ("max_tokens", "--max-tokens"),
        ("shard_tokens", "--shard-tokens"), ("tokenizer_sample", "--tokenizer-sample"))}
    stopped = "nothing partial was kept; run the same command to start again"
    try:
        with _sigterm_raises():
            prepare(args.out_dir, inputs, tokenizer=args.tokenizer,
                    train_vocab=counts["train_tokenizer"], text_field=args.text_field,
                    val_fraction=0.0 if args.val else args.val_fraction, val_inputs=args.val,
                    txt_docs=args.txt_docs, max_tokens=counts["max_tokens"],
                    shard_tokens=counts["shard_tokens"], workers=args.workers,
                    tokenizer_sample_chars=counts["tokenizer_sample"],
                    overwrite=args.overwrite, progress=not args.quiet)
    except KeyboardInterrupt:
        print(f"growlm data prepare: interrupted; {stopped}", file=sys.stderr)
        return 130
    except _Terminated:
        print(f"growlm data prepare: terminated (SIGTERM); {stopped}", file=sys.stderr)
        return 143
    return 0


def _emit_json(target: str, data: dict) -> None:
    from growlm.files import atomic_write_json, check_output_file, to_json_safe

    if target == "-":
        print(json.dumps(to_json_safe(data), indent=1, allow_nan=False))
        return
    atomic_write_json(check_output_file(target, "--json"), data)


def _check_json(target: str | None) -> None:
    """An unwritable --json FILE is refused before the folder is read."""
    if target is not None and target != "-":
        from growlm.files import check_output_file

        check_output_file(target, "--json")


def _verify(args) -> int:
    from growlm.data.shards import open_shards

    _check_json(args.json)
    shards = open_shards(args.path)
    report = shards.verify(check_hashes=not args.no_hashes)
    if args.json is not None:
        _emit_json(args.json, {"path": str(shards.path), "ok": True,
                               "hashes_checked": not args.no_hashes, **report})
        if args.json == "-":
            return 0
    counts = ", ".join(f"{s} {human_count(n)} tokens" for s, n in report["splits"].items())
    what = f"{report['files_hashed']} files hashed" if not args.no_hashes else "hashes not checked"
    print(f"{args.path}: OK ({counts}; {what})")
    return 0


def _info(args) -> int:
    from growlm.data.shards import open_shards

    _check_json(args.json)
    shards = open_shards(args.path)
    if args.json is not None:
        _emit_json(args.json, shards.meta)
        if args.json == "-":
            return 0
    tok = shards.meta["tokenizer"]
    print(f"folder     {shards.path}")
    print(f"tokenizer  {tok['name']} (vocab {tok['vocab_size']}, eos {tok['eos_id']}, "
          f"sha256 {tok['sha256'][:16]}…)")
    print(f"dtype      {shards.meta['dtype']}")
    for split in shards.splits:
        entry = shards.meta["splits"][split]
        print(f"{split:<10} {entry['tokens']:,} tokens, {entry['docs']:,} docs, "
              f"{len(entry['files'])} files")
    print(f"sources    {len(shards.meta.get('sources', []))} "
          f"(+{len(shards.meta.get('val_sources', []))} validation)")
    print(f"fingerprint {shards.fingerprint[:16]}…")
    return 0
