"""The static HTML report, tested in a real headless browser (Debian's chromium + chromedriver via
selenium): the table renders, sorts and filters, a card opens with its examples, base vs chat.

Needs (installed by .ci/run, never here): `apt-get install -y chromium chromium-driver` and
`pip install selenium`. Missing ones make the browser tests FAIL with that message.
Set JAXCODERS_SAVE_SCREENSHOT=1 to also write docs/report_screenshot.png.
"""
import json
import os
import re
import shutil
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from jaxcoders.analysis import examples as exm
from jaxcoders.analysis import report, tables
from jaxcoders.config import CrossCoderConfig
from jaxcoders.core.module import CrossCoder
from jaxcoders.core.params import CrossCoderParams, default_buffers
from jaxcoders.data.store import ActivationStore, TokenClass

ROOT = Path(__file__).resolve().parent.parent
D, F = 32, 32
N_WORDS = 24  # latents 0..23 detect one word each
CHAT_ASSISTANT, CHAT_TEMPLATE, BASE_ONLY = 24, 25, 26


# ----------------------------------------------------------------------------- a small planted world


def _token_rows(tok, n_text=24, n_chat=24, seed=0):
    """Text documents and Gemma-style chats as one token stream with sequence ids and classes."""
    from extract_helpers import corpus_lines

    lines = corpus_lines(n_text + 2 * n_chat, seed=seed)
    enc = lambda s: tok(s, add_special_tokens=False)["input_ids"]
    bos = tok.bos_token_id
    seqs = []
    for i in range(n_text):
        ids = enc(lines[i])[:40]
        seqs.append(([bos] + ids, [TokenClass.BOS] + [TokenClass.TEXT] * len(ids), 0))
    for i in range(n_chat):
        u, a = enc(lines[n_text + 2 * i])[:14], enc(lines[n_text + 2 * i + 1])[:20]
        parts = [([bos], TokenClass.BOS), (enc("<start_of_turn>user\n"), TokenClass.TEMPLATE), (u, TokenClass.USER),
                 (enc("<end_of_turn>\n<start_of_turn>model\n"), TokenClass.TEMPLATE), (a, TokenClass.ASSISTANT),
                 (enc("<end_of_turn>\n"), TokenClass.TEMPLATE)]
        seqs.append(([t for p, _ in parts for t in p], [c for p, c in parts for _ in p], 1))
    seqs.append(seqs[n_text + 1])  # one duplicate conversation
    tokens = np.concatenate([s[0] for s in seqs]).astype(np.int32)
    classes = np.concatenate([s[1] for s in seqs]).astype(np.uint8)
    seq_ids = np.repeat(np.arange(len(seqs)), [len(s[0]) for s in seqs])
    positions = np.concatenate([np.arange(len(s[0])) for s in seqs]).astype(np.int32)
    datasets = np.repeat([s[2] for s in seqs], [len(s[0]) for s in seqs]).astype(np.int16)
    return tokens, classes, seq_ids, positions, datasets


