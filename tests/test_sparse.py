"""The sparse BatchTopK path (jaxcoders/sparse.py) equals the dense one: selection sets, losses,
gradients, train steps; every selection method; every auxk capacity bucket. Controls must fail."""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcoders.config import CrossCoderConfig, TrainConfig
from jaxcoders.core.module import CrossCoder
from jaxcoders.core.params import init_params
from jaxcoders.core.losses import batchtopk_loss
from jaxcoders.core.selection.exact import batch_topk_mask
from jaxcoders.core.sparse_batchtopk import _auxk_caps, batchtopk_loss_sparse, decoder_mode
from jaxcoders.core.selection.candidates import compact_mask, select_entries
from jaxcoders.training.state import init_train_state
from jaxcoders.training.step import make_train_step
from xla_env import fake_devices

B, D, F = 64, 16, 256


def _scores(kind: str, shape=(B, F), seed=0):
    key = jax.random.key(seed)
    if kind == "relu":
        return jax.nn.relu(jax.random.normal(key, shape))
    if kind == "levels":  # heavy ties straddling the cut: the sampled bracket fails, fallback path
        return jnp.round(3 * jax.random.uniform(key, shape)) / 3
    if kind == "heavy_rows":  # a few tokens take most of the budget
        return jax.nn.relu(jax.random.normal(key, shape)).at[:3].multiply(100.0)
    raise ValueError(kind)


def _entries_mask(b, j, valid, shape):
    return np.asarray(jnp.zeros(shape, bool).at[b, j].max(valid))


# "relu" takes the sampled-bracket branch, "levels" (ties straddling the cut) the fallback
@pytest.mark.parametrize("method,kind,shape", [
    ("topk", "relu", (512, 1024)), ("topk", "levels", (64, 256)), ("topk", "heavy_rows", (512, 1024)),
    ("radix", "relu", (64, 256)), ("radix", "levels", (64, 256)),
])
@pytest.mark.accelerator
def test_select_entries_equals_dense_mask(method, kind, shape):
    s = _scores(kind, shape)
    k = 8
    b, j, valid = jax.jit(lambda s: select_entries(s, k, method=method))(s)
    assert int(valid.sum()) == k * shape[0]
    flat = np.asarray(b) * shape[1] + np.asarray(j)
    assert np.all(np.diff(flat) > 0), "entries must be sorted by flat index"
    got = _entries_mask(b, j, valid, shape)
    np.testing.assert_array_equal(got, np.asarray(batch_topk_mask(s, k)))
    assert not np.array_equal(got, np.asarray(batch_topk_mask(s, k - 1)))  # control
    # traced k with a static cap (k-annealing)
    f = jax.jit(lambda s, kt: select_entries(s, kt, k_cap=6, method=method))
    for k in (2, 6):
        b, j, valid = f(s, jnp.int32(k))
        assert int(valid.sum()) == k * shape[0]
        np.testing.assert_array_equal(_entries_mask(b, j, valid, shape), np.asarray(batch_topk_mask(s, k)))


@pytest.mark.accelerator
def test_select_entries_pallas_small():
    s = _scores("relu", (16, 128))
    b, j, valid = select_entries(s, 2, method="pallas")
    np.testing.assert_array_equal(_entries_mask(b, j, valid, s.shape), np.asarray(batch_topk_mask(s, 2)))


def test_compact_mask_matches_nonzero():
    m = jax.random.bernoulli(jax.random.key(3), 0.03, (37, 129))  # sizes not multiples of 32
    n = int(m.sum())
    idx, valid = jax.jit(lambda m: compact_mask(m, n + 5))(m)
    ref = np.flatnonzero(np.asarray(m).reshape(-1))
    np.testing.assert_array_equal(np.asarray(idx)[:n], ref)
    assert np.asarray(valid).sum() == n and not np.asarray(valid)[n:].any()


def _setup(n_dead: int, code_normalization="CROSSCODER", k=4):
    cfg = CrossCoderConfig(2, D, F, architecture="batchtopk", k=k, code_normalization=code_normalization)
    params = init_params(cfg, jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (B, 2, D))
    # the first n_dead latents have not fired for a long time (those that fire now are revived)
    counters = jnp.where(jnp.arange(F) < n_dead, 10**8, 0).astype(jnp.int32)
    return cfg, params, x, counters


@functools.lru_cache(maxsize=None)
def _compiled(loss_fn, cfg, tcfg, k_cap):
    """One compilation per (loss, config); params, batch, counters and a traced k are arguments."""
    if k_cap is None:
        return jax.jit(jax.value_and_grad(
            lambda p, x, c, kk: loss_fn(cfg, tcfg, p, x, c, cfg.k), has_aux=True))
    return jax.jit(jax.value_and_grad(
        lambda p, x, c, kk: loss_fn(cfg, tcfg, p, x, c, kk, k_cap=k_cap), has_aux=True))


def _loss_and_grads(loss_fn, cfg, tcfg, params, x, counters, k, k_cap=None):
    return _compiled(loss_fn, cfg, tcfg, k_cap)(params, x, counters, jnp.int32(k))


