"""A report as a list of blocks (headings, paragraphs, tables, images), rendered to Markdown.

Building the content once and rendering it twice keeps report.md and report.html identical in
substance; html.py renders the same blocks as a self-contained page.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Paragraph:
    text: str


@dataclass
class Bullets:
    items: list[str]


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    align: str = ""  # one of "l"/"r" per column; default: first left, the rest right


@dataclass
class Image:
    path: str  # relative to the report folder
    caption: str


@dataclass
class Document:
    title: str
    blocks: list = field(default_factory=list)

    def add(self, block) -> None:
        self.blocks.append(block)

    def to_markdown(self) -> str:
        out = [f"# {self.title}", ""]
        for b in self.blocks:
            out += _markdown(b) + [""]
        return "\n".join(out).rstrip() + "\n"


def column_align(table: Table) -> str:
    return table.align or "l" + "r" * (len(table.header) - 1)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def _markdown(b) -> list[str]:
    if isinstance(b, Heading):
        return [f"{'#' * b.level} {b.text}"]
    if isinstance(b, Paragraph):
        return [b.text]
    if isinstance(b, Bullets):
        return [f"- {item}" for item in b.items]
    if isinstance(b, Table):
        rule = ["---:" if a == "r" else ":---" for a in column_align(b)]
        lines = ["| " + " | ".join(_cell(h) for h in b.header) + " |", "| " + " | ".join(rule) + " |"]
        lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in b.rows]
        return lines
    if isinstance(b, Image):
        return [f"![{b.caption}]({b.path})", "", f"*{b.caption}*"]
    raise TypeError(f"unknown block {type(b).__name__}")


def plain_table(header: list[str], rows: list[list[str]], align: str = "") -> str:
    """A fixed-width text table for the terminal."""
    align = align or "l" + "r" * (len(header) - 1)
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]

    def line(cells) -> str:
        return "  ".join(str(c).rjust(w) if a == "r" else str(c).ljust(w)
                         for c, w, a in zip(cells, widths, align)).rstrip()

    return "\n".join([line(header), "  ".join("-" * w for w in widths), *(line(r) for r in rows)])