def planted_world(tok, seed=0):
    """Activations and a hand-built L1 crosscoder: latents 0..23 detect frequent words (shared
    decoder rows of varied norm ratio), 24 / 25 read directions only the chat model has on assistant /
    template tokens (chat-only), 26 reads a base-only direction on some words (base-only)."""
    tokens, classes, seq_ids, positions, datasets = _token_rows(tok)
    rng = np.random.default_rng(seed)
    V = len(tok)
    U = np.linalg.qr(rng.normal(size=(D, 3)))[0]  # the chat-only and base-only directions, orthonormal
    u_a, u_t, v = U.T.astype(np.float32)
    E = rng.normal(size=(V, D))
    E = (E - (E @ U) @ U.T).astype(np.float32)  # word embeddings carry none of them
    x = np.stack([E[tokens], E[tokens] + 0.1 * rng.normal(size=(len(tokens), D))], axis=1).astype(np.float32)
    x += 0.05 * rng.normal(size=x.shape).astype(np.float32)
    x[classes == TokenClass.ASSISTANT, 1] += 2.0 * u_a / np.linalg.norm(u_a)
    x[classes == TokenClass.TEMPLATE, 1] += 2.5 * u_t / np.linalg.norm(u_t)
    words = [int(w) for w, _ in zip(*np.unique(tokens[classes >= TokenClass.TEXT], return_counts=True))]
    counts = np.bincount(tokens, minlength=V)
    words = sorted(words, key=lambda w: -counts[w])[:N_WORDS + 6]
    base_words = np.isin(tokens, words[N_WORDS:])
    x[base_words, 0] += 2.0 * v / np.linalg.norm(v)

    w_enc = np.zeros((2, D, F), np.float32)
    w_dec = np.zeros((2, F, D), np.float32)
    b_enc = np.zeros(F, np.float32)
    for j, w in enumerate(words[:N_WORDS]):
        e = E[w] / np.dot(E[w], E[w])
        w_enc[:, :, j] = 0.5 * e
        b_enc[j] = -0.6
        ratio = 0.55 + 0.9 * j / N_WORDS  # chat/base decoder norm ratio: Δnorm from ~0.35 to ~0.6
        w_dec[0, j] = E[w] / np.linalg.norm(E[w])
        w_dec[1, j] = ratio * E[w] / np.linalg.norm(E[w])
    for j, (m, d, amp) in {CHAT_ASSISTANT: (1, u_a, 2.0), CHAT_TEMPLATE: (1, u_t, 2.5), BASE_ONLY: (0, v, 2.0)}.items():
        un = d / np.linalg.norm(d)
        w_enc[m, :, j] = un / amp
        b_enc[j] = -0.5
        w_dec[m, j] = amp * un
        w_dec[1 - m, j] = 0.03 * amp * un
    for j in range(BASE_ONLY + 1, F):  # random latents that fire now and then
        w_enc[:, :, j] = rng.normal(size=(2, D)) * 0.05
        b_enc[j] = -0.5
        w_dec[:, j] = rng.normal(size=(2, D)) * 0.3
    cfg = CrossCoderConfig(num_models=2, activation_dim=D, dict_size=F)
    model = CrossCoder(cfg, params=CrossCoderParams(w_enc, b_enc, w_dec, np.zeros((2, D), np.float32)),
                       buffers=default_buffers(cfg))
    return model, x, {"token_ids": tokens, "token_classes": classes, "sequence_ids": seq_ids, "positions": positions,
                      "dataset_ids": datasets}


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """Tokenizer, store, the planted L1 crosscoder analysed (analyze + examples) and a tied crosscoder's
    examples; returns the paths."""
    from extract_helpers import GEMMA_CHAT_TEMPLATE, build_tokenizer

    tmp = tmp_path_factory.mktemp("report")
    tok = build_tokenizer(tmp / "tokenizer", chat_template=GEMMA_CHAT_TEMPLATE)
    model, x, rows = planted_world(tok)
    store = ActivationStore.create_from_arrays(
        str(tmp / "store"), x, dataset_names=["fineweb", "lmsys-chat"], chunk_rows=256,
        **{k: rows[k] for k in ("token_ids", "token_classes", "sequence_ids", "positions", "dataset_ids")})
    from jaxcoders.analysis import inputs as cli

    _, labels, classes = cli.open_activations(store=str(tmp / "store"))
    table, summary = tables.analyze(model, store, labels=labels, label_classes=classes, batch_size=512, nearest=False)
    summary.update(crosscoder="planted_l1")
    out = tmp / "analysis" / "planted_l1"
    tables.write_outputs(table, summary, out, plots=False)
    res = exm.collect_examples(model, store, per_bucket=4, before=12, after=4, batch_size=512,
                               max_activation=table["max_activation"].to_numpy())
    exm.write_examples(res, out)

    from flax import nnx

    tied = CrossCoder(CrossCoderConfig(2, D, 16, architecture="tied"), rngs=nnx.Rngs(1))
    res_t = exm.collect_examples(tied, store, per_bucket=3, before=6, after=2, batch_size=512)
    exm.write_examples(res_t, tmp / "analysis" / "tied")
    return {"tmp": tmp, "analysis": out, "tied": tmp / "analysis" / "tied", "tokenizer": tmp / "tokenizer",
            "table": table, "summary": summary, "tok": tok}


