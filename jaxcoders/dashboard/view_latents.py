"""The Latents view: the latent browser (left) and the open latent's page (right).

Browser: the analysis table (Δnorm tag, Latent Scaling, ν^ε, ν^r, frequency, decoder cosine, …,
the report's columns) with a filter box in the report's language (`latents.filter_table`), a tag
filter, "only latents with examples", a sort column and direction. Selecting a row (or typing an
index in "Open latent") opens that latent's page.

Latent page: its tag and numbers (decoder norms and cosine, Latent Scaling β / ν values, usage),
activation density (the analysis's histogram of activations, sequences per activation bucket of
the examples, firing frequency per token class), the logit lens (or a slot saying how to get it), and the max-activating examples per
quantile bucket, base and chat contributions side by side (the report's card, `render.card_html`).
"""
from __future__ import annotations

import html

import streamlit as st

from jaxcoders.dashboard import latents as lat
from jaxcoders.dashboard import render
from jaxcoders.dashboard.state import LATENT_BOX, LATENT_KEY, go_steer, keep, open_latent, shown_errors

TAGS = ("", "chat-only", "base-only", "shared", "other")
FORMATS = {"f3": "%.3f", "e2": "%.2e", "g3": "%.3g", "pct": "percent", "int": "%d"}
TABLE_KEY = "latent_table"


def _column_config(t, cols):
    fmts = {k: f for k, _, f, _ in lat.COLUMNS}
    tips = {k: tip for k, _, _, tip in lat.COLUMNS}
    cfg = {}
    for key, label in cols:
        f = fmts.get(key, "str")
        if f == "str":
            cfg[key] = st.column_config.TextColumn(label, help=tips.get(key))
        else:
            cfg[key] = st.column_config.NumberColumn(label, help=tips.get(key), format=FORMATS.get(f, "%.3g"))
    return cfg


def _on_select() -> None:
    ev = st.session_state.get(TABLE_KEY)
    rows = (ev or {}).get("selection", {}).get("rows", []) if isinstance(ev, dict) else \
        list(getattr(getattr(ev, "selection", None), "rows", []) or [])
    shown = st.session_state.get("_shown_latents") or []
    if rows and rows[0] < len(shown):
        open_latent(shown[rows[0]])


def _on_box() -> None:
    st.session_state["_latent_from_box"] = True


def browser(data) -> None:
    """The filterable, sortable latent table; a selected row opens its latent."""
    t = data.t
    cols = lat.browser_columns(t)
    c1, c2, c3 = st.columns([3, 1.2, 1.2])
    for key, default in (("filter", ""), ("tag_filter", ""), ("only_examples", False)):
        keep(key, default)
    query = c1.text_input("Filter", key="filter", placeholder="chat-only · 123 · delta_norm>0.9 · ν^ε<0.2",
                          help="Words match the tag, the latent id or a logit-lens token; conditions use column "
                               "keys or headers: delta_norm>0.9 frequency<0.01 tag=shared.")
    tag = c2.selectbox("Tag", TAGS, key="tag_filter", format_func=lambda x: x or "all tags")
    only = c3.checkbox("with examples", key="only_examples", disabled="n_examples" not in t)
    keys = [k for k, _ in cols]
    labels = dict(cols)
    c4, c5 = st.columns([3, 1])
    keep("sort_by", "delta_norm" if "delta_norm" in keys else "latent")
    keep("sort_desc", st.session_state["sort_by"] != "latent")
    sort_by = c4.selectbox("Sort by", keys, key="sort_by", format_func=lambda k: labels[k])
    desc = c5.toggle("descending", key="sort_desc")
    with shown_errors("the latent filter"):
        view = lat.sort_table(lat.filter_table(t, query, tag, only), sort_by, desc)
        lens_col = None
        if data.has_logit_lens() and "logit_lens_chat_promoted" in view:
            lens_col = "logit lens ↑ (chat)"
            view = view.assign(**{lens_col: view["logit_lens_chat_promoted"].map(_lens_preview)})
        st.session_state["_shown_latents"] = [int(j) for j in view["latent"].to_numpy()]
        st.caption(f"showing {len(view):,} of {len(t):,} latents · select a row to open its page · source: "
                   f"{data.source}")
        show = keys + ([lens_col] if lens_col else [])
        height = int(min(560, 35 * (len(view) + 1) + 3))
        st.dataframe(view[show], hide_index=True, column_config=_column_config(view, cols), height=height,
                     key=TABLE_KEY, on_select=_on_select, selection_mode="single-row")


