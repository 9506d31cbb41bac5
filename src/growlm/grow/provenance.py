"""Provenance: where each tensor of a grown model came from.

A growth operator returns, next to the new state dict, one entry per new tensor name:

    {"kind": "copied" | "derived" | "new", "sources": [old tensor names], "inherited": bool}

`kind` describes the tensor's initial *value*:
  - "copied":  exactly the value of one old tensor, same shape (`sources` has that one name).
               The optimizer-state mapping may copy Adam moments along with it.
  - "derived": computed from old tensors: an interpolation of two layers, or a tensor widened
               by a width operator (tiled, split, padded or rescaled).
  - "new":     no old value contributes: taken from the fresh initialisation, or zeros
               (the zeroed output projections of `identity` layers are "new").

`inherited` says whether the tensor *continues* a parameter of the previous stage. Each old
parameter is continued by at most one new tensor: the first one, in layer order, that takes
its value. Extra copies (Gstack's stacked repeats, `duplicate`'s second copies, the layer
`interpolate` adds above the last one) and interpolated layers are new layers initialised
from old values, so they are not inherited. This is what STEP needs: freezing "inherited"
freezes the previous stage's layers and leaves the inserted ones trainable. A widened tensor
continues its old self (inherited, kind "derived").

Entries are plain dicts of JSON types, so they go into checkpoint meta.json unchanged. An
entry without "inherited" (written by hand, or by a stage that did not grow) counts as
inherited unless its kind is "new".
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Literal, TypedDict

from growlm.errors import GrowlmError

KINDS = ("copied", "derived", "new")


class Provenance(TypedDict):
    kind: Literal["copied", "derived", "new"]
    sources: list[str]
    inherited: bool


def copied(source: str, inherited: bool = True) -> Provenance:
    return {"kind": "copied", "sources": [source], "inherited": inherited}


def derived(sources: Iterable[str], inherited: bool = False) -> Provenance:
    return {"kind": "derived", "sources": list(sources), "inherited": inherited}


def new() -> Provenance:
    return {"kind": "new", "sources": [], "inherited": False}


def is_inherited(entry: Mapping) -> bool:
    """An entry's `inherited` flag; entries written without one count as inherited unless new."""
    if "inherited" in entry:
        return bool(entry["inherited"])
    return entry.get("kind") in ("copied", "derived")


def inherited_names(provenance: Mapping[str, Mapping]) -> set[str]:
    """Names of the tensors that continue a parameter of the previous stage."""
    return {name for name, entry in provenance.items() if is_inherited(entry)}


def new_names(provenance: Mapping[str, Mapping]) -> set[str]:
    """Names of the tensors that do not continue an old parameter (the complement of inherited)."""
    return {name for name, entry in provenance.items() if not is_inherited(entry)}


def summarize(provenance: Mapping[str, Mapping]) -> dict[str, int]:
    """Counts per kind plus the number inherited, for logs: {"copied": n, ..., "inherited": n}."""
    counts = dict.fromkeys(KINDS, 0)
    for entry in provenance.values():
        counts[entry["kind"]] += 1
    counts["inherited"] = len(inherited_names(provenance))
    return counts


def check_provenance(provenance: object, where: str = "provenance") -> dict[str, Provenance]:
    """Validate provenance read back from JSON (e.g. a checkpoint's meta.json)."""
    if not isinstance(provenance, dict):
        raise GrowlmError(f"{where}: expected a mapping of tensor name to entry, got {type(provenance).__name__}")
    for name, entry in provenance.items():
        ok = (
            isinstance(entry, dict)
            and entry.get("kind") in KINDS
            and isinstance(entry.get("sources"), list)
            and all(isinstance(s, str) for s in entry["sources"])
            and isinstance(entry.get("inherited", False), bool)
        )
        if not ok:
            raise GrowlmError(
                f"{where}: bad entry for {name!r}: expected "
                "{'kind': 'copied'|'derived'|'new', 'sources': [names], 'inherited': bool}"
            )
    return provenance
