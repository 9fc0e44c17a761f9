"""Reference checkpoint layout: import, export, bit-exact round trips and clear errors."""
import json
import shutil

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

import jaxcoders
from jaxcoders.io.reference import ReferenceFormatError

MODEL_DIRS = [
    "l1_crosscoder/model", "l1_decoupled/model", "batchtopk_crosscoder/model", "batchtopk_decoupled/model",
    "train_l1_crosscoder/init", "train_batchtopk_decoupled/final",
]


def _assert_same_tensors(a: dict, b: dict):
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        assert a[k].shape == b[k].shape, k
        assert a[k].tobytes() == b[k].tobytes(), k  # bit-exact (NaN-filled buffers included)


@pytest.mark.parametrize("rel", MODEL_DIRS)
def test_export_roundtrip_is_bit_exact(fixtures_dir, tmp_path, rel):
    src = fixtures_dir / rel
    model = jaxcoders.load_reference(src)
    out = jaxcoders.save_reference(model, tmp_path / "export")
    _assert_same_tensors(load_file(str(out / "model.safetensors")), load_file(str(src / "model.safetensors")))
    assert json.loads((out / "config.json").read_text()) == json.loads((src / "config.json").read_text())
    assert json.loads((out / "trainer_config.json").read_text()) == json.loads((src / "trainer_config.json").read_text())
    for name in ("model.safetensors", "config.json", "trainer_config.json"):  # even the bytes
        assert (out / name).read_bytes() == (src / name).read_bytes(), name
    # and the re-imported model computes the same thing
    again = jaxcoders.load_reference(out)
    x = np.random.default_rng(0).normal(size=(8, 2, 16)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(again.encode(x)), np.asarray(model.encode(x)))


def test_export_roundtrip_control_detects_perturbation(fixtures_dir, tmp_path):
    from jaxcoders.core.params import CrossCoderParams

    src = fixtures_dir / "batchtopk_crosscoder" / "model"
    model = jaxcoders.load_reference(src)
    p = model.params
    w = np.array(p.w_dec_MFD)
    w[0, 3, 2] = np.nextafter(w[0, 3, 2], np.float32(10))  # one ulp
    model.set_state(params=CrossCoderParams(p.w_enc_MDF, p.b_enc_F, w, p.b_dec_MD))
    out = jaxcoders.save_reference(model, tmp_path / "export")
    with pytest.raises(AssertionError):
        _assert_same_tensors(load_file(str(out / "model.safetensors")), load_file(str(src / "model.safetensors")))


def test_fresh_model_export_layout(tmp_path):
    from flax import nnx

    from jaxcoders.config import CrossCoderConfig
    from jaxcoders.core.module import CrossCoder

    for arch, cn in (("l1", "CROSSCODER"), ("batchtopk", "DECOUPLED"), ("batchtopk", "MIXED")):
        m = CrossCoder(CrossCoderConfig(2, 8, 24, architecture=arch, code_normalization=cn, k=3), rngs=nnx.Rngs(0))
        out = jaxcoders.save_reference(m, tmp_path / f"{arch}_{cn}")
        t = load_file(str(out / "model.safetensors"))
        assert t["encoder.weight"].shape == (2, 8, 24) and t["decoder.weight"].shape == (2, 24, 8)
        assert t["code_normalization_id"].dtype == np.int64 and t["code_normalization_id"].shape == ()
        assert np.isnan(t["activation_mean"]).all() and t["activation_global_scale"] == 1.0
        cfg = json.loads((out / "config.json").read_text())
        assert list(cfg) == sorted(cfg)
        assert cfg["num_layers"] == 2 and cfg["code_normalization"] == cn and cfg["target_rms"] == 1.0
        assert cfg["activation_mean"] is None and cfg["activation_std"] is None
        trainer = json.loads((out / "trainer_config.json").read_text())["trainer"]["dict_class"]
        if arch == "batchtopk":
            assert cfg["k"] == 3 and t["k"].dtype == np.int32
            assert t["threshold"].shape == ((2,) if cn == "DECOUPLED" else ())
            assert trainer == "BatchTopKCrossCoder"
        else:
            assert "k" not in cfg and "k" not in t and trainer == "CrossCoder"
        back = jaxcoders.load_reference(out)
        assert back.cfg.code_normalization.name == cn and back.cfg.architecture == arch


def _write_paper_era(tmp_path, src, keys, prefix=""):
    d = tmp_path / "paper"
    d.mkdir()
    t = load_file(str(src / "model.safetensors"))
    save_file({prefix + k: t[k] for k in keys}, str(d / "model.safetensors"))
    return d, t