def _assert_same(a, b, rtol=2e-5, atol=1e-6):
    (la, auxa), ga = a
    (lb, auxb), gb = b
    np.testing.assert_allclose(float(la), float(lb), rtol=rtol)
    for name in auxa._fields:
        np.testing.assert_allclose(np.asarray(getattr(auxa, name), np.float64),
                                   np.asarray(getattr(auxb, name), np.float64), rtol=rtol, atol=atol, err_msg=name)
    for name, x, y in zip(ga._fields, ga, gb):
        scale = float(jnp.max(jnp.abs(x))) + 1e-12
        np.testing.assert_allclose(np.asarray(x) / scale, np.asarray(y) / scale, atol=5e-6, err_msg=name)


# n_dead (of the first latents) chosen so that every auxk capacity bucket of F=256 is used:
# none dead, <= F/16, <= F/4, and the width-F fallback; top_k_aux 32 > the smallest capacity 16
@pytest.mark.accelerator
@pytest.mark.parametrize("top_k_aux", [8, 32])
def test_sparse_loss_and_gradients_equal_dense(top_k_aux):
    tcfg = TrainConfig(dead_tokens_threshold=10**7, top_k_aux=top_k_aux, auxk_alpha=4.0)  # auxk weighted up
    for n_dead in (0, 10, 40, 200):
        cfg, params, x, counters = _setup(n_dead)
        dense = _loss_and_grads(batchtopk_loss, cfg, tcfg, params, x, counters, 4)
        sparse = _loss_and_grads(batchtopk_loss_sparse, cfg, tcfg, params, x, counters, 4)
        if n_dead:
            assert float(dense[0][1].auxk) > 0 and int(dense[0][1].num_dead) > 0
        _assert_same(dense, sparse)


def test_every_auxk_bucket_is_exercised():
    caps = _auxk_caps(F)
    assert caps == [16, 64, 256]
    for n_dead, lo, hi in ((10, 1, 16), (40, 17, 64), (200, 65, 256)):
        cfg, params, x, counters = _setup(n_dead)
        tcfg = TrainConfig(dead_tokens_threshold=10**7, top_k_aux=8, auxk_alpha=4.0)
        (_, aux), _ = _loss_and_grads(batchtopk_loss, cfg, tcfg, params, x, counters, 4)
        assert lo <= int(aux.num_dead) <= hi


def test_sparse_equals_dense_other_settings():
    cfg, params, x, counters = _setup(40, code_normalization="SAE")
    tcfg = TrainConfig(dead_tokens_threshold=10**7, top_k_aux=8, use_mse_loss=True)
    _assert_same(_loss_and_grads(batchtopk_loss, cfg, tcfg, params, x, counters, 4),
                 _loss_and_grads(batchtopk_loss_sparse, cfg, tcfg, params, x, counters, 4))


def test_sparse_equals_dense_with_traced_k():
    cfg, params, x, counters = _setup(40, k=8)
    tcfg = TrainConfig(dead_tokens_threshold=10**7, top_k_aux=8)
    _assert_same(_loss_and_grads(batchtopk_loss, cfg, tcfg, params, x, counters, jnp.int32(5), k_cap=8),
                 _loss_and_grads(batchtopk_loss_sparse, cfg, tcfg, params, x, counters, jnp.int32(5), k_cap=8))


@pytest.mark.accelerator
def test_sparse_control_different_dead_set_fails():
    """Control: the comparison must catch a difference in the auxk part alone."""
    tcfg = TrainConfig(dead_tokens_threshold=10**7, top_k_aux=8, auxk_alpha=4.0)
    cfg, params, x, counters = _setup(40)
    _, _, _, counters_10 = _setup(10)
    dense = _loss_and_grads(batchtopk_loss, cfg, tcfg, params, x, counters, 4)
    wrong = _loss_and_grads(batchtopk_loss_sparse, cfg, tcfg, params, x, counters_10, 4)
    with pytest.raises(AssertionError):
        _assert_same(dense, wrong)


def _train(mode: str, steps: int = 5, n_dead: int = 40):
    cfg, params, _, counters = _setup(n_dead)
    tcfg = TrainConfig(lr=1e-3, warmup_steps=0, threshold_start_step=1, dead_tokens_threshold=10**7, top_k_aux=8,
                       decoder_mode=mode)
    model = CrossCoder(cfg, params=params)
    state = init_train_state(model, tcfg)._replace(tokens_since_fired_F=counters)
    step = make_train_step(cfg, tcfg)
    xs = jax.random.normal(jax.random.key(7), (steps, B, 2, D))
    losses = []
    for t in range(steps):
        state, m = step(state, xs[t], jnp.int32(cfg.k))
        losses.append(float(m["loss"]))
    return state, np.asarray(losses), m


