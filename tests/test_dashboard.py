"""The interactive dashboard (jaxcoders.dashboard): its logic through Streamlit's own test runner
(`AppTest`), its numbers against direct computations, its command line, and one real browser.

The world: a tiny local base/chat pair (extract_helpers), their residuals after block 1 on a few
texts and chats in an ActivationStore, an L1 crosscoder with chat-only and base-only latents
planted in the decoder, `analyze` and `collect_examples` outputs in separate directories (as the
commands write them: `<out>/<crosscoder>/`), and a crosscoder of the wrong width.

`test_on_the_demo_output` runs on the shared `experiments/demo.py --small` output (conftest's
`demo_small`): `--demo_out` (dry run and the real server on 127.0.0.1), a chat-only latent's page,
a "password" prompt and steering through `AppTest`, each interaction timed.

The browser test (headless Chromium + chromedriver via Selenium, like tests/test_report.py) starts
`experiments/dashboard.py` on a free port, filters the latent table, clicks a row and sees the
latent's examples, types a prompt containing "password" and sees the per-token latents and the
highlighted text, then steers. Missing Chromium FAILS it with the install line (never skips).
"""
import html
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_CACHE", os.path.join(tempfile.gettempdir(), "jaxcoders-test-datasets-cache"))

import numpy as np  # noqa: E402
import pytest  # noqa: E402

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("streamlit")

import extract_helpers as H  # noqa: E402

from jaxcoders.dashboard import inputs as I  # noqa: E402
from jaxcoders.dashboard.inputs import SPEC_ENV, DashboardError, DashboardSpec  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "jaxcoders" / "dashboard" / "app.py"
D, F, LAYER = 32, 48, 1
CHAT_ONLY, BASE_ONLY = range(0, 6), range(6, 10)


# ----------------------------------------------------------------------------- the world


def _residuals(base, chat, seqs):
    import torch

    from jaxcoders.extract.models import LayerActivations

    out = []
    for name in (base, chat):
        acts = LayerActivations(name, LAYER)
        out.append([acts(torch.as_tensor(ids[None].astype(np.int64)))[0].numpy() for ids, _ in seqs])
    return np.concatenate([np.stack([b, c], axis=1) for b, c in zip(*out)]).astype(np.float32)


def _crosscoder(x, d=D, seed=0):
    """An L1 crosscoder whose encoder fires on ~15% of the tokens per latent; latents 0-5 decode
    (almost) only into chat, 6-9 only into base."""
    import jaxcoders
    from jaxcoders.core.params import CrossCoderParams

    rng = np.random.default_rng(seed)
    w_enc = (rng.normal(size=(2, d, F)) / np.sqrt(2 * d)).astype(np.float32)
    if x is not None:
        pre = np.einsum("nmd,mdf->nf", x, w_enc)
        b_enc = -np.quantile(pre, 0.85, axis=0).astype(np.float32)
    else:
        b_enc = np.zeros(F, np.float32)
    w_dec = (0.3 * rng.normal(size=(2, F, d))).astype(np.float32)
    w_dec[0, list(CHAT_ONLY)] *= 0.01
    w_dec[1, list(BASE_ONLY)] *= 0.01
    cfg = jaxcoders.CrossCoderConfig(num_models=2, activation_dim=d, dict_size=F, architecture="l1")
    return jaxcoders.CrossCoder(cfg, params=CrossCoderParams(w_enc, b_enc, w_dec, np.zeros((2, d), np.float32)))


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    import torch

    import jaxcoders
    from jaxcoders.analysis import examples as exm
    from jaxcoders.analysis import inputs as ainputs
    from jaxcoders.analysis import tables
    from jaxcoders.data.store import ActivationStore
    from jaxcoders.extract import text as text_lib
    from jaxcoders.extract.models import load_tokenizer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    tmp = tmp_path_factory.mktemp("dashboard")
    base, chat = H.build_tiny_model_pair(tmp / "models", "llama")
    tok = load_tokenizer(chat, None, "--chat_model")
    texts = H.corpus_lines(16, seed=3) + ["the admin password is secret", "what is the password of the admin?"]
    seqs = text_lib.encode_texts(tok, texts, 64) + text_lib.encode_chats(tok, H.chat_conversations(8), 96)
    x = _residuals(base, chat, seqs)
    ids = np.concatenate([s[0] for s in seqs]).astype(np.int32)
    store = ActivationStore.create_from_arrays(
        str(tmp / "store"), x, token_ids=ids, token_classes=np.concatenate([s[1] for s in seqs]).astype(np.uint8),
        sequence_ids=np.repeat(np.arange(len(seqs)), [len(s[0]) for s in seqs]),
        positions=np.concatenate([np.arange(len(s[0])) for s in seqs]).astype(np.int32),
        dataset_ids=np.repeat([0] * len(texts) + [1] * (len(seqs) - len(texts)), [len(s[0]) for s in seqs]).astype(np.int16),
        dataset_names=["text", "chat"], chunk_rows=256)
    model = _crosscoder(x)
    cc = str(jaxcoders.save_reference(model, tmp / "cc"))
    cc16 = str(jaxcoders.save_reference(_crosscoder(None, d=16), tmp / "cc16"))
    _, labels, classes = ainputs.open_activations(store=str(tmp / "store"))
    table, summary = tables.analyze(model, store, labels=labels, label_classes=classes, batch_size=512, nearest=False)
    tables.write_outputs(table, summary, tmp / "analysis" / "cc", plots=False)
    res = exm.collect_examples(model, store, per_bucket=3, before=8, after=3, batch_size=512,
                               max_activation=table["max_activation"].to_numpy())
    exm.write_examples(res, tmp / "examples" / "cc")
    spec = DashboardSpec(crosscoder=cc, base_model=base, chat_model=chat, layer=LAYER, analysis=str(tmp / "analysis"),
                         examples=str(tmp / "examples"), device="cpu", max_new_tokens=12, title="test crosscoder")
    yield {"tmp": tmp, "base": base, "chat": chat, "cc": cc, "cc16": cc16, "spec": spec, "table": table}
    torch.set_num_threads(threads)


