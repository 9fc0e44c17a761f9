"""Latent Scaling: reference fixtures, a planted-β problem, a brute-force transcription, sharding."""
import textwrap

import jax
import numpy as np
import pytest

import jaxcoders
from jaxcoders.analysis import scaling as ls
from jaxcoders.config import CrossCoderConfig
from jaxcoders.core.module import CrossCoder
from jaxcoders.core.params import CrossCoderParams, default_buffers
from xla_env import fake_devices

CASES = ["l1_crosscoder", "batchtopk_crosscoder"]
MODELS = ("base", "chat")


def fixture_keys(z):
    return [k for k in z.files if k != "x"]


def assert_matches_fixture(res, z, rtol):
    for k in fixture_keys(z):
        np.testing.assert_allclose(res[k], z[k], rtol=rtol, atol=0, err_msg=k)


# ----------------------------------------------------------------------------- reference fixtures


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("dtype,rtol", [("float64", 1e-5), ("float32", 1e-3)])
def test_matches_reference_fixture(fixtures_dir, case, dtype, rtol):
    z = np.load(fixtures_dir / case / "latent_scaling.npz")
    model = jaxcoders.load_reference(fixtures_dir / case / "model")
    res = jaxcoders.latent_scaling(model, z["x"], batch_size=64, dtype=dtype)
    assert_matches_fixture(res, z, rtol)
    assert int(res["num_tokens"]) == len(z["x"])
    np.testing.assert_array_equal(res["latent_index"], np.arange(model.cfg.dict_size))


def test_fixture_control_perturbed_weight_fails(fixtures_dir):
    """The fixture check must catch a one-weight change of the chat decoder."""
    case = fixtures_dir / "l1_crosscoder"
    z = np.load(case / "latent_scaling.npz")
    m = jaxcoders.load_reference(case / "model")
    p = m.params
    w = np.array(p.w_dec_MFD)
    w[1, 3, 5] += 0.05
    m.set_state(params=p._replace(w_dec_MFD=w))
    res = jaxcoders.latent_scaling(m, z["x"], batch_size=64, dtype="float64")
    with pytest.raises(AssertionError):
        assert_matches_fixture(res, z, 1e-5)


def test_batching_padding_and_sources(fixtures_dir):
    """Uneven last batch (padding), an iterator of odd-sized batches and a read()-only store agree."""
    case = fixtures_dir / "batchtopk_crosscoder"
    z = np.load(case / "latent_scaling.npz")
    m = jaxcoders.load_reference(case / "model")
    x = z["x"]
    r_pad = ls.latent_scaling(m, x, batch_size=100, dtype="float64")
    assert_matches_fixture(r_pad, z, 1e-9)

    def gen():
        for i, j in ((0, 37), (37, 200), (200, 512)):
            yield x[i:j]

    assert_matches_fixture(ls.latent_scaling(m, gen(), batch_size=64, dtype="float64"), z, 1e-9)
    assert_matches_fixture(ls.latent_scaling(m, list(gen()), batch_size=64, dtype="float64"), z, 1e-9)

    class ReadOnlyStore:  # the ActivationStore surface the analysis relies on
        num_rows = len(x)

        def read(self, rows):
            return x[rows]

    assert_matches_fixture(ls.latent_scaling(m, ReadOnlyStore(), batch_size=128, dtype="float64"), z, 1e-9)
    r_half = ls.latent_scaling(m, x, batch_size=64, dtype="float64", max_rows=256)
    assert int(r_half["num_tokens"]) == 256