@pytest.mark.accelerator
def test_train_steps_sparse_equal_dense():
    s_dense, l_dense, m_dense = _train("dense")
    s_sparse, l_sparse, m_sparse = _train("sparse")
    np.testing.assert_allclose(l_sparse, l_dense, rtol=1e-5)
    for name in ("threshold", "num_dead", "auxk", "l0"):
        np.testing.assert_allclose(float(m_sparse[name]), float(m_dense[name]), rtol=1e-5, err_msg=name)
    for a, b in zip(jax.tree.leaves(s_dense.params), jax.tree.leaves(s_sparse.params)):
        np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=2e-6)
    np.testing.assert_array_equal(np.asarray(s_sparse.tokens_since_fired_F), np.asarray(s_dense.tokens_since_fired_F))


def test_decoder_mode_resolution():
    btk = CrossCoderConfig(2, 512, 8192, architecture="batchtopk", k=32)
    assert decoder_mode(btk, TrainConfig(), 2048, backend="cpu") == "sparse"
    # GPU (measured on an H200): f32 sparse up to k/F = 1/64, bf16 up to 1/512; TPU unmeasured: dense
    assert decoder_mode(btk, TrainConfig(), 2048, backend="gpu") == "sparse"  # k/F = 1/256, f32
    assert decoder_mode(btk.replace(compute_dtype="bfloat16"), TrainConfig(), 2048, backend="gpu") == "dense"
    gemma = CrossCoderConfig(2, 2304, 73728, architecture="batchtopk", k=100, compute_dtype="bfloat16")
    assert decoder_mode(gemma, TrainConfig(), 4096, backend="gpu") == "sparse"  # k/F = 1/737
    assert decoder_mode(gemma, TrainConfig(), 4096, k=200, backend="gpu") == "dense"
    assert decoder_mode(btk, TrainConfig(), 2048, backend="tpu") == "dense"
    assert decoder_mode(btk, TrainConfig(), 2048, backend="cpu", num_devices=8) == "dense"
    assert decoder_mode(btk, TrainConfig(), 2048, k=512, backend="cpu") == "dense"  # k/F too large
    assert decoder_mode(btk, TrainConfig(), 8, backend="cpu") == "dense"  # too small to pay
    assert decoder_mode(btk, TrainConfig(decoder_mode="dense"), 2048, backend="cpu") == "dense"
    assert decoder_mode(btk, TrainConfig(decoder_mode="sparse"), 8, backend="gpu") == "sparse"
    dec = btk.replace(code_normalization="DECOUPLED")
    assert decoder_mode(dec, TrainConfig(), 2048, backend="cpu") == "dense"
    l1 = CrossCoderConfig(2, 512, 8192)
    assert decoder_mode(l1, TrainConfig(), 2048, backend="cpu") == "dense"
    with pytest.raises(ValueError, match="decoder_mode='sparse'"):
        decoder_mode(l1, TrainConfig(decoder_mode="sparse"), 2048)
    with pytest.raises(ValueError, match="decoder_mode"):
        TrainConfig(decoder_mode="fast")


def test_sparse_step_on_a_mesh_equals_single_device(tmp_path, cli_runner):
    """8 fake CPU devices, mesh 4x2: the explicit sparse path matches the 1-device dense step."""
    import textwrap

    script = textwrap.dedent("""
        import jax, jax.numpy as jnp, numpy as np
        from jaxcoders.config import CrossCoderConfig, TrainConfig
        from jaxcoders.core.module import CrossCoder
        from jaxcoders.core.params import init_params
        from jaxcoders.training.state import init_train_state, shard_train_state
        from jaxcoders.training.step import make_train_step
        from jaxcoders.training import sharding as shd
        B, D, F = 64, 16, 256
        cfg = CrossCoderConfig(2, D, F, architecture="batchtopk", k=4)
        params = init_params(cfg, jax.random.key(0))
        counters = np.where(np.arange(F) < 40, 10**8, 0).astype(np.int32)
        xs = np.asarray(jax.random.normal(jax.random.key(7), (2, B, 2, D)))
        def run(mode, mesh=None):
            tcfg = TrainConfig(lr=1e-3, warmup_steps=0, threshold_start_step=1, dead_tokens_threshold=10**7,
                               top_k_aux=8, decoder_mode=mode)
            st = init_train_state(CrossCoder(cfg, params=params), tcfg)._replace(
                tokens_since_fired_F=jnp.asarray(counters))
            if mesh is not None:
                st = shard_train_state(st, cfg, tcfg, mesh)
            step = make_train_step(cfg, tcfg, mesh=mesh)
            for t in range(2):
                st, m = step(st, xs[t] if mesh is None else shd.global_batch(xs[t], mesh), jnp.int32(4))
            return st
        ref = run("dense")
        st = run("sparse", shd.make_mesh(4, 2))
        for a, b in zip(jax.tree.leaves(ref.params), jax.tree.leaves(st.params)):
            np.testing.assert_allclose(np.asarray(b), np.asarray(a), rtol=1e-4, atol=1e-6)
        print("OK")
    """)
    rc, out, err = cli_runner.run(["-c", script], cwd=tmp_path, env=dict(XLA_FLAGS=fake_devices(8)))
    assert rc == 0 and "OK" in out, err[-3000:]