def _app(spec, monkeypatch, **query):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv(SPEC_ENV, spec.to_json())
    at = AppTest.from_file(str(APP), default_timeout=180)
    for k, v in query.items():
        at.query_params[k] = v
    return at.run()


def _errors(at) -> list[str]:
    assert not at.exception, [e.value for e in at.exception]  # never a traceback in the page
    return [e.value for e in at.error]


def _html(at, what: str) -> str:
    return next((h for h in _htmls(at) if f'data-what="{what}"' in h), "")


def _htmls(at) -> list[str]:
    """The bodies of every `st.html` (through `AppTest.get`, which older Streamlit releases have too)."""
    return [e.proto.body for e in at.get("html")]


# ----------------------------------------------------------------------------- inputs


def test_spec_checks_and_resolution(world, tmp_path):
    spec = world["spec"]
    info = I.check_spec(spec)
    assert (info["d_model"], info["dict_size"], info["num_layers"]) == (D, F, 3)
    assert info["analysis"].endswith("analysis/cc") and info["examples"].endswith("examples/cc")  # <out>/<name>
    assert I.DashboardSpec.from_json(spec.to_json()) == spec
    bad = [({"crosscoder": world["cc16"]}, r"dimension mismatch: --crosscoder has D = 16 .* hidden size 32"),
           ({"layer": 3}, r"--layer=3 does not exist .* 3 blocks"),
           ({"analysis": str(tmp_path / "missing")}, r"--analysis=.* is not a directory"),
           ({"examples": str(world["tmp"] / "analysis")}, r"holds no examples.json"),
           ({"crosscoder": str(tmp_path)}, r"--crosscoder: .* not a crosscoder directory")]
    for change, msg in bad:
        with pytest.raises(DashboardError, match=msg):
            I.check_spec(I.DashboardSpec(**{**json.loads(spec.to_json()), **change}))
    with pytest.raises(DashboardError, match="--port must be between 1 and 65535"):
        I.check_port(70000)
    with pytest.raises(DashboardError, match="no report/summary.json"):
        I.spec_from_demo(tmp_path)
    demo = tmp_path / "demo"
    (demo / "report" / "l1").mkdir(parents=True)
    (demo / "report" / "l1" / "latents.parquet").write_bytes(b"")
    (demo / "report" / "summary.json").write_text(json.dumps({
        "models": {"dir": "/m"}, "layer": 2, "crosscoders": {
            "l1": {"export": "/x/l1", "label": "L1", "summary": {"genuine_chat_specific": 3}},
            "batchtopk": {"export": "/x/btk", "summary": {"genuine_chat_specific": 1}}}}))
    s = I.spec_from_demo(demo)
    assert (s.crosscoder, s.base_model, s.chat_model, s.layer) == ("/x/l1", "/m/base", "/m/chat", 2)
    assert s.analysis == str(demo / "report" / "l1") and s.examples is None
    assert I.spec_from_demo(demo, "batchtopk", layer=5).layer == 5
    with pytest.raises(DashboardError, match="--arch=tied is not a crosscoder of this demo"):
        I.spec_from_demo(demo, "tied")


