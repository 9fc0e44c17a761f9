"""The paper's analyses (jaxcoders.paper, docs/paper.md) against brute-force numpy on small inputs, the
paper stage of the shared `demo.py --small` run (every figure listed and decodable, KL by position,
ν distributions with the shared baseline, the separate-SAE baseline, logit lens and activation
density in the tables and on the report cards), and bad input to `experiments/paper.py`.

Each brute-force check has a control: a plausible wrong computation that the same comparison
rejects, so a check that passes is known to be able to fail."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import ref_numpy as R

ROOT = Path(__file__).resolve().parents[1]
ARCHS = ("l1", "batchtopk")


# ----------------------------------------------------------------------------- activation density


def _l1_model(seed: int = 0, M: int = 2, D: int = 8, F: int = 12):
    from jaxcoders.config import CrossCoderConfig
    from jaxcoders.core.module import CrossCoder
    from jaxcoders.core.params import CrossCoderParams, default_buffers

    cfg = CrossCoderConfig(num_models=M, activation_dim=D, dict_size=F, architecture="l1")
    rng = np.random.default_rng(seed)
    b_enc = rng.normal(0, 0.3, F).astype(np.float32)
    b_enc[3] = -100.0  # latent 3 never fires
    params = CrossCoderParams(rng.normal(0, 0.5, (M, D, F)).astype(np.float32), b_enc,
                              rng.normal(0, 0.5, (M, F, D)).astype(np.float32), np.zeros((M, D), np.float32))
    return CrossCoder(cfg, params=params, buffers=default_buffers(cfg)), params


def _numpy_hist(a_NF, mx_F, bins):
    """Per latent: firing tokens (a > 0) per bin (lo, hi] of linspace(0, max, bins + 1); above max: last bin."""
    out = np.zeros((a_NF.shape[1], bins), np.int64)
    for j in range(a_NF.shape[1]):
        edges = np.linspace(0, mx_F[j], bins + 1)
        for v in a_NF[:, j]:
            if v > 0:
                out[j, min(int(np.searchsorted(edges, v, side="left")) - 1, bins - 1)] += 1
    return out


def test_activation_density_matches_numpy():
    from jaxcoders.analysis import density

    model, p = _l1_model()
    x = np.random.default_rng(1).normal(size=(300, 2, 8)).astype(np.float32)
    w_dec = np.asarray(p.w_dec_MFD, np.float64)
    a = R.relu_code(x.astype(np.float64), np.asarray(p.w_enc_MDF, np.float64), np.asarray(p.b_enc_F, np.float64))
    a = a * R.code_norm(w_dec, "CROSSCODER")[None]  # scaled activation f·c
    mx = a.max(0)
    h = density.activation_histograms(model, x, bins=7, batch_size=64, dtype="float64")
    np.testing.assert_allclose(h["max_activation"], mx, rtol=1e-9)
    ref = _numpy_hist(a, mx, 7)
    np.testing.assert_array_equal(h["counts"], ref)
    np.testing.assert_array_equal(h["counts"].sum(1), (a > 0).sum(0))  # firing tokens only
    assert h["counts"][3].sum() == 0 and h["counts"].sum() > 0
    # a maximum from other tokens: activations above it land in the last bin
    half = density.activation_histograms(model, x, max_activation=mx / 2, bins=7, batch_size=64, dtype="float64")
    np.testing.assert_array_equal(half["counts"], _numpy_hist(a, mx / 2, 7))
    # the table column: JSON lists, `max_activation` added when missing
    import pandas as pd

    t = density.add_activation_density(pd.DataFrame({"latent": np.arange(12)}), model, x, bins=7, batch_size=64,
                                       dtype="float64")
    assert [json.loads(s) for s in t["activation_hist"]] == ref.tolist()
    # control: a histogram over every token (np.histogram of all activations, zeros included) is not
    # the density of the firing tokens
    every = np.stack([np.histogram(a[:, j], bins=np.linspace(0, max(mx[j], 1e-9), 8))[0] for j in range(12)])
    assert not np.array_equal(h["counts"], every)
    assert not np.array_equal(h["counts"], np.roll(ref, 1, axis=0))


# ----------------------------------------------------------------------------- logit lens


def _lens_numpy(d_SD, w_VD, g_D, k, center=False, vocab=None):
    d = np.asarray(d_SD, np.float64)
    if center:
        d = d - d.mean(1, keepdims=True)
    lg = (d * g_D[None]) @ np.asarray(w_VD, np.float64)[:vocab].T
    pro = np.argsort(-lg, axis=1, kind="stable")[:, :k]
    sup = np.argsort(lg, axis=1, kind="stable")[:, :k]
    zero = ~np.any(d_SD != 0, axis=1)
    pro[zero], sup[zero] = -1, -1
    return pro, sup


@pytest.mark.parametrize("center", [False, True])
def test_logit_lens_matches_numpy(center):
    from jaxcoders.analysis.logit_lens import Unembedding, logit_lens

    rng = np.random.default_rng(2)
    S, D, V = 9, 16, 50
    d = rng.normal(size=(S, D)).astype(np.float32)
    d[4] = 0.0  # a zero decoder row promotes nothing
    w = rng.normal(size=(V, D)).astype(np.float32)
    g = np.exp(rng.normal(0, 1.5, D)).astype(np.float32)  # a strongly non-uniform norm gain
    res = logit_lens(d, Unembedding(w, g, center), k=6, vocab=40, chunk=4)
    pro, sup = _lens_numpy(d, w, g.astype(np.float64), 6, center, vocab=40)
    np.testing.assert_array_equal(res["promoted"], pro)
    np.testing.assert_array_equal(res["suppressed"], sup)
    assert (res["promoted"][4] == -1).all() and (res["promoted"] < 40).all()
    # control: the same lens without the final norm's gain ranks other tokens
    pro_nog, _ = _lens_numpy(d, w, np.ones(D), 6, center, vocab=40)
    assert not np.array_equal(res["promoted"], pro_nog)


def test_final_norm_gain_of_real_norms():
    import torch
    from transformers.models.gemma2.modeling_gemma2 import Gemma2RMSNorm
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    from jaxcoders.analysis.logit_lens import final_norm_gain

    w = torch.linspace(-0.5, 2.0, 10)
    for norm, want, center in ((LlamaRMSNorm(10, eps=1e-6), w, False), (Gemma2RMSNorm(10, eps=1e-6), 1 + w, False),
                               (torch.nn.LayerNorm(10, eps=1e-6), w, True)):
        with torch.no_grad():
            norm.weight.copy_(w)
        g, c = final_norm_gain(norm)
        np.testing.assert_allclose(g, want.numpy(), rtol=1e-5, atol=1e-5)
        assert c is center
        # the gain reproduces the norm's ranking on any direction (division by RMS: a positive scale)
        x = torch.randn(10)
        y = norm(x[None])[0].detach().numpy()
        lin = (x.numpy() - (x.numpy().mean() if c else 0)) * g
        np.testing.assert_allclose(y / np.linalg.norm(y), lin / np.linalg.norm(lin), atol=1e-4)


# ----------------------------------------------------------------------------- twins and SAE matching


def _cos(a, b):
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return a @ b.T


def test_twins_top5_and_thresholds_match_numpy():
    from jaxcoders.analysis.twins import twin_analysis

    rng = np.random.default_rng(4)
    F, D = 40, 12
    w = rng.normal(size=(2, F, D)).astype(np.float32)
    tags = np.array(["shared"] * 15 + ["chat-only"] * 8 + ["base-only"] * 6 + ["other"] * 11, object)
    w[1, 15] = w[1, 2] + 0.05 * rng.normal(size=D)  # a chat-only latent with a shared twin (≥ 0.7)
    w[0, 23] = w[1, 16] + 0.01 * rng.normal(size=D)  # a base-only latent twin of chat-only 16
    res = twin_analysis(w, top=5, low=0.3, high=0.7, tags=tags)
    cols = res["columns"]
    shared, chat, base = (np.flatnonzero(tags == t) for t in ("shared", "chat-only", "base-only"))
    for mine, probe, other, other_row in ((chat, 1, base, 0), (base, 0, chat, 1)):
        for s, cand, row in (("shared", shared, probe), ("exclusive", other, other_row)):
            sims = _cos(w[probe, mine].astype(np.float64), w[row, cand].astype(np.float64))
            order = np.argsort(-sims, axis=1, kind="stable")[:, :5]
            for i, j in enumerate(mine):
                assert json.loads(cols[f"twin_{s}_index"][j]) == cand[order[i]].tolist()
                np.testing.assert_allclose(json.loads(cols[f"twin_{s}_cos"][j]), sims[i, order[i]], atol=1e-5)
                best = sims[i, order[i][0]]
                want = "high" if best >= 0.7 else ("low" if best < 0.3 else "mid")
                assert cols[f"twin_{s}_class"][j] == want
    assert cols["twin_shared_class"][15] == "high" and json.loads(cols["twin_shared_index"][15])[0] == 2
    assert cols["twin_exclusive_class"][23] == "high" and json.loads(cols["twin_exclusive_index"][23])[0] == 16
    assert np.isnan(cols["twin_shared_max_cos"][0]) and cols["twin_shared_class"][0] == ""  # not exclusive
    s = res["summary"]["chat-only"]
    assert s["latents"] == 8 and sum(s["shared"].values()) == 8
    assert s["shared"]["high"] == int(np.sum(cols["twin_shared_class"][chat] == "high")) >= 1
    # control: comparing with the shared latents' *base* rows instead of their chat rows finds other twins
    wrong = np.argsort(-_cos(w[1, chat].astype(np.float64), w[0, shared].astype(np.float64)), axis=1,
                       kind="stable")[:, :5]
    assert any(json.loads(cols["twin_shared_index"][j]) != shared[wrong[i]].tolist() for i, j in enumerate(chat))
    with pytest.raises(ValueError, match="thresholds"):
        twin_analysis(w, low=0.8, high=0.7, tags=tags)


def test_sae_matching_by_decoder_cosine_matches_numpy():
    from jaxcoders.analysis.sae_match import match_saes

    rng = np.random.default_rng(5)
    D = 10
    wb = rng.normal(size=(14, D)).astype(np.float32)
    wc = rng.normal(size=(11, D)).astype(np.float32)
    wc[:4] = wb[[3, 7, 9, 0]] + 0.05 * rng.normal(size=(4, D))  # four latents in both SAEs
    alive_b = np.ones(14, bool)
    alive_b[7] = False  # dead: neither a candidate nor counted
    alive_c = np.ones(11, bool)
    alive_c[10] = False
    m = match_saes(wb, wc, alive_base=alive_b, alive_chat=alive_c, low=0.3, high=0.7)
    sims = _cos(wc.astype(np.float64), wb.astype(np.float64))  # (chat, base)
    for name, S, a_mine, a_other in (("chat", sims, alive_c, alive_b), ("base", sims.T, alive_b, alive_c)):
        r = m[name]
        for i in range(len(S)):
            if not a_mine[i]:
                assert r["match"][i] == -1 and np.isnan(r["match_cos"][i]) and r["class"][i] == ""
                continue
            s = np.where(a_other, S[i], -np.inf)
            assert r["match"][i] == int(np.argmax(s))
            np.testing.assert_allclose(r["match_cos"][i], s.max(), atol=1e-5)
            want = "high" if s.max() >= 0.7 else ("low" if s.max() < 0.3 else "mid")
            assert r["class"][i] == want
    for i, j in enumerate(m["chat"]["match"]):
        assert m["chat"]["mutual"][i] == (j >= 0 and m["base"]["match"][j] == i)
    assert m["chat"]["match"][0] == 3 and m["chat"]["class"][0] == "high" and m["chat"]["mutual"][0]
    assert m["chat"]["match"][1] != 7  # its twin is dead
    s = m["summary"]
    assert s["chat"]["alive"] == 10 and s["chat"]["high"] + s["chat"]["mid"] + s["chat"]["low"] == 10
    assert s["mutual_pairs"] == int(m["chat"]["mutual"].sum()) >= 3
    # control: without the alive masks, chat latent 1 matches the dead base latent 7
    assert match_saes(wb, wc)["chat"]["match"][1] == 7


# ----------------------------------------------------------------------------- KL by position


def _classes(rng, T):
    from jaxcoders.data.store import TokenClass

    c = np.full(T, TokenClass.USER, np.uint8)
    t = 2
    while t < T:
        n = int(rng.integers(1, 9))
        c[t:t + n] = TokenClass.ASSISTANT
        t += n + int(rng.integers(1, 4))
    return c


def test_turn_positions_and_kl_by_position_match_numpy():
    from jaxcoders.data.store import TokenClass
    from jaxcoders.interventions import metrics as M

    rng = np.random.default_rng(6)
    Q, k = 6, 3
    acc = M.Accumulator(positions=Q)
    per_pos = [[] for _ in range(Q)]  # brute force: (conversation, value) per position
    convs = []
    for c in range(9):
        cls = _classes(rng, int(rng.integers(12, 30)))
        # brute force: the index of token t+1 in its assistant run, for every t whose next token is assistant
        tp = np.full(len(cls), -1)
        for t in range(len(cls) - 1):
            if cls[t + 1] == TokenClass.ASSISTANT:
                i = t + 1
                while i > 0 and cls[i - 1] == TokenClass.ASSISTANT:
                    i -= 1
                tp[t] = t + 1 - i
        np.testing.assert_array_equal(M.turn_positions(cls), tp)
        scored, first = M.assistant_masks(cls, k)
        np.testing.assert_array_equal(first, scored & (tp < k) & (tp >= 0))
        p = np.flatnonzero(scored)
        vals = {m: rng.exponential(size=len(p)) for m in M.METRICS}
        cid = acc.add_conversation(len(p), int(first.sum()), tp[p])
        acc.add("e", cid, vals, first[p], tp[p])
        for q, v in zip(tp[p], vals["kl_chat"]):
            if q < Q:
                per_pos[q].append((c, v))
        convs.append(vals["kl_chat"])
    res = M.summarize_positions(acc, n_boot=200, seed=0)["e"]["kl_chat"]
    for q in range(Q):
        v = np.asarray([x for _, x in per_pos[q]])
        assert res[q]["position"] == q and res[q]["tokens"] == len(v)
        np.testing.assert_allclose(res[q]["mean"], v.mean(), rtol=1e-12)
        assert res[q]["ci_low"] <= res[q]["mean"] <= res[q]["ci_high"]
        assert res[q]["conversations"] == len({c for c, _ in per_pos[q]})
    # control: the mean of per-conversation means (not pooled over tokens) is a different number
    by_conv = {}
    for c, x in per_pos[0]:
        by_conv.setdefault(c, []).append(x)
    assert any(len(v) > 1 for v in by_conv.values())
    assert not np.isclose(res[0]["mean"], np.mean([np.mean(v) for v in by_conv.values()]), rtol=1e-9)


# ----------------------------------------------------------------------------- ν tables


def test_nu_stats_and_selection_match_numpy():
    import pandas as pd

    from jaxcoders.paper import tables

    rng = np.random.default_rng(7)
    parts = {}
    for arch in ARCHS:
        n = 60
        tag = rng.choice(["chat-only", "shared", "other", "base-only"], n)
        nu_e = rng.uniform(-0.2, 1.2, n)
        nu_r = rng.uniform(-0.2, 1.2, n)
        nu_e[:4], nu_r[:4] = 0.2, 0.5  # exactly at the thresholds: not under them
        nu_e[5] = np.nan
        parts[arch] = pd.DataFrame({"latent": np.arange(n), "tag": tag, "delta_norm": rng.uniform(0, 1, n),
                                    "nu_error": nu_e, "nu_reconstruction": nu_r,
                                    "genuine_chat_specific": (tag == "chat-only") & (nu_e < 0.2) & (nu_r < 0.5)})
    nu = tables.nu_long(parts)
    st = tables.nu_stats(nu)
    for arch, t in parts.items():
        for tag in tables.NU_CLASSES:
            for col, thr in (("nu_error", 0.2), ("nu_reconstruction", 0.5)):
                v = t.loc[t["tag"] == tag, col].to_numpy(float)
                v = v[np.isfinite(v)]
                row = st[(st.crosscoder == arch) & (st.tag == tag) & (st.ratio == col)].iloc[0]
                assert row["latents"] == len(v)
                np.testing.assert_allclose(row["median"], np.median(v))
                np.testing.assert_allclose(row["share_below_threshold"], np.mean(v < thr))
                if tag == "shared" and col == "nu_error" and np.any(v == thr):
                    assert row["share_below_threshold"] != np.mean(v <= thr)  # control: ≤ is another count
    counts = tables.class_counts(parts)
    for arch, t in parts.items():
        for tag in ("chat-only", "shared", "other", "base-only"):
            assert counts[(counts.crosscoder == arch) & (counts.tag == tag)]["latents"].item() == int((t.tag == tag).sum())


# ----------------------------------------------------------------------------- the demo's paper stage


@pytest.fixture(scope="module")
def paper(demo_small):
    out, models, r = demo_small
    return out, out / "paper", r


def test_paper_stage_outputs(paper):
    from PIL import Image

    out, p, r = paper
    md = (p / "paper.md").read_text()
    pngs = sorted((p / "figures").glob("*.png"))
    listed = set(re.findall(r"\]\((figures/[^)]+\.png)\)", md))
    assert {f"figures/{x.name}" for x in pngs} == listed and len(pngs) >= 12
    for png in pngs:
        with Image.open(png) as im:
            im.load()
            assert im.size[0] > 200 and im.size[1] > 200
    for name in ("delta_norm", "decoder_cos", "nu_distributions", "kl_by_position", "twins", "sae_match",
                 "density_l1", "density_batchtopk", "nu_scatter_l1"):
        assert f"figures/{name}.png" in listed, name
    for csv in ("quality.csv", "delta_norm_hist.csv", "decoder_cos_hist.csv", "class_counts.csv", "nu.csv",
                "nu_hist.csv", "nu_stats.csv", "selection.csv", "twins.csv", "sae_match.csv", "kl_by_position.csv",
                "causal_table.csv"):
        assert (p / csv).is_file(), csv
        assert f"`{csv}" in md or f"{csv}`" in md or csv in md, csv
    assert "[8/8] the paper's figures" in r.stdout
    summary = (out / "report" / "summary.md").read_text()
    assert "paper/paper.md" in summary
    # the paper stage stays small (measured ~30-40 s on 2 busy cores; a lenient bound, not a benchmark)
    seconds = json.loads((p / "paper.json").read_text())["seconds"]["total"]
    assert seconds < 180, seconds


def test_paper_kl_by_position(paper):
    import pandas as pd

    out, p, _ = paper
    kl = pd.read_csv(p / "kl_by_position.csv")
    edits = set(kl["edit"])
    assert {"base", "template", "bias_only", "all_latents", "latents:chat_only"} <= edits
    assert any(e.startswith("latents:best_half_") for e in edits) and any(e.startswith("latents:worst_half_")
                                                                           for e in edits)
    for (cc, edit), g in kl.groupby(["crosscoder", "edit"]):
        pos = g[g["position"] != "all"]
        assert sorted(pos["position"].astype(int)) == list(range(32)), (cc, edit)
        assert np.isfinite(pos[["mean", "ci_low", "ci_high"]].to_numpy(float)).all(), (cc, edit)
        assert (g["position"] == "all").sum() == 1
    # brute force from the per-conversation sums: the pooled mean per position
    for arch in ARCHS:
        z = np.load(p / "causal" / arch / "interventions_per_conversation.npz")
        for edit in ("bias_only", "all_latents"):
            g = kl[(kl.crosscoder == arch) & (kl.edit == edit) & (kl.position != "all")].copy()
            g["q"] = g["position"].astype(int)
            g = g.sort_values("q")
            want = z[f"{edit}/position/kl_chat_sum"].sum(0) / z["count_position"].sum(0)
            np.testing.assert_allclose(g["mean"].to_numpy(float), want, rtol=1e-9)
            allrow = kl[(kl.crosscoder == arch) & (kl.edit == edit) & (kl.position == "all")].iloc[0]
            np.testing.assert_allclose(allrow["mean"], z[f"{edit}/all/kl_chat_sum"].sum() / z["count_all"].sum(),
                                       rtol=1e-9)
            # control: the all-token mean is not the mean over the 32 position means
            assert not np.isclose(allrow["mean"], want.mean(), rtol=1e-6)


def test_paper_nu_distributions_and_selection(paper):
    import pandas as pd

    out, p, _ = paper
    nu = pd.read_csv(p / "nu.csv")
    st = pd.read_csv(p / "nu_stats.csv")
    sel = pd.read_csv(p / "selection.csv").set_index("crosscoder")
    hist = pd.read_csv(p / "nu_hist.csv")
    assert set(hist["tag"]) >= {"shared"} and "baseline" in (p / "paper.md").read_text()
    for arch in ARCHS:
        t = pd.read_parquet(out / "report" / arch / "latents.parquet")
        chat = t[t["delta_norm"] >= 0.9]
        genuine = int(((chat["nu_error"] < 0.2) & (chat["nu_reconstruction"] < 0.5)).sum())
        assert sel.loc[arch, "genuine_chat_specific"] == genuine
        assert sel.loc[arch, "chat_only"] == int((t["tag"] == "chat-only").sum())
        shared = t.loc[t["tag"] == "shared", "nu_error"].to_numpy(float)
        shared = shared[np.isfinite(shared)]
        row = st[(st.crosscoder == arch) & (st.tag == "shared") & (st.ratio == "nu_error")].iloc[0]
        assert row["latents"] == len(shared) > 0  # the shared baseline is there for both crosscoders
        np.testing.assert_allclose(row["median"], np.median(shared))
        h = hist[(hist.crosscoder == arch) & (hist.tag == "shared") & (hist.ratio == "nu_error")]
        edges = np.r_[h["bin_lo"].to_numpy(float), h["bin_hi"].to_numpy(float)[-1]]
        np.testing.assert_array_equal(h["count"].to_numpy(), np.histogram(np.clip(shared, edges[0], edges[-1]),
                                                                          bins=edges)[0])
        assert len(nu[nu.crosscoder == arch]) == len(t)
    # control: the filter without ν keeps every chat-only latent, the paper's filter fewer where ν is large
    l1 = pd.read_parquet(out / "report" / "l1" / "latents.parquet")
    big = l1[(l1["tag"] == "chat-only") & ~((l1["nu_error"] < 0.2) & (l1["nu_reconstruction"] < 0.5))]
    assert sel.loc["l1", "chat_only"] - sel.loc["l1", "genuine_chat_specific"] == len(big)


def test_paper_sae_baseline(paper):
    import pandas as pd

    import jaxcoders

    out, p, _ = paper
    q = pd.read_csv(p / "quality.csv").set_index("dictionary")
    assert {"l1", "batchtopk", "sae_base", "sae_chat"} <= set(q.index)
    assert 0 < q.loc["sae_base", "fve"] <= 1 and 0 < q.loc["sae_chat", "fve"] <= 1
    base = jaxcoders.load_reference(p / "sae" / "base" / "export")
    chat = jaxcoders.load_reference(p / "sae" / "chat" / "export")
    assert base.cfg.num_models == chat.cfg.num_models == 1
    m = pd.read_csv(p / "sae_match.csv")
    wb, wc = np.asarray(base.params.w_dec_MFD)[0], np.asarray(chat.params.w_dec_MFD)[0]
    sims = _cos(wc.astype(np.float64), wb.astype(np.float64))
    mc = m[m["sae"] == "chat"].set_index("latent")
    alive_b = m[m["sae"] == "base"].set_index("latent")["alive"].to_numpy(bool)
    for i in np.flatnonzero(mc["alive"].to_numpy(bool))[:50]:
        s = np.where(alive_b, sims[i], -np.inf)
        assert mc.loc[i, "match"] == int(np.argmax(s))
        np.testing.assert_allclose(mc.loc[i, "match_cos"], s.max(), atol=1e-4)
    assert "Baseline: separate SAEs" in (p / "paper.md").read_text()


def test_logit_lens_and_density_columns_of_the_demo(paper):
    """The demo's latent tables carry the logit lens of both models (checked against the torch model's
    own final norm and LM head) and an activation histogram per latent (summing to its firing count)."""
    import pandas as pd
    import torch

    import jaxcoders
    from jaxcoders.extract.models import load_causal_lm, load_tokenizer

    out, p, _ = paper
    summary = json.loads((out / "report" / "summary.json").read_text())
    models = Path(summary["models"]["dir"])
    tok = load_tokenizer(str(models / "chat"), None, "--chat_model")
    for arch in ARCHS:
        t = pd.read_parquet(out / "report" / arch / "latents.parquet")
        for col in ("logit_lens_base_promoted", "logit_lens_base_suppressed", "logit_lens_chat_promoted",
                    "logit_lens_chat_suppressed", "activation_hist"):
            assert col in t, (arch, col)
        h = np.asarray([json.loads(s) for s in t["activation_hist"]])
        np.testing.assert_array_equal(h.sum(1), t["count_active"].to_numpy(np.int64))
        paper_t = pd.read_parquet(p / arch / "latents.parquet")
        assert "logit_lens_chat_promoted" in paper_t and "twin_shared_class" in paper_t
    cc = jaxcoders.load_reference(out / "l1")
    F = cc.cfg.dict_size
    lat = np.arange(0, F, max(1, F // 12))
    t = pd.read_parquet(out / "report" / "l1" / "latents.parquet").set_index("latent")
    # the decoder rows in the models' raw residual space: decode(e_j) − decode(0)
    eye = np.zeros((len(lat) + 1, F), np.float32)
    eye[np.arange(len(lat)), lat] = 1.0
    xh = np.asarray(cc.decode(eye), np.float64)
    d = xh[:-1] - xh[-1:]  # (S, M, D)
    V = len(tok)
    for m, name in enumerate(("base", "chat")):
        lm = load_causal_lm(str(models / name), dtype="float32", flag="--model")
        with torch.no_grad():
            logits = lm.lm_head(lm.model.norm(torch.as_tensor(d[:, m], dtype=torch.float32)))[:, :V].double().numpy()
        for i, j in enumerate(lat):
            want = [tok.decode([int(v)], clean_up_tokenization_spaces=False) for v in np.argsort(-logits[i])[:5]]
            got = json.loads(t.loc[j, f"logit_lens_{name}_promoted"])[:5]
            assert got == want, (name, j, got, want)
            low = [tok.decode([int(v)], clean_up_tokenization_spaces=False) for v in np.argsort(logits[i])[:5]]
            assert json.loads(t.loc[j, f"logit_lens_{name}_suppressed"])[:5] == low
        # control: the other model's decoder rows read through this model give other tokens
        with torch.no_grad():
            other = lm.lm_head(lm.model.norm(torch.as_tensor(d[:, 1 - m], dtype=torch.float32)))[:, :V].numpy()
        assert any(np.argsort(-other[i])[0] != np.argsort(-logits[i])[0] for i in range(len(lat)))


def test_paper_without_models_with_a_tied_crosscoder(paper, tmp_path):
    """No models: no logit lens, no causal evaluation; `--sae=false`; a tied crosscoder adds its
    slot-ratio scatter (r = slot count / shared-slot count, checked against the counts)."""
    import pandas as pd
    from flax import nnx
    from PIL import Image

    from jaxcoders.config import CrossCoderConfig
    from jaxcoders.core.module import CrossCoder
    from jaxcoders.io.reference import save_reference
    from jaxcoders.paper import PaperConfig, run_paper

    out, _, _ = paper
    save_reference(CrossCoder(CrossCoderConfig(2, 64, 32, architecture="tied"), rngs=nnx.Rngs(0)), tmp_path / "tied")
    cfg = PaperConfig(out=str(tmp_path / "p"), l1=str(out / "l1"), batchtopk=str(out / "batchtopk"),
                      store=str(out / "store"), tied=str(tmp_path / "tied"), sae=False, progress=False,
                      analyses={a: str(out / "report" / a) for a in ARCHS})
    logs = []
    r = run_paper(cfg, log=logs.append)
    p = tmp_path / "p"
    md = (p / "paper.md").read_text()
    listed = set(re.findall(r"\]\((figures/[^)]+\.png)\)", md))
    assert listed == {f"figures/{x.name}" for x in (p / "figures").glob("*.png")} and "figures/tied_ratios.png" in listed
    for png in (p / "figures").glob("*.png"):
        with Image.open(png) as im:
            im.load()
    assert not r["causal"] and "sae" not in r and not (p / "kl_by_position.csv").exists()
    assert "Not run" in md and any("logit lens is skipped" in m for m in logs)
    t = pd.read_parquet(p / "l1" / "latents.parquet")
    assert "activation_hist" in t and "twin_shared_class" in t
    slots = pd.read_csv(p / "tied_slots.csv")
    ok = slots["count_shared"] > 0
    np.testing.assert_allclose(slots.loc[ok, "r_chat"], slots.loc[ok, "count_chat"] / slots.loc[ok, "count_shared"])
    np.testing.assert_allclose(slots.loc[ok, "r_base"], slots.loc[ok, "count_base"] / slots.loc[ok, "count_shared"])


def _report_data(html_text: str) -> dict:
    m = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', html_text, re.S)
    return json.loads(m.group(1))


def test_report_cards_show_logit_lens_and_density(paper, tmp_path):
    import pandas as pd

    out, _, _ = paper
    path = out / "report" / "l1" / "report.html"
    data = _report_data(path.read_text())
    t = pd.read_parquet(out / "report" / "l1" / "latents.parquet").set_index("latent")
    assert data["cards"] and set(data["interpret"]) == set(data["cards"])
    for j, v in data["interpret"].items():
        assert v["lens"]["chat_promoted"] == json.loads(t.loc[int(j), "logit_lens_chat_promoted"])
        assert v["density"]["counts"] == json.loads(t.loc[int(j), "activation_hist"])
    # in a browser: a card shows the four token lists and one bar per bin
    from jaxcoders.analysis.screenshot import BrowserMissing, open_browser

    try:
        drv = open_browser(tmp_path / "profile", width=1400, height=1200, console_log=True)
    except BrowserMissing as e:
        pytest.fail(f"{e} (.ci/run installs selenium and Debian's chromium + chromium-driver)")
    try:
        from selenium.webdriver.support.ui import WebDriverWait

        lat = next(iter(data["interpret"]))
        drv.get(path.resolve().as_uri() + f"#latent-{lat}")
        WebDriverWait(drv, 20).until(lambda d: d.execute_script("return document.body.dataset.ready === '1'"))
        drv.execute_script("arguments[0].click()", drv.find_element(
            "css selector", f'#latent-table tbody tr[data-latent="{lat}"]'))
        card = drv.find_element("css selector", "#card-panel .latent-card")
        assert card.get_attribute("data-latent") == lat
        rows = card.find_elements("css selector", ".lens-table tr")
        assert len(rows) == 4
        shown = [s.text for s in rows[2].find_elements("css selector", ".tok")]  # chat ↑
        want = [x.replace("\n", "↵") for x in data["interpret"][lat]["lens"]["chat_promoted"]]
        assert [s.strip() for s in shown] == [s.strip() for s in want]
        bars = card.find_elements("css selector", ".density .hist .bar")
        assert len(bars) == len(data["interpret"][lat]["density"]["counts"])
        errors = [e for e in drv.get_log("browser") if e.get("level") == "SEVERE"]
        assert not errors, errors
    finally:
        drv.quit()


# ----------------------------------------------------------------------------- bad input


def _paper_cli(runner, args, cwd):
    from fork_runner import in_repo_env

    return runner.run([str(ROOT / "experiments" / "paper.py"), *args], cwd=cwd, env=in_repo_env(), timeout=300)


@pytest.mark.parametrize("args,msg", [
    ([], "--out is required"),
    (["--demo_out={tmp}/nope"], "holds no report/summary.json"),
    (["--out={tmp}/o"], "--l1 is required"),
    (["--out={tmp}/o", "--l1={demo}/l1"], "--batchtopk is required"),
    (["--demo_out={tmp}", "--out={tmp}/o"], "holds no report/summary.json"),
    (["--demo_out={demo}", "--out={tmp}/o", "--positions=0"], "--positions must be ≥ 1"),
    (["--demo_out={demo}", "--out={tmp}/o", "--twin_low=0.9"], "twin thresholds"),
    (["--demo_out={demo}", "--out={tmp}/o", "--l1={demo}/batchtopk"], "is a batchtopk crosscoder"),
    (["--demo_out={demo}", "--out={tmp}/o", "--store={tmp}/nostore"], "no ActivationStore"),
    (["--demo_out={demo}", "--out={tmp}/o", "--evalset={tmp}/none.jsonl"], "does not exist"),
    (["--demo_out={demo}", "--out={demo}/l1"], "already holds"),
    (["--demo_out={demo}", "--out={tmp}/o", "--no_such_flag"], "Unknown command line flag"),
])
def test_paper_cli_bad_input_one_error_line(cli_runner, demo_small, tmp_path, args, msg):
    demo = demo_small[0]
    args = [a.replace("{tmp}", str(tmp_path)).replace("{demo}", str(demo)) for a in args]
    before = sorted(x.name for x in demo.iterdir())
    rc, out, err = _paper_cli(cli_runner, args, tmp_path)
    assert rc != 0, (out, err)
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and msg in lines[0], err[-2000:]
    assert "Traceback" not in err
    assert not (tmp_path / "o").exists()
    assert sorted(x.name for x in demo.iterdir()) == before
