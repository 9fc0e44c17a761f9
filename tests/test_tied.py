"""Tied crosscoder (shared/base/chat triples) and the shared-latent variant."""
import json

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import nnx

import jaxcoders
from jaxcoders.config import CrossCoderConfig, TrainConfig
from jaxcoders.core.module import CrossCoder
from jaxcoders.core.params import CrossCoderParams
from jaxcoders.io.tied import load_tied_reference, save_tied
from jaxcoders.analysis.slots import slot_statistics
from jaxcoders.core.tied import tied_loss, tied_train_config
from jaxcoders.toy.synthetic import SyntheticSpec, make_dictionary


def _ref_state(D=8, F=12, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "W_enc": rng.normal(size=(2, D, 3, F)).astype(np.float32),
        "b_enc": rng.normal(size=(3, F)).astype(np.float32) * 0.1,
        "W_dec": rng.normal(size=(F, 2, D)).astype(np.float32),
        "b_dec": rng.normal(size=(2, D)).astype(np.float32),
    }


def _numpy_tied(state, x):
    """docs/method.md §4 written directly on the reference layout."""
    f = np.maximum(np.einsum("bmd,mdkf->bkf", x, state["W_enc"]) + state["b_enc"], 0)  # (B, 3, F)
    xb = (f[:, 0] + f[:, 1]) @ state["W_dec"][:, 0] + state["b_dec"][0]
    xc = (f[:, 0] + f[:, 2]) @ state["W_dec"][:, 1] + state["b_dec"][1]
    return f, np.stack([xb, xc], 1)


