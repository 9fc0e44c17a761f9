"""Loader: shuffling, dataset mixing, epochs, per-process rows, resumable cursor, normalization."""
import numpy as np
import pytest

from jaxcoders.data.loader import Loader, LoaderError
from jaxcoders.data.store import ActivationStore

N0, N1 = 640, 448  # rows of dataset 0 (e.g. pretraining) and dataset 1 (chat)


@pytest.fixture(scope="module")
def store():
    n = N0 + N1
    x = np.random.default_rng(0).standard_normal((n, 2, 6)).astype(np.float32)
    x[:, 0, 0] = np.arange(n)  # row number encoded in the data: batches can be traced back to rows
    ds = (np.arange(n) >= N0).astype(np.int16)
    return ActivationStore.create_from_arrays("memory://loader-test", x, dataset_ids=ds,
                                              dataset_names=["text", "chat"], chunk_rows=32, overwrite=True)


def _rows(batch):
    return np.asarray(batch)[:, 0, 0].astype(np.int64)


def _take(it, k):
    return [next(it) for _ in range(k)]


def test_every_row_once_per_epoch_single_stream(store):
    loader = Loader(store, 64, seed=3, mix="concat", num_epochs=2, shuffle_buffer_rows=128, prefetch=2)
    batches = [_rows(b) for b in loader]
    per_epoch = (N0 + N1) // 64
    assert len(batches) == 2 * per_epoch
    for e in range(2):
        rows = np.concatenate(batches[e * per_epoch:(e + 1) * per_epoch])
        assert len(np.unique(rows)) == len(rows)  # no row twice within an epoch
        assert len(rows) == per_epoch * 64  # drop_remainder: the short tail (N % 64 rows) is skipped
    assert not np.array_equal(np.concatenate(batches[:per_epoch]), np.concatenate(batches[per_epoch:]))
    # Shuffled: not the store order, and spread beyond one shuffle buffer early on.
    assert not np.array_equal(np.sort(batches[0]), batches[0])
    # drop_remainder=False visits every row exactly once.
    loader = Loader(store, 64, seed=3, mix="concat", num_epochs=1, drop_remainder=False, shuffle_buffer_rows=128)
    rows = np.concatenate([_rows(b) for b in loader])
    np.testing.assert_array_equal(np.sort(rows), np.arange(N0 + N1))


