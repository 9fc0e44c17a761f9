"""L1 dead-latent resampling (`jaxcoders.resample`, `TrainConfig.resample_steps`): the reference's
re-initialization rule (checked against a numpy transcription), the loss-weighted draw without
replacement, the LR warm-up restart, and a training run where resampling revives dead latents."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from jaxcoders.config import CrossCoderConfig, TrainConfig
from jaxcoders.core.module import CrossCoder
from jaxcoders.training.resample import resample_dead_latents, sample_without_replacement, token_losses
from jaxcoders.training.state import init_train_state
from jaxcoders.training.schedules import lr_schedule
from jaxcoders.training.step import make_train_step


def _setup(F=24, D=8, B=10, seed=0):
    cfg = CrossCoderConfig(2, D, F, architecture="l1")
    model = CrossCoder(cfg, rngs=nnx.Rngs(seed))
    tcfg = TrainConfig(lr=1e-2, warmup_steps=0)
    state = init_train_state(model, tcfg, 100)
    rng = np.random.default_rng(seed)
    # non-zero Adam moments so that the reset is visible
    opt = jax.tree.map(lambda a: jnp.asarray(rng.standard_normal(np.shape(a)), jnp.asarray(a).dtype)
                       if jnp.issubdtype(jnp.asarray(a).dtype, jnp.floating) and np.ndim(a) else a, state.opt_state)
    x = jnp.asarray(rng.standard_normal((B, 2, D)), jnp.float32)
    return cfg, state.params, opt, x


def _reference_numpy(params, x, dead, order, scale=0.05):
    """The reference CrossCoder.resample_neurons, transcribed (given the drawn token order)."""
    W_enc, b_enc, W_dec = (np.array(a, np.float64) for a in (params.w_enc_MDF, params.b_enc_F, params.w_dec_MFD))
    x = np.asarray(x, np.float64)
    n = min(int(dead.sum()), x.shape[0])
    sampled = x[order[:n]]  # (n, M, D)
    alive_norm = np.linalg.norm(W_enc[:, :, ~dead], axis=-2).mean(axis=-1)  # (M,)
    idx = np.flatnonzero(dead)[:n]
    W_enc[:, :, idx] = np.transpose(sampled, (1, 2, 0)) * alive_norm[:, None, None] * scale
    W_dec[:, idx, :] = np.transpose(sampled / np.linalg.norm(sampled, axis=-1, keepdims=True), (1, 0, 2))
    b_enc[idx] = 0.0
    return W_enc, b_enc, W_dec, idx


@pytest.mark.parametrize("n_dead", [3, 15])  # fewer dead latents than tokens, and more
def test_resample_matches_reference_rule(n_dead):
    cfg, params, opt, x = _setup()
    F, B = cfg.dict_size, x.shape[0]
    dead = np.zeros(F, bool)
    dead[np.random.default_rng(1).choice(F, n_dead, replace=False)] = True
    key = jax.random.key(7)
    r = jax.jit(lambda p, o, x, d: resample_dead_latents(cfg, p, o, x, d, key))(params, opt, x, jnp.asarray(dead))
    order = np.asarray(sample_without_replacement(key, token_losses(cfg, params, x)))
    W_enc, b_enc, W_dec, idx = _reference_numpy(params, x, dead, order)
    np.testing.assert_allclose(r.params.w_enc_MDF, W_enc, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(r.params.w_dec_MFD, W_dec, rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(r.params.b_enc_F, b_enc.astype(np.float32))
    np.testing.assert_array_equal(r.params.b_dec_MD, params.b_dec_MD)
    assert np.flatnonzero(np.asarray(r.resampled_F)).tolist() == idx.tolist() and len(idx) == min(n_dead, B)
    assert sorted(np.asarray(r.source_F)[idx].tolist()) == sorted(order[:len(idx)].tolist())  # distinct tokens
    # Adam moments: zero exactly at the resampled latents (encoder weight + bias, decoder weight)
    res = np.asarray(r.resampled_F)
    mus = [t for t in jax.tree.leaves(r.opt_state, is_leaf=lambda t: hasattr(t, "w_enc_MDF"))
           if hasattr(t, "w_enc_MDF")]
    olds = [t for t in jax.tree.leaves(opt, is_leaf=lambda t: hasattr(t, "w_enc_MDF")) if hasattr(t, "w_enc_MDF")]
    assert len(mus) == 2  # Adam's mu and nu
    for new, old in zip(mus, olds):
        assert np.all(np.asarray(new.w_enc_MDF)[:, :, res] == 0) and np.all(np.asarray(new.b_enc_F)[res] == 0)
        assert np.all(np.asarray(new.w_dec_MFD)[:, res, :] == 0)
        np.testing.assert_array_equal(np.asarray(new.w_enc_MDF)[:, :, ~res], np.asarray(old.w_enc_MDF)[:, :, ~res])
        np.testing.assert_array_equal(new.b_dec_MD, old.b_dec_MD)  # the decoder bias keeps its moments
    # control: the generic SAE factor 0.2 instead of the crosscoder's 0.05 is a different result
    W_enc_02, *_ = _reference_numpy(params, x, dead, order, scale=0.2)
    assert not np.allclose(r.params.w_enc_MDF, W_enc_02, rtol=1e-3)


def test_no_dead_latent_changes_nothing():
    cfg, params, opt, x = _setup()
    r = resample_dead_latents(cfg, params, opt, x, jnp.zeros(cfg.dict_size, bool), jax.random.key(0))
    for a, b in zip(jax.tree.leaves((r.params, r.opt_state)), jax.tree.leaves((params, opt))):
        np.testing.assert_array_equal(a, b)
    assert not np.asarray(r.resampled_F).any()


def test_draw_is_loss_weighted_without_replacement():
    w = jnp.asarray([0.0, 1.0, 2.0, 5.0, 0.0, 2.0], jnp.float32)
    orders = np.asarray(jax.vmap(lambda k: sample_without_replacement(k, w))(jax.random.split(jax.random.key(0), 20000)))
    first = np.bincount(orders[:, 0], minlength=len(w)) / len(orders)
    np.testing.assert_allclose(first, np.asarray(w) / float(w.sum()), atol=0.012)
    assert np.all(np.sort(orders, axis=1) == np.arange(len(w)))  # permutations
    assert set(orders[:, 4:].ravel()) == {0, 4}  # zero-loss tokens only after every positive one


def test_lr_warmup_restarts_every_resample_period():
    s = lr_schedule(TrainConfig(lr=1.0, warmup_steps=10, resample_steps=100), None)
    assert [float(s(c)) for c in (0, 5, 50, 100, 105, 250)] == [0.0, 0.5, 1.0, 0.0, 0.5, 1.0]
    plain = lr_schedule(TrainConfig(lr=1.0, warmup_steps=10), None)
    assert float(plain(100)) == 1.0  # control: no restart without resampling


def test_resampling_revives_dead_latents_in_training():
    """Half the latents start dead (encoder bias -100: they never fire, so no gradient revives
    them); with resampling every 20 steps they are re-initialized and fire again."""
    D, F, B = 16, 64, 128
    rng = np.random.default_rng(0)
    basis = rng.standard_normal((32, 2, D)).astype(np.float32)
    codes = rng.exponential(1.0, (400, B, 32)) * (rng.random((400, B, 32)) < 0.1)
    data = jnp.asarray(np.einsum("tbk,kmd->tbmd", codes, basis), jnp.float32)
    cfg = CrossCoderConfig(2, D, F, architecture="l1")

    def run(resample_steps):
        tcfg = TrainConfig(lr=3e-3, warmup_steps=5, l1_coefficient=0.05, resample_steps=resample_steps)
        fresh = CrossCoder(cfg, rngs=nnx.Rngs(0))
        params = fresh.params._replace(b_enc_F=fresh.params.b_enc_F.at[: F // 2].set(-100.0))
        state = init_train_state(CrossCoder(cfg, params=params), tcfg, 400)
        step = make_train_step(cfg, tcfg, 400)
        dead, resampled = [], []
        for t in range(120):
            state, m = step(state, data[t], jnp.int32(0))
            dead.append(int(m["num_dead"]))
            resampled.append(int(m.get("resampled", 0)))
        return dead, resampled

    dead0, res0 = run(None)
    dead1, res1 = run(20)
    assert sum(res0) == 0 and min(dead0) >= F // 2  # control: without resampling they stay dead
    assert res1[20] == F // 2 and all(t % 20 == 0 for t, n in enumerate(res1) if n)  # all, at step 20
    assert max(dead1[100:]) < F // 4  # the resampled latents fire


def test_resampling_refused_where_not_implemented():
    with pytest.raises(ValueError, match="resample_steps must be a positive"):
        TrainConfig(resample_steps=0)
    cfg = CrossCoderConfig(2, 8, 16, architecture="batchtopk", k=2)
    with pytest.raises(ValueError, match="implemented for the L1 crosscoder"):
        make_train_step(cfg, TrainConfig(resample_steps=10), 100)
