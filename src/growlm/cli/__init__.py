"""`growlm` command line. Each subcommand lives in its own module, imported only when used.

A subcommand module defines `add_arguments(parser)` and `run(args) -> int`. A GrowlmError
(bad input) becomes one line on stderr and exit code 2; a failed write (a full disk, a path
through a file, no permission: see `growlm.files.write_failure`) one line and exit code 1;
Ctrl-C exits 130 (128 + SIGINT) and SIGTERM 143 (128 + SIGTERM), in every command.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
import warnings

# torch's C++ log lines (glog format, e.g. the profiler's note on blocks allocated before a
# memory probe started) would break the one-line output; set before torch is imported.
# Warnings raised through Python still show; TORCH_CPP_LOG_LEVEL=WARNING brings the others back.
os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")

SUBCOMMANDS = {
    "demo": ("growlm.demo", "prepare the built-in corpus and train a tiny baseline and staged run"),
    "data": ("growlm.cli.data", "prepare token shards from text files or HF datasets"),
    "recipes": ("growlm.cli.recipes", "list, show or copy the recipes installed with growlm"),
    "train": ("growlm.cli.train", "train a recipe (all stages; --resume continues)"),
    "plan": ("growlm.cli.plan", "FLOP and memory plan of a recipe; STEP and Gstack planners"),
    "eval": ("growlm.cli.eval", "perplexity, zero-shot tasks, word similarity, neighbour overlap"),
    "export": ("growlm.cli.export", "write a run, checkpoint or HF folder as an HF folder of its "
               "family (Llama, Mistral, Qwen2, Qwen3)"),
    "compare": ("growlm.cli.compare", "compare runs at equal FLOPs: report.md, HTML and plots"),
    "sweep": ("growlm.sweep", "run a recipe over a grid of --set values and pick the best"),
    "sft": ("growlm.cli.sft", "supervised fine-tuning on instruction data"),
    "generate": ("growlm.sft.generate", "generate text from a checkpoint or HF folder"),
}


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        # No abbreviations: "--over" must not silently mean --overwrite.
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # one line, exit 2 (argparse's default prints usage too)
        self.exit(2, f"growlm: error: {message} (see --help)\n")


def _warning_line(message, category, filename, lineno, line=None) -> str:
    """A warning as users read it: one line, without the source file and line of Python's
    format (growlm's warnings already name the file or setting they are about)."""
    kind = "" if category is UserWarning else f"{category.__name__}: "
    return f"warning: {kind}{' '.join(str(message).split())}\n"


def build_parser(available: dict) -> argparse.ArgumentParser:
    parser = _Parser(prog="growlm", description="Pretrain LLMs in stages.")
    from growlm import __version__

    parser.add_argument("--version", action="version", version=f"growlm {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name, (module, help_text) in available.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.set_defaults(_module=module)
    return parser


def _available() -> dict:
    return dict(SUBCOMMANDS)


def main(argv: list[str] | None = None) -> int:
    from growlm.errors import GrowlmError
    from growlm.files import WriteError, write_failure

    argv = list(sys.argv[1:] if argv is None else argv)
    available = _available()
    parser = build_parser(available)
    # Parse the command name first, then let the subcommand module add its own arguments.
    if argv and argv[0] in available:
        module = importlib.import_module(available[argv[0]][0])
        sub = _Parser(prog=f"growlm {argv[0]}", description=available[argv[0]][1])
        module.add_arguments(sub)
        args = sub.parse_args(argv[1:])
        formatwarning, warnings.formatwarning = warnings.formatwarning, _warning_line
        try:
            return int(module.run(args) or 0)
        except WriteError as e:
            print(f"growlm {argv[0]}: error: {e}", file=sys.stderr)
            return 1
        except GrowlmError as e:
            print(f"growlm {argv[0]}: error: {e}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(f"growlm {argv[0]}: interrupted", file=sys.stderr)
            return 130
        except Exception as e:  # a write that failed deep inside a library: one line too
            failure = write_failure(e)
            if failure is None:
                raise
            print(f"growlm {argv[0]}: error: {failure}", file=sys.stderr)
            return 1
        finally:
            warnings.formatwarning = formatwarning
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    return 0
