"""One self-contained static HTML report per crosscoder: opens from disk, no server, no network.

`build_report(analysis_dir)` reads what the analysis commands wrote into one directory and writes
`report.html` (CSS and JavaScript inline, plots as base64 PNG, data as JSON in a
`<script type="application/json" id="report-data">` tag):

* `latents.parquet` (or `latent_scaling.parquet`, or `.csv`) + `summary.json` from
  experiments/analyze.py / latent_scaling.py: the per-latent table and the summary numbers;
* `examples.json` + `examples.parquet` + `example_latents.parquet` from
  experiments/collect_examples.py: the examples of the latent cards, bucket populations, usage
  counts (template-token share; the tied crosscoder's slot counts and ratios). For a tied
  crosscoder (which `analyze` does not cover) example_latents alone makes the table;
* optionally `interventions.json` + `interventions.png` from experiments/interventions.py (in the
  directory or its `interventions/` subdirectory): the "Causal evaluation" section (`#causal`).

The page: summary numbers; the Δnorm histogram, ν^ε/ν^r scatter (chat-only latents; mirror probe
for base-only latents when present), the tied crosscoder's r_base/r_chat scatter and the firing
frequency histogram; a sortable, filterable latent table (`#latent-table`: click a header to
sort; `#filter` takes words matched against tag and latent id and conditions such as
`delta_norm>0.9 frequency<0.01 tag=chat-only`; `#tag-filter`; `#only-examples`); clicking a row
opens the latent's card (`#card-panel .latent-card`, also via the URL hash `#latent-<j>`): its
numbers, its logit lens (`.lens`: the tokens its decoder rows promote / suppress in each model, from
the table's `logit_lens_<model>_<kind>` columns) and activation-density histogram (`.density`, from
`activation_hist`) when the table has them, and its examples per bucket (top, then the quantile buckets), each example shown twice
side by side, tokens highlighted by the base model's and the chat model's contribution
‖f_m d_j^m‖ on one shared colour scale per latent (a chat-only latent lights up on the right only).

Token ids become text with a tokenizer (`tokenizer=`: a path / hub name for
`transformers.AutoTokenizer.from_pretrained`, imported only then; an object with `decode`; or a
{id: text} dict); without one tokens show as `<id>`.

The package, in the order the report is made:

* `inputs`: reading the analysis directory (`load_inputs`, `load_interventions`, `TABLE_FILES`);
* `latent_table`: the analysis table merged with the examples' columns (`merged_table`);
* `page_data`: the JSON the page's script reads (`report_data`, `COLUMNS`, `EXTRA_CARD`), with
  the latent cards from `cards`, numbers rounded by `json_values` and token texts from `tokens`
  (`token_strings`);
* `summary`: the summary numbers; `figures`: the plots (`make_plots`); `causal`: the "Causal
  evaluation" section (`causal_section`);
* `page`: the HTML page (`render_html`), filled from `templates/page.html`, `templates/report.css`
  and `templates/report.js` (package data, read with importlib.resources);
* `build`: `build_report`, the whole report of one directory.
"""
from __future__ import annotations

from jaxcoders.analysis.report.build import build_report
from jaxcoders.analysis.report.causal import causal_section
from jaxcoders.analysis.report.figures import make_plots
from jaxcoders.analysis.report.inputs import TABLE_FILES, load_inputs, load_interventions
from jaxcoders.analysis.report.latent_table import merged_table
from jaxcoders.analysis.report.page import render_html
from jaxcoders.analysis.report.page_data import COLUMNS, EXTRA_CARD, report_data
from jaxcoders.analysis.report.tokens import token_strings

__all__ = ["COLUMNS", "EXTRA_CARD", "TABLE_FILES", "build_report", "causal_section", "load_inputs",
           "load_interventions", "make_plots", "merged_table", "render_html", "report_data", "token_strings"]
