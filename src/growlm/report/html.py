"""Render a report Document as one self-contained HTML page (plots embedded as data URIs)."""

from __future__ import annotations

import base64
import html
import re
from pathlib import Path

from growlm.report.document import Bullets, Document, Heading, Image, Paragraph, Table, column_align

STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1100px; margin: 2em auto; padding: 0 1em;
       color: #222; line-height: 1.45; }
.table { overflow-x: auto; margin: 1em 0; }
table { border-collapse: collapse; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; }
th { background: #f2f2f2; position: sticky; top: 0; }
td.r, th.r { text-align: right; white-space: nowrap; }
figure { margin: 1.5em 0; }
figcaption { font-style: italic; color: #555; }
img { max-width: 100%; }
code { background: #f4f4f4; padding: 0 0.2em; }
"""


def _inline(text: str) -> str:
    """Escape, then the little Markdown the report uses: **bold** and `code`."""
    out = html.escape(text)
    out = re.sub(r"\*\*(.+?)\*\*", r"<strong>\1</strong>", out)
    return re.sub(r"`(.+?)`", r"<code>\1</code>", out)


MIME = {".png": "image/png", ".svg": "image/svg+xml"}


def _image(b: Image, root: Path) -> str:
    path = root / b.path
    if path.is_file() and path.suffix in MIME:
        data = base64.b64encode(path.read_bytes()).decode("ascii")
        src = f"data:{MIME[path.suffix]};base64,{data}"
    else:
        src = html.escape(b.path)
    return (f'<figure><img src="{src}" alt="{html.escape(b.caption)}">'
            f"<figcaption>{_inline(b.caption)}</figcaption></figure>")


def _table(b: Table) -> str:
    align = column_align(b)
    head = "".join(f'<th class="{a}">{_inline(str(h))}</th>' for h, a in zip(b.header, align))
    body = "".join("<tr>" + "".join(f'<td class="{a}">{_inline(str(c))}</td>'
                                    for c, a in zip(row, align)) + "</tr>" for row in b.rows)
    # in a scrolling box: a table wider than the page scrolls instead of being cut off
    return f'<div class="table"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def to_html(doc: Document, root: Path) -> str:
    """The page; `root` is the folder the image paths are relative to."""
    parts = [f"<h1>{_inline(doc.title)}</h1>"]
    for b in doc.blocks:
        if isinstance(b, Heading):
            parts.append(f"<h{b.level}>{_inline(b.text)}</h{b.level}>")
        elif isinstance(b, Paragraph):
            parts.append(f"<p>{_inline(b.text)}</p>")
        elif isinstance(b, Bullets):
            parts.append("<ul>" + "".join(f"<li>{_inline(i)}</li>" for i in b.items) + "</ul>")
        elif isinstance(b, Table):
            parts.append(_table(b))
        elif isinstance(b, Image):
            parts.append(_image(b, root))
        else:
            raise TypeError(f"unknown block {type(b).__name__}")
    body = "\n".join(parts)
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<title>{html.escape(doc.title)}</title><style>{STYLE}</style></head>\n"
            f"<body>\n{body}\n</body></html>\n")