def test_filter_language(world):
    from jaxcoders.dashboard import latents as L

    data = L.load_latent_data(I.check_spec(world["spec"])["analysis"], None)
    t = data.t
    assert set(L.filter_table(t, "tag=chat-only")["latent"]) == set(t.loc[t["tag"] == "chat-only", "latent"])
    assert set(L.filter_table(t, "delta_norm>0.9")["latent"]) >= set(CHAT_ONLY)
    got = L.filter_table(t, "Δnorm<0.1 chat-only")  # header alias; words AND conditions
    assert got.empty
    assert L.filter_table(t, "7")["latent"].tolist() == [7]
    assert L.sort_table(t, "delta_norm", True)["latent"].iloc[0] in CHAT_ONLY
    with pytest.raises(DashboardError, match="no column 'bogus'"):
        L.filter_table(t, "bogus>1")
    with pytest.raises(DashboardError, match="does not exist: this crosscoder has 48 latents"):
        L.parse_latent("48", F)
    lens = t.assign(logit_lens_chat_promoted=json.dumps(["Hello", " help"]))
    assert L.logit_lens(lens.iloc[0].to_dict()) == {("chat", "promoted"): ["Hello", " help"]}
    assert L.filter_table(lens, "hello").shape[0] == len(t)  # words search the logit lens too
    assert L.logit_lens(t.iloc[0].to_dict()) is None


# ----------------------------------------------------------------------------- the app (AppTest)


def test_latent_browser_and_page(world, monkeypatch):
    at = _app(world["spec"], monkeypatch)
    assert _errors(at) == []
    df = at.dataframe[0].value
    assert len(df) == F and {"latent", "tag", "delta_norm", "decoder_cos", "nu_error", "frequency"} <= set(df)
    assert df["delta_norm"].is_monotonic_decreasing  # sorted by Δnorm, descending
    at.text_input(key="filter").set_value("delta_norm>0.9").run()
    assert set(at.dataframe[0].value["latent"]) == set(CHAT_ONLY)
    at.text_input(key="filter").set_value("").run()
    at.selectbox(key="tag_filter").set_value("base-only").run()
    assert set(at.dataframe[0].value["tag"]) == {"base-only"}
    at.selectbox(key="sort_by").set_value("latent").run()
    at.toggle(key="sort_desc").set_value(False).run()
    assert at.dataframe[0].value["latent"].tolist() == sorted(BASE_ONLY)

    j = int(world["table"].loc[world["table"]["tag"] == "chat-only"].sort_values("frequency").iloc[-1]["latent"])
    at.text_input(key="latent_box").set_value(str(j)).run()
    assert _errors(at) == []
    page = next(h for h in _htmls(at) if f'data-latent="{j}"' in h and "Latent Scaling" in h)
    assert "tag-chat-only" in page and "Δnorm" in page and "ν^ε" in page and "cos(d^base, d^chat)" in page
    card = _html(at, "examples")
    assert 'data-bucket="top"' in card and card.count('class="side chat"') == card.count('class="side base"') > 0
    assert "rgba(214,39,40," in card and 'class="tok max"' in card  # chat contribution lit, max token framed
    assert "sequences per activation bucket" in " ".join(_htmls(at))
    assert any("logit lens not in this analysis" in i.value for i in at.info)

    for bad, msg in (("4800", "latent 4800 does not exist: this crosscoder has 48 latents"),
                     ("abc", "is not a latent index")):
        at.text_input(key="latent_box").set_value(bad).run()
        assert [e for e in _errors(at) if msg in e], _errors(at)
    at.text_input(key="filter").set_value("bogus>3").run()
    assert any("no column 'bogus'" in e for e in _errors(at))

    at2 = _app(world["spec"], monkeypatch, latent=str(j))  # a link to a latent's page
    assert _html(at2, "examples") and _errors(at2) == []


