"""The tokenizer files of an exported HF folder.

A model exported from a growlm run gets the run's `tokenizer.json` (the one its data was
prepared with) and the small files `AutoTokenizer` reads beside it. Its special tokens follow
the tokenizer itself, so the folder encodes text exactly as the run did:

  eos  the end-of-document token of `growlm.data.tokenizer.eos_id` (the one data prepare puts
       between documents);
  bos  the special token the tokenizer's post-processor puts before every sequence (`<s>` in
       Llama 2 / Mistral, `<|begin_of_text|>` in Llama 3); a tokenizer that adds none uses its
       end-of-document marker for both, as GPT-2, SmolLM and Qwen's base models do.

`tokenizer_config.json` leaves `add_bos_token` / `add_eos_token` out on purpose: the
post-processor in tokenizer.json decides, and transformers 5 has a path that rebuilds the
post-processor from those flags when they are given. Re-exporting an HF folder copies that
folder's own tokenizer files and special-token ids instead.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from growlm.errors import GrowlmError
from growlm.files import atomic_write_json

# Files beside tokenizer.json that describe how HF tools use it; copied on re-export.
SIDE_FILES = ("tokenizer_config.json", "special_tokens_map.json", "generation_config.json",
              "chat_template.jinja", "chat_template.json")
SPECIAL_ID_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id")


def _field_error(path: Path, field: str, problem: str) -> GrowlmError:
    return GrowlmError(f"tokenizer file {path}: {field} {problem}")


def read_tokenizer_json(path: Path, vocab_size: int) -> dict:
    """The parsed tokenizer.json, after checking the fields export relies on and that the
    `tokenizers` library loads it; GrowlmError naming the file and field otherwise."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise GrowlmError(f"tokenizer file {path} is not UTF-8 text") from None
    except OSError as e:
        raise GrowlmError(f"cannot read tokenizer file {path}: {e.strerror or e}") from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as e:
        raise GrowlmError(f"tokenizer file {path} is not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, dict):
        raise GrowlmError(f"tokenizer file {path} must hold a JSON object, got {type(data).__name__}")
    model = data.get("model")
    if not isinstance(model, dict):
        raise _field_error(path, "model", "must be an object (the tokenization model)")
    vocab = model.get("vocab")
    if isinstance(vocab, dict):
        ids = vocab.values()
    elif isinstance(vocab, list):  # Unigram: [[piece, score], ...], ids are positions
        ids = range(len(vocab))
    else:
        raise _field_error(path, "model.vocab", "must be an object or a list")
    if any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in ids):
        raise _field_error(path, "model.vocab", "must map tokens to non-negative integer ids")
    added = data.get("added_tokens", [])
    if not isinstance(added, list):
        raise _field_error(path, "added_tokens", "must be a list")
    for k, tok in enumerate(added):
        ok = isinstance(tok, dict) and isinstance(tok.get("content"), str) \
            and isinstance(tok.get("id"), int) and not isinstance(tok.get("id"), bool) and tok["id"] >= 0
        if not ok:
            raise _field_error(path, f"added_tokens[{k}]", "must have a string content and an integer id >= 0")
    top = max([*ids, *(t["id"] for t in added)], default=-1)
    if top >= vocab_size:
        raise GrowlmError(
            f"tokenizer file {path} has token ids up to {top} but the model's vocab_size is "
            f"{vocab_size}; export it with the tokenizer it was trained with"
        )
    _check_loads(path, text)
    return data


def _check_loads(path: Path, text: str) -> None:
    from tokenizers import Tokenizer

    try:
        Tokenizer.from_str(text)
    except Exception as e:  # the Rust side raises plain Exception for malformed files
        first = (str(e).strip() or type(e).__name__).splitlines()[0][:300]
        raise GrowlmError(f"tokenizer file {path} cannot be loaded: {first}") from None


def _token_ids(data: dict) -> dict[str, int]:
    vocab = data["model"]["vocab"]
    ids = dict(vocab) if isinstance(vocab, dict) else {p[0]: i for i, p in enumerate(vocab)
                                                       if isinstance(p, list) and p}
    ids.update({t["content"]: t["id"] for t in data.get("added_tokens", [])})
    return ids


def _prepended_token(processor) -> str | None:
    """The special token a post-processor puts before a single sequence, if any."""
    if not isinstance(processor, dict):
        return None
    if processor.get("type") == "Sequence":
        for inner in processor.get("processors") or []:
            found = _prepended_token(inner)
            if found:
                return found
        return None
    if processor.get("type") == "TemplateProcessing":
        single = processor.get("single") or []
        first = single[0] if single else None
        if isinstance(first, dict) and isinstance(first.get("SpecialToken"), dict):
            return first["SpecialToken"].get("id")
    if processor.get("type") in ("BertProcessing", "RobertaProcessing"):
        cls = processor.get("cls")
        return cls[0] if isinstance(cls, list) and cls else None
    return None


def special_tokens(path: Path, data: dict) -> dict[str, tuple[str, int]]:
    """{"bos": (token, id), "eos": (token, id)} for the tokenizer (see the module docstring);
    roles the tokenizer has no token for are left out."""
    from tokenizers import Tokenizer

    from growlm.data.tokenizer import eos_id

    ids = _token_ids(data)
    names = {i: t for t, i in ids.items()}
    out: dict[str, tuple[str, int]] = {}
    try:
        eos = eos_id(Tokenizer.from_str(json.dumps(data)))
        out["eos"] = (names[eos], eos)
    except GrowlmError:
        pass  # no end-of-document token: leave eos unset
    bos = _prepended_token(data.get("post_processor"))
    if bos is not None and bos in ids:
        out["bos"] = (bos, ids[bos])
    elif "eos" in out:
        out["bos"] = out["eos"]  # one marker for document start and end (GPT-2 style)
    return out


def write_tokenizer_files(folder: Path, tokenizer_json: Path, data: dict,
                          special: dict[str, tuple[str, int]], model_max_length: int) -> None:
    """tokenizer.json plus the tokenizer_config.json and special_tokens_map.json HF reads."""
    shutil.copyfile(tokenizer_json, folder / "tokenizer.json")
    tokens = {f"{role}_token": tok for role, (tok, _) in special.items()}
    if "eos" in special and "bos" in special and special["bos"] == special["eos"]:
        tokens["unk_token"] = special["eos"][0]  # GPT-2's own tokenizer_config does the same
    atomic_write_json(folder / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "model_max_length": model_max_length,
        "clean_up_tokenization_spaces": False,
        **tokens,
    }, indent=2)
    atomic_write_json(folder / "special_tokens_map.json", tokens, indent=2)


def copy_side_files(source: Path, folder: Path) -> list[str]:
    """Copy an HF folder's tokenizer description files (those present) into `folder`."""
    copied = []
    for name in ("tokenizer.json", *SIDE_FILES):
        if (source / name).is_file():
            shutil.copyfile(source / name, folder / name)
            copied.append(name)
    return copied
