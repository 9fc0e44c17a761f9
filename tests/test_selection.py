"""BatchTopK selection: every method equals `lax.top_k`'s selection exactly (ties included).

Compile time dominates on CPU, so each (shape, method) is compiled once with a traced k and fed
many inputs and k values. The sharded test runs in a subprocess with 8 fake CPU devices
(XLA_FLAGS must be set before jax is imported).
"""
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxcoders.core.selection import pallas as selection_pallas
from jaxcoders.core.selection.exact import METHODS, batch_topk, batch_topk_mask, radix_select, score_keys
from xla_env import fake_devices

ACCEL = tuple(m for m in METHODS if m != "topk")


def _inputs(B, F, seed=0):
    """random, tied (few levels), all-zero, fewer than k*B positives."""
    rng = np.random.default_rng(seed)
    x = np.maximum(rng.standard_normal((B, F)), 0).astype(np.float32)
    sparse = np.zeros((B, F), np.float32)
    sparse.flat[rng.choice(B * F, max(1, B * F // 50), replace=False)] = 1.0
    return {"random": x, "tied": np.round(x * 2) / 2, "zero": np.zeros((B, F), np.float32), "sparse": sparse}


def _topk_reference(x, n_keep):
    """lax.top_k's selection in numpy: descending IEEE total order, ties by lower flat index.

    (Checked against lax.top_k itself: method "topk" below is lax.top_k.)"""
    x = np.asarray(jnp.asarray(x, jnp.float32))
    raw = x.view(np.int32).astype(np.int64)
    key = np.where(raw < 0, raw ^ 0x7FFFFFFF, raw).reshape(-1)
    mask = np.zeros(x.size, bool)
    mask[np.argsort(-key, kind="stable")[:n_keep]] = True
    return mask.reshape(x.shape)


@pytest.mark.accelerator
@pytest.mark.parametrize("B,F", [(4, 37), (33, 130), (1, 5)])  # B*F not a multiple of any block
def test_methods_equal_topk_traced_k(B, F):
    fns = {m: jax.jit(lambda s, k, m=m: batch_topk_mask(s, k, k_cap=F + 2, method=m)) for m in METHODS}
    straddled = 0
    for name, x in _inputs(B, F).items():
        for k in (0, 1, 3, F, F + 2):  # k * B >= B * F keeps everything
            ref = _topk_reference(x, min(k * B, B * F))
            for m, fn in fns.items():
                got = np.asarray(fn(jnp.asarray(x), jnp.int32(k)))
                assert got.dtype == bool and got.shape == (B, F)
                np.testing.assert_array_equal(got, ref, err_msg=f"{m} {name} k={k}")
            # control: the tie rule matters here (ties straddle the cut) and is checked
            if 0 < k * B < B * F:
                cut = np.sort(x.reshape(-1))[::-1][k * B - 1]
                straddled += int((x == cut).sum() > (ref & (x == cut)).sum())
    assert straddled >= 3


@pytest.mark.accelerator
def test_static_k_and_k_cap_clipping():
    x = _inputs(6, 50, seed=1)["tied"]
    for m in METHODS:
        np.testing.assert_array_equal(batch_topk_mask(x, 4, method=m), _topk_reference(x, 24))
    # a traced k above k_cap is clipped to k_cap, as in method "topk" (shared code for radix/pallas)
    for m in ("topk", "radix"):
        got = jax.jit(lambda s, k: batch_topk_mask(s, k, k_cap=2, method=m))(x, jnp.int32(5))
        np.testing.assert_array_equal(got, _topk_reference(x, 12))
    with pytest.raises(ValueError, match="k_cap"):
        batch_topk_mask(x, jnp.int32(3), method="radix")
    with pytest.raises(ValueError, match="unknown selection method"):
        batch_topk_mask(x, 3, method="sort")


@pytest.mark.accelerator
def test_total_order_and_dtypes():
    """Signed zeros, negatives, inf, and bf16 scores are ordered exactly as lax.top_k orders them."""
    rng = np.random.default_rng(2)
    x = rng.choice(np.array([0.0, -0.0, 1.0, -1.0, np.inf, 2.5, -3.0], np.float32), size=(5, 24))
    fn = jax.jit(lambda s, k: batch_topk_mask(s, k, k_cap=24, method="radix"))
    for k in (1, 2, 5, 11):
        np.testing.assert_array_equal(fn(x, jnp.int32(k)), _topk_reference(x, 5 * k))
    xb = jnp.asarray(_inputs(8, 40)["random"] * 3.1, jnp.bfloat16)  # rounds to many ties
    np.testing.assert_array_equal(batch_topk_mask(xb, 3, method="radix"), _topk_reference(xb, 24))
    np.testing.assert_array_equal(batch_topk_mask(xb, 3, method="topk"), _topk_reference(xb, 24))
    with pytest.raises(ValueError, match="float32"):
        batch_topk_mask(jnp.zeros((2, 3), jnp.int32), 1, method="radix")


@pytest.mark.accelerator
def test_radix_select_cut_counts():
    x = _inputs(16, 64)["tied"]
    keys = np.asarray(score_keys(jnp.asarray(x))).reshape(-1)
    fn = jax.jit(radix_select)
    for n_keep in (1, 40, 500, 1024):
        v, c_gt, c_eq = fn(x, jnp.int32(n_keep))
        assert int(v) == np.sort(keys)[::-1][n_keep - 1]
        assert int(c_gt) == (keys > int(v)).sum() and int(c_eq) == (keys == int(v)).sum()


def test_vmap_decoupled():
    """The DECOUPLED code vmaps the selection over models."""
    xs = np.stack([_inputs(8, 40)["tied"], _inputs(8, 40)["sparse"]])
    ref = np.stack([_topk_reference(x, 16) for x in xs])
    for m in ACCEL:
        got = jax.jit(jax.vmap(lambda s, k: batch_topk_mask(s, k, k_cap=4, method=m), (0, None)))(xs, 2)
        np.testing.assert_array_equal(got, ref)


def test_crosscoder_select_train_with_radix():
    from jaxcoders.config import CodeNormalization, CrossCoderConfig
    from jaxcoders.core.crosscoder import select_train

    rng = np.random.default_rng(3)
    f = np.round(np.maximum(rng.standard_normal((8, 40)), 0) * 2).astype(np.float32) / 2
    for kind, c in ((CodeNormalization.CROSSCODER, rng.uniform(0.5, 2, 40)),
                    (CodeNormalization.DECOUPLED, rng.uniform(0.5, 2, (2, 40)))):
        cfg = CrossCoderConfig(2, 4, 40, architecture="batchtopk", code_normalization=kind, k=3)
        c = jnp.asarray(c, jnp.float32)
        code_ref, mask_ref = jax.jit(lambda f, c: select_train(cfg, f, c, 3, method="topk"))(f, c)
        code, mask = jax.jit(lambda f, c, k: select_train(cfg, f, c, k, k_cap=5, method="radix"))(f, c, 3)
        np.testing.assert_array_equal(mask, mask_ref)
        np.testing.assert_array_equal(code, code_ref)


@pytest.mark.accelerator
@pytest.mark.parametrize("method", METHODS)
def test_batch_topk_gradient_equals_topk_autodiff(method):
    rng = np.random.default_rng(4)
    B, F, k = 6, 30, 3
    f = jnp.asarray(rng.standard_normal((B, F)), jnp.float32)
    s = jnp.asarray(np.round(np.abs(rng.standard_normal((B, F))) * 2) / 2, jnp.float32)  # ties
    w = jnp.asarray(rng.standard_normal((B, F)), jnp.float32)

    def ref_select(f, s):  # autodiff through a lax.top_k selection
        idx = jax.lax.top_k(s.reshape(-1), k * B)[1]
        return f * jnp.zeros(B * F, f.dtype).at[idx].set(1.0).reshape(B, F)

    def loss(sel):
        return lambda f, s: jnp.sum(jnp.sin(sel(f, s)) * w)

    g_ref = jax.jit(jax.grad(loss(ref_select), argnums=(0, 1)))(f, s)
    g = jax.jit(jax.grad(loss(lambda f, s: batch_topk(f, s, k, method=method)), argnums=(0, 1)))(f, s)
    np.testing.assert_array_equal(g[0], g_ref[0])
    np.testing.assert_array_equal(g[1], np.zeros((B, F)))  # no gradient through the selection
    np.testing.assert_array_equal(g_ref[1], np.zeros((B, F)))
    if method == "radix":  # traced k (the custom_vjp does not depend on the method)
        g_traced = jax.jit(jax.grad(lambda f, s, k: jnp.sum(jnp.sin(batch_topk(f, s, k, k_cap=4, method=method)) * w)))(
            f, s, jnp.int32(k))
        np.testing.assert_array_equal(g_traced, g_ref[0])
    assert np.abs(np.asarray(g[0])).sum() > 0  # control: the gradient is not trivially zero


def _numpy_histogram(x, lo, shift, bits):
    raw = np.asarray(x, np.float32).view(np.int32).astype(np.int64)
    key = np.where(raw < 0, raw ^ 0x7FFFFFFF, raw)
    digit = ((key - lo) % 2**32) >> shift
    return np.bincount(digit[digit < 2**bits], minlength=2**bits)


@pytest.mark.accelerator
def test_pallas_histogram_kernel():
    rng = np.random.default_rng(5)
    x = np.abs(rng.standard_normal((37, 300))).astype(np.float32)
    x[0, :4] = [-0.0, -1.0, np.inf, 0.0]
    key11 = int(np.asarray(score_keys(jnp.asarray(x)))[1, 1])
    hist = jax.jit(lambda x, lo, shift: selection_pallas.digit_histogram(x, lo, shift, 4))
    for lo, shift in ((-(2**31), 28), (0, 24), (key11 & ~0xFF, 4), (key11 & ~0xF, 0)):
        np.testing.assert_array_equal(hist(x, jnp.int32(lo), jnp.int32(shift)), _numpy_histogram(x, lo, shift, 4))
    # TPU-semantics interpreter (block padding, VMEM refs) with a block smaller than the matrix
    from jax.experimental.pallas import tpu as pltpu

    got = selection_pallas.digit_histogram(jnp.asarray(x), jnp.int32(0), 24, 4, block=(16, 128),
                                           interpret=pltpu.InterpretParams())
    np.testing.assert_array_equal(got, _numpy_histogram(x, 0, 24, 4))


@pytest.mark.parametrize("platform", ["tpu", "cuda"])
def test_pallas_kernel_lowers_for_accelerators(platform):
    """Cross-platform lowering from CPU: Mosaic (TPU) / Triton (GPU) accept the kernel."""
    fn = jax.jit(lambda x, lo, sh: selection_pallas.digit_histogram(x, lo, sh, 4, interpret=False, platform=platform))
    args = (jax.ShapeDtypeStruct((1024, 8192), jnp.float32), jax.ShapeDtypeStruct((), jnp.int32),
            jax.ShapeDtypeStruct((), jnp.int32))
    try:
        text = fn.trace(*args).lower(lowering_platforms=(platform,)).as_text()
    except (ImportError, NotImplementedError) as e:  # jaxlib built without that backend's bindings
        pytest.skip(f"no {platform} lowering here: {e}")
    assert "radix_hist" in text


_SHARDED = textwrap.dedent("""
    import jax, jax.numpy as jnp, numpy as np
    from jax.sharding import NamedSharding, PartitionSpec as P
    from jaxcoders.core.selection.exact import batch_topk_mask, batch_topk_mask_sharded
    assert jax.device_count() == 8, jax.devices()
    rng = np.random.default_rng(0)
    B, F = 16, 64
    x = np.maximum(rng.standard_normal((B, F)), 0).astype(np.float32)
    y = np.zeros((B, F), np.float32); y[3, 10:20] = 1; y[9, :4] = 2; y[12, 40:] = 1
    xs = [x, np.round(x * 2) / 2, np.zeros((B, F), np.float32), y]
    def ref(x, k):
        m = np.zeros(B * F, bool); m[np.asarray(jax.lax.top_k(jnp.asarray(x).reshape(-1), k * B)[1])] = True
        return m.reshape(B, F)
    n = 0
    for shape in [(8, 1), (4, 2), (2, 4)]:
        mesh = jax.make_mesh(shape, ("data", "latent"))
        sharding = NamedSharding(mesh, P("data", "latent"))
        for method in ("radix", "pallas", "topk") if shape == (4, 2) else ("radix",):
            fn = jax.jit(lambda s, k: batch_topk_mask_sharded(s, k, mesh=mesh, k_cap=F, method=method))
            for xx in xs:
                xd = jax.device_put(xx, sharding)
                for k in (1, 3, F):
                    got = fn(xd, jnp.int32(k))
                    assert got.sharding.spec == P("data", "latent"), got.sharding
                    np.testing.assert_array_equal(np.asarray(got), ref(xx, k), err_msg=f"{shape} {method} k={k}")
                    n += 1
        got = batch_topk_mask_sharded(jax.device_put(xs[1], sharding), 2, mesh=mesh)  # static k
        np.testing.assert_array_equal(np.asarray(got), ref(xs[1], 2))
    mesh = jax.make_mesh((8,), ("data",))  # batch-only mesh: latent axis not sharded
    got = batch_topk_mask_sharded(jax.device_put(xs[3], NamedSharding(mesh, P("data", None))), 2,
                                  mesh=mesh, latent_axis=None)
    np.testing.assert_array_equal(np.asarray(got), ref(xs[3], 2))
    # per-row top-kk (auxk): sharded blocks equal lax.top_k's row selection, ties and -inf included
    from jaxcoders.core.selection.exact import row_topk_mask
    def row_ref(x, kk):
        m = np.zeros((B, F), bool); np.put_along_axis(m, np.asarray(jax.lax.top_k(jnp.asarray(x), kk)[1]), True, 1)
        return m
    ninf = np.where(rng.random((B, F)) < 0.7, -np.inf, xs[1]).astype(np.float32)
    for shape in [(8, 1), (4, 2), (2, 4), (1, 8)]:
        mesh = jax.make_mesh(shape, ("data", "latent"))
        sharding = NamedSharding(mesh, P("data", "latent"))
        for kk in (1, 5, 9, F):
            fn = jax.jit(lambda s: row_topk_mask(s, kk, mesh=mesh))  # one compile per (mesh, kk)
            for xx in xs + [ninf]:
                got = fn(jax.device_put(xx, sharding))
                assert got.sharding.spec == P("data", "latent"), got.sharding
                np.testing.assert_array_equal(np.asarray(got), row_ref(xx, kk), err_msg=f"row {shape} kk={kk}")
                n += 1
    print("SHARDED_OK", n)
""")


def test_row_topk_mask_equals_lax_top_k_rows():
    """The auxk selection: same positions as lax.top_k per row (ties -> lower column, -inf rows)."""
    from jaxcoders.core.selection.exact import row_topk_mask

    rng = np.random.default_rng(3)
    B, F = 12, 40
    fn = jax.jit(row_topk_mask, static_argnums=1)
    for name, x in _inputs(B, F, seed=3).items():
        x = np.where(rng.random((B, F)) < 0.5, -np.inf, x).astype(np.float32) if name == "tied" else x
        for kk in (1, 4, 7, F):
            ref = np.zeros((B, F), bool)
            np.put_along_axis(ref, np.asarray(jax.lax.top_k(jnp.asarray(x), kk)[1]), True, axis=1)
            got = np.asarray(fn(jnp.asarray(x), kk))
            np.testing.assert_array_equal(got, ref, err_msg=f"{name} kk={kk}")
            assert (got.sum(axis=1) == kk).all()
    # control: keeping ties at the cut by higher column index is a different set
    x = np.ones((1, 8), np.float32)
    assert np.asarray(fn(jnp.asarray(x), 3))[0].tolist() == [True] * 3 + [False] * 5


def test_sharded_equals_unsharded_on_8_devices(tmp_path, cli_runner):
    rc, out, err = cli_runner.run(["-c", _SHARDED], cwd=tmp_path, env=dict(XLA_FLAGS=fake_devices(8)))
    assert rc == 0 and "SHARDED_OK" in out, out[-3000:] + err[-5000:]
