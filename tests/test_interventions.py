"""Causal evaluation (interventions) and online analysis on tiny local models.

The done-criterion of the causal evaluation: with a crosscoder that reconstructs both models
exactly, the "all latents" edit h_b + x̂_c(f) − x̂_b(f) (decoder-bias difference included) is h_c,
so continuing with the chat model gives the chat model's logits (KL ≈ 0); the identity edit gives
the base model's. Controls: the reference's edit without the bias difference, and a crosscoder with
one perturbed decoder weight, must both fail that check.
"""
import json
import os
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_CACHE", os.path.join(tempfile.gettempdir(), "jaxcoders-test-datasets-cache"))

import numpy as np  # noqa: E402
import pytest  # noqa: E402

pytest.importorskip("torch")
pytest.importorskip("transformers")
pytest.importorskip("datasets")

import extract_helpers as H  # noqa: E402

from jaxcoders.data.store import TokenClass  # noqa: E402
from jaxcoders.interventions import metrics as M  # noqa: E402
from jaxcoders.interventions.codes import CrosscoderEdits, InterventionError, split_by_nu  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
D = 32  # hidden size of the tiny models
TOL = 1e-6  # KL of an exact edit: float32 rounding only


def perfect_crosscoder(d: int = D, *, seed: int = 0, perturb: bool = False):
    """An L1 crosscoder with x̂_m = x_m for every input: F = 4d latents, f = ReLU(±(x_m[i] − b_dec[m, i])),
    decoded with the same ± unit vectors plus a random b_dec (different per model, so the
    decoder-bias difference matters)."""
    import jaxcoders
    from jaxcoders.core.params import CrossCoderParams

    F = 4 * d
    rng = np.random.default_rng(seed)
    b_dec = (0.5 * rng.normal(size=(2, d))).astype(np.float32)
    w_enc = np.zeros((2, d, F), np.float32)
    w_dec = np.zeros((2, F, d), np.float32)
    b_enc = np.zeros(F, np.float32)
    j = 0
    for m in (0, 1):
        for s in (1.0, -1.0):
            for i in range(d):
                w_enc[m, i, j] = s
                w_dec[m, j, i] = s
                b_enc[j] = -s * b_dec[m, i]
                j += 1
    if perturb:
        w_dec[1, 2 * d, 3] += 0.5  # one chat decoder weight (latent +e_0 of chat): x̂_chat ≠ x_chat where it fires
    cfg = jaxcoders.CrossCoderConfig(num_models=2, activation_dim=d, dict_size=F, architecture="l1")
    return jaxcoders.CrossCoder(cfg, params=CrossCoderParams(w_enc, b_enc, w_dec, b_dec))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    import torch

    import jaxcoders

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: one thread avoids spin-waiting on a busy 2-core machine
    tmp = tmp_path_factory.mktemp("interventions")
    _, chat = H.write_local_datasets(tmp / "data", n_text=2, n_chat=8)
    models = {arch: H.build_tiny_model_pair(tmp / "models", arch) for arch in ("llama", "gemma2")}
    cc_dir = jaxcoders.save_reference(perfect_crosscoder(), tmp / "cc_perfect")
    bad_dir = jaxcoders.save_reference(perfect_crosscoder(perturb=True), tmp / "cc_perturbed")
    yield {"tmp": tmp, "chat": chat, "models": models, "cc": str(cc_dir), "cc_bad": str(bad_dir)}
    torch.set_num_threads(threads)


def _run(env, arch="llama", layer=1, crosscoder=None, **kw):
    from jaxcoders.interventions.run import InterventionConfig, run_interventions

    base, chat = env["models"][arch]
    kw.setdefault("num_conversations", 4)
    kw.setdefault("max_len", 96)
    cfg = InterventionConfig(base_model=base, chat_model=chat, layer=layer, dataset=env["chat"],
                             out=str(env["tmp"] / kw.pop("out", f"out-{arch}-{layer}")),
                             crosscoder=crosscoder or env["cc"], plot=kw.pop("plot", False), progress=False,
                             n_boot=kw.pop("n_boot", 50), **kw)
    return run_interventions(cfg)


def _mean(res, edit, metric, subset="all"):
    return res["edits"][edit][subset][metric]["mean"]


# ----------------------------------------------------------------------------- the split model