def test_subset_and_mirror(fixtures_dir):
    case = fixtures_dir / "l1_crosscoder"
    z = np.load(case / "latent_scaling.npz")
    m = jaxcoders.load_reference(case / "model")
    full = ls.latent_scaling(m, z["x"], batch_size=128, dtype="float64", mirror=True)
    idx = np.array([3, 17, 40, 63])
    sub = ls.latent_scaling(m, z["x"], batch_size=128, dtype="float64", latents=idx, mirror=True)
    mask = np.zeros(64, bool)
    mask[idx] = True
    sub_mask = ls.latent_scaling(m, z["x"], batch_size=128, dtype="float64", latents=mask)
    np.testing.assert_array_equal(sub["latent_index"], idx)
    for k in fixture_keys(z):
        np.testing.assert_allclose(sub[k], full[k][idx], rtol=1e-10, err_msg=k)
        np.testing.assert_allclose(sub_mask[k], full[k][idx], rtol=1e-10, err_msg=k)
        np.testing.assert_allclose(full[k], z[k], rtol=1e-9, err_msg=k)  # mirror leaves the chat probe alone
    assert "mirror_nu_error" in full and "mirror_beta_chat_error" in sub
    with pytest.raises(ValueError, match="latent indices"):
        ls.latent_scaling(m, z["x"], latents=[64])


# ----------------------------------------------------------------------------- brute force (the reference's way)


def brute_force(model, x, probe, latents=None):
    """Explicit per-latent targets (the reference's (F, N, D) construction), float64 numpy.

    DECOUPLED: weighting code = the probed model's code; each model adds back its own code's
    contribution (the documented choice)."""
    p = model.params
    w_enc, b_enc = np.asarray(p.w_enc_MDF, np.float64), np.asarray(p.b_enc_F, np.float64)
    w_dec, b_dec = np.asarray(p.w_dec_MFD, np.float64), np.asarray(p.b_dec_MD, np.float64)
    cfg = model.cfg
    x = np.asarray(x, np.float64)
    f = np.maximum(np.einsum("bmd,mdf->bf", x, w_enc) + b_enc, 0)
    M = cfg.num_models
    if cfg.is_batchtopk:
        n = np.linalg.norm(w_dec, axis=2)
        theta = np.asarray(model.buffers.threshold, np.float64)
        if cfg.decoupled:
            codes = [f * (f * n[m] > theta[m]) for m in range(M)]
        else:
            c = np.sqrt((n ** 2).sum(0)) if cfg.code_normalization.name == "SAE" else n.sum(0)
            codes = [f * (f * c > theta)] * M
    else:
        codes = [f] * M
    xhat = np.stack([codes[m] @ w_dec[m] + b_dec[m] for m in range(M)], 1)
    idx = np.arange(cfg.dict_size) if latents is None else np.asarray(latents)
    w = codes[probe][:, idx]
    d = w_dec[probe][idx]  # (S, D)
    out = {}
    for m, name in enumerate(MODELS):
        own = codes[m][:, idx].T[:, :, None] * w_dec[m][idx][:, None, :]  # (S, N, D)
        targets = {
            "activation": np.broadcast_to(x[:, m], own.shape),
            "activation_no_bias": np.broadcast_to(x[:, m] - b_dec[m], own.shape),
            "reconstruction": np.broadcast_to(xhat[:, m], own.shape),
            "error": (x[:, m] - xhat[:, m])[None] + own,
        }
        for t, y in targets.items():
            num = np.einsum("ns,snd,sd->s", w, y, d)
            with np.errstate(invalid="ignore", divide="ignore"):
                out[f"beta_{name}_{t}"] = num / (np.sum(d * d, 1) * np.sum(w * w, 0))
    out["count"] = np.sum(w != 0, 0)
    return out


def random_model(arch, norm, seed, M=2, D=12, F=32):
    cfg = CrossCoderConfig(num_models=M, activation_dim=D, dict_size=F, architecture=arch,
                           code_normalization=norm, k=4 if arch == "batchtopk" else None)
    rng = np.random.default_rng(seed)
    params = CrossCoderParams(
        w_enc_MDF=rng.normal(0, 0.3, (M, D, F)).astype(np.float32),
        b_enc_F=rng.normal(0, 0.1, (F,)).astype(np.float32),
        w_dec_MFD=rng.normal(0, 0.3, (M, F, D)).astype(np.float32),
        b_dec_MD=rng.normal(0, 0.5, (M, D)).astype(np.float32),
    )
    buffers = default_buffers(cfg)
    if arch == "batchtopk":
        buffers = buffers._replace(threshold=np.full(buffers.threshold.shape, 0.8, np.float32))
    return CrossCoder(cfg, params=params, buffers=buffers)


