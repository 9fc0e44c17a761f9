"""Planted synthetic data: generator statistics, recovery by every architecture, the benchmark CLI."""
import json
from pathlib import Path

import numpy as np
import pytest
from flax import nnx

import jaxcoders
from jaxcoders.config import CrossCoderConfig, TrainConfig
from jaxcoders.core.module import CrossCoder
from jaxcoders.core.tied import tied_train_config
from jaxcoders.toy.synthetic import SyntheticSpec, make_dictionary, recovery

ROOT = Path(__file__).resolve().parents[1]


def test_generator_statistics_match_parameters():
    spec = SyntheticSpec(activation_dim=24, n_shared=10, n_chat_only=3, n_base_only=3, n_rotated=2,
                         rotation_cosine=0.3, n_corr_pairs=2, corr_base=0.1, corr_chat=0.8,
                         firing_prob=0.05, noise_std=0.0, seed=3)
    pl = make_dictionary(spec)
    k = pl.kinds
    assert len(k) == spec.n_features == 22
    nb, nc = np.linalg.norm(pl.dict_base_ID, axis=1), np.linalg.norm(pl.dict_chat_ID, axis=1)
    np.testing.assert_allclose(nb[k != "chat_only"], 1, rtol=1e-5)
    assert np.all(nb[k == "chat_only"] == 0) and np.all(nc[k == "base_only"] == 0)
    np.testing.assert_allclose(pl.dict_base_ID[k == "shared"], pl.dict_chat_ID[k == "shared"])
    rot = np.sum(pl.dict_base_ID[k == "rotated"] * pl.dict_chat_ID[k == "rotated"], axis=1)
    np.testing.assert_allclose(rot, 0.3, atol=1e-5)
    x, a = pl.sample(200_000, seed=0)
    assert x.shape == (200_000, 2, 24) and a.shape == (200_000, 2, 22)
    indep = k != "corr_b"
    np.testing.assert_allclose((a[:, 0, indep] > 0).mean(0), 0.05, atol=0.003)  # firing probability
    np.testing.assert_allclose(a[:, 0, indep][a[:, 0, indep] > 0].mean(), 1.0, atol=0.02)  # exp(1) magnitudes
    ia, ib = np.flatnonzero(k == "corr_a"), np.flatnonzero(k == "corr_b")
    for m, p in ((0, 0.1), (1, 0.8)):  # P(B | A) = p + (1 - p) * firing_prob
        fa = a[:, m, ia] > 0
        pb_given_a = ((a[:, m, ib] > 0) & fa).sum(0) / fa.sum(0)
        np.testing.assert_allclose(pb_given_a, p + (1 - p) * 0.05, atol=0.02)
    # noiseless activations are exactly the planted mixture
    np.testing.assert_allclose(x[:, 0], a[:, 0] @ pl.dict_base_ID, atol=1e-5)
    np.testing.assert_allclose(x[:, 1], a[:, 1] @ pl.dict_chat_ID, atol=1e-5)


EASY = SyntheticSpec(activation_dim=16, n_shared=10, n_chat_only=2, n_base_only=2, firing_prob=0.05,
                     noise_std=0.01, seed=1)


@pytest.mark.parametrize("arch", ["l1", "batchtopk", "tied", "shared_latent"])
def test_every_architecture_recovers_planted_shared_features(arch):
    pl = make_dictionary(EASY)
    steps, B = 600, 256
    x, _ = pl.sample(steps * B, seed=2)
    batches = x.reshape(steps, B, 2, 16)
    if arch == "l1":
        cfg, t = CrossCoderConfig(2, 16, 64, norm_init_scale=0.1), TrainConfig(lr=3e-3, warmup_steps=20,
                                                                                 l1_coefficient=0.05)
    elif arch == "shared_latent":
        cfg = CrossCoderConfig(2, 16, 64, norm_init_scale=0.1, n_shared_latents=16)
        t = TrainConfig(lr=3e-3, warmup_steps=20, l1_coefficient=0.05, shared_l1_coefficient=0.03)
    elif arch == "batchtopk":
        cfg, t = CrossCoderConfig(2, 16, 64, architecture="batchtopk", k=1, norm_init_scale=1.0), \
            TrainConfig(lr=3e-3, warmup_steps=20, threshold_start_step=100)
    else:
        cfg, t = CrossCoderConfig(2, 16, 32, architecture="tied"), tied_train_config(steps, lr=3e-3, l1_coefficient=0.3)
    model = CrossCoder(cfg, rngs=nnx.Rngs(0))
    shared = pl.kinds == "shared"
    before = recovery(pl, np.asarray(model.params.w_dec_MFD))["max_cosine"][shared]
    assert np.mean(before > 0.9) < 0.2  # control: an untrained model does not "recover" them
    trained, _ = jaxcoders.fit(model, batches, t)
    after = recovery(pl, np.asarray(trained.params.w_dec_MFD))["max_cosine"][shared]
    assert np.mean(after > 0.9) >= 0.7, (arch, np.round(after, 3))


def test_toy_benchmark_cli_small(tmp_path, cli_runner):
    out = tmp_path / "toy"
    rc, _, err = cli_runner.run([ROOT / "experiments" / "toy.py", f"--out={out}", "--steps=150", "--dict_size=64",
                                 "--etas=1.0,2.0"], cwd=ROOT, timeout=900)
    assert rc == 0, err[-3000:]
    rows = json.loads((out / "toy_results.json").read_text())
    assert [row["crosscoder"] for row in rows][:2] == ["L1 (μ=0.08)", "BatchTopK (k=4)"]
    assert len(rows) == 5 and (out / "toy_table.md").exists() and (out / "toy_table.png").exists()
    for row in rows:
        assert row["chat_only_latents"] == row["true_chat_only"] + row["false_chat_only"]
