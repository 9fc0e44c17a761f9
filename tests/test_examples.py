"""Max-activating examples: the quantile buckets hold what they claim (checked against a brute-force
numpy reference), sampling is exact bottom-k, results do not depend on batching or sharding."""
import functools
import json
from pathlib import Path

import numpy as np
import pytest

import jaxcoders
from jaxcoders.analysis import examples as exm
from jaxcoders.config import CrossCoderConfig
from jaxcoders.core.module import CrossCoder
from xla_env import fake_devices

ROOT = Path(__file__).resolve().parent.parent
D = 16


def sequence_data(n_seq=48, seed=0, vocab=60, dup=((2, 7), (2, 11), (5, 30))):
    """Sequences of varying length; activations are a function of (token, position), so duplicate
    token sequences (pairs in `dup`: later copies earlier) have identical activations."""
    rng = np.random.default_rng(seed)
    lens = rng.integers(2, 26, n_seq)
    toks = [rng.integers(0, vocab, n) for n in lens]
    for a, b in [d for d in dup if d[1] < n_seq]:
        toks[b] = toks[a].copy()
        lens[b] = lens[a]
    emb = rng.normal(size=(vocab, 2, D)).astype(np.float32)
    pos_emb = 0.4 * rng.normal(size=(64, 2, D)).astype(np.float32)
    tok = np.concatenate(toks).astype(np.int32)
    seq = np.repeat(np.arange(n_seq) * 3 + 100, lens).astype(np.int64)  # ids need not be row-like
    pos = np.concatenate([np.arange(n) for n in lens]).astype(np.int32)
    x = emb[tok] + pos_emb[pos]
    cls = rng.integers(0, 7, len(tok)).astype(np.uint8)
    ds = (np.arange(len(tok)) > len(tok) // 2).astype(np.int16)
    return x, {"token_ids": tok, "sequence_ids": seq, "positions": pos, "token_classes": cls, "dataset_ids": ds}


def codes_np(model, x):
    f = np.asarray(model.encode(x), np.float64)
    return f[:, None] if f.ndim == 2 else f  # (N, C, F)


def brute_force(model, x, rows, fractions, K, seed, given_max=None, latents=None):
    """Per latent: the population of each bucket and the expected kept examples."""
    cfg, params = model.cfg, model.params
    codes = codes_np(model, x)
    sc = exm.channel_scales(cfg, params)
    act = np.einsum("ncf,cf->nf", codes, sc)
    mx = act.max(0) if given_max is None else given_max
    seq = rows["sequence_ids"]
    starts = np.flatnonzero(np.r_[True, seq[1:] != seq[:-1]])
    bounds = np.r_[starts, len(seq)]
    seen, fresh = set(), []
    for a, b in zip(bounds[:-1], bounds[1:]):
        key = tuple(rows["token_ids"][a:b])
        if key not in seen:
            seen.add(key)
            fresh.append((a, b))
    above = given_max is not None or fractions[-1] < 1
    edges = np.asarray(fractions[:-1] + ((fractions[-1] * (1 + exm.ABOVE_MARGIN),) if above else ()))
    R = len(fractions) + int(above)
    out = {}
    for li, j in enumerate(range(act.shape[1]) if latents is None else latents):
        items = []  # (value, row of first max, seq start)
        for a, b in fresh:
            v = act[a:b, j]
            if v.max() > 0:
                items.append((v.max(), a + int(np.argmax(v)), a))
        buckets = {0: sorted(items, key=lambda t: (-t[0], t[1]))[:K]}
        pops = {0: len(items)}
        for r in range(R):  # device order: ascending ranges; file id R - r
            mem = [t for t in items if np.sum(t[0] > edges * mx[j]) == r]
            pops[R - r] = len(mem)
            keys = exm.sample_key(np.array([t[2] for t in mem], np.int64), np.full(len(mem), j), seed)
            order = np.lexsort((np.array([t[1] for t in mem]), keys)) if mem else []
            buckets[R - r] = [mem[i] for i in order[:K]]
        out[li] = (buckets, pops)
    return act, mx, out


def check_against_brute_force(model, x, rows, res, *, fractions, K, seed, before, after, given_max=None):
    act, mx, bf = brute_force(model, x, rows, fractions, K, seed, given_max, res["latents"]["latent"])
    ex, lat, meta = res["examples"], res["latents"], res["meta"]
    buckets = {b["id"]: b for b in meta["buckets"]}
    N = len(x)
    codes = codes_np(model, x)
    n = np.linalg.norm(np.asarray(model.params.w_dec_MFD, np.float64), axis=-1)
    for li, j in enumerate(lat["latent"]):
        bk, pops = bf[li]
        np.testing.assert_allclose(lat["max_activation"][li], mx[j], rtol=1e-5)
        np.testing.assert_allclose(lat["observed_max_activation"][li], act[:, j].max(), rtol=1e-5)
        assert lat["count_active"][li] == int((act[:, j] > 0).sum())
        for bid, b in buckets.items():
            assert lat[f"population_{b['name']}"][li] == pops[bid], (j, b["name"])
            sel = (ex["latent"] == j) & (ex["bucket"] == bid)
            want = bk[bid]
            assert sel.sum() == len(want) == min(pops[bid], K)
            got_rows = ex["row"][sel]
            assert sorted(got_rows.tolist()) == sorted(t[1] for t in want), (j, b["name"])
            vals = ex["activation"][sel]
            assert np.all(np.diff(vals) <= 0) and list(ex["rank"][sel]) == list(range(sel.sum()))
            if b["kind"] == "reservoir":  # what the bucket claims: lo·max < activation <= hi·max
                assert np.all(vals > b["lo"] * mx[j] * (1 + 1e-6) - 1e-7)
                if b["hi"] is not None:
                    assert np.all(vals <= b["hi"] * mx[j] * (1 + exm.ABOVE_MARGIN))
            for e in np.flatnonzero(sel):
                r = ex["row"][e]
                np.testing.assert_allclose(ex["activation"][e], act[r, j], rtol=1e-5)
                s = rows["sequence_ids"][r]
                assert ex["sequence_id"][e] == s and ex["position"][e] == rows["positions"][r]
                assert ex["token_class"][e] == rows["token_classes"][r]
                w = np.arange(r - before, r + after + 1)
                inside = (w >= 0) & (w < N)
                inside[inside] = rows["sequence_ids"][w[inside]] == s
                wt = np.where(inside, rows["token_ids"][np.clip(w, 0, N - 1)], -1)
                np.testing.assert_array_equal(ex["token_ids"][e], wt)
                wa = np.where(inside, act[np.clip(w, 0, N - 1), j], 0)
                np.testing.assert_allclose(ex["act_activation"][e], wa, rtol=1e-5, atol=1e-6)
                wc = np.where(inside[:, None], codes[np.clip(w, 0, N - 1), :, j], 0)  # (W, C)
                if model.cfg.is_tied:
                    f_base, f_chat = wc[:, 0] + wc[:, 1], wc[:, 0] + wc[:, 2]
                    np.testing.assert_allclose(ex["act_slot_chat"][e], wc[:, 2] * n[1, j], rtol=1e-5, atol=1e-6)
                elif wc.shape[1] == 2:
                    f_base, f_chat = wc[:, 0], wc[:, 1]
                else:
                    f_base = f_chat = wc[:, 0]
                np.testing.assert_allclose(ex["act_base"][e], f_base * n[0, j], rtol=1e-5, atol=1e-6)
                np.testing.assert_allclose(ex["act_chat"][e], f_chat * n[1, j], rtol=1e-5, atol=1e-6)
    return act


@pytest.fixture(scope="module")
def l1_model(fixtures_dir):
    return jaxcoders.load_reference(fixtures_dir / "l1_crosscoder" / "model")


L1_KW = dict(per_bucket=3, fractions=(0.25, 0.5, 0.75, 0.95, 1.0), before=3, after=2, seed=5,
             latents=np.arange(0, 64, 3))


@pytest.fixture(scope="module")
def l1_run(l1_model):
    x, rows = sequence_data()
    return x, rows, exm.collect_examples(l1_model, x, rows=rows, batch_size=64, max_sequences=4, **L1_KW)


def test_l1_buckets_match_brute_force_and_do_not_depend_on_batching(l1_model, l1_run, tmp_path):
    x, rows, res = l1_run
    kw = L1_KW
    act = check_against_brute_force(l1_model, x, rows, res, K=3, **{k: kw[k] for k in
                                                                  ("fractions", "seed", "before", "after")})
    meta = res["meta"]
    assert meta["duplicate_sequences"] == 3 and meta["num_sequences"] == 48 and meta["num_tokens"] == len(x)
    assert [b["name"] for b in meta["buckets"]] == ["top", "0.95-1", "0.75-0.95", "0.5-0.75", "0.25-0.5", "0-0.25"]
    lat = res["latents"]
    tpl = rows["token_classes"] == 2
    j = lat["latent"][1]
    assert lat["count_template"][1] == int(((act[:, j] > 0) & tpl).sum())
    np.testing.assert_allclose(lat["template_share"][1], ((act[:, j] > 0) & tpl).sum() / (act[:, j] > 0).sum())
    # another batching (bigger batches, other sequence cap, tiny blocks) gives the very same examples
    res2 = exm.collect_examples(l1_model, x, rows=rows, batch_size=200, max_sequences=50, block_rows=64,
                                prefetch=0, **kw)
    for k, v in res["examples"].items():
        np.testing.assert_array_equal(v, res2["examples"][k], err_msg=k)
    # a different seed samples differently but the top bucket stays (same compiled step)
    res3 = exm.collect_examples(l1_model, x, rows=rows, batch_size=64, max_sequences=4, **dict(kw, seed=6))
    top = lambda r: r["examples"]["row"][r["examples"]["bucket"] == 0]
    np.testing.assert_array_equal(top(res), top(res3))
    assert not np.array_equal(res["examples"]["row"], res3["examples"]["row"])

    # written and read back
    paths = exm.write_examples(res, tmp_path / "ex")
    back = exm.load_examples(tmp_path / "ex")
    for k, v in res["examples"].items():
        np.testing.assert_array_equal(back["examples"][k], v, err_msg=k)
    assert list(back["latents"]["latent"]) == list(lat["latent"])
    assert json.loads(paths["meta"].read_text())["format"] == exm.FORMAT


def test_given_max_adds_the_above_bucket(l1_model):
    x, rows = sequence_data(seed=1, n_seq=30)
    act = np.asarray(l1_model.get_activations(x), np.float64)
    given = act.max(0) * 0.6  # as if the max came from other rows: some sequences exceed it
    kw = dict(per_bucket=2, fractions=(0.5, 1.0), before=1, after=1, seed=0)
    res = exm.collect_examples(l1_model, x, rows=rows, max_activation=given, batch_size=64, latents=[1, 2, 5, 9], **kw)
    assert [b["name"] for b in res["meta"]["buckets"]] == ["top", "1-inf", "0.5-1", "0-0.5"]
    assert res["meta"]["max_activation_source"] == "given"
    check_against_brute_force(l1_model, x, rows, res, K=2, given_max=given,
                              **{k: kw[k] for k in ("fractions", "seed", "before", "after")})
    assert (res["examples"]["bucket"] == 1).sum() > 0


BTK_KW = dict(per_bucket=2, fractions=(0.5, 1.0), before=2, after=1, seed=1)


@functools.lru_cache(maxsize=None)
def batchtopk_run(model_dir: str):
    """BatchTopK DECOUPLED examples (shared with test_report.py in one session: computed once)."""
    x, rows = sequence_data(seed=2, n_seq=20)
    btk = jaxcoders.load_reference(model_dir)
    x_btk = x * 2.0  # above the fixture's θ ≈ 1.5 often enough
    res = exm.collect_examples(btk, x_btk, rows=rows, batch_size=128, latents=np.arange(0, 64, 4), **BTK_KW)
    return btk, x_btk, rows, res


def test_decoupled_and_tied_channels(fixtures_dir):
    btk, x_btk, rows, res = batchtopk_run(str(fixtures_dir / "batchtopk_decoupled" / "model"))
    kw = BTK_KW
    x = x_btk / 2.0
    assert res["meta"]["channels"] == ["activation", "base", "chat"]
    act = check_against_brute_force(btk, x_btk, rows, res, K=2,
                                    **{k: kw[k] for k in ("fractions", "seed", "before", "after")})
    np.testing.assert_allclose(act, np.asarray(btk.get_activations(x_btk)), rtol=1e-5, atol=1e-6)
    assert np.any(res["examples"]["act_base"] != res["examples"]["act_chat"])  # per-model codes differ
    assert len(res["examples"]["latent"]) > 0

    from jaxcoders.analysis.slots import slot_statistics

    tied = CrossCoder(CrossCoderConfig(2, D, 12, architecture="tied"), rngs=__import__("flax").nnx.Rngs(0))
    mx = np.einsum("ncf,cf->nf", codes_np(tied, x), exm.channel_scales(tied.cfg, tied.params)).max(0)
    res = exm.collect_examples(tied, x, rows=rows, batch_size=128, max_activation=mx, **kw)  # no max pass
    assert res["meta"]["channels"] == ["activation", "base", "chat", "slot_shared", "slot_base", "slot_chat"]
    check_against_brute_force(tied, x, rows, res, K=2, given_max=mx,
                              **{k: kw[k] for k in ("fractions", "seed", "before", "after")})
    st = slot_statistics(tied, x)
    lat = res["latents"]
    for slot in ("shared", "base", "chat"):
        np.testing.assert_array_equal(lat[f"count_slot_{slot}"], st[f"count_{slot}"])
    np.testing.assert_array_equal(lat["r_chat"], st["r_chat"])
    ex = res["examples"]
    np.testing.assert_allclose(ex["act_activation"], ex["act_base"] + ex["act_chat"], rtol=1e-5, atol=1e-6)


def test_sample_keys_are_uniform_and_match_on_device():
    import jax.numpy as jnp

    rows = np.arange(200_000) * 7 + 3
    k = exm.sample_key(rows, rows % 97, 3)
    assert k.dtype == np.int32 and k.min() >= 0
    hist = np.bincount((k.astype(np.int64) * 16) >> 31, minlength=16)
    assert np.all(np.abs(hist / hist.mean() - 1) < 0.03)
    np.testing.assert_array_equal(np.asarray(exm.sample_key(jnp.asarray(rows[:1000], jnp.int32),
                                                            jnp.asarray(rows[:1000] % 97), 3, xp=jnp)), k[:1000])
    # bottom-k of the keys is a uniform sample: every member of a 12-element bucket is kept about K/n of the time
    hits = np.zeros(12)
    for seed in range(3000):
        kk = exm.sample_key(np.arange(12) * 31, np.full(12, 4), seed)
        hits[np.argsort(kk)[:3]] += 1
    np.testing.assert_allclose(hits / 3000, 3 / 12, atol=0.04)


def test_errors_are_actionable(l1_model):
    x, rows = sequence_data(n_seq=6)
    with pytest.raises(ValueError, match="--latents"):
        exm.collect_examples(l1_model, x, rows=rows, per_bucket=10_000, max_state_bytes=1e6)
    with pytest.raises(ValueError, match="batch_size"):
        exm.collect_examples(l1_model, x, rows=rows, batch_size=8, max_activation=np.ones(64))
    with pytest.raises(ValueError, match="increasing"):
        exm.collect_examples(l1_model, x, rows=rows, fractions=(0.5, 0.25))


def test_store_and_sharded_cli(tmp_path, l1_run, fixtures_dir, cli_runner):
    """The command on an ActivationStore (per-row columns read from the store) with 8 CPU devices
    (latents over 2, tokens over 4) gives exactly the single-device in-memory result."""
    from jaxcoders.data.store import ActivationStore

    x, rows, res = l1_run
    ActivationStore.create_from_arrays(str(tmp_path / "store"), x, token_ids=rows["token_ids"],
                                       sequence_ids=rows["sequence_ids"], positions=rows["positions"],
                                       token_classes=rows["token_classes"], dataset_ids=rows["dataset_ids"],
                                       dataset_names=["fineweb", "lmsys"], chunk_rows=64)
    model_dir = fixtures_dir / "l1_crosscoder" / "model"
    cmd = [str(ROOT / "experiments" / "collect_examples.py"), f"--crosscoder={model_dir}",
           f"--store={tmp_path / 'store'}", f"--out={tmp_path / 'out'}", "--per_bucket=3", "--seed=5",
           "--window_before=3", "--window_after=2", "--batch_size=64", "--max_sequences=4", "--mesh_latent=2",
           "--latents=" + ",".join(map(str, L1_KW["latents"])), "--progress=false"]
    rc, stdout, stderr = cli_runner.run(cmd, cwd=ROOT, env=dict(XLA_FLAGS=fake_devices(8)), timeout=300)
    assert rc == 0, stderr[-3000:]
    assert "examples of 22 latents" in stdout and "3 duplicates skipped" in stdout
    back = exm.load_examples(tmp_path / "out" / "l1_crosscoder")
    for k, v in res["examples"].items():
        np.testing.assert_array_equal(back["examples"][k], v, err_msg=k)
    m = back["meta"]
    assert m["max_activation_source"] == "pass" and m["source"].startswith("file://")
    assert m["datasets"] == ["fineweb", "lmsys"] and m["token_class_names"][2] == "template"
