"""The recipes installed with growlm, and how a recipe argument is resolved.

The recipe library (`growlm/recipes/`, package data: the seed papers' configurations at paper
scale and their tiny CPU versions) ships inside the package, so a recipe is reachable by name
from any folder once growlm is installed: `growlm train tiny/step-2stage` reads
`<package>/recipes/tiny/step-2stage.toml`. A name is the file's path inside the library, with
or without `.toml`.

`resolve_recipe` is the one rule every command that reads a recipe applies (train, plan,
sweep): an existing file wins; otherwise the argument is a library name; when it is neither,
one line names what was given and the closest library names.
"""

from __future__ import annotations

import difflib
import os
import re
from importlib import resources
from pathlib import Path

from growlm.errors import GrowlmError

SUFFIX = ".toml"
_PREFIX = "recipes/"  # how the clone's docs spell a library path; accepted when matching names
_SENTENCE_END = re.compile(r"(?<!\bal)\.(\s|$)")  # "Yano et al. 2025" ends no sentence


def library_root() -> Path:
    """The folder of installed recipes (a real folder: growlm is installed unzipped)."""
    return Path(str(resources.files("growlm").joinpath("recipes")))


def recipe_names() -> list[str]:
    """Every library recipe's name ("tiny/step-2stage"), sorted."""
    root = library_root()
    return sorted(p.relative_to(root).with_suffix("").as_posix() for p in root.rglob(f"*{SUFFIX}"))


def _name_of(text: str) -> str:
    name = text.replace("\\", "/").strip()
    name = name.removesuffix(SUFFIX)
    return name.removeprefix("./")


def library_recipe(name: str) -> Path:
    """The library file of `name` ("tiny/step-2stage" or "tiny/step-2stage.toml").

    Raises GrowlmError naming the closest library names when there is no such recipe."""
    key = _name_of(name)
    names = recipe_names()
    if key in names:
        return library_root() / f"{key}{SUFFIX}"
    raise GrowlmError(f"no recipe named {name!r} in growlm's library{_suggest(key, names)}")


def resolve_recipe(spec: str | os.PathLike) -> Path:
    """A recipe argument as a file: `spec` itself when it is a file, else the library recipe
    of that name.

    Raises GrowlmError (one line) when `spec` is a folder, or neither a file nor a library
    name; the message lists the closest library names and `growlm recipes list`."""
    path = Path(spec)
    if path.is_file():
        return path
    text = os.fspath(spec)
    if path.is_dir():
        raise GrowlmError(f"recipe {text}: is a folder; give a .toml file or a library name "
                          "(growlm recipes list)")
    key = _name_of(text)
    names = recipe_names()
    if key in names:
        return library_root() / f"{key}{SUFFIX}"
    raise GrowlmError(f"recipe not found: {text} is not a file here, nor a recipe in growlm's "
                      f"library{_suggest(key.removeprefix(_PREFIX), names)}")


def _suggest(key: str, names: list[str]) -> str:
    """'; close: a, b, c (all: growlm recipes list)' with the nearest library names."""
    close = difflib.get_close_matches(key, names, n=3, cutoff=0.5)
    if not close:  # a bare file name ("step-2stage") matches on the last component
        tails = {n.rsplit("/", 1)[-1]: n for n in names}
        close = [tails[t] for t in difflib.get_close_matches(key.rsplit("/", 1)[-1], tails, 3, 0.6)]
    hint = f"; closest: {', '.join(close)}" if close else ""
    return f"{hint} (all: growlm recipes list)"


def summary(path: Path, width: int = 90) -> str:
    """The first sentence of a recipe's header comment, at most `width` characters (what
    `growlm recipes list` shows)."""
    lines = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.startswith("#"):
            break
        text = line.lstrip("#").strip()
        if not text:
            break
        lines.append(text)
    header = " ".join(lines)
    end = _SENTENCE_END.search(header)
    if end:
        header = header[:end.start() + 1]
    return header if len(header) <= width else header[:width - 1].rstrip() + "…"
