"""Freezing: choose parameters by glob or by provenance, and stop their gradients.

A stage's `freeze = [...]` list holds patterns; each is either a keyword

  inherited  tensors that continue a parameter of the previous stage (see growlm.grow.provenance:
             old layers, embeddings, norms and head; not the layers a growth op added, even if
             they were initialised from old values; needs the stage's provenance)
  new        every tensor of the provenance that is not inherited (needs provenance)
  embedding  embed_tokens.weight
  head       lm_head.weight
  norms      every RMSNorm weight (per-layer norms, per-head q/k norms and the final norm)
  layers     every tensor of the transformer blocks

or a glob over parameter names (fnmatch, case-sensitive: `*` also crosses dots), e.g.
"layers.*.mlp.*", "embed_tokens.*", "layers.[0-3].*". A pattern that selects nothing is an
error: it is almost always a typo.

Tied embeddings: `embed_tokens.weight` and `lm_head.weight` are one tensor. It is frozen only
when both names are selected (e.g. ["embedding", "head"]); selecting one of them leaves it
trainable, because the other use still wants its gradient. Pass names from
`parameter_names(model)`, which lists both aliases.

Frozen parameters get requires_grad=False and no .grad; the trainer gives the optimizer only
trainable ones, so they get no optimizer state either.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping
from fnmatch import fnmatchcase

from torch import nn

from growlm.errors import GrowlmError
from growlm.grow.provenance import inherited_names, new_names

KEYWORDS = ("inherited", "new", "embedding", "head", "norms", "layers")
_NEEDS_PROVENANCE = ("inherited", "new")


def parameter_names(model: nn.Module) -> list[str]:
    """Every parameter name of `model`, tied aliases included."""
    return [name for name, _ in model.named_parameters(remove_duplicate=False)]


def _keyword(keyword: str, names: list[str], provenance: Mapping | None) -> set[str]:
    if keyword == "inherited":
        return inherited_names(provenance) & set(names)
    if keyword == "new":
        return new_names(provenance) & set(names)
    if keyword == "embedding":
        return {n for n in names if n == "embed_tokens.weight"}
    if keyword == "head":
        return {n for n in names if n == "lm_head.weight"}
    if keyword == "norms":
        return {n for n in names if n.endswith("norm.weight")}
    return {n for n in names if n.startswith("layers.")}  # "layers"


def select_frozen(
    names: Iterable[str],
    patterns: list[str],
    provenance: Mapping[str, Mapping] | None = None,
    *,
    where: str = "freeze",
) -> set[str]:
    """The names that `patterns` select (the union over patterns)."""
    names = list(names)
    selected: set[str] = set()
    for pattern in patterns:
        if pattern in _NEEDS_PROVENANCE and provenance is None:
            raise GrowlmError(
                f"{where}: {pattern!r} needs provenance, which only a stage grown from a previous "
                "one has; freeze by name here (e.g. 'layers.*', 'embedding')"
            )
        if pattern in KEYWORDS:
            hits = _keyword(pattern, names, provenance)
        else:
            hits = {n for n in names if fnmatchcase(n, pattern)}
        if not hits:
            raise GrowlmError(
                f"{where}: pattern {pattern!r} matches no parameter (use a keyword: "
                f"{', '.join(KEYWORDS)}, or a glob over names such as 'layers.*.mlp.*')"
            )
        selected |= hits
    return selected


def apply_freeze(model: nn.Module, frozen: set[str], *, where: str = "freeze") -> dict[str, int]:
    """Freeze exactly `frozen` (every other parameter becomes trainable); count elements.

    Returns {"trainable": n, "frozen": n}, each tensor counted once.
    """
    aliases: dict[int, tuple[nn.Parameter, list[str]]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        aliases.setdefault(id(param), (param, []))[1].append(name)
    known = {name for _, names in aliases.values() for name in names}
    unknown = sorted(set(frozen) - known)
    if unknown:
        raise GrowlmError(f"{where}: no parameter named {', '.join(unknown[:3])} in the model")
    counts = {"trainable": 0, "frozen": 0}
    for param, names in aliases.values():
        chosen = [n for n in names if n in frozen]
        is_frozen = len(chosen) == len(names)
        if chosen and not is_frozen:
            warnings.warn(
                f"{where}: {chosen[0]} is tied to {', '.join(n for n in names if n not in frozen)}, "
                "which is not frozen, so the shared tensor stays trainable",
                stacklevel=2,
            )
        param.requires_grad_(not is_frozen)
        if is_frozen:
            param.grad = None
        counts["frozen" if is_frozen else "trainable"] += param.numel()
    return counts


def check_trainable(model: nn.Module, where: str = "freeze") -> None:
    """GrowlmError when the model has nothing left to train."""
    if not any(p.requires_grad for p in model.parameters()):
        raise GrowlmError(
            f"{where}: every parameter is frozen, so the stage has nothing to train "
            "(freeze fewer parameters or add adapters)"
        )
