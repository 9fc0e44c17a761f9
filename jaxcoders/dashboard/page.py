"""The dashboard page: spec checks, the sidebar (what is loaded, which view), then one view.

`main()` is the whole Streamlit script (`app.py` calls it): it reads the spec from the environment
(`inputs.from_env`), checks it once per process (`state.checked`; a bad spec — a dimension
mismatch, a missing layer or directory — stops the page with one message), applies the URL's
query parameters, and shows either the Latents view (`view_latents`) or the Prompt & steering view
(`view_prompt`).
"""
from __future__ import annotations

import html

import streamlit as st

from jaxcoders.dashboard import view_latents, view_prompt
from jaxcoders.dashboard.inputs import DashboardError, from_env, resolved
from jaxcoders.dashboard.render import style_tag
from jaxcoders.dashboard.state import (VIEW_KEY, VIEWS, apply_query_params, checked, latent_data, one_line,
                                       shown_errors, sync_query_params)

TITLE = "jaxcoders dashboard"


def sidebar(spec, info: dict) -> None:
    st.sidebar.title(TITLE)
    st.sidebar.radio("View", VIEWS, key=VIEW_KEY)
    rows = [("crosscoder", spec.crosscoder), ("base model", spec.base_model), ("chat model", spec.chat_model),
            ("layer L", spec.layer), ("D × F", f"{info['d_model']} × {info['dict_size']:,}"),
            ("analysis", spec.analysis or ("–" if spec.examples else "– (decoder columns only)")),
            ("examples", spec.examples or "–"), ("device", spec.device)]
    cells = "".join(f"<tr><th style='text-align:left;padding-right:8px;vertical-align:top'>{html.escape(k)}</th>"
                    f"<td style='overflow-wrap:anywhere'>{html.escape(str(v))}</td></tr>" for k, v in rows)
    st.sidebar.markdown(f"**{html.escape(spec.name)}**")
    st.sidebar.html(f"<table style='font-size:12px' class='jc-spec'>{cells}</table>")
    st.sidebar.caption("Base model = blue, chat model = red. Latents: Δnorm tag (chat-only > 0.9, base-only < 0.1).")


def main() -> None:
    st.set_page_config(page_title=TITLE, layout="wide")
    try:
        spec = from_env()
        info = checked(spec.to_json())
    except (DashboardError, ValueError, FileNotFoundError) as e:
        st.title(TITLE)
        st.error(one_line(e), icon="⚠️")
        st.stop()
    spec = resolved(spec, info)
    spec_json = spec.to_json()
    st.html(style_tag())  # the report's token styles, scoped under .jc, once per page
    apply_query_params()
    sidebar(spec, info)
    if st.session_state.get(VIEW_KEY, VIEWS[0]) == VIEWS[0]:
        data = None
        with shown_errors("loading the latent table"):
            data = latent_data(spec_json)
        if data is not None:
            view_latents.view(data, info["dict_size"])
    else:
        view_prompt.view(spec_json)
    sync_query_params()
