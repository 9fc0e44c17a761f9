"""The report's HTML page (`render_html`): the skeleton templates/page.html filled with the style
sheet templates/report.css, the script templates/report.js, the summary, plots, causal section
and the page data as JSON. The templates are package data, read with importlib.resources."""
from __future__ import annotations

import html
import json
from importlib import resources

TEMPLATES = "templates"  # the folder of this package holding page.html, report.css and report.js


def read_template(name: str) -> str:
    """The text of templates/<name> of this package."""
    return (resources.files(__package__) / TEMPLATES / name).read_text(encoding="utf-8")


def _json_script(obj) -> str:
    s = json.dumps(obj, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return s.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def render_html(data: dict, *, title: str, summary_items, plots, causal: str = "") -> str:
    """The whole page as one self-contained HTML string."""
    esc = html.escape
    summ = "".join(f"<tr><th>{esc(k)}</th><td>{esc(str(v))}</td></tr>" for k, v in summary_items)
    figs = "".join(f'<figure><img alt="{esc(t)}" src="data:image/png;base64,{b}"><figcaption>{esc(t)}</figcaption>'
                   f"</figure>" for t, b in plots)
    page = read_template("page.html").replace("__CSS__", read_template("report.css"))
    page = page.replace("__JS__", read_template("report.js")).replace("__TITLE__", esc(title))
    page = page.replace("__SUMMARY__", summ).replace("__CAUSAL__", causal)
    page = page.replace("__PLOTS__", figs or "<p>no plots: the table lacks the columns</p>")
    return page.replace("__DATA__", _json_script(data))  # last: the data may contain anything
