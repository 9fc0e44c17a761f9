"""What every page of the Streamlit app shares: the cached loaders, error messages, navigation.

Loaders are `st.cache_resource` functions of the spec's JSON, so a dashboard process loads the
latent table, the examples, the crosscoder and the two models once, whatever the number of
browser tabs or reruns (Streamlit reruns the script on every widget change):

* `checked(spec_json)` — `check_spec` (configs only): a bad spec stops the page with one message;
* `latent_data(spec_json)` — the table and examples (`latents.load_latent_data`), tokens decoded
  with the chat tokenizer;
* `model_session(spec_json)` — `models.ModelSession` (the prompt cache lives in it).

`shown_errors()` turns an exception inside a panel into one `st.error` line (a `DashboardError` or
other bad-input `ValueError` as it is; anything else as "<panel> failed: ..." with the traceback
in the server log), never a traceback in the page.

`keep(key, default)` gives a keyed widget its default and keeps its value across view switches
(Streamlit forgets the state of widgets a run does not draw).

Navigation state (`st.session_state`): `VIEW_KEY` the view; `LATENT_KEY` the open latent;
`open_latent(j)` / `go_steer(j)` are widget callbacks. The URL's query parameters `view`, `latent`,
`prompt` (a text) and `chat` (a user message) set the first view of a browser session
(`apply_query_params`; a prompt given there is analysed at once).
"""
from __future__ import annotations

import contextlib
import logging
import traceback

import streamlit as st

from jaxcoders.dashboard.inputs import DashboardError, DashboardSpec, check_spec

VIEWS = ("Latents", "Prompt & steering")
VIEW_KEY, LATENT_KEY, LATENT_BOX, STEER_LATENTS = "view", "latent", "latent_box", "steer_latents"
PROMPT_TEXT, PROMPT_KEY, PROMPT_MODE = "prompt_text", "prompt", "prompt_mode"
log = logging.getLogger("jaxcoders.dashboard")


@st.cache_resource(show_spinner="checking the crosscoder and the models…")
def checked(spec_json: str) -> dict:
    return check_spec(DashboardSpec.from_json(spec_json))


@st.cache_resource(show_spinner="loading the latent table and the examples…")
def latent_data(spec_json: str):
    from jaxcoders.dashboard.latents import decoder_table, load_latent_data
    from jaxcoders.extract.models import ModelError, load_tokenizer

    spec = DashboardSpec.from_json(spec_json)
    try:
        tok = load_tokenizer(spec.chat_model, None, "--chat_model")
    except ModelError:
        tok = None  # examples then show token ids; the prompt panel reports the problem
    fallback = None
    if not spec.analysis and not spec.examples:
        from jaxcoders.io.reference import load_reference

        fallback = decoder_table(load_reference(spec.crosscoder))
    return load_latent_data(spec.analysis, spec.examples, tok, fallback_table=fallback)


@st.cache_resource(show_spinner="loading the crosscoder and both models (once per dashboard)…")
def model_session(spec_json: str):
    from jaxcoders.dashboard.models import ModelSession

    return ModelSession(DashboardSpec.from_json(spec_json))


def one_line(e: BaseException) -> str:
    lines = [ln for ln in str(e).strip().splitlines() if ln.strip()]
    return lines[0] if lines else type(e).__name__


@contextlib.contextmanager
def shown_errors(panel: str):
    """Run a panel; a failure becomes one `st.error` message (see the module docstring)."""
    try:
        yield
    except (DashboardError, ValueError, FileNotFoundError, KeyError) as e:
        msg = one_line(e) if not isinstance(e, KeyError) else f"missing field {e}"
        st.error(msg[:1].upper() + msg[1:], icon="⚠️")
    except Exception as e:  # a bug: one line in the page, the traceback in the server's log
        log.error("%s failed:\n%s", panel, traceback.format_exc())
        st.error(f"{panel} failed: {type(e).__name__}: {one_line(e)} (the traceback is in the dashboard's log)",
                 icon="⚠️")


# ----------------------------------------------------------------------------- navigation


def open_latent(j: int) -> None:
    """Callback: open latent j's page (Latents view), remembered in the URL."""
    st.session_state[LATENT_KEY] = int(j)
    st.session_state[LATENT_BOX] = str(j)
    st.session_state[VIEW_KEY] = VIEWS[0]
    st.session_state.pop("latent_error", None)


def go_steer(j: int) -> None:
    """Callback: steer with latent j (Prompt & steering view)."""
    st.session_state[STEER_LATENTS] = str(j)
    st.session_state[VIEW_KEY] = VIEWS[1]


def apply_query_params() -> None:
    """On a browser session's first run: `?view=prompt|latents`, `?latent=<j>`, `?prompt=<text>` or
    `?chat=<user message>`."""
    if st.session_state.get("_initialized"):
        return
    st.session_state["_initialized"] = True
    qp = st.query_params
    view = (qp.get("view") or "").lower()
    if view.startswith("prompt") or view.startswith("steer"):
        st.session_state[VIEW_KEY] = VIEWS[1]
    elif view.startswith("latent"):
        st.session_state[VIEW_KEY] = VIEWS[0]
    if qp.get("latent"):
        st.session_state[LATENT_BOX] = qp.get("latent")
        st.session_state["_latent_from_url"] = True
    if qp.get("prompt") or qp.get("chat"):
        if qp.get("chat"):
            st.session_state[PROMPT_MODE] = "chat"
            st.session_state["chat_user"] = qp.get("chat")
        else:
            st.session_state[PROMPT_TEXT] = qp.get("prompt")
        st.session_state["_prompt_from_url"] = True
        if not qp.get("view"):
            st.session_state[VIEW_KEY] = VIEWS[1]


def sync_query_params() -> None:
    """Keep `view` and `latent` in the URL so that a page can be linked to."""
    want = {"view": "prompt" if st.session_state.get(VIEW_KEY) == VIEWS[1] else "latents"}
    if st.session_state.get(LATENT_KEY) is not None:
        want["latent"] = str(st.session_state[LATENT_KEY])
    for k, v in want.items():
        if st.query_params.get(k) != v:
            st.query_params[k] = v


def keep(key: str, default=None) -> None:
    """Before drawing the widget `key` (without a `value=` of its own): its last value, else `default`,
    also when the other view was shown in between."""
    kept = f"_kept_{key}"
    if key not in st.session_state:
        st.session_state[key] = st.session_state.get(kept, default)
    st.session_state[kept] = st.session_state[key]
