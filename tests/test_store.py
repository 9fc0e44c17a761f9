"""ActivationStore: schema, round trips, statistics, crash safety (no torch needed)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from jaxcoders.data import layout
from jaxcoders.data import store as store_lib
from jaxcoders.data.store import ActivationStore, StoreError, StoreWriter, TokenClass

ROOT = Path(__file__).resolve().parents[1]


def _acts(n=300, m=2, d=8, seed=0):
    return np.random.default_rng(seed).standard_normal((n, m, d)).astype(np.float32) * 3 + 1


@pytest.mark.parametrize("where", ["memory", "file"])
def test_round_trip_float32_bitwise(tmp_path, where):
    url = "memory://rt" if where == "memory" else str(tmp_path / "store")
    x = _acts()
    tok = np.arange(300, dtype=np.int32) % 17
    ds = (np.arange(300) >= 200).astype(np.int16)
    seq = np.arange(300) // 10
    pos = np.arange(300) % 10
    cls = np.full(300, TokenClass.TEXT, np.uint8)
    st = ActivationStore.create_from_arrays(
        url, x, token_ids=tok, dataset_ids=ds, dataset_names=["fineweb", "lmsys"], sequence_ids=seq,
        positions=pos, token_classes=cls, chunk_rows=64, metadata={"note": "test"}, overwrite=True,
    )
    st = ActivationStore.open(url)  # a fresh handle sees the same content
    assert st.shape == (300, 2, 8) and len(st) == 300 and st.complete
    assert st.dtype == np.float32 and st.chunk_rows == 64
    np.testing.assert_array_equal(st.read(slice(None)), x)
    np.testing.assert_array_equal(st[10:75], x[10:75])
    rows = np.array([299, 3, 3, 150, 0])  # any order, duplicates allowed
    np.testing.assert_array_equal(st[rows], x[rows])
    np.testing.assert_array_equal(st[7], x[7])
    np.testing.assert_array_equal(st.token_ids, tok)
    np.testing.assert_array_equal(st.dataset_ids, ds)
    np.testing.assert_array_equal(st.sequence_ids, seq)
    np.testing.assert_array_equal(st.positions, pos)
    np.testing.assert_array_equal(st.read_column("token_ids", [5, 1]), tok[[5, 1]])
    np.testing.assert_array_equal(st.sequence_bounds(), np.arange(0, 301, 10))
    assert st.datasets == ["fineweb", "lmsys"]
    assert st.row_ranges("train") == [(0, 200, 0), (200, 300, 1)]
    assert st.metadata["user"] == {"note": "test"}
    with pytest.raises(IndexError):
        st.read([300])
    # The raw zarr arrays are trimmed to the row count (readable by any zarr3 reader).
    assert tuple(st.acts.shape) == (300, 2, 8)


def test_bfloat16_and_stats_float64(tmp_path):
    x = _acts(500, 2, 16, seed=1)
    splits = np.where(np.arange(500) < 400, "train", "validation")
    st = ActivationStore.create_from_arrays(str(tmp_path / "bf"), x, dtype="bfloat16", splits=splits, chunk_rows=128)
    assert st.dtype == np.dtype(ml_dtypes.bfloat16)
    xb = x.astype(ml_dtypes.bfloat16)
    np.testing.assert_array_equal(st.read(slice(0, 500)).view(np.uint16), xb.view(np.uint16))
    # Statistics describe the stored (bf16) values, accumulated in float64; train split by default.
    ref = xb[:400].astype(np.float64)
    assert st.stats.count == 400
    assert st.stats.mean.dtype == np.float64 and st.stats.mean.shape == (2, 16)
    np.testing.assert_allclose(st.stats.mean, ref.mean(0), rtol=0, atol=1e-12)
    np.testing.assert_allclose(st.stats.std, ref.std(0), rtol=1e-12)
    val = st.stats_for("validation")
    assert val.count == 100
    np.testing.assert_allclose(val.mean, xb[400:].astype(np.float64).mean(0), atol=1e-12)
    assert st.splits == ["train", "validation"]
    assert st.row_ranges("validation") == [(400, 500, 0)]
    # The finalized mean/std arrays hold the same train statistics.
    import tensorstore as ts

    mean = ts.open({"driver": "zarr3", "kvstore": st.url + "mean/"}, open=True).result().read().result()
    np.testing.assert_array_equal(mean, st.stats.mean)


def test_welford_merge_matches_numpy():
    rng = np.random.default_rng(3)
    parts = [rng.standard_normal((n, 2, 5)) * 100 + 1e4 for n in (1, 7, 300, 2)]
    acc = (0, np.zeros((2, 5)), np.zeros((2, 5)))
    for p in parts:
        acc = store_lib.merge_moments(acc, store_lib.batch_moments(p))
    allx = np.concatenate(parts)
    st = store_lib.moments_to_stats(acc)
    np.testing.assert_allclose(st.mean, allx.mean(0), rtol=1e-14)
    np.testing.assert_allclose(st.std, allx.std(0), rtol=1e-10)


def test_default_chunk_rows():
    assert store_lib.default_chunk_rows(2, 2304, 2) == 1024  # Gemma-2-2B bf16: 9.4 MB chunks
    assert store_lib.default_chunk_rows(2, 2304, 4) == 512
    assert store_lib.default_chunk_rows(2, 32, 4) == 32768


def _writer(url, cap=100):
    return StoreWriter.create(url, num_models=2, d_model=4, dtype="float32", capacity=cap, datasets=["d"],
                              sources=[{"dataset_id": 0, "split": "train"}], chunk_rows=16)


def _append(w, x, start):
    n = len(x)
    w.write_rows(start, x, token_ids=np.zeros(n), sequence_ids=np.zeros(n), positions=np.zeros(n),
                 dataset_ids=np.zeros(n), token_classes=np.zeros(n))
    w.add_moments(0, store_lib.batch_moments(x))
    w.metadata["num_rows"] = start + n
    src = w.metadata["sources"][0]
    src["num_rows"] = start + n
    src["row_ranges"] = [[0, start + n]]


def test_crash_leaves_last_commit(tmp_path, monkeypatch):
    url = str(tmp_path / "crash")
    x = _acts(60, 2, 4, seed=5)
    w = _writer(url)
    _append(w, x[:20], 0)
    w.commit()
    # Crash 1: rows written, never committed.
    _append(w, x[20:40], 20)
    st = ActivationStore.open(url)
    assert st.num_rows == 20
    np.testing.assert_allclose(st.stats.mean, x[:20].astype(np.float64).mean(0), atol=1e-12)
    # Crash 2: the Welford state reached its slot, the metadata write failed.
    calls = []

    def failing_write(u, meta):
        calls.append(1)
        raise OSError("No space left on device")

    monkeypatch.setattr(layout, "write_group", failing_write)
    with pytest.raises(OSError):
        w.commit()
    monkeypatch.undo()
    st = ActivationStore.open(url)
    assert st.num_rows == 20 and st.stats.count == 20
    np.testing.assert_allclose(st.stats.mean, x[:20].astype(np.float64).mean(0), atol=1e-12)
    # Reopen for append (a resumed extraction) and continue: same content as one pass.
    w2 = StoreWriter.open_for_append(url)
    assert w2.num_rows == 20
    _append(w2, x[20:60], 20)
    w2.metadata["sources"][0]["done"] = True
    w2.finalize()
    st = ActivationStore.open(url)
    assert st.num_rows == 60 and st.complete
    np.testing.assert_array_equal(st.read(slice(None)), x)
    np.testing.assert_allclose(st.stats.mean, x.astype(np.float64).mean(0), atol=1e-12)


def test_errors_are_clear(tmp_path):
    with pytest.raises(StoreError, match="no ActivationStore at .*extract_activations.py"):
        ActivationStore.open(str(tmp_path / "nothing"))
    url = str(tmp_path / "s")
    ActivationStore.create_from_arrays(url, _acts(10))
    with pytest.raises(StoreError, match="already exists.*overwrite"):
        ActivationStore.create_from_arrays(url, _acts(10))
    ActivationStore.create_from_arrays(url, _acts(12), overwrite=True)
    assert ActivationStore.open(url).num_rows == 12
    with pytest.raises(StoreError, match="shape"):
        ActivationStore.create_from_arrays("memory://bad", np.zeros((3, 4)))
    bad = _acts(5)
    bad[2, 0, 1] = np.nan
    with pytest.raises(StoreError, match="NaN"):
        ActivationStore.create_from_arrays("memory://nan", bad)
    # A zarr group that is not ours.
    other = tmp_path / "other"
    other.mkdir()
    (other / "zarr.json").write_text(json.dumps({"zarr_format": 3, "node_type": "group", "attributes": {}}))
    with pytest.raises(StoreError, match="not a jaxcoders ActivationStore"):
        ActivationStore.open(str(other))


def test_data_package_does_not_import_torch():
    code = ("import sys, jaxcoders.data.store, jaxcoders.data.loader; "
            "assert 'torch' not in sys.modules and 'transformers' not in sys.modules, 'torch imported'")
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT, env=env, timeout=120)


def test_interrupted_finalize_recovers(tmp_path, monkeypatch):
    url = str(tmp_path / "fin")
    x = _acts(40, 2, 4, seed=6)
    w = _writer(url, cap=100)
    _append(w, x, 0)
    w.commit()

    def failing_write(u, meta):
        raise OSError("connection reset")

    monkeypatch.setattr(layout, "write_group", failing_write)
    with pytest.raises(OSError):
        w.finalize()  # arrays already trimmed to 40 rows, metadata not updated
    monkeypatch.undo()
    st = ActivationStore.open(url)
    assert st.num_rows == 40 and not st.complete
    np.testing.assert_array_equal(st.read(slice(None)), x)
    w2 = StoreWriter.open_for_append(url)  # a rerun reopens the trimmed arrays ...
    w2.finalize()  # ... and completes
    st = ActivationStore.open(url)
    assert st.complete and st.num_rows == 40 and tuple(st.acts.shape) == (40, 2, 4)
    np.testing.assert_array_equal(st.read(slice(None)), x)
