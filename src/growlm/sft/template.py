"""Prompt templates: how an instruction record becomes prompt text (masked) and response text
(trained on).

An **Alpaca** record ``{instruction, input, output}`` renders as

    prompt   = template.prompt           (when ``input`` is non-empty)
             | template.prompt_no_input  (when it is empty or absent)
    response = template.response         (default ``"{output}"``)

A **chat** record is a list of ``{role, content}`` messages (roles ``system``, ``user``,
``assistant``). Each message renders through the template of its role, whose only placeholder
is ``{content}``. A conversation without a system message gets ``default_system`` (if not
empty) as its first turn. In an assistant turn the text before ``{content}`` is prompt, and
``{content}`` plus what follows it is response.

The tokenizer's end-of-sequence token follows every response (the model learns to stop), and
the loss covers only response tokens and those EOS tokens. The built-in ``alpaca`` template
uses the prompt wording of Stanford Alpaca (Taori et al. 2023) so that fine-tuned models can
be queried with the same prompt by external tools; its chat form renders a one-turn
conversation exactly like an Alpaca record without input.

A template can be written in a TOML file with the keys of `Template` (all optional except
none; missing keys keep the ``alpaca`` value), e.g.::

    name = "qa"
    prompt = "Q: {instruction}\\nContext: {input}\\nA: "
    prompt_no_input = "Q: {instruction}\\nA: "

Write ``{{`` and ``}}`` for literal braces.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, fields, replace
from pathlib import Path

from growlm.errors import GrowlmError

# Placeholders each field must contain (and the only ones it may contain).
PLACEHOLDERS: dict[str, tuple[str, ...]] = {
    "prompt": ("instruction", "input"),
    "prompt_no_input": ("instruction",),
    "response": ("output",),
    "system": ("content",),
    "user": ("content",),
    "assistant": ("content",),
    "default_system": (),
}
ROLES = ("system", "user", "assistant")


@dataclass(frozen=True)
class Segment:
    """A piece of rendered text; `train` pieces are response text followed by EOS."""

    text: str
    train: bool


@dataclass(frozen=True)
class Template:
    name: str
    prompt: str
    prompt_no_input: str
    response: str = "{output}"
    default_system: str = ""
    system: str = "{content}\n\n"
    user: str = "### Instruction:\n{content}\n\n"
    assistant: str = "### Response:\n{content}"

    def __post_init__(self) -> None:
        for key, allowed in PLACEHOLDERS.items():
            check_placeholders(getattr(self, key), allowed, f"template {self.name!r}: {key}")
        n_content = sum(f is not None for _, f, _, _ in string.Formatter().parse(self.assistant))
        if n_content != 1:
            raise GrowlmError(
                f"template {self.name!r}: assistant must hold {{content}} exactly once "
                f"(it separates prompt from response), found {n_content}"
            )

    # ---- Alpaca records
    def prompt_text(self, instruction: str, input: str = "") -> str:  # noqa: A002 (field name)
        if input:
            return self.prompt.format(instruction=instruction, input=input)
        return self.prompt_no_input.format(instruction=instruction)

    def render_alpaca(self, instruction: str, input: str, output: str) -> list[Segment]:  # noqa: A002
        return [
            Segment(self.prompt_text(instruction, input), False),
            Segment(self.response.format(output=output), True),
        ]

    # ---- chat records
    def render_chat(self, messages: list[tuple[str, str]]) -> list[Segment]:
        """`messages` is [(role, content), ...] with roles from ROLES."""
        if self.default_system and (not messages or messages[0][0] != "system"):
            messages = [("system", self.default_system), *messages]
        out: list[Segment] = []
        for role, content in messages:
            text = getattr(self, role)
            if role != "assistant":
                out.append(Segment(text.format(content=content), False))
                continue
            # Only the assistant's own words (and what the template puts after them) are trained.
            head, tail = _split_at_content(text)
            out.append(Segment(head, False))
            out.append(Segment(content + tail, True))
        return _merge_prompts(out)

    def chat_prompt(self, user_text: str) -> str:
        """The prompt a one-turn conversation gives before the assistant's answer."""
        segments = self.render_chat([("user", user_text), ("assistant", "")])
        return "".join(s.text for s in segments if not s.train)


