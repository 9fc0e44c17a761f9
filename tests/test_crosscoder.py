"""Equivalence of encode / decode with the reference implementation (public fixtures + a numpy
transcription of the reference math for code normalizations the fixtures do not cover)."""
import json

import numpy as np
import pytest
from flax import nnx

import jaxcoders
from jaxcoders.config import CodeNormalization, CrossCoderConfig
from jaxcoders.core.module import CrossCoder
from jaxcoders.core.params import CrossCoderParams, default_buffers

import ref_numpy

CASES = ["l1_crosscoder", "l1_decoupled", "batchtopk_crosscoder", "batchtopk_decoupled"]


def rel_err(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.max(np.abs(a - b)) / max(np.max(np.abs(b)), 1e-30))


@pytest.mark.accelerator
@pytest.mark.parametrize("case", CASES)
def test_fixture_encode_decode(fixtures_dir, case):
    d = fixtures_dir / case
    model = jaxcoders.load_reference(d / "model")
    z = np.load(d / "arrays.npz")
    f = model.encode(z["x"])
    assert f.shape == z["f"].shape
    assert rel_err(f, z["f"]) < 1e-5
    assert rel_err(model.decode(z["f"]), z["x_hat"]) < 1e-5
    assert rel_err(model.get_activations(z["x"]), z["f_scaled"]) < 1e-5
    cn = np.asarray(model.code_normalization()).reshape(z["code_normalization"].shape)
    assert rel_err(cn, z["code_normalization"]) < 1e-5
    # the active set is identical, not just close
    np.testing.assert_array_equal(np.asarray(f) > 0, z["f"] > 0)
    if "f_train" in z.files:
        ft = model.encode(z["x"], train=True)
        np.testing.assert_array_equal(np.asarray(ft) > 0, z["f_train"] > 0)
        assert rel_err(ft, z["f_train"]) < 1e-5
        assert rel_err(model.decode(ft), z["x_hat_train"]) < 1e-5


@pytest.mark.accelerator
@pytest.mark.parametrize("case", CASES)
def test_fixture_control_perturbed_weight_fails(fixtures_dir, case):
    """Control: one perturbed encoder and decoder weight must break the equivalence checks."""
    d = fixtures_dir / case
    model = jaxcoders.load_reference(d / "model")
    z = np.load(d / "arrays.npz")
    p = model.params
    f_ref = z["f"]
    # perturb the encoder weight of a latent that is active in the fixture
    active = np.argwhere(f_ref.reshape(f_ref.shape[0], -1, f_ref.shape[-1]).sum(axis=(0, 1)) > 0)[0, 0]
    w_enc = np.array(p.w_enc_MDF)
    w_enc[0, 0, active] += 0.05
    w_dec = np.array(p.w_dec_MFD)
    w_dec[1, active, 0] += 0.05
    model.set_state(params=CrossCoderParams(w_enc, p.b_enc_F, w_dec, p.b_dec_MD))
    assert rel_err(model.encode(z["x"]), f_ref) > 1e-5
    assert rel_err(model.decode(z["f"]), z["x_hat"]) > 1e-5


def _random_model(kind: str, arch: str, M=2, D=12, F=40, k=3, seed=0):
    rng = np.random.default_rng(seed)
    w_enc = rng.normal(size=(M, D, F)).astype(np.float32) * 0.3
    w_dec = rng.normal(size=(M, F, D)).astype(np.float32) * rng.uniform(0.2, 1.5, size=(M, F, 1)).astype(np.float32)
    b_enc = rng.normal(size=(F,)).astype(np.float32) * 0.1
    b_dec = rng.normal(size=(M, D)).astype(np.float32)
    cfg = CrossCoderConfig(M, D, F, architecture=arch, code_normalization=kind, k=k if arch == "batchtopk" else None)
    buffers = default_buffers(cfg)
    theta = np.array([0.4] * M, np.float32) if kind == "DECOUPLED" else np.float32(0.4)
    if arch == "batchtopk":
        buffers = buffers._replace(threshold=theta)
    model = CrossCoder(cfg, params=CrossCoderParams(w_enc, b_enc, w_dec, b_dec), buffers=buffers)
    x = rng.normal(size=(24, M, D)).astype(np.float32)
    return model, x, (w_enc, b_enc, w_dec, b_dec), theta