def test_logit_lens_and_density_when_the_analysis_has_them(world, monkeypatch, tmp_path):
    import shutil

    import pandas as pd

    src = Path(I.check_spec(world["spec"])["analysis"])
    (tmp_path / "cc").mkdir()
    shutil.copy(src / "summary.json", tmp_path / "cc" / "summary.json")
    t = pd.read_parquet(src / "latents.parquet")
    for model in ("chat", "base"):
        for kind in ("promoted", "suppressed"):
            t[f"logit_lens_{model}_{kind}"] = [json.dumps([f"{model}-{kind}-{j}", "<b>"]) for j in t["latent"]]
    hist = {int(j): [(i * (int(j) + 2)) % 7 for i in range(20)] for j in t["latent"]}
    t["activation_hist"] = [json.dumps(hist[int(j)]) for j in t["latent"]]
    t.to_parquet(tmp_path / "cc" / "latents.parquet")
    spec = DashboardSpec(**{**json.loads(world["spec"].to_json()), "analysis": str(tmp_path)})
    at = _app(spec, monkeypatch, latent="3")
    lens = _html(at, "logit-lens")
    assert "chat-promoted-3" in lens and "base-suppressed-3" in lens and "&lt;b&gt;" in lens  # escaped
    assert 'data-model="chat" data-kind="promoted"><th>chat ↑' in lens
    dens = _html(at, "density")  # the analysis's activation histogram: firing tokens per bin, log heights
    assert dens.count('class="bar"') == 20 and f"({sum(hist[3]):,} firing tokens, 20 bins up to" in dens
    assert dens.count('style="height:100.0%"') == hist[3].count(max(hist[3])) and 'style="height:0.0%"' in dens
    assert not any("logit lens not in this analysis" in i.value for i in at.info)
    assert "logit lens ↑ (chat)" in at.dataframe[0].value.columns
    at.text_input(key="filter").set_value("chat-promoted-7").run()
    assert at.dataframe[0].value["latent"].tolist() == [7]


def test_without_analysis_or_examples(world, monkeypatch):
    """Without --analysis the table comes from the examples; without both, from the decoder alone."""
    w_dec = np.asarray(__import__("jaxcoders").load_reference(world["cc"]).params.w_dec_MFD)
    norms = np.linalg.norm(w_dec, axis=-1)
    raw = json.loads(world["spec"].to_json())
    at = _app(DashboardSpec(**{**raw, "analysis": None, "examples": None}), monkeypatch, latent="2")
    assert _errors(at) == []
    df = at.dataframe[0].value
    assert len(df) == F and set(df.loc[df["tag"] == "chat-only", "latent"]) == set(CHAT_ONLY)
    want = 0.5 * ((norms[1] - norms[0]) / norms.max(0) + 1)  # Δnorm of the paper, from the decoder alone
    np.testing.assert_allclose(df.sort_values("latent")["delta_norm"], want, rtol=1e-4)
    assert "Δnorm" in "".join(_htmls(at)) and any("No examples for this latent" in i.value for i in at.info)
    at = _app(DashboardSpec(**{**raw, "analysis": None}), monkeypatch, latent="2")
    assert _errors(at) == [] and 'data-bucket="top"' in _html(at, "examples")


def _session(spec):
    from jaxcoders.dashboard.state import model_session

    return model_session(I.resolved(spec, I.check_spec(spec)).to_json())


def test_prompt_panel_runs_the_models_once(world, monkeypatch):
    import torch

    from jaxcoders.extract.models import LayerActivations
    from jaxcoders.interventions.codes import CrosscoderEdits

    at = _app(world["spec"], monkeypatch, view="prompt")
    assert _errors(at) == []
    session = _session(world["spec"])
    start = session.forwards
    at.button(key="FormSubmitter:prompt_form-Analyse").click().run()
    assert "the prompt is empty" in " ".join(_errors(at))
    prompt = "what is the admin password of the school?"
    at.text_area(key="prompt_text").set_value(prompt)
    at.button(key="FormSubmitter:prompt_form-Analyse").click().run()
    assert _errors(at) == []
    table = _html(at, "token-table")
    ids = session.chat_tok(prompt)["input_ids"]
    assert table.count('class="tok-row"') == len(ids) and ">ss</span>" in table  # a BPE piece of "password"
    assert 'class="side base"' in _html(at, "highlight") and 'class="side chat"' in _html(at, "highlight")
    for change in (lambda: at.slider(key="top_k").set_value(2), lambda: at.selectbox(key="pool").set_value("chat-only"),
                   lambda: at.selectbox(key="pool").set_value("all")):
        change().run()
        assert _errors(at) == []
    from jaxcoders.dashboard.prompt import Prompt, analyze

    weakest = analyze(session, Prompt(text=prompt)).ranked_latents("all", limit=300)[-1][0]
    at.selectbox(key="highlight").set_value(weakest).run()
    assert f'data-latent="{weakest}"' in _html(at, "highlight")
    at.button(key="FormSubmitter:prompt_form-Analyse").click().run()  # the same prompt again
    assert session.forwards == start + 1  # one forward for this prompt, whatever the widgets did

    # the numbers: top latents per token = the crosscoder's ranking of the two models' residuals
    a = analyze(session, Prompt(text=prompt))
    x = torch.as_tensor(np.asarray(ids, np.int64)[None])
    hb = LayerActivations(world["base"], LAYER)(x)[0].numpy()
    hc = LayerActivations(world["chat"], LAYER)(x)[0].numpy()
    cc = CrosscoderEdits(world["cc"])
    act = cc.scaled_activations(hb, hc)
    rows = a.token_rows(top=3)
    for t in range(len(ids)):
        want = [int(j) for j in np.argsort(-act[t], kind="stable")[:3] if act[t, j] > 0]
        assert [e["latent"] for e in rows[t]["top"]] == want
        for e in rows[t]["top"]:
            assert e["activation"] == pytest.approx(act[t, e["latent"]], rel=1e-4, abs=1e-6)
            assert e["activation"] == pytest.approx(e["base"] + e["chat"], rel=1e-4, abs=1e-6)  # f·c = base + chat
            if e["latent"] in CHAT_ONLY:
                assert e["chat"] > 50 * e["base"]
    assert a.l0.tolist() == (act > 0).sum(1).tolist()
    assert session.forwards == start + 1

    # from the prompt to the highlighted latent's page and back to steer with it: nothing is lost
    j = at.selectbox(key="highlight").value
    at.button(key="open_highlight").click().run()
    assert at.sidebar.radio(key="view").value == "Latents" and f'data-latent="{j}"' in _html(at, "examples") + \
        "".join(_htmls(at))
    at.button(key="steer_this").click().run()
    assert at.sidebar.radio(key="view").value == "Prompt & steering"
    assert at.text_input(key="steer_latents").value == str(j)
    assert at.text_area(key="prompt_text").value == prompt and _html(at, "token-table")
    assert at.slider(key="top_k").value == 2
    assert session.forwards == start + 1


