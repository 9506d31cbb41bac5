"""`builtin:tiny-instructions`: a small offline instruction set, so that `growlm sft` runs on a
fresh machine with no download. Every record fits a 128-token context with the Alpaca
template, even with the tiny recipes' 2048-token tokenizer.

The records are growlm's own: simple tasks (arithmetic, sorting, reversing, counting, capital
letters, short Python functions) written from word lists and templates here, plus a few
questions about growlm. They are drawn by a fixed seed, so every machine gets the same
records. They exercise the SFT path end to end (Alpaca records, masked prompts, packing,
checkpoints); they are not a benchmark and teach a tiny model little.

The records are plain Alpaca dictionaries ({"instruction", "input", "output"}), the format
`growlm.sft.data.read_records` reads from a .jsonl file.
"""

from __future__ import annotations

import random

from growlm.errors import GrowlmError

PREFIX = "builtin:"
NAMES = ("tiny-instructions",)
N_RECORDS = 512
SEED = 20240601

_WORDS = ("model", "layer", "token", "stage", "grow", "freeze", "adapter", "loss", "shard",
          "recipe", "batch", "step", "head", "embedding", "schedule", "checkpoint", "plan",
          "memory", "river", "stone", "cloud", "garden", "lamp", "window", "orange", "violin")
_NAMES = ("Ada", "Bo", "Cleo", "Dev", "Esme", "Finn", "Gus", "Hana", "Ines", "Jo")
_FUNCTIONS = (
    ("adds two numbers", "add", "a, b", "a + b"),
    ("returns the larger of two numbers", "larger", "a, b", "a if a > b else b"),
    ("squares a number", "square", "x", "x * x"),
    ("returns the last item of a list", "last", "items", "items[-1]"),
    ("counts the words in a string", "count_words", "text", "len(text.split())"),
    ("reverses a string", "reverse", "text", "text[::-1]"),
    ("tells whether a number is even", "is_even", "n", "n % 2 == 0"),
    ("joins a list of strings with commas", "join_commas", "items", "\", \".join(items)"),
)
_ABOUT = (
    ("What does growlm do?",
     "It trains a small language model, grows it, freezes what it learned, and trains on."),
    ("What is a stage in growlm?",
     "A stage is one part of a run with one model shape; between stages the model grows."),
    ("Why freeze inherited layers?",
     "Frozen layers need no gradients and no optimizer state, so a stage uses less memory."),
    ("What does growlm plan print?",
     "The parameters, FLOPs and memory of every stage of a recipe, before any training."),
    ("How do I continue a run that was stopped?",
     "Run the same growlm train command again with --resume."),
)


def is_builtin(spec: str) -> bool:
    return str(spec).startswith(PREFIX)


def builtin_records(spec: str) -> list[dict]:
    """The records of `builtin:NAME`; GrowlmError naming the built-in sets otherwise."""
    name = str(spec)[len(PREFIX):]
    if name not in NAMES:
        raise GrowlmError(f"unknown built-in instruction set {spec!r}; built-in: "
                          + ", ".join(PREFIX + n for n in NAMES))
    rng = random.Random(SEED)
    makers = (_arithmetic, _sort, _reverse, _count, _capitals, _python, _greeting)
    records = [{"instruction": q, "input": "", "output": a} for q, a in _ABOUT]
    while len(records) < N_RECORDS:
        records.append(rng.choice(makers)(rng))
    return records


def _record(instruction: str, output: str, input_text: str = "") -> dict:
    return {"instruction": instruction, "input": input_text, "output": output}


def _arithmetic(rng: random.Random) -> dict:
    a, b = rng.randint(2, 99), rng.randint(2, 99)
    if rng.random() < 0.5:
        return _record(f"What is {a} plus {b}?", f"{a} plus {b} is {a + b}.")
    a, b = max(a, b), min(a, b)
    return _record(f"What is {a} minus {b}?", f"{a} minus {b} is {a - b}.")


def _sort(rng: random.Random) -> dict:
    numbers = rng.sample(range(1, 100), rng.randint(3, 4))
    return _record("Sort these numbers from smallest to largest.",
                   ", ".join(map(str, sorted(numbers))), ", ".join(map(str, numbers)))


def _reverse(rng: random.Random) -> dict:
    words = rng.sample(_WORDS, 3)
    return _record("Write these words in reverse order.", " ".join(reversed(words)), " ".join(words))


def _count(rng: random.Random) -> dict:
    words = [rng.choice(_WORDS) for _ in range(rng.randint(2, 5))]
    return _record("How many words are in this text?", f"There are {len(words)} words.",
                   " ".join(words))


def _capitals(rng: random.Random) -> dict:
    words = " ".join(rng.sample(_WORDS, 2))
    return _record("Write this text in capital letters.", words.upper(), words)


def _python(rng: random.Random) -> dict:
    what, name, params, body = rng.choice(_FUNCTIONS)
    return _record(f"Write a Python function that {what}.",
                   f"def {name}({params}):\n    return {body}")


def _greeting(rng: random.Random) -> dict:
    who = rng.choice(_NAMES)
    return _record(f"Write a one-line greeting for {who}.", f"Hello, {who}! Good to see you.")