# ----------------------------------------------------------------------------- the page without a browser


def page_data(html_text: str) -> dict:
    m = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', html_text, re.S)
    return json.loads(m.group(1))


def _report_cli(runner, *args):
    """experiments/report.py through the suite's fork server (conftest.cli_runner)."""
    rc, out, err = runner.run([str(ROOT / "experiments" / "report.py"), *args], cwd=ROOT, env=dict(os.environ),
                              timeout=300)
    return SimpleNamespace(returncode=rc, stdout=out, stderr=err)


def test_report_cli_is_self_contained(cli_runner, world):
    proc = _report_cli(cli_runner, f"--analysis={world['analysis'].parent}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    path = world["analysis"] / "report.html"
    assert str(path) in proc.stdout and (world["tied"] / "report.html").is_file()  # one report per crosscoder
    text = path.read_text()
    # nothing fetched from anywhere: no external scripts, styles, images or fonts
    assert not re.search(r'(src|href)\s*=\s*"(https?:)?//', text) and "@import" not in text and "url(http" not in text
    assert text.count("data:image/png;base64,") >= 3  # Δnorm histogram, ν scatter, frequency
    data = page_data(text)
    keys = [c["key"] for c in data["columns"]]
    for k in ("latent", "tag", "genuine", "delta_norm", "decoder_cos", "nu_error", "nu_reconstruction", "frequency",
              "template_share", "n_examples"):
        assert k in keys, k
    assert len(data["rows"]) == F
    rows = {r[keys.index("latent")]: r for r in data["rows"]}
    assert rows[CHAT_ASSISTANT][keys.index("tag")] == "chat-only"
    assert rows[CHAT_ASSISTANT][keys.index("genuine")] == "✓"
    assert rows[CHAT_TEMPLATE][keys.index("template_share")] > 0.9  # fires on template tokens only
    assert rows[BASE_ONLY][keys.index("tag")] == "base-only" and rows[BASE_ONLY][keys.index("genuine")] == "✓"
    assert data["vocab"] == {}  # no --tokenizer: ids are shown as <id>
    card = data["cards"][str(CHAT_ASSISTANT)]
    assert card["buckets"][0]["name"] == "top" and len(card["buckets"][0]["examples"]) == 4


def test_batchtopk_report(tmp_path, fixtures_dir):
    """BatchTopK DECOUPLED, examples only (no analyze): per-model counts in the card details."""
    from test_examples import batchtopk_run

    _, _, rows, res = batchtopk_run(str(fixtures_dir / "batchtopk_decoupled" / "model"))
    exm.write_examples(res, tmp_path / "btk")
    data = page_data(report.build_report(tmp_path / "btk", tokenizer={3: "three"}).read_text())
    keys = [c["key"] for c in data["columns"]]
    assert "delta_norm" in keys and "frequency" in keys and data["channels"] == ["activation", "base", "chat"]
    det = next(iter(data["details"].values()))
    assert "count_model_base" in det and "count_model_chat" in det
    assert data["vocab"] == {"3": "three"} or 3 not in rows["token_ids"]
    with pytest.raises(FileNotFoundError, match="nothing to report"):
        report.build_report(tmp_path)


# ----------------------------------------------------------------------------- the browser


def _browser(tmp: Path):
    """A headless chromium through chromedriver; FAILS (never skips) with the install line when missing."""
    from jaxcoders.analysis.screenshot import BrowserMissing, open_browser

    try:
        return open_browser(tmp / "chromium-profile", width=1600, height=1500, console_log=True)
    except BrowserMissing as e:
        pytest.fail(f"{e} (.ci/run installs selenium and Debian's chromium + chromium-driver for the browser "
                    "test of the HTML report)")


@pytest.fixture(scope="module")
def browser(world):
    """One browser for the module; a missing dependency is handed to the tests, which FAIL with it."""
    try:
        drv = _browser(world["tmp"])
    except pytest.fail.Exception as e:
        yield str(e)
        return
    yield drv
    drv.quit()


def _need(browser):
    if isinstance(browser, str):
        pytest.fail(browser, pytrace=False)
    return browser


def _load(drv, path: Path, fragment: str = ""):
    from selenium.webdriver.support.ui import WebDriverWait

    drv.get("about:blank")
    drv.get(path.resolve().as_uri() + fragment)
    WebDriverWait(drv, 20).until(lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
    errors = [e for e in drv.get_log("browser") if e.get("level") == "SEVERE"]
    assert not errors, errors


def _rows(drv):
    return drv.find_elements("css selector", "#latent-table tbody tr.latent-row")


def _alphas(drv, side: str) -> list[float]:
    return drv.execute_script(
        "return Array.from(document.querySelectorAll('.latent-card .side.' + arguments[0] + ' .tok'))"
        ".map(s => { const m = getComputedStyle(s).backgroundColor.match(/rgba?\\(([^)]*)\\)/); if (!m) return 0;"
        " const p = m[1].split(','); return p.length > 3 ? parseFloat(p[3]) : 1; });", side)


def test_report_in_a_browser(world, browser, tmp_path):
    browser = _need(browser)
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import Select

    path = report.build_report(world["analysis"], tmp_path / "report.html", tokenizer=world["tok"])
    data = page_data(path.read_text())
    ids = {t for b in data["cards"][str(CHAT_TEMPLATE)]["buckets"] for e in b["examples"] for t in e["t"]}
    assert ids <= {int(k) for k in data["vocab"]} and "<start_of_turn>" in data["vocab"].values()
    _load(browser, path)
    table = browser.find_element(By.ID, "latent-table")
    assert table.is_displayed() and len(_rows(browser)) == F
    headers = [th.text.strip() for th in table.find_elements(By.CSS_SELECTOR, "thead th")]
    assert {"latent", "tag", "Δnorm", "cos", "ν^ε", "ν^r", "freq", "template"} <= set(headers)
    assert "32 in total" in browser.find_element(By.ID, "row-count").text

    # sort by Δnorm (first click: descending) -> a chat-only latent first
    table.find_element(By.CSS_SELECTOR, 'th[data-key="delta_norm"]').click()
    first = _rows(browser)[0]
    assert first.find_elements(By.CSS_SELECTOR, "td")[1].text == "chat-only"

    # filters: free text, conditions, the tag select
    tags = world["table"]["tag"].to_numpy()
    box = browser.find_element(By.ID, "filter")
    box.send_keys("chat-only")
    assert len(_rows(browser)) == int(np.sum(tags == "chat-only")) == 2
    box.clear()
    box.send_keys("delta_norm<0.1")
    assert [int(r.get_attribute("data-latent")) for r in _rows(browser)] == [BASE_ONLY]
    box.clear()
    box.send_keys(" ")  # clear() fires no input event; typing does
    Select(browser.find_element(By.ID, "tag-filter")).select_by_visible_text("shared")
    assert len(_rows(browser)) == int(np.sum(tags == "shared")) > 0
    Select(browser.find_element(By.ID, "tag-filter")).select_by_visible_text("all tags")
    assert len(_rows(browser)) == F

    # open the card of the chat-only latent reading assistant tokens
    row = browser.find_element(By.CSS_SELECTOR, f'#latent-table tbody tr[data-latent="{CHAT_ASSISTANT}"]')
    row.click()
    card = browser.find_element(By.CSS_SELECTOR, "#card-panel .latent-card")
    assert card.is_displayed() and card.get_attribute("data-latent") == str(CHAT_ASSISTANT)
    assert "selected" in row.get_attribute("class") and browser.current_url.endswith(f"#latent-{CHAT_ASSISTANT}")
    buckets = card.find_elements(By.CSS_SELECTOR, ".bucket")
    assert buckets[0].get_attribute("data-bucket") == "top" and len(buckets) >= 2
    examples = card.find_elements(By.CSS_SELECTOR, ".example")
    assert len(examples) >= 4
    assert card.find_elements(By.CSS_SELECTOR, ".side.base .tok") and card.find_elements(By.CSS_SELECTOR,
                                                                                          ".side.chat .tok")
    text = card.find_element(By.CSS_SELECTOR, ".side.chat .tokens").text
    assert "<" not in text or "<start_of_turn>" in text or "<end_of_turn>" in text  # decoded, not <id>
    # base vs chat: a chat-only latent lights up on the chat side only
    assert max(_alphas(browser, "chat")) > 0.9 and max(_alphas(browser, "base")) < 0.1
    shot = tmp_path / "report.png"
    browser.save_screenshot(str(shot))
    assert shot.stat().st_size > 20_000
    if os.environ.get("JAXCODERS_SAVE_SCREENSHOT") == "1":
        shutil.copy(shot, ROOT / "docs" / "report_screenshot.png")

    # Escape closes the card; a deep link opens one
    from selenium.webdriver.common.keys import Keys

    browser.find_element(By.TAG_NAME, "body").send_keys(Keys.ESCAPE)
    assert not browser.find_elements(By.CSS_SELECTOR, "#card-panel .latent-card")
    _load(browser, Path(str(path)), fragment=f"#latent-{BASE_ONLY}")
    card = browser.find_element(By.CSS_SELECTOR, "#card-panel .latent-card")
    assert card.get_attribute("data-latent") == str(BASE_ONLY)
    assert max(_alphas(browser, "base")) > 0.9 and max(_alphas(browser, "chat")) < 0.1


def test_tied_report_in_a_browser(world, browser, tmp_path):
    browser = _need(browser)
    from selenium.webdriver.common.by import By

    path = report.build_report(world["tied"], tmp_path / "tied.html", tokenizer=str(world["tokenizer"]))
    _load(browser, path)
    headers = [th.get_attribute("data-key") for th in browser.find_elements(By.CSS_SELECTOR, "#latent-table thead th")]
    assert {"r_base", "r_chat", "delta_norm", "frequency", "template_share"} <= set(headers)
    assert len(_rows(browser)) == 16
    assert "L0 shared slot" in browser.find_element(By.ID, "summary").text
    assert "slot ratios" in browser.find_element(By.ID, "plots").text
    browser.find_element(By.ID, "only-examples").click()
    rows = _rows(browser)
    assert rows
    rows[0].click()
    card = browser.find_element(By.CSS_SELECTOR, "#card-panel .latent-card")
    assert card.find_elements(By.CSS_SELECTOR, ".example")
    assert "count_slot_shared" in card.text
    tip = card.find_element(By.CSS_SELECTOR, ".side.chat .tok").get_attribute("title")
    assert "slot_shared" in tip and "slot_chat" in tip


def _fake_interventions(path: Path) -> dict:
    """An interventions.json as experiments/interventions.py writes it (two edits)."""
    def v(m):
        return {"mean": m, "ci_low": m * 0.9, "ci_high": m * 1.1, "std_err": 0.01, "tokens": 40, "conversations": 4}
    res = {"config": {"layer": 1, "first_k": 5}, "ci": "95% percentile bootstrap over conversations",
           "num_conversations": 4, "tokens": {"all": 40, "first_k": 20}, "latent_sets": {"chat_only": [1, 2]},
           "edits": {name: {"formula": f"formula of {name}", "continue_with": "chat",
                            **{s: {"ce": v(2.0), "kl_chat": v(k), "kl_base": v(0.5)} for s in ("all", "first_k")}}
                     for name, k in (("base", 0.8), ("latents:chat_only", 0.1))}}
    path.mkdir(parents=True, exist_ok=True)
    (path / "interventions.json").write_text(json.dumps(res))
    return res


def test_report_opens_on_chosen_view_with_causal_section(world, browser, tmp_path):
    """sort_by / open_latent choose what the page shows first (the demo opens on a chat-only
    latent, table by Δnorm); interventions results become the "Causal evaluation" section."""
    browser = _need(browser)
    from selenium.webdriver.common.by import By

    d = tmp_path / "analysis"
    shutil.copytree(world["analysis"], d)
    (d / "report.html").unlink(missing_ok=True)
    with pytest.raises(ValueError, match="not a column"):
        report.build_report(d, tokenizer=world["tok"], sort_by="no_such_column")
    with pytest.raises(ValueError, match="has no card"):
        report.build_report(d, tokenizer=world["tok"], open_latent=10_000)
    plain = page_data(report.build_report(d, tokenizer=world["tok"]).read_text())
    assert plain["initial"] == {"sort": "latent", "dir": 1}  # control: the default view
    _fake_interventions(d / "interventions")
    path = report.build_report(d, tokenizer=world["tok"], sort_by="delta_norm", open_latent=CHAT_ASSISTANT)
    _load(browser, path)
    first = _rows(browser)[0]
    assert first.find_elements(By.CSS_SELECTOR, "td")[1].text == "chat-only"
    card = browser.find_element(By.CSS_SELECTOR, "#card-panel .latent-card")
    assert card.get_attribute("data-latent") == str(CHAT_ASSISTANT) and card.find_elements(By.CSS_SELECTOR, ".example")
    causal = browser.find_element(By.ID, "causal")
    assert causal.is_displayed() and "Causal evaluation" in causal.text
    rows = causal.find_elements(By.CSS_SELECTOR, "#causal-table tbody tr")
    assert [r.find_element(By.CSS_SELECTOR, "th").text for r in rows] == ["base", "latents:chat_only"]
    assert "0.8" in rows[0].text and "0.1" in rows[1].text and "chat_only: 2 latents" in causal.text
    # "first" opens the first card of the report's own order; a URL hash still wins
    path = report.build_report(d, tmp_path / "first.html", tokenizer=world["tok"], open_latent="first")
    first_card = next(iter(page_data(path.read_text())["cards"]))
    _load(browser, path)
    assert browser.find_element(By.CSS_SELECTOR, "#card-panel .latent-card").get_attribute("data-latent") == first_card
    _load(browser, path, fragment=f"#latent-{BASE_ONLY}")
    assert browser.find_element(By.CSS_SELECTOR, "#card-panel .latent-card").get_attribute("data-latent") == str(BASE_ONLY)


def test_report_cli_screenshot_and_initial_view(cli_runner, world, browser, tmp_path):
    """experiments/report.py --sort_by --open_latent --screenshot: the page as Chromium shows it."""
    _need(browser)  # chromium + chromedriver present (the same requirement as the browser tests)
    out = tmp_path / "r.html"
    proc = _report_cli(cli_runner, f"--analysis={world['analysis']}", f"--out={out}", "--sort_by=delta_norm",
                       "--open_latent=first", f"--screenshot={tmp_path / 'r.png'}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = page_data(out.read_text())
    assert data["initial"]["sort"] == "delta_norm" and str(data["initial"]["open"]) == next(iter(data["cards"]))
    png = (tmp_path / "r.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 20_000
    bad = _report_cli(cli_runner, f"--analysis={world['analysis']}", f"--out={tmp_path / 'x.html'}",
                      "--open_latent=abc")
    assert bad.returncode != 0 and "--open_latent must be a latent index" in bad.stderr