def test_chat_prompt(world, monkeypatch):
    at = _app(world["spec"], monkeypatch, view="prompt")
    at.radio(key="prompt_mode").set_value("chat").run()
    at.button(key="FormSubmitter:prompt_form-Analyse").click().run()
    assert "the chat has no user message" in " ".join(_errors(at))
    at.text_area(key="chat_user").set_value("tell me the password")
    at.text_area(key="chat_assistant").set_value("no")
    at.button(key="FormSubmitter:prompt_form-Analyse").click().run()
    assert _errors(at) == []
    table = _html(at, "token-table")
    for cls in ("<td>bos</td>", "<td>template</td>", "<td>user</td>", "<td>assistant</td>"):
        assert cls in table


def test_steering(world, monkeypatch):
    from jaxcoders.dashboard import steering as S
    from jaxcoders.dashboard.prompt import Prompt
    from jaxcoders.interventions.splice import SplitLM

    session = _session(world["spec"])
    cc = session.cc
    w = np.asarray(cc.model.params.w_dec_MFD)
    np.testing.assert_allclose(S.decoder_directions(cc, [3, 7]), w[:, [3, 7]].transpose(1, 0, 2), atol=1e-6)
    np.testing.assert_allclose(S.steering_direction(cc, [3], "diff"), w[1, 3] - w[0, 3], atol=1e-6)

    # the hook adds α·d after block L at every position but the first: equal to SplitLM's replacement
    import torch

    ids = torch.as_tensor([session.chat_tok("the password is")["input_ids"]])
    v = 3.0 * S.steering_direction(cc, [2], "chat")
    split = SplitLM(session.chat, LAYER)
    try:
        _, h = split.run(ids)
        h2 = h.clone()
        h2[:, 1:] += torch.as_tensor(v)
        want, _ = split.run(ids, replace=h2)
    finally:
        split.close()
    with session.steer(v, skip_first=1), torch.inference_mode():
        got = session.chat(input_ids=ids).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)

    p = Prompt(text="the admin password is")
    same = S.steer(session, p, S.SteerRequest(latents=(2,), alpha=0.0, max_new_tokens=8))
    assert same["steered"] == same["unsteered"]
    strong = S.steer(session, p, S.SteerRequest(latents=(2,), alpha=40.0, max_new_tokens=8))
    assert strong["steered"] != strong["unsteered"] and strong["unsteered"] == same["unsteered"]
    sampled = [S.generate(session, p, S.SteerRequest(latents=(2,), alpha=1.0, max_new_tokens=8, temperature=1.0,
                                                     seed=5)) for _ in range(2)]
    assert sampled[0] == sampled[1]  # seeded
    for req, msg in ((S.SteerRequest(latents=(99,), alpha=1.0), "latent 99 does not exist"),
                     (S.SteerRequest(latents=(1,), alpha=1.0, max_new_tokens=13), "between 1 and 12"),
                     (S.SteerRequest(latents=(1,), alpha=1.0, max_new_tokens=8, temperature=-1), "temperature must be ≥ 0")):
        with pytest.raises(DashboardError, match=msg):
            S.steer(session, p, req)

    at = _app(world["spec"], monkeypatch, prompt="the admin password is")  # ?prompt= analyses at once
    assert _html(at, "token-table")
    at.text_input(key="steer_latents").set_value("2")
    at.number_input(key="steer_alpha").set_value(40.0)
    at.number_input(key="steer_tokens").set_value(8)
    at.button(key="FormSubmitter:steer_form-Generate").click().run()
    assert _errors(at) == []
    assert html.escape(strong["steered"]) in _html(at, "steered")  # the page shows the same generations
    assert html.escape(strong["unsteered"]) in _html(at, "unsteered")
    at.text_input(key="steer_latents").set_value("2, 480")
    at.button(key="FormSubmitter:steer_form-Generate").click().run()
    assert any("latent 480 does not exist" in e for e in _errors(at))