@pytest.mark.parametrize("kind", ["CROSSCODER", "SAE", "MIXED", "NONE", "DECOUPLED"])
@pytest.mark.parametrize("arch", ["l1", "batchtopk"])
@pytest.mark.parametrize("M", [2, 3])
def test_all_code_normalizations_match_numpy_reference(kind, arch, M):
    model, x, (w_enc, b_enc, w_dec, b_dec), theta = _random_model(kind, arch, M=M)
    c_ref = ref_numpy.code_norm(w_dec.astype(np.float64), kind)
    assert rel_err(model.code_normalization(), c_ref) < 1e-5
    for train in ([False, True] if arch == "batchtopk" else [False]):
        f_ref = ref_numpy.encode(x.astype(np.float64), w_enc, b_enc, w_dec.astype(np.float64), kind, arch,
                                 k=3, threshold=theta, train=train)
        f = np.asarray(model.encode(x, train=train))
        assert f.shape == f_ref.shape
        np.testing.assert_array_equal(f > 0, f_ref > 0)
        assert rel_err(f, f_ref) < 1e-5
        assert rel_err(model.decode(f), ref_numpy.decode(f_ref, w_dec, b_dec)) < 1e-5


@pytest.mark.accelerator
def test_batchtopk_train_selects_k_times_b_with_ties():
    """Ties at the cut: lower flat index wins (documented rule), exactly k*B entries kept."""
    cfg = CrossCoderConfig(2, 4, 8, architecture="batchtopk", code_normalization="NONE", k=2)
    w_enc = np.zeros((2, 4, 8), np.float32)
    w_dec = np.ones((2, 8, 4), np.float32)
    b_enc = np.full((8,), 1.0, np.float32)  # every latent = 1.0 on every token: all tied
    model = CrossCoder(cfg, params=CrossCoderParams(w_enc, b_enc, w_dec, np.zeros((2, 4), np.float32)))
    x = np.zeros((3, 2, 4), np.float32)
    f = np.asarray(model.encode(x, train=True))
    assert (f > 0).sum() == 6
    expected = np.zeros(24, bool)
    expected[:6] = True
    np.testing.assert_array_equal((f > 0).reshape(-1), expected)


def test_threshold_is_strict(fixtures_dir):
    model = jaxcoders.load_reference(fixtures_dir / "batchtopk_crosscoder" / "model")
    z = np.load(fixtures_dir / "batchtopk_crosscoder" / "arrays.npz")
    scaled = np.asarray(model.get_activations(z["x"], train=False))
    theta = float(np.asarray(model.buffers.threshold))
    assert np.all((scaled == 0) | (scaled > theta))


def test_fresh_init_options():
    cfg = CrossCoderConfig(2, 16, 64, architecture="batchtopk", k=4, same_init_for_all_models=True,
                           init_with_transpose=True, norm_init_scale=1.0)
    m = CrossCoder(cfg, rngs=nnx.Rngs(3))
    p = m.params
    np.testing.assert_allclose(np.asarray(p.w_enc_MDF[0]), np.asarray(p.w_enc_MDF[1]))
    np.testing.assert_allclose(np.asarray(p.w_dec_MFD), np.transpose(np.asarray(p.w_enc_MDF), (0, 2, 1)))
    np.testing.assert_allclose(np.linalg.norm(np.asarray(p.w_enc_MDF), axis=1), 1.0, rtol=1e-5)
    assert np.all(np.asarray(p.b_enc_F) == 0) and np.all(np.asarray(p.b_dec_MD) == 0)
    assert float(m.buffers.threshold) == -1.0
    # kaiming bound without rescaling: sqrt(6 / fan_in), fan_in = D*F for (M, D, F)
    cfg2 = CrossCoderConfig(2, 16, 64, init_with_transpose=False)
    p2 = CrossCoder(cfg2, rngs=nnx.Rngs(1)).params
    assert np.abs(np.asarray(p2.w_enc_MDF)).max() <= np.sqrt(6 / (16 * 64)) + 1e-7
    assert not np.allclose(np.asarray(p2.w_dec_MFD), np.transpose(np.asarray(p2.w_enc_MDF), (0, 2, 1)))


def test_input_normalization_and_folding():
    from jaxcoders.core.params import fold_normalization, normalization_buffers

    for per_model in (False, True):
        model, x, _, _ = _random_model("DECOUPLED", "batchtopk", D=12)
        rng = np.random.default_rng(1)
        mean = rng.normal(size=(2, 12)).astype(np.float32)
        std = rng.uniform(0.5, 2, size=(2, 12)).astype(np.float32)
        b = normalization_buffers(model.buffers, mean, std, target_rms=1.0,
                                  per_model_scale=[0.5, 2.0] if per_model else None)
        if not per_model:
            assert np.isclose(float(b.act_scale), 1.0 / np.sqrt((std.astype(np.float64) ** 2).sum() + 1e-8), rtol=1e-6)
        nm = CrossCoder(model.cfg.replace(input_normalization=True), params=model.params, buffers=b)
        xs = x * 3 + 1
        f = np.asarray(nm.encode(xs))
        cfg2, p2, b2 = fold_normalization(nm.cfg, nm.params, nm.buffers)
        folded = CrossCoder(cfg2, params=p2, buffers=b2)
        np.testing.assert_array_equal(np.asarray(folded.encode(xs)) > 0, f > 0)
        assert rel_err(folded.encode(xs), f) < 1e-4
        assert rel_err(folded.decode(f), nm.decode(f)) < 1e-4