@pytest.mark.parametrize("arch,norm", [("l1", "CROSSCODER"), ("batchtopk", "DECOUPLED"), ("batchtopk", "SAE")])
def test_matches_brute_force(arch, norm):
    model = random_model(arch, norm, seed=1)
    x = np.random.default_rng(2).normal(0, 1, (300, 2, 12)).astype(np.float32)
    subset = [0, 5, 9, 31]
    res = ls.latent_scaling(model, x, batch_size=64, dtype="float64", mirror=True, latents=subset)
    for probe, pre in ((1, ""), (0, "mirror_")):
        ref = brute_force(model, x, probe, subset)
        for k, v in ref.items():
            if k == "count":
                np.testing.assert_array_equal(res[f"{pre}count_active_chat_error"], v)
                continue
            np.testing.assert_allclose(res[pre + k], v, rtol=1e-9, atol=1e-12, err_msg=pre + k)
        own, other = ("chat", "base") if probe == 1 else ("base", "chat")
        with np.errstate(invalid="ignore", divide="ignore"):
            np.testing.assert_allclose(res[pre + "nu_error"], ref[f"beta_{other}_error"] / ref[f"beta_{own}_error"],
                                       rtol=1e-9)


# ----------------------------------------------------------------------------- planted β


def planted_problem(n=2000, seed=0, beta_err=(0.05, 0.15, 0.5, 1.0), gamma_rec=(0.0, 0.0, 0.0, 0.8),
                    beta_mirror=(0.1, 0.7)):
    """An L1 crosscoder and data with known Latent Scaling answers.

    Latents 0..3 read chat coordinate j (f_j = ReLU(x_chat[j])), chat decoder row e_j; the base
    activations carry beta_err[j]·f_j e_j, and no other latent writes coordinate j, so
    β(base_activation) = β(base_error) = ν^ε = beta_err[j]; their base decoder row is
    gamma_rec[j]·e_j, so β(base_reconstruction) = ν^r = gamma_rec[j] (Δnorm = 1 when 0).
    Latents 4..5 are base-only (read base coordinate, base decoder row e_c), their direction is
    in chat scaled by beta_mirror (mirror ν^ε). Latent 6 never fires (β NaN); latent 7 is a shared
    latent on a noise-free coordinate. Noise and b_dec live in coordinates no probe touches."""
    K, Km = len(beta_err), len(beta_mirror)
    F, D = 8, 16
    rng = np.random.default_rng(seed)
    cfg = CrossCoderConfig(num_models=2, activation_dim=D, dict_size=F)
    w_enc = np.zeros((2, D, F))
    w_dec = np.zeros((2, F, D))
    b_enc = np.zeros(F)
    b_dec = np.zeros((2, D))
    x = np.zeros((n, 2, D))
    amp = lambda: rng.exponential(1.0, n) * (rng.random(n) < 0.3)
    for j in range(K):  # chat-side latents
        a = amp()
        w_enc[1, j, j] = 1.0
        w_dec[1, j, j] = 1.0
        w_dec[0, j, j] = gamma_rec[j]
        x[:, 1, j] = a
        x[:, 0, j] = beta_err[j] * a
    for i in range(Km):  # base-only latents
        j, c = K + i, K + i
        a = amp()
        w_enc[0, c, j] = 1.0
        w_dec[0, j, c] = 1.0
        x[:, 0, c] = a
        x[:, 1, c] = beta_mirror[i] * a
    b_enc[6] = -1.0  # latent 6: zero encoder column and negative bias: never active
    j = 7
    a = amp()
    w_enc[0, 7, j] = 0.5  # latent 7 reads coordinate 7 of both models
    w_enc[1, 7, j] = 0.5
    w_dec[:, j, 7] = 1.0
    x[:, :, 7] = a[:, None]
    noise_dims = np.arange(8, D)
    x[:, :, noise_dims] = rng.normal(0, 1, (n, 2, len(noise_dims)))
    b_dec[:, noise_dims] = rng.normal(0, 1, (2, len(noise_dims)))
    params = CrossCoderParams(w_enc.astype(np.float32), b_enc.astype(np.float32), w_dec.astype(np.float32),
                              b_dec.astype(np.float32))
    model = CrossCoder(cfg, params=params)
    truth = {"beta_err": np.array(beta_err), "gamma_rec": np.array(gamma_rec), "beta_mirror": np.array(beta_mirror)}
    return model, x.astype(np.float32), truth