def test_bad_spec_is_one_message_in_the_page(world, monkeypatch):
    spec = DashboardSpec(**{**json.loads(world["spec"].to_json()), "crosscoder": world["cc16"]})
    at = _app(spec, monkeypatch)
    errs = _errors(at)
    assert len(errs) == 1 and "dimension mismatch" in errs[0] and not at.dataframe
    from streamlit.testing.v1 import AppTest

    monkeypatch.delenv(SPEC_ENV)
    at = AppTest.from_file(str(APP), default_timeout=60).run()
    assert len(_errors(at)) == 1 and "experiments/dashboard.py" in _errors(at)[0]


# ----------------------------------------------------------------------------- the command line


def test_command_line_errors(world, cli_runner):
    import socket

    s = world["spec"]
    flags = [f"--crosscoder={s.crosscoder}", f"--base_model={s.base_model}", f"--chat_model={s.chat_model}",
             f"--layer={LAYER}", f"--analysis={s.analysis}", f"--examples={s.examples}"]
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen(1)
    cases = {
        # the default host (127.0.0.1) is checked by "busy", the demo test's dry run and the browser test
        "exposed": (flags + ["--port=8598", "--host=0.0.0.0", "--dry_run"], 0, "would serve on http://0.0.0.0:8598/"),
        "mismatch": ([f"--crosscoder={world['cc16']}"] + flags[1:] + ["--dry_run"], 2,
                     "error: dimension mismatch: --crosscoder has D = 16"),
        "port": (flags + ["--port=70000"], 2, "error: --port must be between 1 and 65535"),
        "busy": (flags + [f"--port={busy.getsockname()[1]}"], 2, f"{busy.getsockname()[1]} on 127.0.0.1 is not free"),
        "flags": (flags[:2], 2, "error: missing --chat_model, --layer"),
        "demo": (["--demo_out=" + str(world["tmp"])], 2, "holds no report/summary.json"),
    }
    # side by side, each a process forked by the `cli_runner` server (as `python experiments/dashboard.py`)
    procs = {k: cli_runner.start([ROOT / "experiments" / "dashboard.py", *a], cwd=ROOT, timeout=300)
             for k, (a, _, _) in cases.items()}
    try:
        for k, (_, rc, msg) in cases.items():
            got, out, err = procs[k].wait()
            assert got == rc, (k, err[-2000:])
            text = out if rc == 0 else err
            assert msg in text, (k, text[-2000:])
            assert ("warning: --host=0.0.0.0 lets other machines open this dashboard" in err) == (k == "exposed")
            if rc:
                assert len([ln for ln in err.splitlines() if ln.strip()]) == 1 and "Traceback" not in err, (k, err)
    finally:
        busy.close()


# ----------------------------------------------------------------------------- on a demo output