def test_reference_checkpoint_import_export_roundtrip(tmp_path):
    state = _ref_state()
    torch.save({k: torch.from_numpy(v) for k, v in state.items()}, tmp_path / "tied.pt")
    (tmp_path / "tied_cfg.json").write_text(json.dumps({"d_in": 8, "dict_size": 12, "l1_coeff": 2.0}))
    model = load_tied_reference(tmp_path / "tied.pt")
    assert model.cfg.is_tied and model.cfg.dict_size == 12 and model.reference_config["l1_coeff"] == 2.0
    x = np.random.default_rng(1).normal(size=(16, 2, 8)).astype(np.float32)
    f_ref, xhat_ref = _numpy_tied(state, x)
    f = np.asarray(model.encode(x))
    assert f.shape == (16, 3, 12)
    np.testing.assert_allclose(f, f_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(np.asarray(model.decode(f)), xhat_ref, rtol=1e-5, atol=1e-4)
    out = save_tied(model, tmp_path / "export")
    from safetensors.numpy import load_file

    back = load_file(str(out / "model.safetensors"))
    for k in state:
        assert back[k].tobytes() == state[k].tobytes(), k  # bit-exact
    again = load_tied_reference(out)
    np.testing.assert_array_equal(np.asarray(again.encode(x)), f)
    # control: a perturbed weight is caught
    state["W_enc"][0, 0, 2, 3] += 0.5
    f_bad, _ = _numpy_tied(state, x)
    assert np.max(np.abs(f - f_bad)) > 1e-3


def test_eta_one_cannot_prefer_shared():
    """A shared latent and the base+chat pair that reproduces it cost the same at eta = 1."""
    D, F = 6, 4
    rng = np.random.default_rng(0)
    w_dec = rng.normal(size=(2, F, D)).astype(np.float32)
    x = rng.normal(size=(32, 2, D)).astype(np.float32)
    cfg = CrossCoderConfig(2, D, F, architecture="tied")
    w = rng.normal(size=(2, D, F)).astype(np.float32)
    zeros = np.zeros_like(w)

    def params(slot_weights):  # encoder columns per slot, latent-major / slot-minor
        w_enc = np.stack(slot_weights, axis=-1).reshape(2, D, 3 * F)
        return CrossCoderParams(jnp.asarray(w_enc), jnp.zeros(3 * F), jnp.asarray(w_dec), jnp.zeros((2, D)))

    shared = params([w, zeros, zeros])  # the concept in the shared slot
    pair = params([zeros, w, w])  # the same reconstruction from the two exclusive slots
    for eta, relation in ((1.0, "equal"), (2.0, "greater")):
        t = TrainConfig(eta=eta)
        l_shared, a_s = tied_loss(cfg, t, shared, jnp.asarray(x), 1.0)
        l_pair, a_p = tied_loss(cfg, t, pair, jnp.asarray(x), 1.0)
        np.testing.assert_allclose(float(a_s.recon), float(a_p.recon), rtol=1e-6)
        if relation == "equal":
            np.testing.assert_allclose(float(l_shared), float(l_pair), rtol=1e-6)
        else:
            assert float(l_pair) > float(l_shared) + 1e-3


def test_eta_above_one_prefers_shared_slots_in_training():
    pl = make_dictionary(SyntheticSpec(activation_dim=16, n_shared=12, n_chat_only=2, n_base_only=2, seed=0))
    x, _ = pl.sample(64 * 300, seed=1)
    batches = x.reshape(300, 64, 2, 16)
    stats = {}
    for eta in (1.0, 2.0):
        m = CrossCoder(CrossCoderConfig(2, 16, 32, architecture="tied"), rngs=nnx.Rngs(0))
        trained, losses = jaxcoders.fit(m, batches, tied_train_config(300, lr=3e-3, l1_coefficient=0.3, eta=eta))
        assert np.all(np.isfinite(losses)) and losses[-1] < losses[0]
        stats[eta] = slot_statistics(trained, x[:4096])
    excl = lambda s: s["l0_base"] + s["l0_chat"]  # noqa: E731
    assert stats[2.0]["l0_shared"] > excl(stats[2.0])  # eta > 1: shared concepts use shared slots
    assert excl(stats[1.0]) > 2 * excl(stats[2.0])
    assert len(stats[2.0]["chat_corner"]) >= 1  # the planted chat-only features land in chat slots


def test_tied_trains_sharded_state_layout():
    """The encoder is stored latent-major so that sharding F keeps triples together."""
    from jaxcoders.training import sharding as shd

    cfg = CrossCoderConfig(2, 8, 16, architecture="tied")
    m = CrossCoder(cfg, rngs=nnx.Rngs(0))
    assert m.params.w_enc_MDF.shape == (2, 8, 48) and m.params.b_enc_F.shape == (48,)
    assert shd.param_specs().w_enc_MDF[-1] == shd.LATENT
    w = np.asarray(m.params.w_enc_MDF).reshape(2, 8, 16, 3)  # reference init: every slot = W_dec^T
    np.testing.assert_allclose(w[..., 0], np.transpose(np.asarray(m.params.w_dec_MFD), (0, 2, 1)))
    np.testing.assert_allclose(w[..., 0], w[..., 2])
    np.testing.assert_allclose(np.linalg.norm(np.asarray(m.params.w_dec_MFD), axis=-1), 0.08, rtol=1e-5)
    with pytest.raises(ValueError, match="2 models"):
        CrossCoderConfig(3, 8, 16, architecture="tied")


def test_shared_latent_block_identical_by_construction(tmp_path):
    cfg = CrossCoderConfig(2, 12, 32, n_shared_latents=6, norm_init_scale=0.1)
    m = CrossCoder(cfg, rngs=nnx.Rngs(0))
    rng = np.random.default_rng(0)
    batches = rng.normal(size=(20, 32, 2, 12)).astype(np.float32)
    trained, losses = jaxcoders.fit(m, batches, TrainConfig(lr=1e-2, warmup_steps=1, l1_coefficient=0.05,
                                                            shared_l1_coefficient=0.01))
    w = np.asarray(trained.params.w_dec_MFD)
    np.testing.assert_array_equal(w[0, :6], w[1, :6])  # identical block
    assert not np.allclose(w[0, 6:], w[1, 6:])  # the rest is free
    assert not np.allclose(w[0, :6], np.asarray(m.params.w_dec_MFD)[0, :6])  # and it trained
    out = jaxcoders.save_reference(trained, tmp_path / "shared")
    back = jaxcoders.load_reference(out)
    np.testing.assert_allclose(np.asarray(back.encode(batches[0])), np.asarray(trained.encode(batches[0])))
    with pytest.raises(ValueError, match="L1"):
        CrossCoderConfig(2, 12, 32, architecture="batchtopk", k=2, n_shared_latents=4)
