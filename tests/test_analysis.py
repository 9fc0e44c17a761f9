"""Decoder metrics, usage statistics, the per-crosscoder table, plots and the CLIs."""
import json
import os
import sys
import types
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

import jaxcoders
from jaxcoders.analysis import decoder, stats, tables
from jaxcoders.analysis import inputs as cli
from jaxcoders.config import CrossCoderConfig
from jaxcoders.core.module import CrossCoder
from jaxcoders.core.params import CrossCoderParams, default_buffers
from test_latent_scaling import planted_problem

ROOT = Path(__file__).resolve().parent.parent


# ----------------------------------------------------------------------------- decoder metrics


def test_relative_norm_tags_and_cosine():
    w = np.zeros((2, 6, 3))
    w[0, :, 0] = [1.0, 0.0, 1.0, 1.0, 0.2, 0.0]  # base norms
    w[1, :, 0] = [0.0, 1.0, 1.0, 0.25, 1.0, 0.0]  # chat norms
    w[1, 2] = [0.0, 1.0, 0.0]  # same norm, orthogonal
    delta = decoder.relative_norm(w)
    np.testing.assert_allclose(delta[:5], [0.0, 1.0, 0.5, 0.125, 0.9])
    assert np.isnan(delta[5])
    tags = decoder.tag_latents(delta)
    assert list(tags) == ["base-only", "chat-only", "shared", "other", "other", "other"]  # Δ = 0.9 is not > 0.9
    assert list(decoder.tag_latents([0.1, 0.4, 0.6, 0.0999, 0.9001])) == ["other", "shared", "shared", "base-only",
                                                                        "chat-only"]
    cos = decoder.decoder_cosine(w)
    np.testing.assert_allclose(cos[[2, 3]], [0.0, 1.0])
    assert np.isnan(cos[0])


def test_nearest_cosine_matches_brute_force():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(37, 9)), rng.normal(size=(37, 9))
    b[5] = 3 * a[11]  # a twin: latent 11's row in a is latent 5's row in b
    cos, idx = decoder.nearest_cosine(a, b, chunk=8)
    un = lambda w: w / np.linalg.norm(w, axis=1, keepdims=True)
    sims = un(a) @ un(b).T
    np.fill_diagonal(sims, -np.inf)
    np.testing.assert_allclose(cos, sims.max(1), rtol=1e-5)
    np.testing.assert_array_equal(idx, sims.argmax(1))
    assert idx[11] == 5 and cos[11] == pytest.approx(1.0, abs=1e-6)
    cos_self, idx_self = decoder.nearest_cosine(a, chunk=64)
    assert np.all(idx_self != np.arange(37))


# ----------------------------------------------------------------------------- usage statistics


def numpy_stats(model, x, labels):
    x = np.asarray(x, np.float64)
    f = np.asarray(model.encode(x.astype(np.float32)), np.float64)
    act = np.asarray(model.get_activations(x.astype(np.float32)), np.float64)
    xh = np.asarray(model.decode(f.astype(np.float32)), np.float64)
    active = (f != 0) if f.ndim == 2 else (f != 0).any(1)
    e = x - xh
    out = {"frequency": active.mean(0), "max_activation": act.max(0),
           "mean_activation": np.where(active.sum(0) > 0, act.sum(0) / np.maximum(active.sum(0), 1), np.nan),
           "fve_base": 1 - e[:, 0].var(0).sum() / x[:, 0].var(0).sum(),
           "fve_chat": 1 - e[:, 1].var(0).sum() / x[:, 1].var(0).sum(),
           "mse_chat": (e[:, 1] ** 2).sum(1).mean(), "l0": active.sum(1).mean()}
    names = stats.token_class_names()
    for c in range(len(names)):
        out[f"frequency_token_class_{names[c]}"] = active[labels == c].mean(0)
        out[f"l0_token_class_{names[c]}"] = active[labels == c].sum(1).mean()
    return out