def check_placeholders(text: str, allowed: tuple[str, ...], where: str) -> None:
    """Every placeholder must be one of `allowed`, and each of `allowed` must appear."""
    try:
        parsed = list(string.Formatter().parse(text))
    except ValueError as e:
        raise GrowlmError(
            f"{where}: malformed template ({e}); write {{{{ and }}}} for literal braces"
        ) from None
    allowed_text = ", ".join(f"{{{a}}}" for a in allowed) or "none"
    found = set()
    for _literal, field, spec, conversion in parsed:
        if field is None:
            continue
        if field not in allowed:
            raise GrowlmError(f"{where}: unknown placeholder {{{field}}} (allowed: {allowed_text})")
        if spec or conversion:
            raise GrowlmError(
                f"{where}: placeholder {{{field}}} may not carry a format spec or conversion"
            )
        found.add(field)
    missing = [a for a in allowed if a not in found]
    if missing:
        raise GrowlmError(f"{where}: missing placeholder {{{missing[0]}}} (needs {allowed_text})")


def _split_at_content(text: str) -> tuple[str, str]:
    """(text before {content}, text after it) with literal braces unescaped."""
    head, tail, seen = [], [], False
    for literal, field, _spec, _conv in string.Formatter().parse(text):
        (tail if seen else head).append(literal)
        seen = seen or field is not None
    return "".join(head), "".join(tail)


def _merge_prompts(segments: list[Segment]) -> list[Segment]:
    """Join neighbouring prompt pieces (one tokenizer call each) and drop empty ones."""
    out: list[Segment] = []
    for s in segments:
        if not s.text and not s.train:
            continue
        if out and not s.train and not out[-1].train:
            out[-1] = Segment(out[-1].text + s.text, False)
        else:
            out.append(s)
    return out


_ALPACA_HEAD = "Below is an instruction that describes a task"
ALPACA = Template(
    name="alpaca",
    prompt=(
        f"{_ALPACA_HEAD}, paired with an input that provides further context. Write a "
        "response that appropriately completes the request.\n\n"
        "### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n"
    ),
    prompt_no_input=(
        f"{_ALPACA_HEAD}. Write a response that appropriately completes the "
        "request.\n\n### Instruction:\n{instruction}\n\n### Response:\n"
    ),
    default_system=f"{_ALPACA_HEAD}. Write a response that appropriately completes the request.",
)
# The same section markers without the preamble: shorter prompts for small contexts.
PLAIN = Template(
    name="plain",
    prompt="### Instruction:\n{instruction}\n\n### Input:\n{input}\n\n### Response:\n",
    prompt_no_input="### Instruction:\n{instruction}\n\n### Response:\n",
)
BUILTIN = {t.name: t for t in (ALPACA, PLAIN)}


def template_from_dict(data: dict, where: str, base: Template = ALPACA) -> Template:
    known = {f.name for f in fields(Template)}
    for key, value in data.items():
        if key not in known:
            raise GrowlmError(
                f"{where}: unknown template key {key!r} (allowed: {', '.join(sorted(known))})"
            )
        if not isinstance(value, str):
            raise GrowlmError(
                f"{where}: template key {key!r} must be a string, got {type(value).__name__}"
            )
        if key in PLACEHOLDERS:  # checked here too, so the message names the file
            check_placeholders(value, PLACEHOLDERS[key], f"{where}: template key {key!r}")
    return replace(base, **{"name": where, **data})


def load_template(spec: str | dict | Template | None) -> Template:
    """A built-in name (`alpaca`, `plain`), a TOML file, or a table of Template keys."""
    if spec is None:
        return ALPACA
    if isinstance(spec, Template):
        return spec
    if isinstance(spec, dict):
        return template_from_dict(spec, "sft.template")
    if spec in BUILTIN:
        return BUILTIN[spec]
    path = Path(spec)
    if not path.is_file():
        raise GrowlmError(
            f"template {spec!r}: not a built-in ({', '.join(BUILTIN)}) and no such TOML file"
        )
    from growlm.config import load_toml

    data = load_toml(path)
    data = data.get("template", data) if isinstance(data.get("template"), dict) else data
    return template_from_dict(data, str(path))