@pytest.mark.parametrize("dtype,tol", [("float64", 1e-10), ("float32", 2e-5)])
def test_planted_beta_recovered(dtype, tol):
    model, x, t = planted_problem()
    res = ls.latent_scaling(model, x, batch_size=256, dtype=dtype, mirror=True)
    K = len(t["beta_err"])
    chat = slice(0, K)
    np.testing.assert_allclose(res["beta_base_error"][chat], t["beta_err"], atol=tol)
    np.testing.assert_allclose(res["nu_error"][chat], t["beta_err"], atol=tol)
    np.testing.assert_allclose(res["beta_chat_error"][chat], 1.0, atol=tol)
    np.testing.assert_allclose(res["beta_chat_reconstruction"][chat], 1.0, atol=tol)
    np.testing.assert_allclose(res["beta_base_reconstruction"][chat], t["gamma_rec"], atol=tol)
    np.testing.assert_allclose(res["nu_reconstruction"][chat], t["gamma_rec"], atol=tol)
    np.testing.assert_allclose(res["beta_base_activation"][chat], t["beta_err"], atol=tol)
    np.testing.assert_allclose(res["beta_base_activation_no_bias"][chat], t["beta_err"], atol=tol)
    mirror = slice(K, K + len(t["beta_mirror"]))
    np.testing.assert_allclose(res["mirror_nu_error"][mirror], t["beta_mirror"], atol=tol)
    np.testing.assert_allclose(res["mirror_beta_base_error"][mirror], 1.0, atol=tol)
    np.testing.assert_allclose(res["mirror_nu_reconstruction"][mirror], 0.0, atol=tol)
    # never-active latent: NaN everywhere, count 0
    assert res["count_active_chat_error"][6] == 0
    for k, v in res.items():
        if k.startswith(("beta_", "nu_", "mirror_beta_", "mirror_nu_")):
            assert np.isnan(v[6]), k
    # counts are the number of tokens where the code is non-zero
    f = np.asarray(model.encode(x))
    np.testing.assert_array_equal(res["count_active_base_error"], (f != 0).sum(0))


def test_float64_mode_is_local(fixtures_dir):
    case = fixtures_dir / "l1_crosscoder"
    m = jaxcoders.load_reference(case / "model")
    x = np.load(case / "latent_scaling.npz")["x"][:64]
    before = jax.config.jax_enable_x64
    ls.latent_scaling(m, x, batch_size=64, dtype="float64")
    assert jax.config.jax_enable_x64 == before
    assert jax.numpy.zeros(1).dtype == (np.float64 if before else np.float32)


def test_bad_inputs(fixtures_dir):
    case = fixtures_dir / "l1_crosscoder"
    m = jaxcoders.load_reference(case / "model")
    x = np.array(np.load(case / "latent_scaling.npz")["x"][:100])
    x[7, 1, 3] = np.nan
    with pytest.raises(ValueError, match="NaN or inf"):
        ls.latent_scaling(m, x, batch_size=64)
    with pytest.raises(ValueError, match="expects"):
        ls.latent_scaling(m, x[:, :, :8], batch_size=64)
    with pytest.raises(ValueError, match="dtype"):
        ls.latent_scaling(m, x, dtype="float16")