@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-6), ("float32", 1e-4)])
def test_usage_statistics_match_numpy(fixtures_dir, dtype, rtol):
    case = fixtures_dir / "batchtopk_crosscoder"
    model = jaxcoders.load_reference(case / "model")
    x = np.load(case / "latent_scaling.npz")["x"]
    names = stats.token_class_names()
    labels = np.random.default_rng(0).integers(0, len(names), len(x))
    labels[:10] = -1  # unlabelled rows count nowhere
    res = stats.usage_statistics(model, x, batch_size=96, dtype=dtype, labels={"token_class": labels},
                                 label_classes={"token_class": names})
    ref = numpy_stats(model, x, labels)
    lat, sc = res["latent"], res["scalar"]
    for k, v in ref.items():
        got = lat[k] if k in lat else sc[k]
        np.testing.assert_allclose(got, v, rtol=rtol, atol=1e-12, err_msg=k)
    assert sc["num_tokens"] == len(x)
    assert sum(sc[f"tokens_token_class_{c}"] for c in names) == len(x) - 10


def test_usage_statistics_decoupled_and_dead():
    cfg = CrossCoderConfig(num_models=2, activation_dim=8, dict_size=16, architecture="batchtopk",
                           code_normalization="DECOUPLED", k=2)
    rng = np.random.default_rng(3)
    params = CrossCoderParams(rng.normal(0, 0.4, (2, 8, 16)).astype(np.float32), np.zeros(16, np.float32),
                              rng.normal(0, 0.4, (2, 16, 8)).astype(np.float32), np.zeros((2, 8), np.float32))
    params = params._replace(b_enc_F=np.where(np.arange(16) == 4, -100.0, 0.0).astype(np.float32))  # latent 4 dead
    buffers = default_buffers(cfg)._replace(threshold=np.array([0.3, 0.5], np.float32))
    model = CrossCoder(cfg, params=params, buffers=buffers)
    x = rng.normal(size=(200, 2, 8)).astype(np.float32)
    res = stats.usage_statistics(model, x, batch_size=64, dtype="float64")
    f = np.asarray(model.encode(x))  # (B, M, F)
    np.testing.assert_allclose(res["scalar"]["l0_base"], (f[:, 0] != 0).sum(1).mean())
    np.testing.assert_allclose(res["scalar"]["l0_chat"], (f[:, 1] != 0).sum(1).mean())
    np.testing.assert_allclose(res["latent"]["frequency"], (f != 0).any(1).mean(0))
    assert res["latent"]["dead"][4] and np.isnan(res["latent"]["mean_activation"][4])
    assert res["scalar"]["dead_fraction"] == pytest.approx(np.mean((f != 0).any(1).sum(0) == 0))


# ----------------------------------------------------------------------------- table, summary, plots


def test_analyze_planted_table_summary_and_plots(tmp_path):
    model, x, truth = planted_problem(n=1500)
    labels = {"token_class": np.arange(len(x)) % 7}
    table, summary = tables.analyze(model, x, batch_size=256, labels=labels,
                                    label_classes={"token_class": stats.token_class_names()}, dtype="float64")
    assert len(table) == 8 and list(table["latent"]) == list(range(8))
    assert list(table["tag"][:3]) == ["chat-only"] * 3 and table["tag"][3] == "shared"
    assert list(table["tag"][4:6]) == ["base-only"] * 2
    # latents 0, 1 (ν^ε 0.05, 0.15; ν^r 0) survive; 2 (ν^ε 0.5) does not; 3 is not chat-only
    assert list(np.flatnonzero(table["genuine_chat_specific"])) == [0, 1]
    assert list(np.flatnonzero(table["genuine_base_specific"])) == [4]  # mirror ν^ε 0.1 vs 0.7
    assert summary["chat_only"] == 3 and summary["genuine_chat_specific"] == 2
    assert summary["base_only"] == 2 and summary["genuine_base_specific"] == 1
    assert summary["num_tokens"] == len(x) and summary["fve_chat"] > 0.0
    for col in ("delta_norm", "dec_norm_diff", "decoder_cos", "nearest_chat_base_cos", "frequency", "max_activation",
                "mean_activation", "dead", "frequency_token_class_user", "beta_base_error", "nu_error",
                "nu_reconstruction", "mirror_nu_error", "count_active_chat_error"):
        assert col in table, col
    assert table["dead"][6] and np.isnan(table["nu_error"][6])
    line = tables.summary_line(summary, "planted")
    assert line.startswith("planted: 3 chat-only latents by Δnorm (of 8); 2 (66.7%) survive Latent Scaling")

    paths = tables.write_outputs(table, summary, tmp_path / "planted")
    back = pd.read_parquet(paths["table"])
    np.testing.assert_allclose(back["nu_error"], table["nu_error"])
    saved = json.loads(paths["summary"].read_text())
    assert saved["genuine_chat_specific"] == 2 and saved["summary_line"].startswith("3 chat-only")
    for name in ("delta_norm_hist", "nu_scatter", "mirror_nu_scatter", "frequency_hist", "decoder_cos_hist"):
        assert paths[name].stat().st_size > 1000, name

    # a subset probe leaves NaN for the others; decoder-only analysis needs no data
    sub, s2 = tables.analyze(model, x, batch_size=256, latents="chat-only", usage=False, nearest=False)
    assert np.isfinite(sub["nu_error"][:3]).all() and np.isnan(sub["nu_error"][3:]).all()
    assert s2["latent_scaling_latents"] == 3
    dec_only, s3 = tables.analyze(model, None, nearest=False)
    assert "nu_error" not in dec_only and s3["tag_counts"]["chat-only"] == 3