def _lens_preview(v) -> str:
    toks = lat.logit_lens({"logit_lens_chat_promoted": v}) or {}
    return " ".join(next(iter(toks.values()), [])[:5])


def opener(data, dict_size: int) -> None:
    """"Open latent" box: any index; a bad one gives one message."""
    keep(LATENT_BOX, "" if st.session_state.get(LATENT_KEY) is None else str(st.session_state[LATENT_KEY]))
    box = st.text_input("Open latent", key=LATENT_BOX, placeholder="latent index, e.g. 121", on_change=_on_box)
    if box and (st.session_state.pop("_latent_from_box", False) or st.session_state.pop("_latent_from_url", False)):
        try:
            j = lat.parse_latent(box, dict_size)
            data.row(j)
            st.session_state[LATENT_KEY] = j
            st.session_state.pop("latent_error", None)
        except lat.DashboardError as e:
            st.session_state["latent_error"] = str(e)
    if st.session_state.get("latent_error"):
        st.error(st.session_state["latent_error"], icon="⚠️")


def _stats_html(groups: dict) -> str:
    parts = []
    for group, vals in groups.items():
        cells = "".join(f"<div><span>{html.escape(label)}: </span>{html.escape(render.fmt(v))}</div>"
                        for label, v in vals)
        parts.append(f'<h4>{html.escape(group)}</h4><div class="card-stats" data-group="{html.escape(group)}">'
                     f"{cells}</div>")
    return "".join(parts)


def latent_page(data, j: int) -> None:
    """The page of latent j (see the module docstring)."""
    row = data.row(j)
    tag = str(row.get("tag") or "")
    genuine = " · survives Latent Scaling ✓" if row.get("genuine") == "✓" else ""
    head = f'<h3 style="margin:0">Latent {j} ' + (f'<span class="tag tag-{html.escape(tag)}">{html.escape(tag)}</span>'
                                                  if tag else "") + f"{genuine}</h3>"
    st.html(render.wrap(head + _stats_html(lat.number_groups(row)), latent=j, tag=tag))
    st.button("Steer with this latent", key="steer_this", on_click=go_steer, args=(j,),
              help="Opens Prompt & steering with this latent in the steering box.")
    dens = lat.density(row, data.examples)
    freq = f"firing frequency {render.fmt(dens['frequency'])}" if dens["frequency"] is not None else ""
    st.markdown(f"**Activation density** {('· ' + freq) if freq else ''}")
    parts = (render.hist_html(dens["hist"]) if dens["hist"] else "") + render.bars_html(
        "sequences per activation bucket (examples)", dens["buckets"]) + render.bars_html(
        "firing frequency per token class" if all(v <= 1 for _, v in dens["classes"])
        else "firing tokens per token class", dens["classes"], render.fmt)
    if parts:
        st.html(render.wrap(parts, what="density", latent=j))
    else:
        st.caption("no density data (the analysis has no usage columns and no examples were collected)")
    st.markdown("**Logit lens**")
    lens = lat.logit_lens(row)
    if lens:
        st.html(render.wrap(render.lens_html(lens), what="logit-lens"))
    else:
        st.info(lat.LOGIT_LENS_HINT)
    st.markdown("**Max-activating examples**")
    card = lat.example_card(data, j)
    if card is None:
        st.info("No examples for this latent (not collected, or it never fired): run experiments/collect_examples.py "
                "with this latent, and pass --examples.")
    else:
        st.html(render.wrap(render.card_html(card), what="examples", latent=j))


def view(data, dict_size: int) -> None:
    """Browser left, latent page right."""
    left, right = st.columns([1.15, 1], gap="medium")
    with left:
        with shown_errors("the latent browser"):
            browser(data)
    with right:
        opener(data, dict_size)
        j = st.session_state.get(LATENT_KEY)
        if j is None:
            st.info("Select a row of the table (or type a latent index above) to open its page.")
            return
        with shown_errors(f"latent {j}'s page"):
            latent_page(data, int(j))


__all__ = ["browser", "latent_page", "open_latent", "opener", "view"]