@pytest.mark.parametrize("arch,layer", [("llama", 1), ("gemma2", 2), ("llama", 2)])  # llama 2 = last block
def test_split_identity_and_capture(env, arch, layer):
    """h = HF hidden_states[L+1]; writing it back reproduces the logits bit for bit; a nudge changes them."""
    import torch
    from transformers import AutoModelForCausalLM

    from jaxcoders.interventions.splice import SplitLM

    base, _ = env["models"][arch]
    model = AutoModelForCausalLM.from_pretrained(base).eval()
    if arch == "llama" and layer == 2:
        assert model.config.num_hidden_layers == 3
    ids = torch.tensor([[1] + list(range(20, 60))])
    with torch.no_grad():
        ref = model(ids, output_hidden_states=True)
    split = SplitLM(model, layer)
    logits, h = split.run(ids)
    torch.testing.assert_close(h, ref.hidden_states[layer + 1], rtol=0, atol=0)
    assert torch.equal(logits, ref.logits)
    logits2, _ = split.run(ids, replace=h.clone())
    assert torch.equal(logits2, ref.logits)
    keep = torch.tensor([3, 7, 40])
    logits3, _ = split.run(ids, keep=keep)
    torch.testing.assert_close(logits3, ref.logits[:, keep], rtol=1e-6, atol=1e-6)  # LM head on fewer rows
    nudged = h.clone()
    nudged[0, 5] += 0.1
    logits4, _ = split.run(ids, replace=nudged)
    assert torch.equal(logits4[:, :5], ref.logits[:, :5])  # causal: earlier positions untouched
    assert not torch.allclose(logits4[:, 5:], ref.logits[:, 5:])
    split.close()


# ----------------------------------------------------------------------------- the done criterion


@pytest.mark.parametrize("arch,layer", [("llama", 1), ("gemma2", 1)])
def test_all_latents_with_perfect_reconstruction_reproduces_chat(env, arch, layer):
    edits = ["base", "chat", "identity", "base_to_chat", "chat_recon", "all_latents", "all_latents_no_bias",
             "bias_only", "template"]
    res = _run(env, arch, layer, edits=edits)
    assert res["num_conversations"] == 4 and res["tokens"]["all"] > 50
    for subset in ("all", "first_k"):
        assert _mean(res, "chat", "kl_chat", subset) == 0.0
        assert _mean(res, "base", "kl_base", subset) == 0.0
        assert abs(_mean(res, "identity", "kl_base", subset)) < TOL  # the identity edit = the base model
        assert abs(_mean(res, "all_latents", "kl_chat", subset)) < TOL  # the chat model, from base + latents
        assert abs(_mean(res, "chat_recon", "kl_chat", subset)) < TOL
        for m in ("ce", "kl_base"):
            assert _mean(res, "all_latents", m, subset) == pytest.approx(_mean(res, "chat", m, subset), abs=1e-5)
        # controls: no bias difference (the reference's edit), base residual into chat
        assert _mean(res, "all_latents_no_bias", "kl_chat", subset) > 100 * TOL
        assert _mean(res, "base_to_chat", "kl_chat", subset) > 100 * TOL
    assert _mean(res, "identity", "ce") == pytest.approx(_mean(res, "base", "ce"), abs=1e-5)
    r = res["edits"]["all_latents"]["all"]["kl_chat"]
    assert r["ci_low"] <= r["mean"] <= r["ci_high"] and r["conversations"] == 4


def test_perturbed_decoder_breaks_the_exact_edit(env):
    res = _run(env, "llama", 1, crosscoder=env["cc_bad"], edits=["all_latents", "chat_recon"], out="out-bad")
    assert _mean(res, "all_latents", "kl_chat") > 100 * TOL
    assert _mean(res, "chat_recon", "kl_chat") > 100 * TOL


def test_batched_equals_unbatched(env):
    edits = ["base_to_chat", "template", "all_latents_no_bias"]
    one = _run(env, edits=edits, out="out-b1", batch_size=1)
    three = _run(env, edits=edits, out="out-b3", batch_size=3)
    assert one["tokens"] == three["tokens"]
    for e in edits:
        for s in M.SUBSETS:
            for m in M.METRICS:
                assert _mean(three, e, m, s) == pytest.approx(_mean(one, e, m, s), rel=1e-4, abs=1e-6)


# ----------------------------------------------------------------------------- edits at the residual level


def _context(env, skip_first=0):
    import torch

    from jaxcoders.extract import text as text_lib
    from jaxcoders.extract.models import load_tokenizer
    from jaxcoders.interventions.edits import EditContext
    from jaxcoders.interventions.splice import load_split_model

    base, chat = env["models"]["llama"]
    tok = load_tokenizer(chat, None, "--chat_model")
    conv = H.chat_conversations(2)[1]
    ids, cls = text_lib.encode_chats(tok, [conv], 64)[0]
    idt = torch.as_tensor(ids[None].astype(np.int64))
    _, hb = load_split_model(base, 1).run(idt)
    _, hc = load_split_model(chat, 1).run(idt)
    mask = torch.ones(hb.shape[:2], dtype=torch.bool)
    mask[:, :skip_first] = False
    template = torch.as_tensor(cls[None] == TokenClass.TEMPLATE)
    cc = CrosscoderEdits(env["cc"])
    return EditContext(hb, hc, mask, template, cc), cls, cc


