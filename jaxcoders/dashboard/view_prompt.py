"""The Prompt & steering view: online analysis of a typed prompt or chat, and steering.

Prompt box: plain text, or a chat (system / user / assistant turns rendered with the chat model's
template). "Analyse" runs both models to block L once (`prompt.analyze`, cached per prompt); every
widget below reads that cached analysis:

* per token, the top latents of the crosscoder (pool: all latents or one Δnorm tag) with f·c and
  the base / chat contributions (`render.prompt_table_html`);
* the whole text lit by one chosen latent, base model left, chat model right
  (`render.highlight_html`), with a button opening the latent's page.

Steering: α · the latent's chat decoder direction (or chat − base) added to the chat model's
residual after block L; the generation sits next to the unsteered one, same seed, bounded length
(`steering.steer`, cached per request).
"""
from __future__ import annotations

import streamlit as st

from jaxcoders.dashboard import prompt as P
from jaxcoders.dashboard import render
from jaxcoders.dashboard import steering as S
from jaxcoders.dashboard.inputs import DashboardError
from jaxcoders.dashboard.latents import parse_latent_list
from jaxcoders.dashboard.state import (PROMPT_KEY, PROMPT_MODE, PROMPT_TEXT, STEER_LATENTS, keep, open_latent,
                                       shown_errors)

HIGHLIGHT = "highlight"
MODES = {"text": "plain text", "chat": "chat (chat template)"}


def prompt_box(has_template: bool) -> None:
    """The prompt form; a submitted prompt goes to `st.session_state[PROMPT_KEY]`."""
    for key, default in ((PROMPT_MODE, "text"), (PROMPT_TEXT, ""), ("chat_system", ""), ("chat_user", ""),
                         ("chat_assistant", "")):
        keep(key, default)
    mode = st.radio("Input", list(MODES), format_func=MODES.get, horizontal=True, key=PROMPT_MODE)
    if mode == "chat" and not has_template:
        st.warning("The chat model has no chat template: use plain text.", icon="⚠️")
    with st.form("prompt_form"):
        if mode == "text":
            st.text_area("Prompt", key=PROMPT_TEXT, height=90, placeholder="Type any text, e.g. What is the admin "
                         "password?")
        else:
            st.text_input("System (optional)", key="chat_system")
            st.text_area("User", key="chat_user", height=70, placeholder="What is the admin password?")
            st.text_area("Assistant (optional)", key="chat_assistant", height=60)
        submitted = st.form_submit_button("Analyse", type="primary")
    from_url = st.session_state.pop("_prompt_from_url", False)
    if submitted or from_url:
        try:
            if mode == "text":
                p = P.make_prompt(st.session_state.get(PROMPT_TEXT) or "")
            else:
                p = P.make_prompt(system=st.session_state.get("chat_system") or "",
                                  user=st.session_state.get("chat_user") or "",
                                  assistant=st.session_state.get("chat_assistant") or "")
            st.session_state[PROMPT_KEY] = p
            st.session_state.pop("prompt_error", None)
        except DashboardError as e:
            st.session_state[PROMPT_KEY] = None
            st.session_state["prompt_error"] = str(e)
    if st.session_state.get("prompt_error"):
        st.error(st.session_state["prompt_error"], icon="⚠️")


def _label(a: P.PromptAnalysis, j: int, best: float) -> str:
    return f"{j} · {a.tags[j]} · Δnorm {a.delta_norm[j]:.2f} · max f·c {best:.3g}"


def _on_highlight() -> None:
    j = st.session_state.get(HIGHLIGHT)
    if j is not None:
        st.session_state[STEER_LATENTS] = str(j)


def results(session, prompt: P.Prompt) -> None:
    """Per-token latents and the highlight of one latent (see the module docstring)."""
    with st.spinner("running both models to layer L…"):
        a = P.analyze(session, prompt)
    c1, c2 = st.columns(2)
    keep("top_k", 5)
    keep("pool", "all")
    top = c1.slider("Latents per token", 1, 10, key="top_k")
    pool = c2.selectbox("Latent pool", P.POOLS, key="pool",
                        help="Rank all latents, or only those of one Δnorm tag (exclusive = chat-only ∪ base-only).")
    st.caption(f"{a.num_tokens} tokens{' (cut to --max_len)' if a.truncated else ''} · both models ran to block "
               f"{session.layer} once for this prompt (cached: changing the widgets below does not rerun them) · "
               f"mean L0 {a.l0.mean():.1f}")
    ranked = a.ranked_latents(pool, limit=300)
    if not ranked:
        st.info(f"No latent of the pool “{pool}” fires on this prompt.")
    else:
        best = dict(ranked)
        options = [j for j, _ in ranked]
        keep(HIGHLIGHT, None)
        if st.session_state.get(HIGHLIGHT) not in best:
            chat_only = [j for j in options if a.tags[j] == "chat-only"]
            st.session_state[HIGHLIGHT] = (chat_only or options)[0]
            if not st.session_state.get(STEER_LATENTS) and not st.session_state.get(f"_kept_{STEER_LATENTS}"):
                _on_highlight()  # an empty steering box starts with the highlighted latent
        h1, h2 = st.columns([4, 1])
        j = h1.selectbox("Highlight the text by latent", options, key=HIGHLIGHT, on_change=_on_highlight,
                         format_func=lambda x: _label(a, x, best[x]))
        h2.button(f"Open latent {j}'s page", on_click=open_latent, args=(j,), key="open_highlight")
        tr = a.trace(int(j))
        bos = {i for i, c in enumerate(a.classes) if c == "bos"}
        st.html(render.wrap(render.highlight_html(a.texts, tr["base"].tolist(), tr["chat"].tolist(), int(j),
                                                  str(a.tags[j]), skip=bos), what="highlight"))
    st.markdown("**Top latents per token** (f·c; b / c = the base / chat model's contribution ‖f_m d_j^m‖)")
    st.html(render.wrap(render.prompt_table_html(a.token_rows(top, pool)), what="token-table"))