# ----------------------------------------------------------------------------- sharding


SHARDED_SCRIPT = textwrap.dedent(r"""
    import json, sys
    import numpy as np, jax
    import jaxcoders
    from jax.sharding import PartitionSpec as P
    from jaxcoders.analysis import scaling as ls, stats, stream, make_mesh, mesh as meshes_lib
    assert len(jax.devices()) == 8, jax.devices()
    out = {}
    idx = [1, 8, 33]
    for case in ("batchtopk_crosscoder",):  # sharding does not depend on the architecture; compiles are slow
        d = sys.argv[1] + "/" + case
        z = np.load(d + "/latent_scaling.npz")
        m = jaxcoders.load_reference(d + "/model")
        cfg = m.cfg
        lab = {"cls": np.arange(len(z["x"])) % 3}
        # 2 x 4: tokens over 2 devices, latents (params, accumulators) over 4; all 8 devices in use
        meshes = {"1x1": make_mesh(1, 1, jax.devices()[:1]), "2x4": make_mesh(2, 4)}
        assert meshes_lib.latent_spec((2, 2, 64), 64, meshes["2x4"]) == P(None, None, "latent")
        res = {}
        for name, mesh in meshes.items():
            # one pass feeding usage statistics, full Latent Scaling (+ mirror) and a subset
            accs = [stats.make_accumulator(lab), ls.make_accumulator(cfg, mirror=True), ls.make_accumulator(cfg, idx)]
            st, r, sub = stream.run_pass(m, z["x"], accs, batch_size=64, dtype="float64", mesh=mesh, labels=lab).results
            r32 = ls.latent_scaling(m, z["x"], batch_size=64, dtype="float32", mesh=mesh)
            res[name] = (r["latent"], r32, sub["latent"], st)
        r1, r1_32, sub1, st1 = res["1x1"]
        worst = 0.0
        for name, (r, r32, sub, st) in res.items():
            for k in z.files:
                if k == "x":
                    continue
                np.testing.assert_allclose(r[k], r1[k], rtol=1e-10, err_msg=name + k)
                np.testing.assert_allclose(r32[k], z[k], rtol=1e-3, err_msg=name + k)
                np.testing.assert_allclose(r[k], z[k], rtol=1e-5, err_msg=name + k)
                np.testing.assert_allclose(sub[k], r1[k][idx], rtol=1e-10, err_msg=name + k)
                worst = max(worst, float(np.max(np.abs(r32[k] - r1_32[k]) / np.abs(r1_32[k]))))
            np.testing.assert_allclose(r["mirror_nu_error"], r1["mirror_nu_error"], rtol=1e-10)
            for k, v in st["latent"].items():
                np.testing.assert_allclose(np.asarray(v, float), np.asarray(st1["latent"][k], float), rtol=1e-10,
                                           err_msg=name + k)
            for k, v in st["scalar"].items():
                np.testing.assert_allclose(v, st1["scalar"][k], rtol=1e-10, err_msg=name + k)
        out[case] = worst
    print("SHARDED_OK", json.dumps(out))
""")


def test_sharded_8_devices_matches_single_device(fixtures_dir, tmp_path, cli_runner):
    rc, out, err = cli_runner.run(["-c", SHARDED_SCRIPT, fixtures_dir], cwd=tmp_path, timeout=300,
                                  env=dict(XLA_FLAGS=fake_devices(8)))
    assert rc == 0, out[-3000:] + err[-3000:]
    assert "SHARDED_OK" in out
    print(out.strip().splitlines()[-1])  # worst float32 relative difference, 8 vs 1 device