def test_edit_residuals(env):
    import torch

    from jaxcoders.interventions.edits import make_edits

    ctx, cls, cc = _context(env)
    hb, hc = ctx.h["base"][0], ctx.h["chat"][0]
    F = cc.dict_size
    sets = {"all": np.arange(F), "none": np.array([], np.int64), "chat_half": np.arange(F // 2, F)}
    edits = {e.name: e for e in make_edits(
        ["base", "template", "all_latents", "all_latents_no_bias", "bias_only", "latents", "steer"],
        latent_sets=sets, steer_latents=[2 * D + 1, 3 * D + 4], steer_alpha=2.5)}
    assert edits["base"].residual(ctx) is None
    r = {n: e.residual(ctx)[0] for n, e in edits.items() if n != "base"}
    t = torch.as_tensor(cls == TokenClass.TEMPLATE)
    assert t.any() and (~t).any()
    assert torch.equal(r["template"][t], hc[t]) and torch.equal(r["template"][~t], hb[~t])
    torch.testing.assert_close(r["all_latents"], hc, rtol=0, atol=1e-5)
    torch.testing.assert_close(r["latents:all"], r["all_latents"], rtol=0, atol=1e-6)
    torch.testing.assert_close(r["latents:none"], r["bias_only"], rtol=0, atol=1e-6)
    bias = torch.as_tensor(np.array(cc.model.params.b_dec_MD))
    torch.testing.assert_close(r["bias_only"], hb + (bias[1] - bias[0]), rtol=0, atol=1e-6)
    torch.testing.assert_close(r["all_latents_no_bias"], hc - (bias[1] - bias[0]), rtol=0, atol=1e-5)
    # latents 2D..4D-1 live in the chat decoder only: x̂_c(f|S) = h_c, x̂_b(f|S) = b_dec^base
    torch.testing.assert_close(r["latents:chat_half"], hb + hc - bias[0], rtol=0, atol=1e-5)
    # steering: h_b + α Σ_j d_j^chat; latent 2D+1 = +e_1, latent 3D+4 = −e_4 in the chat decoder
    want = hb.clone()
    want[:, 1] += 2.5
    want[:, 4] -= 2.5
    torch.testing.assert_close(r["steer"], want, rtol=0, atol=1e-6)


def test_skip_first_keeps_the_continuing_models_residual(env):
    import torch

    from jaxcoders.interventions.edits import make_edits

    ctx, _, _ = _context(env, skip_first=3)
    hb, hc = ctx.h["base"][0], ctx.h["chat"][0]
    e = {x.name: x for x in make_edits(["base_to_chat", "chat_to_base"])}
    b2c, c2b = e["base_to_chat"].residual(ctx)[0], e["chat_to_base"].residual(ctx)[0]
    assert torch.equal(b2c[:3], hc[:3]) and torch.equal(b2c[3:], hb[3:])
    assert torch.equal(c2b[:3], hb[:3]) and torch.equal(c2b[3:], hc[3:])


def test_bad_edit_names_and_latents(env):
    from jaxcoders.interventions.edits import make_edits

    with pytest.raises(InterventionError, match="unknown edit"):
        make_edits(["all_latent"])
    with pytest.raises(InterventionError, match="--latents_file"):
        make_edits(["latents"])
    with pytest.raises(InterventionError, match="--steer_latents"):
        make_edits(["steer"])
    with pytest.raises(InterventionError, match="outside"):
        CrosscoderEdits(env["cc"]).check_latents([0, 10_000])
    with pytest.raises(InterventionError, match="--crosscoder"):
        from jaxcoders.interventions.run import InterventionConfig, run_interventions

        base, chat = env["models"]["llama"]
        run_interventions(InterventionConfig(base_model=base, chat_model=chat, layer=1, dataset=env["chat"],
                                             out=str(env["tmp"] / "x"), edits=["all_latents"], progress=False))


def test_latent_delta_in_raw_space_with_input_normalization():
    """A crosscoder that is perfect in its normalized space gives h_b + x̂_c − x̂_b = h_c in raw units."""
    from jaxcoders.core.params import normalization_buffers

    rng = np.random.default_rng(1)
    model = perfect_crosscoder(8)
    mean = rng.normal(size=(2, 8)).astype(np.float32)
    model = type(model)(model.cfg.replace(input_normalization=True), params=model.params,
                        buffers=normalization_buffers(model.buffers, mean, per_model_scale=[0.5, 2.0]))
    cc = CrosscoderEdits(model)
    hb, hc = (3 * rng.normal(size=(2, 20, 8))).astype(np.float32)
    f = cc.codes(hb, hc)
    np.testing.assert_allclose(hb + cc.latent_delta(f), hc, atol=1e-5)
    np.testing.assert_allclose(cc.reconstruction(f, 1), hc, atol=1e-5)
    # the bias term in raw units: b_dec[m] / s_m + mean[m]
    b = np.asarray(model.params.b_dec_MD)
    np.testing.assert_allclose(cc.bias_delta(), (b[1] / 2.0 + mean[1]) - (b[0] / 0.5 + mean[0]), atol=1e-5)
    # d_j^chat in raw units: W_dec[chat, j] / s_chat (latent 2·8 + 1 = chat +e_1)
    np.testing.assert_allclose(cc.chat_directions([17])[0], np.eye(8)[1] / 2.0, atol=1e-6)


# ----------------------------------------------------------------------------- metrics


def test_assistant_masks():
    A, T, U, B = TokenClass.ASSISTANT, TokenClass.TEMPLATE, TokenClass.USER, TokenClass.BOS
    cls = np.array([B, T, U, U, T, A, A, A, T, T, U, T, A, A, T])
    pred, first = M.assistant_masks(cls, k=2)
    assert np.flatnonzero(pred).tolist() == [4, 5, 6, 11, 12]
    assert np.flatnonzero(first).tolist() == [4, 5, 11, 12]
    _, first0 = M.assistant_masks(cls, k=0)
    assert not first0.any()


def test_token_metrics_and_bootstrap():
    import torch

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(5, 11, generator=g), torch.randn(5, 11, generator=g)
    la, lb = torch.log_softmax(a, -1), torch.log_softmax(b, -1)
    tgt = torch.tensor([0, 3, 5, 10, 2])
    v = M.token_metrics(lb, la, lb, tgt)
    ref_kl = torch.nn.functional.kl_div(lb, la, log_target=True, reduction="none").sum(-1)
    np.testing.assert_allclose(v["kl_chat"], ref_kl.numpy(), rtol=1e-5)
    np.testing.assert_allclose(v["kl_base"], 0.0, atol=1e-7)
    np.testing.assert_allclose(v["ce"], -lb[torch.arange(5), tgt].numpy(), rtol=1e-6)
    s = M.bootstrap_mean([2.0, 6.0, 0.0], [1, 3, 0], n_boot=200)
    assert s["mean"] == 2.0 and s["tokens"] == 4 and s["conversations"] == 2 and s["ci_low"] == s["ci_high"] == 2.0
    s = M.bootstrap_mean([1.0, 9.0, 4.0, 4.0], [1, 1, 1, 1], n_boot=500)
    assert s["ci_low"] < 4.5 < s["ci_high"] and s["mean"] == 4.5


def test_split_by_nu():
    table = {"latent": np.arange(8), "delta_norm": np.array([0.95, 0.2, 0.99, 0.91, 0.5, 0.97, 1.0, 0.93]),
             "nu_error": np.array([0.5, 0.0, 0.1, np.nan, 0.0, 0.9, 0.05, 0.3])}
    sets = split_by_nu(table)  # chat-only with finite ν: 0 (.5), 2 (.1), 5 (.9), 6 (.05), 7 (.3) → drop middle (7)
    assert sets["best_half_nu_error"].tolist() == [2, 6]
    assert sets["worst_half_nu_error"].tolist() == [0, 5]


# ----------------------------------------------------------------------------- the command lines


def test_command_lines(env, cli_runner):
    """Both CLIs end to end (started together: most of their time is importing torch and JAX)."""
    base, chat = env["models"]["gemma2"]
    sets = env["tmp"] / "sets.json"
    sets.write_text(json.dumps({"all": list(range(4 * D)), "none": []}))
    out = env["tmp"] / "cli-out"
    inspect_json = env["tmp"] / "inspect.json"
    def _start_cli(script, *args):  # a forked process of the preloaded `cli_runner` server
        return cli_runner.start([ROOT / "experiments" / script, *args], cwd=ROOT, timeout=300)

    procs = {
        "interventions": _start_cli(
            "interventions.py", f"--base_model={base}", f"--chat_model={chat}", f"--crosscoder={env['cc']}",
            "--layer=1", f"--dataset={env['chat']}", "--num_conversations=3", "--max_len=96",
            "--edits=base,chat,base_to_chat,all_latents,bias_only", f"--latents_file={sets}",
            "--steer_latents=70,71", "--steer_alpha=0.5", "--n_boot=20", f"--out={out}"),
        "inspect": _start_cli(
            "inspect_prompt.py", f"--base_model={base}", f"--chat_model={chat}", f"--crosscoder={env['cc']}",
            "--layer=1", '--chat=[{"role": "user", "content": "hi there"}]', "--top=2", "--latents=chat-only",
            f"--json_out={inspect_json}"),
    }
    done = {k: p.wait() for k, p in procs.items()}

    rc, stdout, stderr = done["interventions"]
    assert rc == 0, stderr[-3000:]
    res = json.loads((out / "interventions.json").read_text())
    assert set(res["edits"]) == {"base", "chat", "base_to_chat", "all_latents", "bias_only", "latents:all",
                                 "latents:none", "steer"}
    assert abs(res["edits"]["latents:all"]["all"]["kl_chat"]["mean"]) < TOL
    for m in M.METRICS:
        assert res["edits"]["latents:none"]["all"][m]["mean"] == pytest.approx(
            res["edits"]["bias_only"]["all"][m]["mean"], abs=1e-6)
    assert (out / "interventions.png").stat().st_size > 1000
    per = np.load(out / "interventions_per_conversation.npz")
    assert per["count_all"].sum() == res["tokens"]["all"]
    assert "all_latents" in stdout and "scored tokens" in stdout

    rc, stdout, stderr = done["inspect"]
    assert rc == 0, stderr[-3000:]
    res = json.loads(inspect_json.read_text())
    assert res["tokens"] and all(len(r["top"]) <= 2 for r in res["tokens"])
    assert all(e["tag"] == "chat-only" for r in res["tokens"] for e in r["top"])
    assert "top latents" in stdout


def test_bad_layer_is_one_sentence(env):
    from jaxcoders.extract.models import ModelError

    with pytest.raises(ModelError, match=r"--layer=9 does not exist .* 3 blocks"):
        _run(env, "llama", 9, edits=["base"])


def test_inspect_prompt(env):
    from jaxcoders.interventions.online import format_table, inspect_prompt

    base, chat = env["models"]["llama"]
    conv = [{"role": "user", "content": "Where is the school?"}, {"role": "assistant", "content": "Next to the park."}]
    res = inspect_prompt(base, chat, env["cc"], 1, chat=conv, top=3, device="cpu")
    cc = CrosscoderEdits(env["cc"])
    rows = res["tokens"]
    assert {r["class"] for r in rows} >= {"bos", "template", "user", "assistant"}
    # the perfect crosscoder's top latents are the largest |x_m[i] − b_dec[m, i]| coordinates
    from jaxcoders.extract.models import LayerActivations
    import torch

    ids = torch.tensor([[r["id"] for r in rows]])
    hb = LayerActivations(base, 1)(ids)[0].numpy()
    hc = LayerActivations(chat, 1)(ids)[0].numpy()
    act = cc.scaled_activations(hb, hc)
    for t in (0, len(rows) // 2, len(rows) - 1):
        want = np.argsort(-act[t], kind="stable")[:3]
        assert [e["latent"] for e in rows[t]["top"]] == want.tolist()
        np.testing.assert_allclose([e["activation"] for e in rows[t]["top"]], act[t, want], rtol=1e-6)
    assert all(e["tag"] in ("chat-only", "base-only") for r in rows for e in r["top"])
    only = inspect_prompt(base, chat, cc, 1, prompt="Hello world", top=2, latents=np.arange(2 * D, 4 * D))
    assert all(2 * D <= e["latent"] < 4 * D and e["tag"] == "chat-only" for r in only["tokens"] for e in r["top"])
    assert "chat-only" in format_table(res) or "[C]" in format_table(res)


def test_parse_chat_arg(tmp_path):
    from jaxcoders.interventions.online import parse_chat_arg

    msgs = [{"role": "user", "content": "hi"}]
    assert parse_chat_arg(json.dumps(msgs)) == msgs
    (tmp_path / "c.json").write_text(json.dumps(msgs))
    assert parse_chat_arg(f"@{tmp_path / 'c.json'}") == msgs
    with pytest.raises(InterventionError, match="--chat is not valid JSON"):
        parse_chat_arg("[{oops")
    with pytest.raises(InterventionError, match="does not exist"):
        parse_chat_arg(f"@{tmp_path / 'missing.json'}")