def test_even_mix_and_per_dataset_epochs(store):
    loader = Loader(store, 64, seed=0, shuffle_buffer_rows=96, return_rows=True)
    assert loader.counts == [32, 32]
    it = iter(loader)
    got = []
    for _ in range(N0 // 32):  # one epoch of the larger dataset
        x, rows = next(it)
        np.testing.assert_array_equal(_rows(x), rows)
        assert (rows < N0).sum() == 32 and (rows >= N0).sum() == 32  # even mix in every batch
        got.append(rows)
    rows = np.concatenate(got)
    r0 = rows[rows < N0]
    np.testing.assert_array_equal(np.sort(r0), np.arange(N0))  # dataset 0: one full epoch
    r1 = rows[rows >= N0]
    first = r1[:N1]
    np.testing.assert_array_equal(np.sort(first), np.arange(N0, N0 + N1))  # dataset 1: a full epoch ...
    assert len(np.unique(r1[N1:])) == len(r1[N1:])  # ... then a new one has begun
    loader.close()
    weighted = Loader(store, 64, mix=[3, 1])
    assert weighted.counts == [48, 16]


def test_resume_yields_identical_batches(store):
    kw = dict(seed=7, shuffle_buffer_rows=100, window_rows=40)
    loader = Loader(store, 48, **kw)
    it = iter(loader)
    _take(it, 13)
    state = loader.state_dict()
    expected = [_rows(b) for b in _take(it, 40)]  # crosses epochs and blocks
    loader.close()

    resumed = Loader(store, 48, prefetch=0, **kw)  # prefetch depth does not change the order
    resumed.load_state_dict(state)
    got = [_rows(b) for b in _take(iter(resumed), 40)]
    for a, b in zip(expected, got):
        np.testing.assert_array_equal(a, b)
    # The same seed from scratch reproduces the run; another seed does not.
    fresh = [_rows(b) for b in _take(iter(Loader(store, 48, **kw)), 53)]
    for a, b in zip(expected, fresh[13:]):
        np.testing.assert_array_equal(a, b)
    other = _rows(next(iter(Loader(store, 48, **dict(kw, seed=8)))))
    assert not np.array_equal(other, fresh[0])
    # Restarting iteration on the same loader continues from its cursor.
    again = Loader(store, 48, **kw)
    it1 = iter(again)
    _take(it1, 5)
    nxt = _rows(next(iter(again)))
    np.testing.assert_array_equal(nxt, fresh[5])


def test_resume_rejects_foreign_state(store):
    state = Loader(store, 48, seed=1).state_dict()
    with pytest.raises(LoaderError, match="seed"):
        Loader(store, 48, seed=2).load_state_dict(state)
    with pytest.raises(LoaderError, match="batch_size"):
        Loader(store, 64, seed=1).load_state_dict(state)


def test_processes_read_disjoint_rows(store):
    kw = dict(seed=5, mix="concat", num_epochs=1, shuffle_buffer_rows=64)
    full = Loader(store, 64, process_index=0, process_count=1, **kw)
    parts = [Loader(store, 64, process_index=p, process_count=2, **kw) for p in range(2)]
    assert parts[0].local_batch_size == 32
    b0 = [_rows(b) for b in parts[0]]
    b1 = [_rows(b) for b in parts[1]]
    assert len(b0) == len(b1)  # processes stay in lockstep
    r0, r1 = np.concatenate(b0), np.concatenate(b1)
    assert not set(r0) & set(r1)
    assert len(np.unique(r0)) == len(r0) and len(np.unique(r1)) == len(r1)
    # Each process touches only whole windows of its own (reads only its rows).
    win = parts[0].window_rows
    assert not set(r0 // win) & set(r1 // win)
    assert len(r0) + len(r1) >= (N0 + N1) - 2 * 64  # all but the synchronized tail of the epoch
    assert len(list(full)) == (N0 + N1) // 64
    with pytest.raises(LoaderError, match="multiple of process_count"):
        Loader(store, 63, process_index=0, process_count=2)


def test_memory_bounded_and_unshuffled_order(store):
    loader = Loader(store, 32, mix="concat", shuffle=False, num_epochs=1, drop_remainder=False, prefetch=0,
                    shuffle_buffer_rows=64)
    got = []
    for b in loader:
        got.append(_rows(b))
        assert len(loader.streams[0]._blocks) <= 2  # block in use + the one being prefetched
    np.testing.assert_array_equal(np.concatenate(got), np.arange(N0 + N1))


def test_normalization_and_dtype(store):
    loader = Loader(store, 256, seed=0, normalize=True, target_rms=2.0)
    x = np.asarray(next(iter(loader)))
    assert x.dtype == np.float32
    norm = loader.normalization
    st = store.stats
    np.testing.assert_allclose(norm["mean_MD"], st.mean.astype(np.float32))
    assert norm["scale"] == pytest.approx(2.0 / np.sqrt((st.std ** 2).sum() + 1e-8))
    raw = np.asarray(next(iter(Loader(store, 256, seed=0))))
    np.testing.assert_allclose(x, (raw - st.mean.astype(np.float32)) * np.float32(norm["scale"]), rtol=1e-6)


def test_splits_and_sharding():
    import jax
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

    x = np.random.default_rng(1).standard_normal((300, 2, 4)).astype(np.float32)
    x[:, 0, 0] = np.arange(300)
    splits = np.where(np.arange(300) < 200, "train", "validation")
    st = ActivationStore.create_from_arrays("memory://loader-splits", x, splits=splits, chunk_rows=16,
                                            overwrite=True)
    val = Loader(st, 20, split="validation", shuffle=False, num_epochs=1, mix="concat")
    np.testing.assert_array_equal(np.concatenate([_rows(b) for b in val]), np.arange(200, 300))
    mesh = Mesh(np.array(jax.devices()[:1]), ("data",))
    sharded = Loader(st, 20, sharding=NamedSharding(mesh, P("data")))
    b = next(iter(sharded))
    assert isinstance(b, jax.Array) and b.shape == (20, 2, 4)
    assert (_rows(b) < 200).all()  # train rows only
    with pytest.raises(LoaderError, match="no committed rows in split 'test'"):
        Loader(st, 20, split="test")
