"""`growlm export RUN_OR_CKPT OUT_DIR`: a run, checkpoint or HF folder as an HF folder.

The folder has the model's own family (`ModelConfig.model_type`: Llama, Mistral, Qwen2 or
Qwen3), so a model started from a public checkpoint goes back to its users' tools as the same
architecture it came from.
"""

from __future__ import annotations

import argparse

from growlm.errors import GrowlmError
from growlm.files import check_apart, check_path
from growlm.init_source import is_hf_folder, load_source
from growlm.model.hf import export_hf


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "source",
        metavar="RUN_OR_CKPT",
        help="a run directory (its latest complete checkpoint), a checkpoint directory, "
        "or an HF folder (re-export)",
    )
    parser.add_argument(
        "out_dir", metavar="OUT_DIR", help="folder to write (must not exist or be empty)"
    )
    parser.add_argument(
        "--overwrite", action="store_true", help="replace OUT_DIR if it exists and is not empty"
    )


def run(args: argparse.Namespace) -> int:
    source = check_path(args.source, "export source")
    out_dir = check_path(args.out_dir, "export output")
    if not source.exists():
        raise GrowlmError(f"{source} does not exist; give a run dir, checkpoint dir or HF folder")
    check_apart(out_dir, [source], "export output")  # --overwrite would delete the source
    cfg, state, tokenizer = load_source(source)
    hf_source = source if is_hf_folder(source) else None
    out = export_hf(cfg, state, out_dir, tokenizer_json=tokenizer, overwrite=args.overwrite,
                    source_folder=hf_source)
    note = "" if tokenizer else " (no tokenizer.json found: tokenizer files not written)"
    print(f"exported {cfg.params_total:,} parameters ({cfg.model_type}, {cfg.n_layers} layers, "
          f"d_model {cfg.d_model}) to {out}{note}")
    return 0
