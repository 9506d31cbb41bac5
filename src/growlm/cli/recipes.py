"""`growlm recipes list | show NAME | copy NAME [DEST]`: the recipe library installed with growlm.

Every command that reads a recipe (train, plan, sweep) also takes a library name in place of a
file (`growlm train tiny/step-2stage`); `copy` gives an editable file of one recipe, or of a
whole folder of them (`growlm recipes copy tiny my-recipes/`).
"""

from __future__ import annotations

import argparse
from pathlib import Path

from growlm.errors import GrowlmError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="recipes_command", metavar="{list,show,copy}")
    sub.required = True
    ls = sub.add_parser("list", help="name and summary of every library recipe",
                        description="List the recipes installed with growlm (name: summary), "
                        "optionally only those under a folder such as tiny or step, and where "
                        "the library lies (its README.md explains every recipe).")
    ls.add_argument("folder", nargs="?", help="only recipes under this folder, e.g. tiny")
    show = sub.add_parser("show", help="print a library recipe",
                          description="Print a library recipe's TOML (header comment included: "
                          "it says where every number comes from).")
    show.add_argument("name", help="library name, e.g. tiny/step-2stage")
    cp = sub.add_parser("copy", help="copy a library recipe (or a folder of them) to edit",
                        description="Write a library recipe, or every recipe under a library "
                        "folder, as files to edit; then `growlm train FILE`.")
    cp.add_argument("name", help="library name (tiny/step-2stage) or folder (tiny)")
    cp.add_argument("dest", nargs="?", default=None,
                    help="file or folder to write (default: NAME's file name here, e.g. "
                    "step-2stage.toml; a folder NAME goes to ./NAME/)")
    cp.add_argument("--overwrite", action="store_true", help="replace files that exist")


def run(args: argparse.Namespace) -> int:
    if args.recipes_command == "list":
        return _list(args.folder)
    if args.recipes_command == "show":
        from growlm.recipe_library import library_recipe

        print(library_recipe(args.name).read_text(encoding="utf-8"), end="")
        return 0
    return _copy(args.name, args.dest, args.overwrite)


def _under(folder: str | None) -> list[str]:
    from growlm.recipe_library import recipe_names

    names = recipe_names()
    if folder is None:
        return names
    prefix = folder.strip().strip("/") + "/"
    chosen = [n for n in names if n.startswith(prefix)]
    if not chosen:
        folders = sorted({n.rsplit("/", 1)[0] for n in names if "/" in n})
        raise GrowlmError(f"no library folder {folder!r}; folders: {', '.join(folders)}")
    return chosen


def _list(folder: str | None) -> int:
    from growlm.recipe_library import library_recipe, library_root, summary

    names = _under(folder)
    width = max(len(n) for n in names)
    for name in names:
        print(f"{name:<{width}}  {summary(library_recipe(name))}")
    print(f"\n{len(names)} recipes in {library_root()} (README.md there explains each); "
          "use a name in place of a file: growlm train tiny/step-2stage")
    return 0


def _copy(name: str, dest: str | None, overwrite: bool) -> int:
    """One recipe to DEST (a file, or a folder that exists), or a library folder's recipes to
    DEST/ keeping their relative paths. Every target is checked before anything is written."""
    from growlm.files import atomic_write_text, check_output_dir, check_path
    from growlm.recipe_library import SUFFIX, library_recipe, recipe_names

    key = name.strip().removesuffix(SUFFIX).strip("/")
    if key in recipe_names():
        source = library_recipe(key)
        target = check_path(dest, "DEST") if dest is not None else Path(source.name)
        if target.is_dir():
            target = target / source.name
        pairs, base = [(source, target)], None
    elif any(n.startswith(key + "/") for n in recipe_names()):
        base = check_path(dest if dest is not None else key.rsplit("/", 1)[-1], "DEST")
        if base.exists() and not base.is_dir():
            raise GrowlmError(f"DEST {base}: is a file; a library folder is copied into a folder")
        pairs = [(library_recipe(n), base / f"{n[len(key) + 1:]}{SUFFIX}") for n in _under(key)]
    else:
        library_recipe(key)  # raises, naming the closest library names
        raise AssertionError("unreachable")
    existing = [str(t) for _, t in pairs if t.exists()]
    if existing and not overwrite:
        more = f" (and {len(existing) - 1} more)" if len(existing) > 1 else ""
        raise GrowlmError(f"{existing[0]} exists{more}; pass --overwrite to replace it, or give "
                          "another DEST")
    for _, target in pairs:
        if target.is_dir():
            raise GrowlmError(f"{target} is a folder; give a file name")
        check_output_dir(target.parent, "DEST")
    for source, target in pairs:
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_text(target, source.read_text(encoding="utf-8"))
    print(f"wrote {pairs[0][1]}" if base is None else f"wrote {len(pairs)} recipes under {base}/")
    return 0