def test_open_activations_with_a_store(monkeypatch, tmp_path):
    """The CLI's store path: any ActivationStore-like object; its labels feed the per-class stats."""
    model, x, _ = planted_problem(n=300)

    class FakeStore:
        num_rows = len(x)
        dataset_ids = np.arange(len(x)) // 150
        datasets = ["fineweb", "lmsys"]
        token_classes = np.arange(len(x)) % 4

        @classmethod
        def open(cls, url):
            assert url == "mem://planted"
            return cls()

        def __getitem__(self, s):
            return x[s]

    from jaxcoders.data.store import TokenClass

    monkeypatch.setitem(sys.modules, "jaxcoders.data.store",
                        types.SimpleNamespace(ActivationStore=FakeStore, TokenClass=TokenClass))
    acts, labels, classes = cli.open_activations(store="mem://planted")
    assert set(labels) == {"dataset", "token_class"} and classes["dataset"] == ("fineweb", "lmsys")
    table, summary = tables.analyze(model, acts, batch_size=128, labels=labels, label_classes=classes,
                                    latent_scaling=False, nearest=False)
    assert summary["tokens_dataset_fineweb"] == 150 and summary["tokens_token_class_bos"] == 75
    assert "frequency_dataset_lmsys" in table
    with pytest.raises(ValueError, match="exactly one"):
        cli.open_activations()
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "cls.npy", np.arange(len(x)) % 7)
    acts, labels, classes = cli.open_activations(acts=str(tmp_path / "x.npy"), labels=str(tmp_path / "cls.npy"))
    assert acts.shape == x.shape and classes["token_class"][5] == "assistant" and len(labels["token_class"]) == len(x)


def test_real_activation_store(tmp_path, fixtures_dir):
    """Latent Scaling and statistics straight from an ActivationStore (float32 and bfloat16 rows)."""
    from jaxcoders.analysis import scaling as ls
    from jaxcoders.data.store import ActivationStore

    case = fixtures_dir / "batchtopk_crosscoder"
    model = jaxcoders.load_reference(case / "model")
    z = np.load(case / "latent_scaling.npz")
    x = z["x"]
    store = ActivationStore.create_from_arrays(str(tmp_path / "f32"), x, dataset_ids=np.arange(len(x)) // 256,
                                               dataset_names=["fineweb", "lmsys"], chunk_rows=64)
    res = ls.latent_scaling(model, store, batch_size=100, dtype="float64")
    for k in z.files:
        if k != "x":
            np.testing.assert_allclose(res[k], z[k], rtol=1e-9, err_msg=k)
    import ml_dtypes

    xb = x.astype(ml_dtypes.bfloat16)
    store_bf16 = ActivationStore.create_from_arrays(str(tmp_path / "bf16"), xb, chunk_rows=64)
    res_bf16 = ls.latent_scaling(model, store_bf16, batch_size=128, dtype="float64")
    ref_bf16 = ls.latent_scaling(model, xb.astype(np.float32), batch_size=128, dtype="float64")
    np.testing.assert_allclose(res_bf16["nu_error"], ref_bf16["nu_error"], rtol=1e-12)
    acts, labels, classes = cli.open_activations(store=str(tmp_path / "f32"))
    assert classes["dataset"] == ("fineweb", "lmsys") and classes["token_class"][1] == "bos"
    table, summary = tables.analyze(model, acts, batch_size=128, labels=labels, label_classes=classes,
                                    latent_scaling=False, nearest=False)
    assert summary["tokens_dataset_lmsys"] == 256 and summary["tokens_token_class_text"] == len(x)