def test_normalization_roundtrip_through_reference_layout(tmp_path):
    from jaxcoders.core.params import normalization_buffers

    model, x, _, _ = _random_model("CROSSCODER", "batchtopk")
    rng = np.random.default_rng(2)
    b = normalization_buffers(model.buffers, rng.normal(size=(2, 12)), rng.uniform(0.5, 2, size=(2, 12)), target_rms=2.0)
    nm = CrossCoder(model.cfg.replace(input_normalization=True), params=model.params, buffers=b)
    jaxcoders.save_reference(nm, tmp_path / "norm")
    back = jaxcoders.load_reference(tmp_path / "norm")
    assert back.cfg.input_normalization
    np.testing.assert_array_equal(np.asarray(back.encode(x)), np.asarray(nm.encode(x)))
    assert json.loads((tmp_path / "norm" / "config.json").read_text())["target_rms"] == 2.0
    assert back.cfg.code_normalization == CodeNormalization.CROSSCODER


# every contraction the model math runs through `matmul` / `einsum_bf16` (dense and sparse paths),
# with the size of each index
BF16_EQUATIONS = ["bk,kf->bf", "bmd,mdf->bf", "bf,mfd->bmd", "bmf,mfd->bmd", "bmd,mcd->bc", "bc,bmd->mcd", "bc,bk->ck",
                  "bmf,bmd->mfd"]
BF16_SIZES = dict(b=48, k=24, m=2, d=12, f=40, c=16)


@pytest.mark.parametrize("native", [True, False], ids=["native", "widened"])
@pytest.mark.parametrize("eq", BF16_EQUATIONS)
def test_einsum_bf16_forward_and_backward_are_bf16_products_with_f32_sums(eq, native, monkeypatch):
    """compute_dtype="bfloat16": the forward multiplies the operands rounded to bf16, the backward
    the cotangent rounded to bf16 by the rounded operands, each summed in f32 (on XLA:CPU natively
    for the contractions of `ops.CPU_NATIVE_BF16` where the CPU has bf16 units, else widened).
    Checked against float64 products of the same rounded values; control: the unrounded f32
    operands give a different forward."""
    import jax
    import jax.numpy as jnp

    from jaxcoders.core import ops
    from jaxcoders.core.ops import einsum_bf16

    # both CPU paths, whatever this CPU has: the native one must be supported by XLA:CPU everywhere
    monkeypatch.setattr(ops, "cpu_has_bf16_units", lambda: native)
    (sa, sb), out = eq.split("->")[0].split(","), eq.split("->")[1]
    rng = np.random.default_rng(0)
    a = rng.normal(size=[BF16_SIZES[c] for c in sa]).astype(np.float32)
    b = rng.normal(size=[BF16_SIZES[c] for c in sb]).astype(np.float32)
    g = rng.normal(size=[BF16_SIZES[c] for c in out]).astype(np.float32)

    def r16(x):
        return np.asarray(jnp.asarray(x, jnp.bfloat16), np.float64)

    y, vjp = jax.vjp(lambda a, b: einsum_bf16(eq, a, b), a, b)
    da, db = vjp(jnp.asarray(g))
    assert y.dtype == da.dtype == db.dtype == jnp.float32
    want = np.einsum(eq, r16(a), r16(b))
    assert rel_err(y, want) < 1e-6
    assert rel_err(da, np.einsum(f"{out},{sb}->{sa}", r16(g), r16(b))) < 1e-6
    assert rel_err(db, np.einsum(f"{sa},{out}->{sb}", r16(a), r16(g))) < 1e-6
    assert rel_err(np.einsum(eq, a.astype(np.float64), b.astype(np.float64)), want) > 1e-4  # control


def test_every_native_bf16_contraction_on_cpu_is_tested():
    """The contractions ops.bf16_product runs natively on XLA:CPU are all among those tested above
    (with their transposes), so a new one cannot skip the check that XLA:CPU supports it."""
    from jaxcoders.core.ops import CPU_NATIVE_BF16, _transpose_equations

    tested = {e for eq in BF16_EQUATIONS for e in (eq, *_transpose_equations(eq))}
    assert CPU_NATIVE_BF16 <= tested, sorted(CPU_NATIVE_BF16 - tested)
