"""Small HTML building blocks for the report: one self-contained page, no scripts.

Every number taken from a summary is written by :func:`number` as
``<span data-source="summary" data-key="stages.fit.seconds" data-value="12.3">12.3</span>``:
``data-key`` is the dotted path of the value in its JSON file (``summary`` for
``OUTPUT/summary.json``, ``train`` for ``OUTPUT/train/summary.json``, ``derived`` for values
the report computes) and ``data-value`` its exact JSON value, so a test (or a script) can
check the page against the files it was made from.
"""

from __future__ import annotations

import html
import json
from typing import Any, Sequence

__all__ = ["number", "text", "table", "figure", "section", "page"]

STYLE = """
body { font-family: system-ui, -apple-system, 'Segoe UI', sans-serif; margin: 0 auto;
       max-width: 1100px; padding: 0 1.2em 3em; color: #222; line-height: 1.4; }
h1 { font-size: 1.6em; margin-top: 1em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; }
h3 { margin-bottom: 0.3em; }
nav a { margin-right: 1em; }
table { border-collapse: collapse; margin: 0.6em 0 1em; font-size: 0.88em; }
th, td { border: 1px solid #ddd; padding: 0.2em 0.6em; text-align: left; vertical-align: top; }
th { background: #f4f4f4; } td.n, th.n { text-align: right; font-variant-numeric: tabular-nums; }
figure { margin: 0.6em 0 1.2em; } figure img { max-width: 100%; height: auto; }
figcaption { font-size: 0.85em; color: #555; }
.cards { display: flex; flex-wrap: wrap; gap: 0.8em; }
.card { border: 1px solid #ddd; border-radius: 6px; padding: 0.5em 1em; min-width: 8em; }
.card b { display: block; font-size: 1.4em; }
.note { color: #8a5300; } .err { color: #a00; } code { font-size: 0.9em; }
.samples { display: flex; flex-wrap: wrap; gap: 0.5em 1.5em; }
"""


def _format(value: Any, digits: int) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}".replace(",", " ") if abs(value) >= 10_000 else str(value)
    if isinstance(value, float):
        if value != 0 and abs(value) < 10 ** -digits:
            return f"{value:.3g}"
        return f"{value:.{digits}f}"
    return str(value)


def number(value: Any, key: str, source: str = "summary", digits: int = 3,
           percent: bool = False) -> str:
    """A number with its provenance; ``percent`` shows fractions as ``98.9 %``."""
    if percent and isinstance(value, (int, float)) and not isinstance(value, bool):
        shown = f"{100 * value:.{max(digits - 2, 0)}f} %"
    else:
        shown = _format(value, digits)
    return (f'<span data-source="{source}" data-key="{html.escape(key)}" '
            f'data-value="{html.escape(json.dumps(value))}">{html.escape(shown)}</span>')


def text(value: Any) -> str:
    """Escaped text."""
    return html.escape("" if value is None else str(value))


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], numeric: Sequence[int] = (),
          key: str | None = None) -> str:
    """A table of already-escaped cells; columns in ``numeric`` are right-aligned."""
    numeric = set(numeric)
    head = "".join(f'<th class="n">{h}</th>' if i in numeric else f"<th>{h}</th>"
                   for i, h in enumerate(headers))
    body = "".join("<tr>" + "".join(f'<td class="n">{c}</td>' if i in numeric else f"<td>{c}</td>"
                                    for i, c in enumerate(row)) + "</tr>" for row in rows)
    attr = f' data-table="{html.escape(key)}"' if key else ""
    return f"<table{attr}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def figure(src: str, caption: str, alt: str) -> str:
    """An image from the report folder with an escaped caption (``caption`` may hold HTML)."""
    return (f'<figure><img src="{html.escape(src)}" alt="{html.escape(alt)}" loading="lazy">'
            f"<figcaption>{caption}</figcaption></figure>")


def section(anchor: str, title: str, body: str) -> str:
    """A titled section with an anchor for the navigation bar."""
    return f'<section id="{anchor}"><h2>{html.escape(title)}</h2>{body}</section>'


def page(title: str, subtitle: str, sections: Sequence[tuple[str, str, str]]) -> str:
    """The whole page: ``sections`` are ``(anchor, title, body)``; empty bodies are skipped."""
    shown = [(a, t, b) for a, t, b in sections if b]
    nav = " ".join(f'<a href="#{a}">{html.escape(t)}</a>' for a, t, _ in shown)
    content = "\n".join(section(a, t, b) for a, t, b in shown)
    return (f"<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head>\n<body>"
            f"<h1>{html.escape(title)}</h1><p>{subtitle}</p><nav>{nav}</nav>\n{content}\n"
            f"</body></html>\n")
