"""A suite's ``report.html``: ``report.md`` as one self-contained page to open in a browser, offline.

Written by :func:`.report.build_report` next to ``report.md``. Everything is inside the file: the CSS inline,
the PNG plots as base64 ``data:`` URIs, the curves with many points as inline SVG (:mod:`.svg_charts`: each
point's value shows on hover), and the table of ``results.csv`` (the same cells as the file, ``id="results-csv"``).
No script, no font, stylesheet or image is fetched from anywhere.

The page is converted from the markdown the report writes (headings, paragraphs, ``>`` quotes, ``-`` lists,
pipe tables, images, links, ``**bold**``, ``*italic*``, ```code```): the two reports never disagree.
"""
from __future__ import annotations

import base64
import csv
import re
from collections.abc import Mapping, Sequence
from html import escape
from pathlib import Path

from dtr_plugins.core.io import write_text
from dtr_plugins.experiments.svg_charts import Chart, render_chart

__all__ = ["markdown_to_html", "write_html_report"]

HTML_FILE = "report.html"
CSS = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.2em 0.5em; text-align: left; }
th { background: #f3f3f3; } tr:hover td { background: #fafae0; }
code { background: #f3f3f3; padding: 0 0.2em; }
blockquote { border-left: 4px solid #e0a000; margin: 0.8em 0; padding: 0.2em 1em; background: #fff8e5; }
img { max-width: 100%; height: auto; } figure { margin: 1em 0; }
figcaption { font-weight: 600; } .charts { display: flex; flex-wrap: wrap; gap: 1em; }
ul.legend { list-style: none; padding: 0; font-size: 0.85em; }
ul.legend li { display: inline-block; margin-right: 1em; }
.swatch { display: inline-block; width: 0.9em; height: 0.9em; margin-right: 0.3em; vertical-align: middle; }
"""
_IMAGE = re.compile(r"^!\[([^\]]*)\]\(([^)\s]+)\)$")
_INLINE = [(re.compile(r"`([^`]+)`"), r"<code>\1</code>"), (re.compile(r"\*\*(.+?)\*\*"), r"<strong>\1</strong>"),
           (re.compile(r"(?<![*\w])\*([^*\s][^*]*?)\*(?![*\w])"), r"<em>\1</em>")]
_LINK = re.compile(r"\[([^\]]+)\]\(([^)\s]+)\)")


def _inline(text: str) -> str:
    """Escaped text with code spans, bold, italics and links (links kept relative: nothing is fetched)."""
    out = escape(text, quote=False)
    codes: list[str] = []

    def keep(match: re.Match[str]) -> str:  # code spans are literal: no bold or italics inside them
        codes.append(f"<code>{match.group(1)}</code>")
        return f"\0{len(codes) - 1}\0"

    out = _INLINE[0][0].sub(keep, out)
    for pattern, repl in _INLINE[1:]:
        out = pattern.sub(repl, out)
    out = _LINK.sub(lambda m: '<a href="' + m.group(2).replace('"', "&quot;") + f'">{m.group(1)}</a>', out)
    return re.sub(r"\0(\d+)\0", lambda m: codes[int(m.group(1))], out)


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def _table(lines: Sequence[str]) -> str:
    head, body = _cells(lines[0]), [_cells(x) for x in lines[2:]]
    rows = "".join("<tr>" + "".join(f"<td>{_inline(c)}</td>" for c in row) + "</tr>" for row in body)
    return ("<table><thead><tr>" + "".join(f"<th>{_inline(c)}</th>" for c in head) + "</tr></thead><tbody>"
            + rows + "</tbody></table>")


def markdown_to_html(markdown: str, image: Mapping[str, str] | None = None) -> str:
    """The body HTML of the report's markdown. ``image`` maps an image's target (``plots/x.png``) to the HTML
    that stands for it (an ``<img>`` with a data URI, or SVG charts); an image it lacks becomes its alt text."""
    image = image or {}
    out: list[str] = []
    lines = markdown.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if not line.strip():
            i += 1
        elif m := re.match(r"^(#{1,6}) (.*)$", line):
            level = len(m.group(1))
            out.append(f"<h{level}>{_inline(m.group(2))}</h{level}>")
            i += 1
        elif line.startswith("|"):
            block = []
            while i < len(lines) and lines[i].startswith("|"):
                block.append(lines[i])
                i += 1
            out.append(_table(block))
        elif line.startswith("- "):
            items = []
            while i < len(lines) and lines[i].startswith("- "):
                items.append(f"<li>{_inline(lines[i][2:])}</li>")
                i += 1
            out.append("<ul>" + "".join(items) + "</ul>")
        elif line.startswith(">"):
            quote = []
            while i < len(lines) and lines[i].startswith(">"):
                quote.append(lines[i].lstrip(">").strip())
                i += 1
            out.append(f"<blockquote><p>{_inline(' '.join(quote))}</p></blockquote>")
        elif m := _IMAGE.match(line.strip()):
            out.append(image.get(m.group(2), f"<p>{escape(m.group(1))}</p>"))
            i += 1
        else:
            para = []
            while i < len(lines) and lines[i].strip() and not re.match(r"^(#|\||- |>|!\[)", lines[i]):
                para.append(lines[i])
                i += 1
            out.append(f"<p>{_inline(' '.join(para))}</p>")
    return "\n".join(out)


def _png(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<figure><img alt="{escape(alt)}" src="data:image/png;base64,{data}"></figure>'


def _csv_table(path: Path) -> str:
    """``results.csv`` cell for cell (``id="results-csv"``): the header row, then one row per run and step."""
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return ""
    head = "".join(f"<th>{escape(c)}</th>" for c in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{escape(c)}</td>" for c in row) + "</tr>" for row in rows[1:])
    return (f'<h2>Raw numbers (results.csv)</h2><table id="results-csv"><thead><tr>{head}</tr></thead>'
            f"<tbody>{body}</tbody></table>")


def write_html_report(suite_dir: str | Path, markdown: str, charts: Mapping[str, Sequence[Chart]]) -> Path:
    """Write ``suite_dir/report.html`` from the report's ``markdown``; returns its path.

    ``charts`` maps a plot's stem (``train_loss``) to the SVG charts drawn instead of its PNG; every other
    image the markdown links under ``suite_dir`` is embedded as a data URI.
    """
    suite_dir = Path(suite_dir)
    image = {}
    for target in re.findall(r"^!\[[^\]]*\]\(([^)\s]+)\)$", markdown, flags=re.MULTILINE):
        path = suite_dir / target
        if path.stem in charts and charts[path.stem]:
            image[target] = ('<div class="charts">' + "".join(render_chart(c) for c in charts[path.stem])
                             + "</div>")
        elif path.suffix == ".png" and path.is_file():
            image[target] = _png(path, path.stem)
    title = next((line[2:] for line in markdown.splitlines() if line.startswith("# ")), "report")
    body = markdown_to_html(markdown, image)
    csv_path = suite_dir / "results.csv"
    table = _csv_table(csv_path) if csv_path.is_file() else ""
    page = (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{escape(title.replace("`", ""))}'
            f'</title><style>{CSS}</style></head><body>\n{body}\n{table}\n</body></html>\n')
    return write_text(suite_dir / HTML_FILE, page)