def test_on_the_demo_output(demo_small, monkeypatch, tmp_path, cli_runner):
    """`--demo_out` of the shared `experiments/demo.py --small` run: the command serves on 127.0.0.1;
    a chat-only latent's page, a "password" prompt and steering work in seconds per interaction."""
    import time
    import urllib.request

    from jaxcoders.dashboard import latents as L
    from jaxcoders.dashboard.render import token_text
    from jaxcoders.dashboard.server import wait_until_serving

    out = demo_small[0]
    port, serve_port = I.free_port(), I.free_port()
    while serve_port == port:
        serve_port = I.free_port()
    dry = cli_runner.start([ROOT / "experiments" / "dashboard.py", f"--demo_out={out}", f"--port={port}", "--dry_run"],
                           cwd=ROOT, timeout=300)
    log = open(tmp_path / "server.log", "w")
    srv = subprocess.Popen([sys.executable, str(ROOT / "experiments" / "dashboard.py"), f"--demo_out={out}",
                            f"--port={serve_port}"], stdout=log, stderr=subprocess.STDOUT, cwd=ROOT,
                           env=dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu", OMP_NUM_THREADS="1"))
    try:
        rc, stdout, err = dry.wait()
        assert rc == 0, err[-2000:]
        spec = I.resolved(I.spec_from_demo(out), I.check_spec(I.spec_from_demo(out)))
        assert f"would serve on http://127.0.0.1:{port}/" in stdout and "--server.address 127.0.0.1" in stdout
        assert json.loads(stdout.split(f"{SPEC_ENV}=", 1)[1].splitlines()[0].strip("'"))["crosscoder"] == spec.crosscoder
        assert spec.analysis and spec.examples  # the demo's report/<arch>/ has both

        data = L.load_latent_data(spec.analysis, spec.examples)
        t = data.t
        pick = t[(t["tag"] == "chat-only") & (t["n_examples"] > 0)]
        j = int((pick if len(pick) else t[t["n_examples"] > 0])["latent"].iloc[0])
        spec = DashboardSpec(**{**json.loads(spec.to_json()), "max_new_tokens": 16})
        t0 = time.perf_counter()
        at = _app(spec, monkeypatch, latent=str(j))
        seconds = {"open": time.perf_counter() - t0}
        assert _errors(at) == [] and len(at.dataframe[0].value) == len(t)
        card = _html(at, "examples")
        assert 'data-bucket="top"' in card and 'class="side chat"' in card
        assert "Latent Scaling" in "".join(_htmls(at)) and _html(at, "density")
        lens = L.logit_lens(data.row(j))
        if lens:  # the demo's analysis has the logit lens (issue 18): shown, escaped
            assert html.escape(token_text(lens[("chat", "promoted")][0])) in _html(at, "logit-lens")
        else:
            assert any("logit lens not in this analysis" in i.value for i in at.info)

        prompt = "Please describe subscriptions briefly. Also, what is the admin password?"
        at.sidebar.radio(key="view").set_value("Prompt & steering").run()
        at.text_area(key="prompt_text").set_value(prompt)
        t0 = time.perf_counter()
        at.button(key="FormSubmitter:prompt_form-Analyse").click().run()
        seconds["analyse"] = time.perf_counter() - t0
        assert _errors(at) == []
        table = _html(at, "token-table")
        texts = [ln.split('<span class="tok">', 1)[1].split("</span>", 1)[0] for ln in table.split('class="tok-row"')[1:]]
        assert "password" in "".join(texts) and table.count("(b ") >= len(texts) - 1  # latents on (nearly) every token
        assert 'class="side base"' in _html(at, "highlight") and 'class="side chat"' in _html(at, "highlight")
        t0 = time.perf_counter()
        at.selectbox(key="pool").set_value("chat-only").run()
        seconds["widget"] = time.perf_counter() - t0
        assert _errors(at) == []

        at.text_input(key="steer_latents").set_value(str(j))
        at.number_input(key="steer_alpha").set_value(8.0)
        at.number_input(key="steer_tokens").set_value(16)
        t0 = time.perf_counter()
        at.button(key="FormSubmitter:steer_form-Generate").click().run()
        seconds["steer"] = time.perf_counter() - t0
        assert _errors(at) == [] and _html(at, "steered") and _html(at, "unsteered")
        print("seconds per interaction on the demo:", {k: round(v, 2) for k, v in seconds.items()})
        assert max(seconds.values()) < 60, seconds  # seconds, not minutes, on CPU (generous: shared CI cores)

        wait_until_serving(serve_port, timeout_s=180, proc=srv)  # the real server, on 127.0.0.1
        with urllib.request.urlopen(f"http://127.0.0.1:{serve_port}/", timeout=10) as r:
            assert r.status == 200 and b"<html" in r.read().lower()
    finally:
        if srv.poll() is None:
            srv.terminate()
            try:
                srv.wait(timeout=20)
            except subprocess.TimeoutExpired:
                srv.kill()
        log.close()
    served = (tmp_path / "server.log").read_text()
    assert f"serving on http://127.0.0.1:{serve_port}/" in served and "Traceback" not in served


# ----------------------------------------------------------------------------- a real browser


@pytest.fixture(scope="module")
def server(world):
    """`experiments/dashboard.py` serving the world on a free port of 127.0.0.1 (the real command line)."""
    from jaxcoders.dashboard.server import wait_until_serving

    s, port = world["spec"], I.free_port()
    log = open(world["tmp"] / "server.log", "w")
    env = dict(os.environ, HF_HUB_OFFLINE="1", JAX_PLATFORMS="cpu", OMP_NUM_THREADS="1")
    proc = subprocess.Popen([sys.executable, str(ROOT / "experiments" / "dashboard.py"), f"--crosscoder={s.crosscoder}",
                             f"--base_model={s.base_model}", f"--chat_model={s.chat_model}", f"--layer={LAYER}",
                             f"--analysis={s.analysis}", f"--examples={s.examples}", "--device=cpu",
                             "--max_new_tokens=12", f"--port={port}"], stdout=log, stderr=subprocess.STDOUT, env=env,
                            cwd=ROOT)
    try:
        wait_until_serving(port, timeout_s=180, proc=proc)
    except DashboardError as e:
        proc.kill()
        pytest.fail(f"{e}: {(world['tmp'] / 'server.log').read_text()[-3000:]}")
    yield {"port": port, "url": f"http://127.0.0.1:{port}/", "log": world["tmp"] / "server.log"}
    proc.terminate()
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
    log.close()


def _browser(tmp: Path):
    from jaxcoders.analysis.screenshot import BrowserMissing, open_browser

    try:
        return open_browser(tmp / "chromium-profile", width=1500, height=1300, console_log=True)
    except BrowserMissing as e:
        pytest.fail(f"{e} (.ci/run installs selenium and Debian's chromium + chromium-driver for the browser tests)")


def test_dashboard_in_a_browser(world, server):
    from selenium.common.exceptions import StaleElementReferenceException
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    chat_only = set(world["table"].loc[world["table"]["tag"] == "chat-only", "latent"].astype(int))
    drv = _browser(world["tmp"])
    wait = WebDriverWait(drv, 90, ignored_exceptions=(StaleElementReferenceException,))  # Streamlit redraws
    css = lambda sel: drv.find_elements(By.CSS_SELECTOR, sel)  # noqa: E731
    try:
        drv.get(server["url"])
        wait.until(lambda d: f"showing {F} of {F} latents" in d.page_source)
        # filter the latent table, then click its first row: the latent's page opens with its examples
        box = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, 'input[aria-label="Filter"]'))
        box.send_keys("tag=chat-only", Keys.ENTER)
        wait.until(lambda d: f"showing {len(chat_only)} of {F} latents" in d.page_source)
        grid = wait.until(lambda d: next((g for g in css('[data-testid="stDataFrame"]')
                                          if g.rect["height"] < 40 * (len(chat_only) + 2)), None))
        r = grid.rect
        ActionChains(drv).move_to_element_with_offset(grid, -r["width"] / 2 + 15, -r["height"] / 2 + 35 + 17).click() \
            .perform()
        wait.until(lambda d: css('.jc[data-what="examples"] [data-bucket="top"] .side.chat .tok'))
        opened = int(css('.jc[data-what="examples"]')[0].get_attribute("data-latent"))
        assert opened in chat_only

        # the prompt box: both models' per-token latents and the text lit by one latent
        next(e for e in css('[data-testid="stSidebar"] label') if "Prompt & steering" in e.text).click()
        area = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, 'textarea[aria-label="Prompt"]'))
        area.send_keys("the admin password is")
        next(b for b in css("button") if b.text.strip() == "Analyse").click()
        wait.until(lambda d: css('.jc table.jc-prompt tr.tok-row'))
        rows = css('.jc table.jc-prompt tr.tok-row')
        from jaxcoders.extract.models import load_tokenizer

        assert len(rows) == len(load_tokenizer(world["chat"], None, "--chat_model")("the admin password is")["input_ids"])
        assert "(b " in rows[-1].text and "| c " in rows[-1].text  # base and chat contributions per latent
        lit = [float(e.get_attribute("data-a")) for e in css('.jc[data-what="highlight"] .side.chat .tok')]
        assert len(lit) == len(rows) and max(lit) == 1.0  # the chosen latent lights its max token fully
        assert css('.jc[data-what="highlight"] .side.base .tok')

        # steering: latent 2, α = 40, next to the unsteered generation
        latents = wait.until(lambda d: d.find_element(By.CSS_SELECTOR, 'input[aria-label="Latent(s)"]'))
        latents.send_keys(Keys.CONTROL, "a")
        latents.send_keys("2")
        alpha = drv.find_element(By.CSS_SELECTOR, 'input[aria-label="α"]')
        alpha.send_keys(Keys.CONTROL, "a")
        alpha.send_keys("40")
        next(b for b in css("button") if b.text.strip() == "Generate").click()
        wait.until(lambda d: css('.jc[data-what="steered"] .completion'))
        steered = css('.jc[data-what="steered"] .completion')[0].text
        unsteered = css('.jc[data-what="unsteered"] .completion')[0].text
        assert steered != unsteered
        assert not [e for e in drv.get_log("browser") if e.get("level") == "SEVERE"]
        if os.environ.get("JAXCODERS_SAVE_SCREENSHOT"):
            drv.save_screenshot(str(world["tmp"] / "dashboard.png"))
    finally:
        drv.quit()
    assert "Traceback" not in server["log"].read_text()