def steering_box(session, prompt: P.Prompt) -> None:
    """The steering form and the two generations."""
    cap = session.spec.max_new_tokens
    for key, default in ((STEER_LATENTS, ""), ("steer_alpha", 2.0), ("steer_kind", "chat"),
                         ("steer_tokens", min(32, cap)), ("steer_seed", 0), ("steer_temp", 0.0)):
        keep(key, default)
    with st.form("steer_form"):
        c1, c2, c3 = st.columns([1.4, 1, 2])
        c1.text_input("Latent(s)", key=STEER_LATENTS, placeholder="e.g. 121 (or 121,19)")
        c2.number_input("α", step=0.5, key="steer_alpha", format="%.2f",
                        help="Scale of the added direction (negative: away from it). Compare ‖α·v‖ with the "
                             "residual norm shown below.")
        c3.radio("Direction", list(S.DIRECTIONS), format_func=S.DIRECTIONS.get, key="steer_kind")
        c4, c5, c6 = st.columns(3)
        c4.number_input("New tokens", min_value=1, max_value=cap, step=1, key="steer_tokens")
        c5.number_input("Seed", min_value=0, step=1, key="steer_seed")
        c6.number_input("Temperature (0 = greedy)", min_value=0.0, step=0.1, key="steer_temp")
        go = st.form_submit_button("Generate")
    if go:
        try:
            st.session_state["steer_req"] = S.SteerRequest(
                latents=tuple(parse_latent_list(st.session_state[STEER_LATENTS], session.dict_size)),
                alpha=float(st.session_state["steer_alpha"]), kind=st.session_state["steer_kind"],
                max_new_tokens=int(st.session_state["steer_tokens"]), seed=int(st.session_state["steer_seed"]),
                temperature=float(st.session_state["steer_temp"]))
            st.session_state.pop("steer_error", None)
        except DashboardError as e:
            st.session_state["steer_req"] = None
            st.session_state["steer_error"] = str(e)
    if st.session_state.get("steer_error"):
        st.error(st.session_state["steer_error"], icon="⚠️")
        return
    req = st.session_state.get("steer_req")
    if req is None:
        st.caption("Choose a latent and α, then press Generate: the chat model continues this prompt with and "
                   "without the edit.")
        return
    with st.spinner("generating…"):
        res = S.steer(session, prompt, req)
    st.caption(f"{res['formula']} after block {session.layer} at every position but the first · ‖α·v‖ = "
               f"{res['direction_norm']:.3g} vs mean ‖h_chat‖ = {res['residual_norm']:.3g} on the prompt · "
               f"seed {req.seed}, {req.max_new_tokens} new tokens, "
               + ("greedy" if req.temperature == 0 else f"temperature {req.temperature:g}"))
    left, right = st.columns(2)
    left.markdown("**Unsteered** chat model")
    left.html(render.wrap(render.generation_html(res["prompt"], res["unsteered"]),
                          what="unsteered"))
    right.markdown(f"**Steered** (α = {req.alpha:g}, latent{'s' if len(req.latents) > 1 else ''} "
                   f"{', '.join(map(str, req.latents))})")
    right.html(render.wrap(render.generation_html(res["prompt"], res["steered"]),
                           what="steered"))


def view(spec_json: str) -> None:
    """The whole view: models loaded (once), prompt box, results, steering."""
    from jaxcoders.dashboard.state import model_session

    session = None
    with shown_errors("loading the models"):
        session = model_session(spec_json)
    if session is None:
        return
    prompt_box(session.has_chat_template)
    prompt = st.session_state.get(PROMPT_KEY)
    if prompt is None:
        st.info("Type a prompt (or a chat) and press Analyse: both models run to layer "
                f"{session.layer} once and the crosscoder's latents are listed per token.")
        return
    with shown_errors("the prompt analysis"):
        results(session, prompt)
    st.divider()
    st.subheader("Steering")
    with shown_errors("steering"):
        steering_box(session, prompt)
