"""The `--json [FILE]` convention of every command with JSON output.

`--json` alone prints the JSON on stdout (and nothing else there); `--json FILE` writes it
atomically to FILE and the command prints its usual text. Declare the option with
`add_json_option` and check FILE before any work with `check_json_target`, so that an
unwritable FILE is one line before minutes of computing, not after.
"""

from __future__ import annotations

import argparse
import json
import sys

from growlm.errors import GrowlmError
from growlm.files import atomic_write_text, check_output_dir, check_path, to_json_safe

STDOUT = "-"


def add_json_option(parser: argparse.ArgumentParser, what: str) -> None:
    """`--json [FILE]`; `what` names the JSON ("the plan", "the split")."""
    parser.add_argument("--json", nargs="?", const=STDOUT, default=None, metavar="FILE",
                        help=f"{what} as JSON: on stdout instead of the text when no FILE is "
                        "given, else written to FILE")


def check_json_target(target: str | None) -> None:
    """Refuse a FILE that cannot be written (a folder, a path under a file, a NUL byte) before
    any work; nothing is created."""
    if target is None or target == STDOUT:
        return
    path = check_path(target, "--json")
    if path.is_dir():
        raise GrowlmError(f"--json: {path} is a folder; give a file name")
    check_output_dir(path.parent, "--json")


def emit_json(target: str | None, data) -> None:
    """Print `data` (target "-") or write it to the file `target`; standard JSON (NaN and
    infinities become null)."""
    if target is None:
        return
    text = json.dumps(to_json_safe(data), indent=2, allow_nan=False, default=str) + "\n"
    if target == STDOUT:
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    check_json_target(target)
    atomic_write_text(check_path(target, "--json"), text)