def test_paper_era_l1_four_tensors_with_compile_prefix(fixtures_dir, tmp_path):
    src = fixtures_dir / "l1_crosscoder" / "model"
    d, _ = _write_paper_era(tmp_path, src, ["encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias"],
                            prefix="_orig_mod.")
    model = jaxcoders.load_reference(d)  # no config.json, no code normalization: CROSSCODER like the reference
    z = np.load(fixtures_dir / "l1_crosscoder" / "arrays.npz")
    np.testing.assert_allclose(np.asarray(model.encode(z["x"])), z["f"], rtol=1e-5, atol=1e-6)
    assert model.cfg.architecture == "l1"


def test_paper_era_batchtopk_and_missing_threshold(fixtures_dir, tmp_path):
    src = fixtures_dir / "batchtopk_crosscoder" / "model"
    weights = ["encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias"]
    d, t = _write_paper_era(tmp_path, src, weights + ["k", "threshold"])
    model = jaxcoders.load_reference(d)
    z = np.load(fixtures_dir / "batchtopk_crosscoder" / "arrays.npz")
    np.testing.assert_allclose(np.asarray(model.encode(z["x"])), z["f"], rtol=1e-5, atol=1e-6)

    d2 = tmp_path / "no_theta"
    d2.mkdir()
    save_file({k: t[k] for k in weights + ["k"]}, str(d2 / "model.safetensors"))
    shutil.copy(src / "trainer_config.json", d2)
    with pytest.raises(ReferenceFormatError, match="threshold"):
        jaxcoders.load_reference(d2)
    filled = jaxcoders.load_reference(d2, threshold=float(t["threshold"]))
    np.testing.assert_allclose(np.asarray(filled.encode(z["x"])), z["f"], rtol=1e-5, atol=1e-6)
    lenient = jaxcoders.load_reference(d2, allow_unset_threshold=True)
    assert float(lenient.buffers.threshold) == -1.0

    d3 = tmp_path / "no_k"
    d3.mkdir()
    save_file({k: t[k] for k in weights + ["threshold"]}, str(d3 / "model.safetensors"))
    with pytest.raises(ReferenceFormatError, match="without k"):
        jaxcoders.load_reference(d3, architecture="batchtopk")
    assert jaxcoders.load_reference(d3, k=4).cfg.k == 4
    with pytest.raises(ValueError, match="disagrees"):
        jaxcoders.load_reference(src, k=7)


def test_not_a_crosscoder(tmp_path):
    with pytest.raises(ReferenceFormatError, match="not a crosscoder directory"):
        jaxcoders.load_reference(tmp_path)
    with pytest.raises(ReferenceFormatError, match="does not exist"):
        jaxcoders.load_reference(tmp_path / "nope")
    save_file({"weight": np.zeros((3, 3), np.float32)}, str(tmp_path / "model.safetensors"))
    with pytest.raises(ReferenceFormatError, match="missing tensors"):
        jaxcoders.load_reference(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(ReferenceFormatError, match="not a readable safetensors"):
        jaxcoders.load_reference(tmp_path)


def test_inconsistent_shapes_rejected(fixtures_dir, tmp_path):
    t = load_file(str(fixtures_dir / "l1_crosscoder" / "model" / "model.safetensors"))
    t["decoder.weight"] = t["decoder.weight"][:, :10]
    save_file(t, str(tmp_path / "model.safetensors"))
    with pytest.raises(ReferenceFormatError, match="decoder.weight has shape"):
        jaxcoders.load_reference(tmp_path)


def test_encode_rejects_bad_input(fixtures_dir):
    model = jaxcoders.load_reference(fixtures_dir / "l1_crosscoder" / "model")
    with pytest.raises(ValueError, match="M=2"):
        model.encode(np.zeros((4, 3, 16), np.float32))
    with pytest.raises(ValueError, match="D=16"):
        model.encode(np.zeros((4, 2, 15), np.float32))
    with pytest.raises(ValueError, match=r"\(B, M, D\)"):
        model.encode(np.zeros((2, 16), np.float32))
    x = np.zeros((4, 2, 16), np.float32)
    x[2, 1, 3] = np.inf
    with pytest.raises(ValueError, match="NaN or inf"):
        model.encode(x)
    with pytest.raises(ValueError, match="code must have shape"):
        model.decode(np.zeros((4, 63), np.float32))
