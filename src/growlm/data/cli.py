"""`growlm data prepare | verify | info`."""

from __future__ import annotations

import argparse
import json

from growlm.errors import GrowlmError
from growlm.units import human_count, parse_count

_PREPARE_EPILOG = """\
inputs: .txt/.md/.rst(.gz) files (one document per file; see --txt-docs), .jsonl(.gz) and
.parquet files (one document per row, field --text-field), folders (searched recursively),
globs ("data/*.jsonl.gz"), builtin:python[:SIZE] (the Python standard library, offline), and
an HF dataset with --hf NAME. Examples:
  growlm data prepare shards/demo builtin:python --train-tokenizer 4096
  growlm data prepare shards/wiki train.jsonl.gz --val validation.jsonl.gz --tokenizer gpt2
  growlm data prepare shards/fw --hf HuggingFaceFW/fineweb-edu --hf-config sample-10BT \\
      --tokenizer gpt2 --max-tokens 1B
"""


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
                     help="train a byte-level BPE of this vocab size on the training documents")
    p.add_argument("--text-field", default="text", help="jsonl/parquet/HF field (default: text)")
    val = p.add_mutually_exclusive_group()
    val.add_argument("--val-fraction", type=float, default=0.01,
                     help="fraction of documents held out for validation (default 0.01; 0: none)")
    val.add_argument("--val", nargs="+", metavar="INPUT", help="separate validation inputs")
    p.add_argument("--txt-docs", choices=("file", "paragraph", "line"), default="file",
                   help="what one document is in text files (default: the whole file)")
    p.add_argument("--max-tokens", metavar="N", help="stop when the train split has N tokens")
    p.add_argument("--shard-tokens", metavar="N", default="64Mi",
                   help="tokens per shard file (default 64Mi = 67108864)")
    p.add_argument("--workers", type=int, default=None,
                   help="tokenizer threads (default: all cores)")
    p.add_argument("--tokenizer-sample", metavar="CHARS", default="200M",
                   help="characters of text used to train the tokenizer (default 200M)")
    p.add_argument("--hf", metavar="NAME", help="HF hub dataset to read (needs datasets + network)")
    p.add_argument("--hf-config", metavar="C", help="HF dataset configuration")
    p.add_argument("--hf-split", metavar="S", default="train", help="HF split (default: train)")
    p.add_argument("--streaming", action="store_true", help="stream the HF dataset")
    p.add_argument("--overwrite", action="store_true",
                   help="replace shards in OUT_DIR that were prepared from other inputs/options")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")

    v = sub.add_parser("verify", help="check shard files against meta.json (sha256 included)")
    v.add_argument("path", help="prepared shard folder")
    v.add_argument("--no-hashes", action="store_true", help="check sizes and structure only")

    i = sub.add_parser("info", help="print a prepared folder's metadata")
    i.add_argument("path", help="prepared shard folder")
    i.add_argument("--json", action="store_true", help="print meta.json as is")


def run(args: argparse.Namespace) -> int:
    if args.data_command == "prepare":
        return _prepare(args)
    if args.data_command == "verify":
        return _verify(args)
    return _info(args)


def _count(value, what: str) -> int | None:
    if value is None:
        return None
    text = str(value).strip()
    binary = {"ki": 2**10, "mi": 2**20, "gi": 2**30}.get(text[-2:].lower())
    if binary:  # binary multiples, handy for shard sizes: 64Mi
        return parse_count(text[:-2], what) * binary
    return parse_count(text, what)


def _prepare(args) -> int:
    from growlm.data.prepare import prepare
    from growlm.data.sources import HFDataset

    inputs: list = list(args.inputs)
    if args.hf:
        inputs.append(HFDataset(args.hf, args.hf_config, args.hf_split, args.streaming))
    if not inputs:
        raise GrowlmError("no inputs given: name files, folders, globs, builtin:python, or --hf")
    prepare(args.out_dir, inputs, tokenizer=args.tokenizer,
            train_vocab=_count(args.train_tokenizer, "--train-tokenizer"),
            text_field=args.text_field, val_fraction=0.0 if args.val else args.val_fraction,
            val_inputs=args.val, txt_docs=args.txt_docs,
            max_tokens=_count(args.max_tokens, "--max-tokens"),
            shard_tokens=_count(args.shard_tokens, "--shard-tokens"), workers=args.workers,
            tokenizer_sample_chars=_count(args.tokenizer_sample, "--tokenizer-sample"),
            overwrite=args.overwrite, progress=not args.no_progress)
    return 0


def _verify(args) -> int:
    from growlm.data.shards import open_shards

    shards = open_shards(args.path)
    report = shards.verify(check_hashes=not args.no_hashes)
    counts = ", ".join(f"{s} {human_count(n)} tokens" for s, n in report["splits"].items())
    what = f"{report['files_hashed']} files hashed" if not args.no_hashes else "hashes not checked"
    print(f"{args.path}: OK ({counts}; {what})")
    return 0


def _info(args) -> int:
    from growlm.data.shards import open_shards

    shards = open_shards(args.path)
    if args.json:
        print(json.dumps(shards.meta, indent=1))
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
