"""`build_report`: the report of one analysis directory, from reading its inputs to writing
`report.html` (the initial view: sort column and open card)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

from jaxcoders.analysis.report.causal import causal_section
from jaxcoders.analysis.report.figures import make_plots
from jaxcoders.analysis.report.inputs import load_inputs
from jaxcoders.analysis.report.latent_table import merged_table, template_share_from_summary
from jaxcoders.analysis.report.page import render_html
from jaxcoders.analysis.report.page_data import report_data
from jaxcoders.analysis.report.summary import summary_items


def build_report(analysis_dir, out=None, *, tokenizer=None, title: Optional[str] = None, max_cards: int = 500,
                 top_examples: int = 10, bucket_examples: int = 5, plots: bool = True,
                 sort_by: str = "latent", open_latent: Optional[int] = None) -> Path:
    """Write the report of one analysis directory (default `<analysis_dir>/report.html`); returns its path.

    The page opens with the table sorted by the column `sort_by` (ascending for "latent" and text
    columns, descending otherwise; e.g. "delta_norm" puts the chat-only latents first) and, with
    `open_latent` ("first" = the first card: genuine chat-specific, then chat-only latents), that
    latent's card open; a `#latent-<j>` URL hash still wins."""
    inp = load_inputs(analysis_dir)
    summary, ex = inp["summary"], inp["examples"]
    t = template_share_from_summary(merged_table(inp["table"], ex), summary)
    name = title or Path(summary.get("crosscoder") or (ex or {}).get("meta", {}).get("crosscoder") or inp["dir"]).name
    if name in ("model", "export", "final"):
        name = inp["dir"].name
    data = report_data(t, summary, ex, tokenizer=tokenizer, max_cards=max_cards, top_examples=top_examples,
                       bucket_examples=bucket_examples)
    keys = [c["key"] for c in data["columns"]]
    if sort_by not in keys:
        raise ValueError(f"sort_by={sort_by!r} is not a column of this report (columns: {', '.join(keys)})")
    fmt = {c["key"]: c["fmt"] for c in data["columns"]}[sort_by]
    data["initial"] = {"sort": sort_by, "dir": 1 if sort_by == "latent" or fmt == "str" else -1}
    if open_latent == "first":
        open_latent = next(iter(data["cards"]), None)
    if open_latent is not None:
        if str(open_latent) not in data["cards"]:
            raise ValueError(f"open_latent={open_latent}: latent has no card in this report "
                             f"({len(data['cards'])} cards; raise max_cards or collect its examples)")
        data["initial"]["open"] = int(open_latent)
    page = render_html(data, title=f"jaxcoders report: {name}", summary_items=summary_items(t, summary, ex),
                       plots=make_plots(t) if plots else [], causal=causal_section(inp["interventions"]))
    out = Path(out) if out is not None else inp["dir"] / "report.html"
    if out.is_dir():
        out = out / "report.html"
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(page, encoding="utf-8")
    os.replace(tmp, out)
    return out
