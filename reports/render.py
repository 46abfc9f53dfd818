"""Cell formatting and the Markdown and HTML writers (plain f-strings and ``html.escape``)."""

from __future__ import annotations

import base64
import html
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

MISSING = "—"
CELL_LEGEND = (
    f"{MISSING} = no such point in the inputs; oom, timeout, skipped or error = the point did "
    "not run (see 'Points that did not run'). Times are medians in ms."
)


@dataclass(frozen=True)
class Section:
    """One table or figure of the report, or the note saying why it has no data."""

    key: str
    title: str
    text: Sequence[str]
    table: pd.DataFrame | None = None
    png: bytes | None = None
    note: str | None = None


def format_cell(value: Any) -> str:
    """3 significant digits, whole numbers in full, a dash for a missing value."""
    if isinstance(value, str):
        return value
    if value is None or pd.isna(value):
        return MISSING
    if isinstance(value, bool | np.bool_):
        return "yes" if value else "no"
    if isinstance(value, int | np.integer):
        return str(value)
    value = float(value)
    if math.isinf(value):
        return "inf"
    if 1000 <= abs(value) < 1e7 or (value.is_integer() and abs(value) < 1e7):
        return f"{value:.0f}"
    return f"{value:.3g}"


def markdown_table(frame: pd.DataFrame) -> str:
    """A GitHub pipe table; numeric columns right-aligned."""

    def row(values) -> str:
        return "| " + " | ".join(str(v).replace("|", "\\|") for v in values) + " |"

    align = "|".join("---:" if _numeric(frame[c]) else "---" for c in frame.columns)
    body = map(row, frame.map(format_cell).to_numpy())
    return "\n".join([row(frame.columns), f"|{align}|", *body])


def _numeric(column: pd.Series) -> bool:
    """Numbers, perhaps mixed with the status of points that did not run."""
    if pd.api.types.is_numeric_dtype(column) and not pd.api.types.is_bool_dtype(column):
        return True
    return any(
        isinstance(v, int | float | np.number) and not isinstance(v, bool) and not pd.isna(v)
        for v in column
    )


def markdown_report(title: str, intro: Sequence[str], parts: Mapping[str, list[Section]]):
    """The whole report.md, its first part before the intro; figures link to
    ``figures/<key>.png`` beside it."""
    (first, lead), *rest = parts.items()
    lines = [f"# {title}", "", *_markdown_part(first, lead), *[f"{p}\n" for p in intro]]
    for heading, sections in rest:
        lines += _markdown_part(heading, sections)
    return "\n".join(lines)


def _markdown_part(heading: str, sections: list[Section]) -> list[str]:
    lines = [f"## {heading}", ""]
    for s in sections:
        lines += [f"### {s.title}", "", *[f"{t}\n" for t in s.text]]
        if s.note is not None:
            lines += [f"**No data:** {s.note}", ""]
        elif s.table is not None:
            lines += [markdown_table(s.table), "", f"_{CELL_LEGEND}_", ""]
        else:
            png = f"![{s.title}](figures/{s.key}.png)"
            lines += [png, "", f"[SVG](figures/{s.key}.svg) · PNG above", ""]
    return lines


STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1400px; color: #222;
       padding: 0 1em; }
h1 { border-bottom: 2px solid #444; } h2 { margin-top: 2em; border-bottom: 1px solid #aaa; }
.tbl { border-collapse: collapse; font-size: 12px; margin: 0.5em 0; }
.tbl th, .tbl td { border: 1px solid #ccc; padding: 2px 6px; text-align: right; }
.tbl th { background: #eee; }
.nodata { background: #fff4e0; border-left: 4px solid #e0a000; padding: 0.4em 0.8em; }
.legend, .compared { font-size: 12px; color: #555; }
img { max-width: 100%; border: 1px solid #ddd; }
nav li { font-size: 13px; }
"""


def html_report(title: str, intro: Sequence[str], parts: Mapping[str, list[Section]]):
    """The whole index.html, self-contained (styles inline, figures as base64 data URIs); its
    first part comes before the intro and the table of contents."""
    toc = "".join(
        f'<li><a href="#{s.key}">{html.escape(s.title)}</a></li>'
        for ss in parts.values()
        for s in ss
    )
    (first, lead), *rest = parts.items()
    body = [f"<h1>{html.escape(title)}</h1>", *_html_part(first, lead)]
    body += [f"<p>{html.escape(p)}</p>" for p in intro]
    body.append(f"<nav><ul>{toc}</ul></nav>")
    for heading, sections in rest:
        body += _html_part(heading, sections)
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>"
        f"<body>{''.join(body)}</body></html>\n"
    )


def _html_part(heading: str, sections: list[Section]) -> list[str]:
    return [f"<h2>{html.escape(heading)}</h2>", *map(_html_section, sections)]


def _html_section(s: Section) -> str:
    claim, *rest = [*s.text, ""]
    parts = [f'<section id="{s.key}"><h3>{html.escape(s.title)}</h3>']
    parts.append(f"<p>{html.escape(claim)}</p>")
    parts += [f'<p class="compared">{html.escape(t)}</p>' for t in rest if t]
    if s.note is not None:
        parts.append(f'<p class="nodata"><b>No data:</b> {html.escape(s.note)}</p>')
    elif s.table is not None:
        cells = s.table.map(format_cell)
        parts.append(cells.to_html(index=False, escape=True, border=0, classes="tbl"))
        parts.append(f'<p class="legend">{html.escape(CELL_LEGEND)}</p>')
    elif s.png is not None:
        data = base64.b64encode(s.png).decode("ascii")
        parts.append(f'<img alt="{html.escape(s.title)}" src="data:image/png;base64,{data}">')
    parts.append("</section>")
    return "".join(parts)