def test_workdir_convention(tmp_path, fixtures_dir):
    import shutil

    from jaxcoders.io.sources import find_reference_dir

    shutil.copytree(fixtures_dir / "l1_crosscoder" / "model", tmp_path / "run1" / "final")
    assert find_reference_dir(tmp_path / "run1") == tmp_path / "run1" / "final"
    shutil.copytree(fixtures_dir / "l1_crosscoder" / "model", tmp_path / "run1" / "export")
    assert find_reference_dir(tmp_path / "run1") == tmp_path / "run1" / "export"
    assert cli.crosscoder_name(tmp_path / "run1") == "run1"
    with pytest.raises(ValueError, match="workdir"):
        find_reference_dir(tmp_path)


# ----------------------------------------------------------------------------- CLIs


def _run(runner, script, *args):
    """stdout of `python experiments/<script> args`, through the suite's fork server (conftest.cli_runner)."""
    rc, out, err = runner.run([str(ROOT / "experiments" / script), *args], cwd=ROOT,
                              env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=240)
    assert rc == 0, out[-3000:] + err[-3000:]
    return out


def test_cli_latent_scaling_on_a_workdir_matches_fixture(cli_runner, tmp_path, fixtures_dir):
    import shutil

    case = fixtures_dir / "batchtopk_crosscoder"
    shutil.copytree(case / "model", tmp_path / "wd" / "export")
    out = _run(cli_runner, "latent_scaling.py", f"--crosscoder={tmp_path / 'wd'}", f"--acts={case / 'latent_scaling.npz'}",
               f"--out={tmp_path / 'out'}", "--batch_size=64", "--dtype=float64", "--progress=false")
    assert "wd: 0 chat-only latents by Δnorm (of 64); 0 survive Latent Scaling" in out
    table = pd.read_parquet(tmp_path / "out" / "wd" / "latent_scaling.parquet")
    z = np.load(case / "latent_scaling.npz")
    for k in z.files:
        if k != "x":
            np.testing.assert_allclose(table[k], z[k], rtol=1e-5, err_msg=k)
    assert (tmp_path / "out" / "wd" / "nu_scatter.png").is_file()


def test_cli_analyze_planted(cli_runner, tmp_path):
    from jaxcoders.data.store import ActivationStore

    model, x, _ = planted_problem(n=600)
    jaxcoders.save_reference(model, tmp_path / "planted")
    ActivationStore.create_from_arrays(str(tmp_path / "store"), x, token_classes=np.arange(len(x)) % 6,
                                       dataset_ids=np.arange(len(x)) // 300, dataset_names=["fineweb", "lmsys"])
    out = _run(cli_runner, "analyze.py", f"--crosscoder={tmp_path / 'planted'}", f"--store={tmp_path / 'store'}",
               f"--out={tmp_path / 'out'}", "--batch_size=128", "--progress=false")
    assert "planted: 3 chat-only latents by Δnorm (of 8); 2 (66.7%) survive Latent Scaling" in out
    d = tmp_path / "out" / "planted"
    summary = json.loads((d / "summary.json").read_text())
    assert summary["genuine_chat_specific"] == 2 and summary["tokens_token_class_assistant"] == 100
    assert summary["tokens_dataset_lmsys"] == 300
    table = pd.read_parquet(d / "latents.parquet")
    assert "frequency_token_class_assistant" in table and "nearest_chat_base_index" in table
    assert {p.name for p in d.glob("*.png")} >= {"delta_norm_hist.png", "nu_scatter.png", "frequency_hist.png"}
